"""An instant transcriber for benchmarking the ingest alone: the real consume loop, no model.

It is ``services.transcriber.worker`` (consumer group, XREADGROUP, listening check, PUBLISH,
XACK + XTRIM) with a model that answers every segment at once with the same short text, so
whatever latency remains is the pipeline's: WebSocket, VAD, Redis streams, pub/sub, relay.

    .venv/bin/python -m bench.echo_worker --redis-url redis://127.0.0.1:6379/0 --serve-as whisper-base

Takes the transcriber's flags (``--max-batch``, ``--batch-wait-ms``, ``--metrics-port``, ...);
``--model-id`` is ignored. ``ECHO_MODEL_TIME=A,B`` makes each batch of ``b`` segments take
``A + B * b`` seconds, off the event loop like a real model: a GPU's timing table stood in for
(``bench.compare --echo-model-time``).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Sequence

from services.config import setup_logging
from services.transcriber.config import ConfigError, parse_args
from services.transcriber.interface import Clips, Transcript
from services.transcriber.worker import run

ECHO = Transcript("echo", 0.0)


class EchoModel:
    """A ``SpeechModel`` that takes ``base + per_segment * len(batch)`` seconds (default none)."""

    def __init__(self, base: float = 0.0, per_segment: float = 0.0) -> None:
        self.base = base
        self.per_segment = per_segment

    def transcribe(
        self, batch: Clips, words: Sequence[bool] = (), prompts: Sequence[str] = ()
    ) -> list[Transcript]:
        if batch and (self.base or self.per_segment):
            time.sleep(self.base + self.per_segment * len(batch))
        return [ECHO] * len(batch)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = parse_args(
            ["--model-id", "echo", "--device", "cpu", *(sys.argv[1:] if argv is None else argv)]
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level)
    raw = os.environ.get("ECHO_MODEL_TIME", "0,0")
    try:
        base, per_segment = (float(x) for x in raw.split(","))
    except ValueError:
        print(
            f"error: ECHO_MODEL_TIME={raw!r} must be 'A,B' (seconds per batch, per segment)", file=sys.stderr
        )
        return 2
    asyncio.run(run(config, EchoModel(base, per_segment)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
