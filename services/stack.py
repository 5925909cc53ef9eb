"""The one launcher: Redis, transcribers and ingests on this machine, without Docker.

``Stack`` starts them, knows they are ready by what they signal (the ingest's ``/healthz``,
each transcriber's readiness key in Redis) and stops them in order: ingests, transcribers,
Redis. ``make run`` (``main`` here), the tests (``tests.helpers.local_stack``) and the benches
all start their services through it.

``make run`` starts a private ``redis-server`` on a free port (unless ``REDIS_URL`` is set),
``TRANSCRIBERS`` transcriber processes and one ingest, prints the WebSocket URL once a
transcriber serves, and stops every child on Ctrl-C / SIGTERM (or when any child dies).
Children run in their own sessions so that a terminal's Ctrl-C reaches only this process.

Environment: ``DEVICE`` (auto), ``BACKEND`` (auto: CTranslate2 int8 on a CPU, the
measured fastest there; transformers on a CUDA GPU), ``MODEL_ID`` (default
``models/whisper-base-ct2`` for CTranslate2, ``models/whisper-base`` for transformers;
a directory with a ``model.bin`` is CTranslate2's), ``PORT`` (8000), ``TRANSCRIBERS``
(default: on a CPU one per core, at most 8; on a GPU one), ``TORCH_THREADS`` (cores /
transcribers, at least 1),
``PARTIAL_TRANSCRIBERS`` (1: partial results get their own transcriber at nice 19; 0: the
transcribers serve them between finals), ``REDIS_URL``, ``HOST`` (0.0.0.0); the services read the rest of
their settings from their own environment variables (see their ``--help``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import redis
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from services import keys
from services.catalog import served_pool
from services.transcriber.config import cuda_available

STOP_GRACE_S = 15.0
# The ingest serves /metrics on 9100; transcriber n (from 0, partial ones last) on 9101 + n.
TRANSCRIBER_METRICS_PORT = 9101


CT2_MODEL = "models/whisper-base-ct2"
TRANSFORMERS_MODEL = "models/whisper-base"


def pick_backend(backend: str, gpu: bool, model_id: str | None) -> tuple[str, str]:
    """``BACKEND=auto``: the backend (and default model) for this device and model."""
    if backend == "auto":
        if model_id is not None:
            backend = "ctranslate2" if os.path.isfile(os.path.join(model_id, "model.bin")) else "transformers"
        else:
            backend = "transformers" if gpu else "ctranslate2"
    if backend not in ("transformers", "ctranslate2"):
        raise SystemExit(f"error: BACKEND={backend!r} must be auto, transformers or ctranslate2")
    return backend, model_id or (CT2_MODEL if backend == "ctranslate2" else TRANSFORMERS_MODEL)


# bench/talkers.py on 2 cores: two 1-thread transcribers beat one 2-thread one, for one talker
# (p95 0.87 s against 1.10 s) and for twelve (p95 0.95 s against 1.06 s). So on a CPU one per
# core, each with one thread, up to 8 (more was not measured); on a GPU one, which batches.
MAX_CPU_TRANSCRIBERS = 8


def default_transcribers(gpu: bool) -> int:
    return 1 if gpu else max(1, min(os.cpu_count() or 1, MAX_CPU_TRANSCRIBERS))


@dataclass(frozen=True)
class StackConfig:
    model_id: str
    backend: str
    device: str
    port: int
    transcribers: int
    partial_transcribers: int
    redis_url: str | None

    @classmethod
    def from_env(cls) -> StackConfig:
        device = os.environ.get("DEVICE", "auto")
        gpu = device == "cuda" or (device == "auto" and cuda_available("ctranslate2")[0])
        try:
            port = int(os.environ.get("PORT", "8000"))
            transcribers = int(os.environ.get("TRANSCRIBERS", str(default_transcribers(gpu))))
            partial_transcribers = int(os.environ.get("PARTIAL_TRANSCRIBERS", "1"))
        except ValueError as exc:
            raise SystemExit(
                f"error: PORT, TRANSCRIBERS and PARTIAL_TRANSCRIBERS must be integers ({exc})"
            ) from None
        if transcribers < 1 or partial_transcribers < 0:
            raise SystemExit("error: TRANSCRIBERS must be at least 1, PARTIAL_TRANSCRIBERS at least 0")
        backend, model_id = pick_backend(
            os.environ.get("BACKEND", "auto"), gpu, os.environ.get("MODEL_ID") or None
        )
        return cls(
            model_id=model_id,
            backend=backend,
            device=device,
            port=port,
            transcribers=transcribers,
            partial_transcribers=partial_transcribers,
            redis_url=os.environ.get("REDIS_URL") or None,
        )


ROOT = Path(__file__).resolve().parent.parent
# whisper-base for transformers, on the CPU: what the tests and benches serve (Stack.base)
MODEL_DIR = ROOT / TRANSFORMERS_MODEL
POOL = MODEL_DIR.name
CT2_DIR = ROOT / CT2_MODEL  # the same weights for CTranslate2 (word timings, prompts)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def redis_args(port: int, workdir: Path, bind: str = "127.0.0.1") -> list[str]:
    """A ``redis-server`` without persistence that writes what it must (a replica's copy of its
    primary's data set) into ``workdir``, never into the directory it was started from."""
    return ["redis-server", "--port", str(port), "--bind", bind, "--save", "", "--appendonly", "no",
            "--dir", str(workdir)]  # fmt: skip


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def healthy(port: int, tls: bool = False) -> bool:
    """The ingest at ``port`` answers ``/healthz`` (it listens only once it can relay results);
    over TLS whatever its certificate (this checks readiness, not trust)."""
    scheme = "https" if tls else "http"
    unverified = ssl._create_unverified_context() if tls else None
    try:
        with urllib.request.urlopen(
            f"{scheme}://127.0.0.1:{port}/healthz", timeout=1, context=unverified
        ) as answer:
            return bool(answer.status == HTTPStatus.OK)
    except OSError:
        return False


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# --- readiness and state: what the services signal (Redis, /metrics), never their log text ---


def alive(redis_url: str, pool: str) -> bool:
    """Some transcriber serves the finals of ``pool`` (the ingest admits sessions for it)."""
    with redis.Redis.from_url(redis_url) as client:
        return bool(client.exists(keys.alive_key(pool)))


def serving(redis_url: str, pool: str, role: str | None = None) -> int:
    """How many transcribers serve ``pool`` (in ``role``, if given): their readiness keys."""
    with redis.Redis.from_url(redis_url) as client:
        roles = [client.get(key) for key in client.scan_iter(match=keys.consumer_pattern(pool))]
    return sum(r is not None and role in (None, r.decode()) for r in roles)


def samples(port: int) -> list[Sample]:
    """Every sample a service's ``/metrics`` at ``port`` shows now."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def counter(port: int, name: str, **labels: str) -> float:
    """The sum of metric ``name``'s samples that carry ``labels``, from ``/metrics`` at ``port``."""
    return sum(s.value for s in samples(port) if s.name == name and labels.items() <= s.labels.items())


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


# --- processes -----------------------------------------------------------------------------------------


class Proc:
    """A child process in its own session (a terminal's Ctrl-C reaches only the launcher), its
    output in a log file, or on the launcher's own when ``log`` is None."""

    def __init__(
        self, name: str, args: list[str], log: Path | None, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.log_path = log
        self._log = None if log is None else open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            args,
            stdout=self._log,
            stderr=None if log is None else subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )

    @property
    def log(self) -> str:
        return "" if self.log_path is None else self.log_path.read_text(errors="replace")

    @property
    def exited(self) -> bool:
        return self.popen.poll() is not None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_GRACE_S) -> int:
        """Signal it, wait up to ``timeout``, then SIGKILL; its exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if self._log is not None:
            self._log.close()
        return self.popen.returncode


def wait_started(proc: Proc, check: Callable[[], Any], timeout: float, what: str) -> None:
    """Wait for ``check``; fail at once, with the end of its log, if ``proc`` exits meanwhile."""
    wait_until(lambda: check() or proc.exited, timeout, what)
    if proc.exited:
        raise RuntimeError(f"{proc.name} exited with code {proc.popen.returncode}: {proc.log[-3000:]}")


def start_ingest(
    redis_url: str,
    default_model: str,
    *flags: str,
    logs: Path | None = None,
    port: int | None = None,
    host: str = "127.0.0.1",
    metrics_port: int | None = 0,
) -> tuple[str, Proc]:
    """An ingest, once its ``/healthz`` answers; its WebSocket URL. ``flags`` come last and win.
    ``metrics_port`` None leaves it to the ingest's own default (``METRICS_PORT``, 9100)."""
    port = port or free_port()
    args = [sys.executable, "-m", "services.ingest", "--host", host, "--port", str(port)]
    args += ["--redis-url", redis_url, "--default-model", default_model]
    args += [] if metrics_port is None else ["--metrics-port", str(metrics_port)]
    log = None if logs is None else logs / f"ingest-{port}.log"
    proc = Proc("ingest", [*args, *flags], log)
    tls = "--tls-cert" in flags
    wait_started(proc, lambda: healthy(port, tls), 60, "the ingest to listen")
    return f"{'wss' if tls else 'ws'}://127.0.0.1:{port}", proc


