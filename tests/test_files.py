"""Files over HTTP end to end: the official deepgram-sdk (``listen.v1.media.transcribe_file``) and
openai SDK (``audio.transcriptions.create``, every response format, word timings, ``stream=True``)
against a real whisper-base stack (CTranslate2), pointed at it by base URL only; bad input in each
protocol's own shape; the command-line client."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import redis
import soundfile as sf
from deepgram import DeepgramClient
from deepgram.core.api_error import ApiError
from deepgram.environment import DeepgramClientEnvironment

from services import keys
from services.stack import CT2_DIR, Stack, start_ingest
from tools.speech import Speech, wer

POOL = CT2_DIR.name
ROOT = Path(__file__).resolve().parent.parent
MAX_WER = 0.25


def http_of(uri: str) -> str:
    return uri.replace("ws://", "http://")


def deepgram_sdk(uri: str, key: str = "any-key") -> DeepgramClient:
    http = http_of(uri)
    environment = DeepgramClientEnvironment(base=http, production=uri, agent=uri, agent_rest=http)
    return DeepgramClient(api_key=key, environment=environment)


def openai_sdk(uri: str, key: str = "any-key") -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=f"{http_of(uri)}/v1", max_retries=0)


def post(
    url: str, body: bytes, content_type: str = "audio/wav", key: str = "k"
) -> tuple[int, dict[str, str], Any]:
    request = urllib.request.Request(
        url, body, {"Content-Type": content_type, "Authorization": f"Token {key}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, dict(reply.headers), json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


def test_deepgram_sdk_transcribes_a_file(ct2_stack: Stack, speech: Speech) -> None:
    stream = speech.stream(16000)
    audio = stream.path.read_bytes()
    reply = deepgram_sdk(ct2_stack.uri).listen.v1.media.transcribe_file(request=audio, model="nova-3")
    metadata = reply.metadata
    assert metadata.sha256 == hashlib.sha256(audio).hexdigest()
    assert metadata.channels == 1 and abs(metadata.duration - len(stream.pcm) / 2 / 16000) < 0.05
    alternative = reply.results.channels[0].alternatives[0]
    assert wer(" ".join(stream.texts), alternative.transcript) <= MAX_WER, alternative.transcript
    assert alternative.words and all(w.start <= w.end for w in alternative.words)
    assert alternative.words[0].start >= stream.utterances[0][0] - 0.5


def test_deepgram_multichannel_keeps_each_channel_apart(
    ct2_stack: Stack, speech: Speech, tmp_path: Path
) -> None:
    stream = speech.stream(16000)
    mono = np.frombuffer(stream.pcm, np.int16)
    stereo = np.stack([mono, np.zeros_like(mono)], axis=1)  # the second talker says nothing
    path = tmp_path / "stereo.flac"
    sf.write(path, stereo, 16000)
    reply = deepgram_sdk(ct2_stack.uri).listen.v1.media.transcribe_file(
        request=path.read_bytes(), multichannel=True
    )
    assert reply.metadata.channels == 2 and len(reply.results.channels) == 2
    first, second = (c.alternatives[0].transcript for c in reply.results.channels)
    assert wer(" ".join(stream.texts), first) <= MAX_WER and second == ""


def test_openai_sdk_every_format_word_timings_and_a_stream(ct2_stack: Stack, speech: Speech) -> None:
    stream = speech.stream(22050)  # no rate the VAD takes as is: resampled
    reference = " ".join(stream.texts)
    client = openai_sdk(ct2_stack.uri)
    with stream.path.open("rb") as audio:
        plain = client.audio.transcriptions.create(model="whisper-1", file=audio)
    assert wer(reference, plain.text) <= MAX_WER, plain.text
    with stream.path.open("rb") as audio:
        verbose = client.audio.transcriptions.create(
            model="gpt-4o-transcribe",
            file=audio,
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
            language="en",
        )
    assert verbose.words and verbose.segments and verbose.language == "english"
    assert wer(reference, " ".join(w.word for w in verbose.words)) <= MAX_WER
    assert all(a.end <= b.start + 0.01 for a, b in zip(verbose.segments, verbose.segments[1:], strict=False))
    for kind, marker in (("text", None), ("srt", "-->"), ("vtt", "WEBVTT")):
        with stream.path.open("rb") as audio:
            body = client.audio.transcriptions.create(model="whisper-1", file=audio, response_format=kind)  # type: ignore[call-overload]
        assert isinstance(body, str) and wer(reference, body if marker is None else plain.text) <= MAX_WER
        assert marker is None or marker in body
    with stream.path.open("rb") as audio:
        events = list(
            client.audio.transcriptions.create(model="gpt-4o-mini-transcribe", file=audio, stream=True)
        )
    deltas = [e for e in events if e.type == "transcript.text.delta"]
    assert len(deltas) >= 2 and events[-1].type == "transcript.text.done"
    assert events[-1].text == plain.text and wer(reference, "".join(d.delta for d in deltas)) <= MAX_WER


def test_a_files_segments_are_decoded_together_and_answered_one_by_one(
    ct2_stack: Stack, speech: Speech
) -> None:
    """Five sentences, 1.2 s apart: one pack of five segments, one decode (``--file-pack-s``
    28), yet five segments come back, each with its own sentence, times and words."""
    stream = speech.stream(16000)
    with redis.Redis.from_url(ct2_stack.redis_url) as client:

        def jobs_queued() -> int:
            return int(client.xinfo_stream(keys.file_stream(POOL))["entries-added"])

        before = jobs_queued()
        with stream.path.open("rb") as audio:
            verbose = openai_sdk(ct2_stack.uri).audio.transcriptions.create(
                model="whisper-1",
                file=audio,
                response_format="verbose_json",
                timestamp_granularities=["word", "segment"],
            )
        assert jobs_queued() - before == 1
    segments, words = verbose.segments or [], verbose.words or []
    assert len(segments) == len(stream.utterances), [s.text for s in segments]
    for segment, (start, end), text in zip(segments, stream.utterances, stream.texts, strict=True):
        assert start - 0.5 <= segment.start and segment.end <= end + 0.5, (segment, start, end)
        assert wer(text, segment.text) <= MAX_WER, (text, segment.text)
        inside = [w.word for w in words if segment.start <= w.start and w.end <= segment.end]
        assert wer(text, " ".join(inside)) <= MAX_WER, (text, inside)


def test_bad_files_get_clear_errors_in_each_protocols_shape(
    ct2_stack: Stack, speech: Speech, tmp_path: Path
) -> None:
    uri, ingest = start_ingest(
        ct2_stack.redis_url,
        POOL,
        "--max-file-mb",
        "1",
        "--max-pool-files",
        "1",
        "--api-keys",
        "k",
        logs=tmp_path,
    )
    base = http_of(uri)
    wav = speech.stream(16000).path.read_bytes()
    try:
        # Deepgram: garbage, a JSON url, an unknown parameter, too big, a wrong key.
        status, headers, body = post(f"{base}/v1/listen", b"not audio at all" * 100)
        assert status == 400 and "decoded" in body["err_msg"] and headers["dg-error"]
        status, _, body = post(
            f"{base}/v1/listen", json.dumps({"url": "https://x/a.wav"}).encode(), "application/json"
        )
        assert status == 400 and "fetches nothing" in body["err_msg"]
        status, _, body = post(f"{base}/v1/listen?bogus=1", wav)
        assert status == 400 and "bogus" in body["err_msg"]
        status, _, body = post(f"{base}/v1/listen", wav + b"\0" * 1_100_000)
        assert status == 413
        status, _, body = post(f"{base}/v1/listen", wav, key="wrong")
        assert status == 401
        # OpenAI: the SDK's own errors, with OpenAI's status codes.
        client = openai_sdk(uri, "k")
        with pytest.raises(openai.BadRequestError) as bad:
            client.audio.transcriptions.create(model="whisper-1", file=("a.wav", b"RIFF\x10\0\0\0WAVEfmt "))
        assert bad.value.body and "decoded" in str(bad.value.body)
        with pytest.raises(openai.BadRequestError) as bad:
            client.audio.transcriptions.create(model="no-such-model", file=("a.wav", wav))
        assert "model" in str(bad.value.body)
        with pytest.raises(openai.AuthenticationError):
            openai_sdk(uri, "wrong").audio.transcriptions.create(model="whisper-1", file=("a.wav", wav))
        # Another ingest's file holds the pool's only place: 429 with Retry-After.
        store = redis.Redis.from_url(ct2_stack.redis_url)
        store.zadd(keys.files_running(POOL), {"elsewhere": time.time()})
        try:
            with pytest.raises(openai.RateLimitError) as busy:
                client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav))
            assert busy.value.response.headers["Retry-After"]
        finally:
            store.zrem(keys.files_running(POOL), "elsewhere")
        # And the ingest goes on serving files (and nothing was left running).
        with pytest.raises(ApiError) as refused:
            deepgram_sdk(uri, "wrong").listen.v1.media.transcribe_file(request=wav)
        assert refused.value.status_code == 401
        assert client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav)).text
        assert store.zcard(keys.files_running(POOL)) == 0
    finally:
        ingest.stop()


def test_the_command_line_client_writes_subtitles(ct2_stack: Stack, speech: Speech, tmp_path: Path) -> None:
    stream = speech.stream(16000)
    run = subprocess.run(
        [
            *(sys.executable, str(ROOT / "clients" / "transcribe.py"), "--uri", http_of(ct2_stack.uri)),
            *("--output", "srt", "--out-dir", str(tmp_path), str(stream.path)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    srt = (tmp_path / f"{stream.path.stem}.srt").read_text()
    assert "-->" in srt and wer(" ".join(stream.texts), " ".join(srt.splitlines()[2::4])) <= MAX_WER
