"""Shared fixtures: real espeak-ng speech, a real redis-server, a real whisper-base stack."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

from services import keys
from tests.helpers import MODEL_DIR, Proc, Speech, start_ingest, start_redis, start_transcriber, wait_until


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Speech:
    for tool in ("espeak-ng", "sox"):
        assert shutil.which(tool), f"{tool} is missing: run deploy/install-system-deps.sh"
    return Speech(tmp_path_factory.mktemp("speech"))


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url, proc = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    proc.stop()


@dataclass
class Stack:
    uri: str
    redis_url: str
    ingest: Proc
    transcriber: Proc
    model: str


@pytest.fixture(scope="session")
def base_stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One ingest and one transcriber serving the real whisper-base from `make offline-model`."""
    assert (MODEL_DIR / "model.safetensors").is_file(), "run `make offline-model` first (make test does)"
    workdir = tmp_path_factory.mktemp("stack")
    name = keys.model_name(str(MODEL_DIR))
    transcriber = start_transcriber(redis_url, workdir)
    uri, ingest = start_ingest(redis_url, workdir, name)
    client = redis.Redis.from_url(redis_url)
    wait_until(
        lambda: client.exists(keys.alive_key(name)) or transcriber.popen.poll() is not None,
        120,
        "the transcriber to load whisper-base",
    )
    assert transcriber.popen.poll() is None, transcriber.log
    yield Stack(uri, redis_url, ingest, transcriber, name)
    ingest.stop()
    transcriber.stop()
