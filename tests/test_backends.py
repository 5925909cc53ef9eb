"""The CTranslate2 backend on the real whisper-base weights, its flags, and dynamic batching."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import ctranslate2  # type: ignore[import-untyped]
import numpy as np
import pytest
import redis.asyncio as aioredis
from numpy.typing import NDArray
from transformers import WhisperFeatureExtractor

from services import keys, metrics
from services.stack import MODEL_DIR, ROOT, Proc, Stack, free_port, port_open, redis_args, wait_until
from services.transcriber.config import (
    CPU_FILE_BATCH,
    GPU_FILE_BATCH,
    ConfigError,
    parse_args,
    resolve_file_batch,
)
from services.transcriber.ct2_model import CTranslate2Model, LogMel, ct2_directory, ct2_max_length
from services.transcriber.guard import judge
from services.transcriber.interface import Clips, Decoding, ModelLoadError, Transcript
from services.transcriber.worker import Worker, ensure_group
from tests.helpers import finals, run_client
from tools.speech import Speech, wer

CT2_DIR = ROOT / "models" / "whisper-base-ct2"
PAD_S = 0.3


@pytest.fixture(scope="module")
def model() -> CTranslate2Model:
    assert (CT2_DIR / "model.bin").is_file(), "run `make offline-model` first (make test does)"
    return CTranslate2Model.load(str(CT2_DIR), "cpu", "int8", Decoding())


def utterances(speech: Speech, which: tuple[int, ...]) -> tuple[list[NDArray[np.float32]], tuple[str, ...]]:
    """Each sentence cut out of a 16 kHz stream with 0.3 s of its silence on both sides."""
    stream = speech.stream(16000, which)
    return stream.clips(PAD_S), stream.texts


def test_transcribes_two_sentences(model: CTranslate2Model, speech: Speech) -> None:
    clips, texts = utterances(speech, (0, 1))
    got = model.transcribe(clips)
    for text, transcript in zip(texts, got, strict=True):
        assert wer(text, transcript.text) <= 0.25, (text, transcript)
        assert transcript.no_speech_prob < 0.2


def test_silence_is_no_speech(model: CTranslate2Model) -> None:
    [transcript] = model.transcribe([np.zeros(2 * 16000, np.float32)])
    assert transcript.no_speech_prob > 0.6 or not judge(transcript.text, transcript.no_speech_prob).text


def test_a_batch_of_three_comes_back_in_order(model: CTranslate2Model, speech: Speech) -> None:
    clips, texts = utterances(speech, (2, 3, 4))
    got = model.transcribe(clips)
    assert len(got) == 3
    for text, transcript in zip(texts, got, strict=True):
        assert wer(text, transcript.text) <= 0.25, (text, [t.text for t in got])
    assert model.transcribe([]) == []


def test_features_are_transformers_features(speech: Speech) -> None:
    clips, _ = utterances(speech, (0, 1))
    reference = WhisperFeatureExtractor(feature_size=80)(clips, sampling_rate=16000, return_tensors="np")
    assert np.abs(LogMel(80)(clips, 3000) - reference.input_features).max() < 1e-3


def test_max_new_tokens_bound_holds(model: CTranslate2Model, speech: Speech) -> None:
    """CTranslate2 halves max_length; with end-of-text suppressed, exactly the bound is generated."""
    clips, _ = utterances(speech, (0,))
    [result] = model.model.generate(
        ctranslate2.StorageView.from_array(model.features(clips)),
        [model.prompt],
        beam_size=1,
        max_length=ct2_max_length(7),
        suppress_tokens=[-1, model.eot],
    )
    assert len(result.sequences_ids[0]) == 7


def test_backend_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_args(["--backend", "ctranslate2", "--device", "cpu"])
    assert (config.backend, config.compute_type) == ("ctranslate2", "int8")
    assert parse_args(["--device", "cpu"]).backend == "transformers"
    monkeypatch.setenv("BACKEND", "ctranslate2")
    monkeypatch.setenv("COMPUTE_TYPE", "float32")
    monkeypatch.setenv("BATCH_WAIT_MS", "35")
    config = parse_args(["--device", "cpu"])
    assert (config.backend, config.compute_type, config.batch_wait_ms) == ("ctranslate2", "float32", 35)
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        parse_args(["--device", "cpu", "--compute-type", "float16"])
    with pytest.raises(ConfigError, match="uses --compute-type"):
        parse_args(["--device", "cpu", "--dtype", "float32"])
    monkeypatch.delenv("COMPUTE_TYPE")
    with pytest.raises(ConfigError, match="uses --dtype"):
        parse_args(["--device", "cpu", "--backend", "transformers", "--compute-type", "int8"])


def test_file_batch_is_chosen_for_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--file-batch auto`` is CPU_FILE_BATCH on a CPU (a live segment then waits for one file
    segment at most); a number, by flag or environment, is taken as given; 0 is refused. The GPU
    side (resolve_file_batch with "cuda") is checked without a GPU: none can run here."""
    assert parse_args(["--device", "cpu"]).file_batch == CPU_FILE_BATCH == 1
    assert resolve_file_batch("auto", "cuda") == GPU_FILE_BATCH
    assert parse_args(["--device", "cpu", "--file-batch", "3"]).file_batch == 3
    monkeypatch.setenv("FILE_BATCH", "6")
    assert parse_args(["--device", "cpu"]).file_batch == 6
    with pytest.raises(SystemExit):
        parse_args(["--device", "cpu", "--file-batch", "0"])


