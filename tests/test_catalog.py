"""Pool names: the ingest maps what clients ask for without looking at its own filesystem."""

from __future__ import annotations

import pytest

from services.catalog import requested_pool, served_pool
from services.stack import MODEL_DIR, ROOT


def test_aliases_and_their_hub_ids_are_one_pool_on_both_sides() -> None:
    for name in (
        "swift",
        " Swift ",
        "Oriserve/Whisper-Hindi2Hinglish-Swift",
        "oriserve/whisper-hindi2hinglish-swift",
    ):
        assert requested_pool(name) == "swift"
        assert served_pool(name) == "swift"
    assert requested_pool("prime") == served_pool("Oriserve/Whisper-Hindi2Hinglish-Prime") == "prime"
    assert served_pool("Oriserve/Whisper-Hindi2Hinglish-Swift", serve_as="fast") == "fast"


def test_a_transcriber_serves_its_local_directory_by_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    assert served_pool(str(MODEL_DIR)) == served_pool("models/whisper-base/") == "whisper-base"
    assert served_pool("openai/whisper-base") == "openai/whisper-base"  # a Hub id: not a directory here


def test_the_ingest_never_resolves_a_request_through_its_filesystem(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # models/whisper-base exists here, and still names no pool of that name
    assert requested_pool("models/whisper-base") == "models/whisper-base"
    assert requested_pool("whisper-base") == "whisper-base"
