"""Real redis-server and Sentinel processes (on 127.0.0.1 and ::1) against the two things that
meet them: the URL forms of services/redis_url.py (IPv6 Sentinels, ACL users, Sentinels with a
password, TLS to Sentinels and servers) and the Helm chart's start scripts
(deploy/helm/stt/files/redis, run here as they are shipped) with the URL the chart renders. Each
test names the review defect it catches."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from services.lifecycle import connect_redis
from services.redis_url import client, parse_sentinel
from services.stack import ROOT, Proc, free_port, port_open, wait_until
from tests.test_helm import keda_auth, render_with, script_settings, secret

SCRIPTS = ROOT / "deploy" / "helm" / "stt" / "files" / "redis"
SERVICE = "stt"


class Procs:
    """Processes a test starts, all SIGKILLed at its end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: dict[str, Proc] = {}

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        self.procs[name] = Proc(name, args, self.workdir / f"{name}.log", env)
        return self.procs[name]

    def server(self, name: str, port: int, *extra: str) -> Proc:
        folder = self.workdir / name
        folder.mkdir(exist_ok=True)
        args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
        return self.start(name, [*args, "--save", "", "--appendonly", "no", *extra])

    def sentinel(self, name: str, port: int, primary: int, *lines: str, bind: str = "127.0.0.1") -> Proc:
        conf = self.workdir / f"{name}.conf"
        monitor = f"sentinel monitor {SERVICE} 127.0.0.1 {primary} 1"
        conf.write_text("\n".join([f"port {port}", f"bind {bind}", monitor, *lines]) + "\n")
        return self.start(name, ["redis-server", str(conf), "--sentinel"])

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop(signal.SIGKILL)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    started = Procs(tmp_path)
    yield started
    started.stop()


def roundtrip(url: str) -> str:
    """SET and GET through ``client(url)``; the ACL user the server saw."""

    async def run() -> str:
        connection = client(url)
        try:
            await connection.set("k", "v")
            assert await connection.get("k") == b"v"
            who = await connection.acl_whoami()
            return who.decode() if isinstance(who, bytes) else str(who)
        finally:
            await connection.aclose()

    return asyncio.run(run())


def listening(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=0.2).close()
        return True
    except OSError:
        return False


def test_an_ipv6_sentinel_is_reached_without_its_brackets(procs: Procs) -> None:
    """Defect 8: ``[::1]:26379`` kept its brackets as the host name."""
    primary, sentinel = free_port(), free_port()
    procs.server("primary", primary)
    procs.sentinel("sentinel", sentinel, primary, bind="::1")
    wait_until(lambda: port_open(primary) and listening(sentinel, "::1"), 20, "Redis and a Sentinel on ::1")
    parsed = parse_sentinel(f"redis+sentinel://[::1]:{sentinel}/{SERVICE}")
    assert parsed is not None and parsed.hosts == (("::1", sentinel),)
    assert roundtrip(f"redis+sentinel://[::1]:{sentinel}/{SERVICE}/0") == "default"


def test_an_acl_user_is_sent_with_its_password(procs: Procs) -> None:
    """Defect 8: the username was dropped, so the password was tried against ``default``."""
    primary, sentinel = free_port(), free_port()
    procs.server("primary", primary, "--requirepass", "default-pw")
    wait_until(lambda: port_open(primary), 20, "Redis")
    with redis.Redis(port=primary, password="default-pw") as admin:
        admin.execute_command("ACL", "SETUSER", "app", "on", ">app:p@ss", "~*", "&*", "+@all")
    procs.sentinel("sentinel", sentinel, primary, f"sentinel auth-pass {SERVICE} default-pw")
    wait_until(lambda: port_open(sentinel), 20, "the Sentinel")
    assert roundtrip(f"redis+sentinel://app:app%3Ap%40ss@127.0.0.1:{sentinel}/{SERVICE}") == "app"
    with pytest.raises(redis.AuthenticationError):  # the same password as default's is refused
        roundtrip(f"redis+sentinel://:app%3Ap%40ss@127.0.0.1:{sentinel}/{SERVICE}")