def test_stack_with_the_ctranslate2_backend(speech: Speech, tmp_path: Path) -> None:
    flags = (
        "--backend",
        "ctranslate2",
        "--model-id",
        "models/whisper-base-ct2",
        "--serve-as",
        "whisper-base",
    )
    stack = Stack.base(tmp_path, transcriber_flags=flags)
    try:
        stream = speech.stream(16000, (0, 1))
        code, events, stderr = run_client(stack.uri, stream.path, "--fast")
        assert code == 0, stderr
        got = finals(events)
        assert len(got) == 2, events
        assert wer(" ".join(stream.texts), " ".join(e["text"] for e in got)) <= 0.25, got
        assert "with CTranslate2 on cpu/int8" in stack.transcribers[0].log
    finally:
        stack.stop()


# --- dynamic batching -------------------------------------------------------------


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = Proc("redis", redis_args(port, tmp_path), tmp_path / "redis.log")
    wait_until(lambda: port_open(port), 10, "redis-server")
    yield f"redis://127.0.0.1:{port}/0"
    proc.stop()


class NoModel:
    """Reading a batch never reaches the model."""

    def transcribe(
        self, batch: Clips, words: Sequence[bool] = (), prompts: Sequence[str] = ()
    ) -> list[Transcript]:
        raise AssertionError("the model is not part of reading a batch")


def read_batch(redis_url: str, wait_ms: int, later: int) -> tuple[int, float]:
    """One entry queued now, ``later`` more 50 ms later: (size of the batch read, seconds it took)."""

    async def go() -> tuple[int, float]:
        flags = ["--redis-url", redis_url, "--device", "cpu", "--serve-as", "t", "--max-batch", "4"]
        config = parse_args([*flags, "--batch-wait-ms", str(wait_ms), "--metrics-port", "0"])
        client = aioredis.Redis.from_url(redis_url)
        registry = metrics.new_registry()
        worker = Worker(config, client, NoModel(), metrics.TranscriberMetrics(registry, "t"))
        for stream in (keys.segment_stream("t"), keys.partials_stream("t")):
            await ensure_group(client, stream)

        async def add_later() -> None:
            await asyncio.sleep(0.05)
            for _ in range(later):
                await client.xadd(keys.segment_stream("t"), {"x": "1"})

        await client.xadd(keys.segment_stream("t"), {"x": "1"})
        started = time.monotonic()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(add_later())
            finals, _ = await worker._read_batch()
            took = time.monotonic() - started
        await client.aclose()
        return len(finals), took

    return asyncio.run(go())


def test_batch_waits_for_more_segments_up_to_the_limit(redis_url: str) -> None:
    size, took = read_batch(redis_url, wait_ms=400, later=5)
    assert size == 4 and took < 0.3  # full: no need to wait out the 400 ms


def test_batch_wait_is_bounded(redis_url: str) -> None:
    size, took = read_batch(redis_url, wait_ms=400, later=0)
    assert size == 1 and 0.35 < took < 0.6
    size, took = read_batch(redis_url, wait_ms=0, later=3)
    assert size == 1 and took < 0.04


def test_entries_delivered_too_often_are_dead_lettered_across_a_digit_boundary(redis_url: str) -> None:
    """Stream ids are ``ms-seq`` numbers: ``1-10`` comes after ``1-9``, though not as bytes."""

    async def go() -> tuple[list[bytes], list[bytes]]:
        flags = ["--redis-url", redis_url, "--device", "cpu", "--serve-as", "t", "--max-attempts", "2"]
        config = parse_args([*flags, "--metrics-port", "0"])
        client = aioredis.Redis.from_url(redis_url)
        worker = Worker(config, client, NoModel(), metrics.TranscriberMetrics(metrics.new_registry(), "t"))
        stream = keys.segment_stream("t")
        # Another consumer's pending entries lie between them in id order.
        ids = [f"1-{n}".encode() for n in range(8, 12)]
        for entry_id in ids:
            await client.xadd(stream, {"x": "1"}, id=entry_id)
        await ensure_group(client, stream)
        await client.xreadgroup(keys.GROUP, "other", {stream: ">"})
        mine = [b"1-9", b"1-10"]
        for _ in range(2):  # delivered three times in all: one more than --max-attempts allows
            await client.xclaim(stream, keys.GROUP, "me", 0, list[Any](mine))
        kept = await worker._retire_exhausted([(entry_id, {b"x": b"1"}) for entry_id in mine])
        dead: Any = await client.xrange(keys.dead_letter_stream("t"))
        await client.aclose()
        return [entry_id for entry_id, _ in kept], [fields[b"entry"] for _, fields in dead]

    kept, dead = asyncio.run(go())
    assert kept == [] and dead == [b"1-9", b"1-10"]


def test_a_transformers_model_is_converted_once_for_ctranslate2(
    speech: Speech, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--backend ctranslate2 --model-id <transformers model>` (as Compose does with Oriserve's
    Hub models): converted into the cache at first load, reused after."""
    monkeypatch.setenv("CT2_CACHE", str(tmp_path / "ct2"))
    model = CTranslate2Model.load(str(MODEL_DIR), "cpu", "int8", Decoding(), 2)
    converted = ct2_directory(str(MODEL_DIR))
    assert converted.parent == tmp_path / "ct2" and (converted / "model.bin").is_file()
    made = (converted / "model.bin").stat().st_mtime_ns
    clips, texts = utterances(speech, (1,))
    [transcript] = model.transcribe(clips)
    assert wer(texts[0], transcript.text) <= 0.25, transcript
    assert ct2_directory(str(MODEL_DIR)) == converted
    assert (converted / "model.bin").stat().st_mtime_ns == made  # not converted again
    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(ModelLoadError, match="converting it failed"):
        CTranslate2Model.load(str(tmp_path / "not-a-model"), "cpu", "int8", Decoding())
    assert [p.name for p in (tmp_path / "ct2").iterdir()] == [converted.name]  # no partial left
