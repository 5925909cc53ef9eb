"""``make run``: the whole stack on this machine, without Docker.

Starts a private ``redis-server`` on a free port (unless ``REDIS_URL`` is set),
``TRANSCRIBERS`` transcriber processes and one ingest, prints the WebSocket URL,
and stops every child on Ctrl-C / SIGTERM (or when any child dies). Children run
in their own sessions so that a terminal's Ctrl-C reaches only this process,
which then stops them in order: ingest, transcribers, Redis.

Environment: ``DEVICE`` (auto), ``BACKEND`` (auto: CTranslate2 int8 on a CPU, the
measured fastest there; transformers on a CUDA GPU), ``MODEL_ID`` (default
``models/whisper-base-ct2`` for CTranslate2, ``models/whisper-base`` for transformers;
a directory with a ``model.bin`` is CTranslate2's), ``PORT`` (8000), ``TRANSCRIBERS``
(default: on a CPU one per core, at most 8; on a GPU one), ``TORCH_THREADS`` (cores /
transcribers, at least 1),
``INTERIM_TRANSCRIBERS`` (1: partial results get their own transcriber at nice 19; 0: the
transcribers serve them between finals), ``REDIS_URL``; the services read the rest of
their settings from their own environment variables (see their ``--help``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from services.catalog import served_pool
from services.transcriber.config import cuda_available

STOP_GRACE_S = 15.0
# The ingest serves /metrics on 9100; transcriber n (from 0, interim ones last) on 9101 + n.
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
    interim_transcribers: int
    redis_url: str | None

    @classmethod
    def from_env(cls) -> StackConfig:
        device = os.environ.get("DEVICE", "auto")
        gpu = device == "cuda" or (device == "auto" and cuda_available("ctranslate2")[0])
        try:
            port = int(os.environ.get("PORT", "8000"))
            transcribers = int(os.environ.get("TRANSCRIBERS", str(default_transcribers(gpu))))
            interim_transcribers = int(os.environ.get("INTERIM_TRANSCRIBERS", "1"))
        except ValueError as exc:
            raise SystemExit(
                f"error: PORT, TRANSCRIBERS and INTERIM_TRANSCRIBERS must be integers ({exc})"
            ) from None
        if transcribers < 1 or interim_transcribers < 0:
            raise SystemExit("error: TRANSCRIBERS must be at least 1, INTERIM_TRANSCRIBERS at least 0")
        backend, model_id = pick_backend(
            os.environ.get("BACKEND", "auto"), gpu, os.environ.get("MODEL_ID") or None
        )
        return cls(
            model_id=model_id,
            backend=backend,
            device=device,
            port=port,
            transcribers=transcribers,
            interim_transcribers=interim_transcribers,
            redis_url=os.environ.get("REDIS_URL") or None,
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, name: str, child: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise SystemExit(f"error: {name} exited with code {child.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"error: nothing listens on port {port} after {timeout:.0f} s")


def start_redis() -> tuple[str, subprocess.Popen[bytes]]:
    if shutil.which("redis-server") is None:
        raise SystemExit("error: redis-server is not installed (deploy/install-system-deps.sh installs it)")
    port = free_port()
    child = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_for_port(port, "redis-server", child, 10)
    return f"redis://127.0.0.1:{port}/0", child


def stop_all(children: dict[str, subprocess.Popen[bytes]]) -> None:
    """Stop the services newest first (ingest, transcribers), then Redis: SIGTERM each,
    wait, SIGKILL whoever outlives the grace period."""
    for child in reversed(children.values()):
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def main() -> int:
    config = StackConfig.from_env()
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    children: dict[str, subprocess.Popen[bytes]] = {}
    python = sys.executable
    try:
        redis_url = config.redis_url
        if redis_url is None:
            redis_url, redis_child = start_redis()
            children["redis-server"] = redis_child
        env = {**os.environ, "REDIS_URL": redis_url}
        threads = max(1, (os.cpu_count() or 1) // config.transcribers)
        env.setdefault("TORCH_THREADS", str(threads))
        roles = ["finals" if config.interim_transcribers else "all"] * config.transcribers
        roles += ["interims"] * config.interim_transcribers
        for n, role in enumerate(roles):
            cmd = [
                python,
                "-m",
                "services.transcriber",
                "--model-id",
                config.model_id,
                "--device",
                config.device,
                "--backend",
                config.backend,
                "--metrics-port",
                str(TRANSCRIBER_METRICS_PORT + n),
                "--role",
                role,
            ]
            children[f"transcriber {n + 1} ({role})"] = subprocess.Popen(cmd, env=env, start_new_session=True)
        ingest_cmd = [
            python, "-m", "services.ingest", "--port", str(config.port),
            "--default-model", served_pool(config.model_id),
        ]  # fmt: skip
        children["ingest"] = subprocess.Popen(ingest_cmd, env=env, start_new_session=True)
        wait_for_port(config.port, "ingest", children["ingest"], 30)
        uri = f"ws://localhost:{config.port}"
        print(
            f"\n  Streaming speech-to-text at {uri}  "
            f"(model {served_pool(config.model_id)} on {config.backend}, "
            f"{config.transcribers} transcriber(s) + {config.interim_transcribers} for partials, "
            f"Redis {redis_url})\n"
            f"  Try: {python} clients/client_file.py --uri {uri} --wav-path audio.wav\n"
            "  Ctrl-C stops everything.\n",
            flush=True,
        )
        while not stopping:
            for name, child in children.items():
                if child.poll() is not None:
                    print(f"error: {name} exited with code {child.returncode}; stopping", file=sys.stderr)
                    return 1
            time.sleep(0.2)
        return 0
    finally:
        stop_all(children)


if __name__ == "__main__":
    sys.exit(main())
