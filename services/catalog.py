"""Which pool a model is served as: the short names clients use, and the rule for each side.

A transcriber knows its own model (``--model-id``, ``--serve-as``) and announces the pool it
serves (``keys.alive_key``); the ingest only maps what a client asks for (``?model=``,
``--default-model``) through the aliases, never through its own filesystem, and checks which
pools are alive. So a name means the same whichever machine each side runs on.
"""

from __future__ import annotations

import os

# Short names users pass as ``?model=`` and the Hub ids they stand for.
ALIASES: dict[str, str] = {
    "swift": "Oriserve/Whisper-Hindi2Hinglish-Swift",
    "prime": "Oriserve/Whisper-Hindi2Hinglish-Prime",
}


def requested_pool(name: str) -> str:
    """The pool a client's ``?model=`` (or the ingest's ``--default-model``) names: an alias or
    the Hub id of one is that alias (any case); anything else is taken as it is."""
    name = name.strip()
    for alias, hub_id in ALIASES.items():
        if name.lower() in (alias, hub_id.lower()):
            return alias
    return name


def served_pool(model_id: str, serve_as: str = "") -> str:
    """The pool a transcriber of ``model_id`` serves: ``serve_as`` when given; else ``swift`` /
    ``prime`` for Oriserve's models, a local directory's own name (``models/whisper-base/`` is
    ``whisper-base``), or any other Hub id in its full ``owner/name`` form."""
    if serve_as:
        return requested_pool(serve_as)
    pool = requested_pool(model_id)
    if pool == model_id.strip() and os.path.isdir(pool):
        return os.path.basename(os.path.normpath(pool))
    return pool
