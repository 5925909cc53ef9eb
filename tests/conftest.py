"""Shared fixtures: real espeak-ng speech and a real whisper-base stack."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.helpers import MODEL_DIR, LocalStack, Speech


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Speech:
    for tool in ("espeak-ng", "sox"):
        assert shutil.which(tool), f"{tool} is missing: run deploy/install-system-deps.sh"
    return Speech(tmp_path_factory.mktemp("speech"))


@pytest.fixture(scope="session")
def base_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """redis-server, one ingest and one transcriber serving the real whisper-base (`make offline-model`)."""
    assert (MODEL_DIR / "model.safetensors").is_file(), "run `make offline-model` first (make test does)"
    stack = LocalStack(tmp_path_factory.mktemp("stack"))
    yield stack
    stack.stop()
