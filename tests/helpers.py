"""Test support: real test speech, real processes, WER. No mocks."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis
import soundfile as sf
from prometheus_client.parser import text_string_to_metric_families

from services import keys

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / "models" / "whisper-base"
# Six real Hindi call-style clips (Apache-2.0, see its README): kept in the repository.
HINDI_CLIPS = sorted((ROOT / "audio" / "oriserve-examples").glob("*.wav"))
ESPEAK_RATE = 22050

SENTENCES = (
    "The weather is very hot today, so please drink plenty of water.",
    "Please call me back tomorrow morning after breakfast.",
    "My internet connection has been very slow since last week.",
    "I would like to change the address on my account.",
    "Can you tell me the balance of my savings account?",
    # A long one, for partial results while it is spoken.
    "I have been waiting for my refund for more than three weeks now, and nobody from your team "
    "has called me back even once, so please escalate this complaint to your manager today.",
)
# The five short sentences: the default test stream.
SHORT = (0, 1, 2, 3, 4)


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


# --- speech -------------------------------------------------------------------


def espeak(text: str, path: Path, voice: str = "en-us") -> np.ndarray:
    """Speak ``text`` with espeak-ng; return int16 samples at 22050 Hz, edges trimmed."""
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True)
    samples, rate = sf.read(path, dtype="int16")
    assert rate == ESPEAK_RATE
    loud = np.flatnonzero(np.abs(samples) > 300)
    trimmed: np.ndarray = samples[loud[0] : loud[-1] + 1]
    return trimmed


def to_rate(samples: np.ndarray, rate: int, workdir: Path, name: str) -> Path:
    """Write 22050 Hz int16 samples as a 16-bit mono WAV at ``rate`` (sox resamples)."""
    src = workdir / f"{name}-src.wav"
    sf.write(src, samples, ESPEAK_RATE, subtype="PCM_16")
    out = workdir / f"{name}-{rate}.wav"
    # -D: no dither, so the same text gives the same samples in every run (sox dithers randomly).
    subprocess.run(["sox", "-D", str(src), "-r", str(rate), "-c", "1", "-b", "16", str(out)], check=True)
    return out


@dataclass(frozen=True)
class Stream:
    path: Path
    rate: int
    pcm: bytes
    texts: tuple[str, ...]
    utterances: tuple[tuple[float, float], ...]  # (start, end) seconds of each sentence

    def clips(self, pad_s: float = 0.3) -> list[np.ndarray]:
        """Each sentence cut out as float32 samples, with ``pad_s`` of its silence on both sides."""
        audio = (np.frombuffer(self.pcm, np.int16) / 32768).astype(np.float32)
        rate = self.rate
        return [audio[max(0, int((a - pad_s) * rate)) : int((b + pad_s) * rate)] for a, b in self.utterances]


class Speech:
    """espeak-ng sentences separated by silence, at any rate; built once per test run."""

    GAP_S = 1.2

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._clips = [espeak(text, workdir / f"s{i}.wav") for i, text in enumerate(SENTENCES)]
        self._cache: dict[tuple[int, tuple[int, ...]], Stream] = {}

    def stream(self, rate: int, which: tuple[int, ...] = SHORT) -> Stream:
        key = (rate, which)
        if key not in self._cache:
            gap = np.zeros(int(self.GAP_S * ESPEAK_RATE), np.int16)
            parts, utterances, t = [gap], [], self.GAP_S
            for i in which:
                clip = self._clips[i]
                utterances.append((t, t + len(clip) / ESPEAK_RATE))
                t += len(clip) / ESPEAK_RATE + self.GAP_S
                parts += [clip, gap]
            name = "stream-" + "-".join(map(str, which))
            path = to_rate(np.concatenate(parts), rate, self.workdir, name)
            pcm = sf.read(path, dtype="int16")[0].tobytes()
            self._cache[key] = Stream(path, rate, pcm, tuple(SENTENCES[i] for i in which), tuple(utterances))
        return self._cache[key]


# --- word error rate ------------------------------------------------------------


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("-", " ")).split()


def wer(reference: str, hypothesis: str) -> float:
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / max(1, len(ref))


# --- processes --------------------------------------------------------------------


class Proc:
    """A real child process with its output in a log file."""

    def __init__(self, name: str, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **(env or {})}
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()
        return self.popen.returncode


def start_ingest(redis_url: str, workdir: Path, default_model: str, *extra: str) -> tuple[str, Proc]:
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "services.ingest",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--metrics-port",
        "0",
    ]
    args += ["--redis-url", redis_url, "--default-model", default_model, *extra]
    proc = Proc("ingest", args, workdir / f"ingest-{port}.log")
    wait_until(lambda: port_open(port) or proc.popen.poll() is not None, 20, "ingest to listen")
    assert proc.popen.poll() is None, proc.log
    return f"ws://127.0.0.1:{port}", proc


def run_client(
    uri: str, wav: Path, *extra: str, timeout: float = 240
) -> tuple[int, list[dict[str, Any]], str]:
    """Run the real file client with --json; return (exit code, events, stderr)."""
    args = [sys.executable, str(ROOT / "clients" / "client_file.py"), "--uri", uri, "--wav-path", str(wav)]
    done = subprocess.run([*args, "--json", *extra], capture_output=True, text=True, timeout=timeout)
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return done.returncode, events, done.stderr


def finals(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("type") == "final"]


# --- readiness and counters: what the services themselves signal (Redis, /metrics), never their log text


def alive(redis_url: str, name: str) -> bool:
    """Some transcriber serves the finals of pool ``name`` (the ingest admits sessions for it)."""
    with redis.Redis.from_url(redis_url) as client:
        return bool(client.exists(keys.alive_key(name)))


def serving(redis_url: str, pool: str, role: str | None = None) -> int:
    """How many transcribers serve ``pool`` (in ``role``, if given): their readiness keys."""
    with redis.Redis.from_url(redis_url) as client:
        roles = [client.get(key) for key in client.scan_iter(match=keys.consumer_pattern(pool))]
    return sum(r is not None and role in (None, r.decode()) for r in roles)


def counter(port: int, name: str, **labels: str) -> float:
    """The sum of metric ``name``'s samples that carry ``labels``, scraped from ``/metrics`` at ``port``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def open_sessions(redis_url: str) -> int:
    """Sessions an ingest has open: each listens on its own result channel."""
    with redis.Redis.from_url(redis_url) as client:
        return len(client.pubsub_channels(keys.result_channel("*")))


