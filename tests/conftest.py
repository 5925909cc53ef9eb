"""Shared fixtures: real espeak-ng speech and a real whisper-base stack."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from services.stack import CT2_DIR, MODEL_DIR, Stack
from tools.speech import Speech


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Speech:
    for tool in ("espeak-ng", "sox"):
        assert shutil.which(tool), f"{tool} is missing: run deploy/install-system-deps.sh"
    return Speech(tmp_path_factory.mktemp("speech"))


@pytest.fixture(scope="session")
def base_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """redis-server, one ingest and one transcriber serving the real whisper-base (`make offline-model`)."""
    assert (MODEL_DIR / "model.safetensors").is_file(), "run `make offline-model` first (make test does)"
    stack = Stack.base(tmp_path_factory.mktemp("stack"))
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def ct2_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack serving whisper-base on CTranslate2, the backend that times words."""
    stack = Stack(tmp_path_factory.mktemp("ct2-stack"))
    stack.start_transcriber(str(CT2_DIR), "--device", "cpu", "--backend", "ctranslate2")
    stack.start_ingest(CT2_DIR.name)
    stack.wait_serving(CT2_DIR.name)
    yield stack
    stack.stop()