def test_a_sentinel_password_is_sent_when_given_and_only_then(procs: Procs) -> None:
    """Defect 8 (and what each side of defect 6 does): a Sentinel with requirepass refuses a client
    without it; one without a password refuses a client that sends one."""
    primary, guarded, open_sentinel = free_port(), free_port(), free_port()
    procs.server("primary", primary)
    procs.sentinel("guarded", guarded, primary, 'requirepass "s3nt pw"')
    procs.sentinel("open", open_sentinel, primary)
    wait_until(lambda: all(map(port_open, (primary, guarded, open_sentinel))), 20, "Redis and two Sentinels")
    assert roundtrip(f"redis+sentinel://127.0.0.1:{guarded}/{SERVICE}?sentinel_password=s3nt+pw") == "default"
    with pytest.raises(redis.ConnectionError):  # NOAUTH from the Sentinel: no primary found
        roundtrip(f"redis+sentinel://127.0.0.1:{guarded}/{SERVICE}")
    with redis.Redis(port=open_sentinel) as sentinel, pytest.raises(redis.AuthenticationError) as refused:
        sentinel.execute_command("AUTH", "s3nt pw")
    assert "without any password configured" in str(refused.value)


def make_certificate(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "redis.crt", folder / "redis.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", str(key),
         "-out", str(cert), "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def test_tls_reaches_the_sentinels_and_the_servers(procs: Procs, tmp_path: Path) -> None:
    """Defect 8: no TLS to Sentinels (and no TLS Sentinel URL at all): ``rediss+sentinel://``."""
    cert, key = make_certificate(tmp_path)
    files = ["--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert)]
    primary, sentinel = free_port(), free_port()
    procs.server("primary", 0, "--tls-port", str(primary), *files, "--tls-auth-clients", "no")
    procs.sentinel(
        "sentinel", 0, primary, f"tls-port {sentinel}", f"tls-cert-file {cert}", f"tls-key-file {key}",
        f"tls-ca-cert-file {cert}", "tls-auth-clients no", "tls-replication yes",
    )  # fmt: skip
    wait_until(lambda: port_open(primary) and port_open(sentinel), 20, "TLS Redis and Sentinel")
    assert roundtrip(f"rediss+sentinel://127.0.0.1:{sentinel}/{SERVICE}?ssl_ca_certs={cert}") == "default"
    with pytest.raises(redis.ConnectionError):  # plain text to a TLS Sentinel
        roundtrip(f"redis+sentinel://127.0.0.1:{sentinel}/{SERVICE}")


def test_malformed_sentinel_urls_are_refused_without_their_secrets() -> None:
    for bad in (
        "redis+sentinel://:hunter2@h/stt",
        "redis+sentinel://:hunter2@h:1/stt?bogus=1",
        "redis+sentinel://:hunter2@h:1/stt?ssl_ca_certs=/ca.pem",
        "rediss+sentinel://:hunter2@h:1/stt?ssl_cert_reqs=maybe",
        "redis+sentinel://:hunter2@[::1/stt",
    ):
        with pytest.raises(ValueError) as refused:
            parse_sentinel(bad)
        assert "hunter2" not in str(refused.value)


# --- the chart's start scripts (defects 5 and 6), with the settings templates/redis.yaml gives ---


class Bundled:
    """deploy/helm/stt/files/redis/start-redis.sh as pods rel-redis-N and start-sentinel.sh as
    Sentinels, on loopback ports, every instance known by the host name ``localhost`` as each is
    by its DNS name in a cluster."""

    def __init__(self, procs: Procs, password: str, pods: int = 3, sentinels: int = 3) -> None:
        self.procs = procs
        self.password = password
        self.ports = [free_port() for _ in range(pods)]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.down_after_ms = 3000

    def redis_env(self, n: int) -> dict[str, str]:
        return {
            "POD_NAME": f"rel-redis-{n}",
            "SELF_HOST": "localhost",
            "REDIS_PORT": str(self.ports[n]),
            "FIRST_PRIMARY": f"localhost {self.ports[0]}",
            "SENTINELS": " ".join(f"localhost:{p}" for p in self.sentinel_ports),
            "SENTINEL_MASTER": SERVICE,
            "DATA_DIR": str(self.data(n)),
            "FAILOVER_WAIT_S": "30",
            "REDIS_PASSWORD": self.password,
            "BIND": "127.0.0.1",
        }

    def sentinel_env(self, n: int) -> dict[str, str]:
        conf = self.procs.workdir / f"sentinel-{n}"
        conf.mkdir(exist_ok=True)
        return {
            "SELF_HOST": "localhost",
            "SENTINEL_PORT": str(self.sentinel_ports[n]),
            "SENTINELS": " ".join(f"localhost:{p}" for p in self.sentinel_ports),
            "SENTINEL_MASTER": SERVICE,
            "QUORUM": str(len(self.sentinel_ports) // 2 + 1),
            "FIRST_PRIMARY": f"localhost {self.ports[0]}",
            "DOWN_AFTER_MS": str(self.down_after_ms),
            "FAILOVER_TIMEOUT_MS": "5000",
            "REDIS_PASSWORD": self.password,
            "CONF_DIR": str(conf),
            "BIND": "127.0.0.1",
        }

    def data(self, n: int) -> Path:
        folder = self.procs.workdir / f"redis-{n}"
        folder.mkdir(exist_ok=True)
        return folder

    def start_redis(self, n: int) -> Proc:
        return self.procs.start(f"redis-{n}", ["sh", str(SCRIPTS / "start-redis.sh")], self.redis_env(n))

    def start_sentinel(self, n: int) -> Proc:
        name = f"sentinel-{n}"
        return self.procs.start(name, ["sh", str(SCRIPTS / "start-sentinel.sh")], self.sentinel_env(n))

    def start(self) -> None:
        for n in range(len(self.sentinel_ports)):
            self.start_sentinel(n)
        for n in range(len(self.ports)):
            self.start_redis(n)
        every = [*self.ports, *self.sentinel_ports]
        wait_until(lambda: all(map(port_open, every)), 20, "Redis and Sentinels")

    def server(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, password=self.password or None, socket_timeout=2)

    def sentinel(self, n: int = 0) -> redis.Redis:
        return redis.Redis(port=self.sentinel_ports[n], password=self.password or None, socket_timeout=2)

    def primary(self) -> tuple[str, int, int]:
        """(host, port, config epoch) of the primary as Sentinel 0 sees it."""
        with self.sentinel() as sentinel:
            state = sentinel.sentinel_master(SERVICE)
        return state["ip"], int(state["port"]), int(state["config-epoch"])

    def replicas_up(self) -> int:
        with self.sentinel() as sentinel:
            replicas = sentinel.sentinel_slaves(SERVICE)
        return sum(1 for r in replicas if not r["is_sdown"] and not r["is_disconnected"])

    def role(self, port: int) -> str:
        try:
            with self.server(port) as server:
                return str(server.info("replication")["role"])
        except (redis.ConnectionError, redis.ResponseError):
            return ""

    def length(self, port: int, stream: str) -> int | None:
        """XLEN of ``stream`` on the instance at ``port``; None while it cannot answer."""
        try:
            with self.server(port) as server:
                return int(server.xlen(stream))
        except (redis.ConnectionError, redis.ResponseError, redis.TimeoutError):
            return None


def test_the_harness_gives_the_scripts_every_setting_they_read(tmp_path: Path) -> None:
    """The scripts run here with the settings templates/redis.yaml renders (test_helm.py checks
    that side), plus BIND to keep them on loopback."""
    bundled = Bundled(Procs(tmp_path), "")
    assert set(bundled.redis_env(0)) == script_settings("start-redis.sh")
    assert set(bundled.sentinel_env(0)) == script_settings("start-sentinel.sh")


def test_a_primary_restarted_empty_empties_its_replicas_under_the_old_start(procs: Procs) -> None:
    """The hazard of defect 5, as the chart started Redis before (pod 0 always the primary, no
    persistence): pod 0 restarted by its kubelet comes back empty and its replicas copy that."""
    ports = [free_port() for _ in range(3)]
    old_start = ["--appendonly", "no", "--repl-diskless-sync-delay", "0"]
    procs.server("redis-0", ports[0], *old_start)
    for n in (1, 2):
        procs.server(f"redis-{n}", ports[n], *old_start, "--replicaof", "127.0.0.1", str(ports[0]))
    wait_until(lambda: all(map(port_open, ports)), 20, "Redis")
    with redis.Redis(port=ports[0]) as primary:
        for i in range(100):
            primary.xadd("stt:segments:swift", {"n": i})
        assert primary.wait(2, 5000) == 2
    procs.procs["redis-0"].stop(signal.SIGKILL)
    procs.server("redis-0", ports[0], *old_start)  # the container restarted, at once
    wait_until(
        lambda: all(redis.Redis(port=p).xlen("stt:segments:swift") == 0 for p in ports[1:]),
        30,
        "the replicas to copy the empty data set",
    )


def never_below(
    samples: Callable[[], list[int | None]], floor: int, until: Callable[[], Any], timeout: float
) -> Any:
    """Sample every 50 ms until ``until()`` is truthy: every answered sample is at least ``floor``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for value in samples():
            assert value is None or value >= floor, f"a replica's stream fell to {value} (from {floor})"
        done = until()
        if done:
            return done
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout:.0f} s")


def test_the_chart_never_starts_an_empty_primary_over_a_live_one(procs: Procs) -> None:
    """Defect 5: the same restarts through the chart's start-redis.sh and start-sentinel.sh, with
    three Sentinels. Restarted with its append-only file, pod 0 is the primary again and has every
    entry; restarted without it (a lost volume), it waits while the Sentinels promote a replica,
    then starts as that one's replica: no replica ever loses an entry."""
    bundled = Bundled(procs, password='p@ss "w\\rd" $x')
    bundled.start()
    first = bundled.ports[0]
    wait_until(lambda: bundled.replicas_up() == 2, 30, "the Sentinels to see both replicas")
    with bundled.sentinel() as sentinel:
        wait_until(lambda: int(sentinel.sentinel_master(SERVICE)["num-other-sentinels"]) == 2, 30, "peers")
    assert bundled.primary() == ("localhost", first, 0)
    with bundled.sentinel() as sentinel:
        assert {r["ip"] for r in sentinel.sentinel_slaves(SERVICE)} == {"localhost"}  # announced names
    stream, entries = "stt:segments:swift", 200
    with bundled.server(first) as primary:
        for i in range(entries):
            primary.xadd(stream, {"n": i})
        assert primary.wait(2, 15000) == 2

    # A container restart, faster than down-after, with the append-only file kept.
    procs.procs["redis-0"].stop(signal.SIGKILL)
    bundled.start_redis(0)
    wait_until(lambda: bundled.role(first) == "master", 20, "pod 0 back as the primary")
    wait_until(lambda: all(bundled.length(p, stream) == entries for p in bundled.ports), 30, "every copy")
    assert bundled.primary() == ("localhost", first, 0)  # no failover was needed

    # The same restart after its data was lost.
    procs.procs["redis-0"].stop(signal.SIGKILL)
    shutil.rmtree(bundled.data(0))
    bundled.start_redis(0)
    replicas = bundled.ports[1:]
    _, promoted, epoch = never_below(
        lambda: [bundled.length(p, stream) for p in replicas],
        entries,
        lambda: bundled.primary() if bundled.primary()[1] != first else None,
        40,
    )
    assert promoted in replicas and epoch > 0
    never_below(
        lambda: [bundled.length(p, stream) for p in replicas],
        entries,
        lambda: bundled.role(first) == "slave" and bundled.length(first, stream) == entries,
        30,
    )
    assert "waiting up to 30 s" in procs.procs["redis-0"].log
    with bundled.server(promoted) as primary:
        assert primary.xlen(stream) == entries


def test_the_bundled_sentinels_require_the_password_keda_and_the_services_send(procs: Procs) -> None:
    """Defect 6: KEDA sent sentinelPassword to Sentinels without one. Now start-sentinel.sh gives
    them requirepass; the chart's URL (here with loopback hosts) and KEDA send it."""
    password = "s3nt:p@ss w/rd"
    bundled = Bundled(procs, password, pods=1, sentinels=1)
    bundled.start()
    with redis.Redis(port=bundled.sentinel_ports[0]) as anonymous, pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    assert bundled.primary()[:2] == ("localhost", bundled.ports[0])
    one_of_each = {"replicas": 0, "sentinel": {"enabled": True, "count": 1}}
    docs = render_with({"redis": {"password": password, "bundled": one_of_each}})
    assert keda_auth(docs)["sentinelPassword"] == password
    url = secret(docs)["REDIS_URL"].replace(
        "rel-sentinel-0.rel-sentinel-headless:26379", f"localhost:{bundled.sentinel_ports[0]}"
    )
    assert roundtrip(url) == "default"


def test_an_unreachable_redis_is_reported_without_its_password() -> None:
    """Same class as defect 8, found by looking: the start-up error named the URL whole."""

    async def attempt() -> str:
        try:
            await connect_redis(f"redis://:s3cr3t@127.0.0.1:{free_port()}/0", asyncio.Event(), max_wait=0.2)
        except redis.ConnectionError as error:
            return str(error)
        return "connected"

    message = asyncio.run(attempt())
    assert "unreachable" in message and "s3cr3t" not in message