def segments_queued(redis_url: str, pool: str) -> int:
    """Entries ever added to ``pool``'s segment stream (Redis 7's ``entries-added``)."""
    with redis.Redis.from_url(redis_url) as client:
        try:
            info: Any = client.xinfo_stream(keys.segment_stream(pool))
        except redis.ResponseError:  # no such stream yet
            return 0
    return int(info["entries-added"])


class LocalStack:
    """A private redis-server, N transcribers and one ingest, for tests that break things."""

    def __init__(self, workdir: Path, transcribers: int = 1, ingest_flags: tuple[str, ...] = (),
                 transcriber_flags: tuple[str, ...] = (), transcriber_env: dict[str, str] | None = None,
                 redis_port: int | None = None,
                 transcriber_module: str = "services.transcriber") -> None:  # fmt: skip
        self.workdir = workdir
        self.name = MODEL_DIR.name
        self.redis_port = redis_port or free_port()
        self.redis = self.start_redis()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.transcriber_module = transcriber_module  # tests.failpoint_transcriber injects faults
        self.transcribers = [
            self.start_transcriber(*transcriber_flags, env=transcriber_env) for _ in range(transcribers)
        ]
        self.uri, self.ingest = start_ingest(self.redis_url, workdir, self.name, *ingest_flags)
        if transcribers:
            wait_until(lambda: alive(self.redis_url, self.name), 120, "a transcriber to load whisper-base")

    def start_redis(self) -> Proc:
        args = ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", ""]
        proc = Proc("redis", [*args, "--appendonly", "no"], self.workdir / f"redis-{time.time_ns()}.log")
        wait_until(lambda: port_open(self.redis_port), 10, "redis-server")
        return proc

    def start_transcriber(self, *flags: str, env: dict[str, str] | None = None) -> Proc:
        args = [
            sys.executable,
            "-m",
            self.transcriber_module,
            "--model-id",
            str(MODEL_DIR),
            "--device",
            "cpu",
        ]
        args += ["--metrics-port", "0"]  # flags given later win: a test that scrapes passes a port
        log = self.workdir / f"transcriber-{time.time_ns()}.log"
        return Proc("transcriber", [*args, "--redis-url", self.redis_url, *flags], log, env)

    def stop(self) -> None:
        self.ingest.stop()
        for proc in self.transcribers:
            proc.stop()
        self.redis.stop()