class Stack:
    """Redis, transcribers and ingests on this machine: ``make run`` (``main`` below), the tests
    (``tests.helpers.local_stack``) and the benches start them here. Ready by signal: the ingest's
    ``/healthz``, each transcriber's readiness key. ``stop`` goes in order: ingests,
    transcribers, Redis. ``logs``: a folder for each child's output (None: this process's own)."""

    def __init__(
        self, logs: Path | None = None, redis_url: str | None = None, redis_port: int | None = None
    ) -> None:
        self.logs = logs
        self._redis: Proc | None = None  # None: an external Redis (redis_url given)
        self._redis_dir: Path | None = None  # Redis's own folder when there are no logs
        self.transcribers: list[Proc] = []
        self.ingests: list[Proc] = []
        self.uris: list[str] = []  # each ingest's, in the order they started
        self.uri = ""  # the first ingest's
        if redis_url is None:
            self.redis_port = redis_port or free_port()
            redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
            self.start_redis()
        self.redis_url = redis_url

    @classmethod
    def base(
        cls,
        logs: Path,
        transcribers: int = 1,
        ingest_flags: tuple[str, ...] = (),
        transcriber_flags: tuple[str, ...] = (),
        transcriber_env: dict[str, str] | None = None,
        redis_port: int | None = None,
        transcriber_module: str = "services.transcriber",
    ) -> Stack:
        """A private redis-server, ``transcribers`` whisper-base transcribers on the CPU and one
        ingest, ready to serve: what the tests and benches run against."""
        stack = cls(logs, redis_port=redis_port)
        try:
            for _ in range(transcribers):
                stack.start_base_transcriber(
                    *transcriber_flags, env=transcriber_env, module=transcriber_module
                )
            stack.start_ingest(POOL, *ingest_flags)
            if transcribers:
                stack.wait_serving(POOL)
        except BaseException:
            stack.stop()
            raise
        return stack

    def start_base_transcriber(self, *flags: str, **options: Any) -> Proc:
        """One more whisper-base transcriber on the CPU (not waited for)."""
        return self.start_transcriber(str(MODEL_DIR), "--device", "cpu", *flags, **options)

    def _log(self, name: str) -> Path | None:
        return None if self.logs is None else self.logs / f"{name}-{time.time_ns()}.log"

    def start_redis(self) -> Proc:
        """A private redis-server, no persistence (again on the same port after a test stopped it)."""
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (deploy/install-system-deps.sh installs it)")
        if self.logs is None and self._redis_dir is None:
            self._redis_dir = Path(tempfile.mkdtemp(prefix="stt-redis-"))  # removed by stop()
        workdir = self.logs or self._redis_dir
        assert workdir is not None
        # Its start-up banner is noise on make run's terminal.
        log = Path(os.devnull) if self.logs is None else self._log("redis")
        proc = Proc("redis-server", redis_args(self.redis_port, workdir), log)
        wait_started(proc, lambda: port_open(self.redis_port), 10, "redis-server")
        self._redis = proc
        return proc

    @property
    def redis(self) -> Proc:
        if self._redis is None:
            raise RuntimeError("this stack uses an external Redis")
        return self._redis

    def start_transcriber(
        self,
        model_id: str,
        *flags: str,
        env: dict[str, str] | None = None,
        module: str = "services.transcriber",
        metrics_port: int | None = 0,
    ) -> Proc:
        """A transcriber (``module``: tests.failpoint_transcriber injects faults); not waited for:
        see ``wait_serving``. ``flags`` come last and win."""
        args = [sys.executable, "-m", module, "--model-id", model_id, "--redis-url", self.redis_url]
        args += [] if metrics_port is None else ["--metrics-port", str(metrics_port)]
        proc = Proc(
            f"transcriber {len(self.transcribers) + 1}", [*args, *flags], self._log("transcriber"), env
        )
        self.transcribers.append(proc)
        return proc

    def start_ingest(self, default_model: str, *flags: str, **options: Any) -> tuple[str, Proc]:
        uri, proc = start_ingest(self.redis_url, default_model, *flags, logs=self.logs, **options)
        self.ingests.append(proc)
        self.uris.append(uri)
        self.uri = self.uri or uri
        return uri, proc

    @property
    def ingest(self) -> Proc:
        return self.ingests[0]

    def wait_serving(self, pool: str, count: int = 1, role: str | None = None, timeout: float = 180) -> None:
        """Until ``count`` transcribers serve ``pool`` (in ``role``); fails at once if every
        transcriber has exited (a model that does not load)."""

        def ready() -> bool:
            if all(proc.exited for proc in self.transcribers):
                logs = "\n".join(proc.log[-2000:] for proc in self.transcribers)
                raise RuntimeError(f"every transcriber exited: {logs}")
            return serving(self.redis_url, pool, role) >= count

        wait_until(ready, timeout, f"{count} transcriber(s) to serve {pool}")

    def dead(self) -> Proc | None:
        """A child that has exited."""
        return next((proc for proc in self.children() if proc.exited), None)

    def children(self) -> list[Proc]:
        return [*([] if self._redis is None else [self._redis]), *self.transcribers, *self.ingests]

    def stop(self) -> None:
        for proc in reversed(self.children()):
            proc.stop()
        if self._redis_dir is not None:
            shutil.rmtree(self._redis_dir, ignore_errors=True)


def main() -> int:
    config = StackConfig.from_env()
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    stack: Stack | None = None
    pool = served_pool(config.model_id)
    try:
        stack = Stack(redis_url=config.redis_url)
        threads = max(1, (os.cpu_count() or 1) // config.transcribers)
        env = {"TORCH_THREADS": os.environ.get("TORCH_THREADS", str(threads))}
        finals_role = "finals" if config.partial_transcribers else "all"
        roles = [finals_role] * config.transcribers
        roles += ["partials"] * config.partial_transcribers
        for n, role in enumerate(roles):
            flags = ["--device", config.device, "--backend", config.backend, "--role", role]
            stack.start_transcriber(
                config.model_id, *flags, env=env, metrics_port=TRANSCRIBER_METRICS_PORT + n
            )
        stack.start_ingest(pool, port=config.port, host=os.environ.get("HOST", "0.0.0.0"), metrics_port=None)
        print(f"  Loading {pool} on {config.backend} ...", flush=True)
        uri, ready = f"ws://localhost:{config.port}", False
        while not stopping:
            dead = stack.dead()
            if dead is not None:
                code = dead.popen.returncode
                print(f"error: {dead.name} exited with code {code}; stopping", file=sys.stderr)
                return 1
            if not ready and serving(stack.redis_url, pool, finals_role):
                ready = True
                print(
                    f"\n  Streaming speech-to-text at {uri}  "
                    f"(model {pool} on {config.backend}, "
                    f"{config.transcribers} transcriber(s) + {config.partial_transcribers} for partials, "
                    f"Redis {stack.redis_url})\n"
                    f"  Try: {sys.executable} clients/client_file.py --uri {uri} --wav-path audio.wav\n"
                    "  Ctrl-C stops everything.\n",
                    flush=True,
                )
            time.sleep(0.2)
        return 0
    except (RuntimeError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if stack is not None:
            stack.stop()


if __name__ == "__main__":
    sys.exit(main())
