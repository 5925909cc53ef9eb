"""Real hosts, a real partition (issue 11, part 4): Redis, the ingest and two transcribers each in a
network namespace of their own, joined by veth pairs on a bridge. One transcriber's link is cut
while it holds a segment: the other reclaims it and every segment reaches the client once; the
link comes back, the cut-off transcriber rejoins, and its late publish of the reclaimed segment
makes no second final. The namespaces are created here and always deleted."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from services import keys
from services.stack import MODEL_DIR, POOL, Proc, free_port, redis_args, wait_until
from tests.helpers import finals, run_client
from tools.speech import Speech, wer

SUBNET = "10.99.0"
BRIDGE = "sttbr0"
HOSTS = {"redis": 1, "ingest": 2, "t1": 3, "t2": 4}
# A Docker engine on the machine sets iptables' FORWARD policy to DROP, and bridged frames pass
# through iptables: the hosts on our bridge could not reach each other. This lets them.
FORWARD_RULE = ("FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def network() -> Iterator[dict[str, str]]:
    """A namespace per host, each with eth0 at 10.99.0.N on the bridge; this process at .254."""
    remove_network()  # what a killed run may have left
    try:
        ip("link", "add", BRIDGE, "type", "bridge")
    except (subprocess.CalledProcessError, FileNotFoundError) as error:
        pytest.skip(f"network namespaces cannot be made here (not root, or no iproute2): {error}")
    try:
        if shutil.which("iptables"):
            subprocess.run(["iptables", "-I", *FORWARD_RULE], check=True, capture_output=True)
        ip("addr", "add", f"{SUBNET}.254/24", "dev", BRIDGE)
        ip("link", "set", BRIDGE, "up")
        for host, n in HOSTS.items():
            ns = f"stt-{host}"
            ip("netns", "add", ns)
            ip("link", "add", f"v-{host}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("link", "set", f"v-{host}", "master", BRIDGE, "up")
            ip("-n", ns, "addr", "add", f"{SUBNET}.{n}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield {host: f"{SUBNET}.{n}" for host, n in HOSTS.items()}
    finally:
        remove_network()


def remove_network() -> None:
    """Delete the namespaces, the veth pairs and the bridge (whatever of them exists)."""
    for host in HOSTS:
        subprocess.run(["ip", "link", "delete", f"v-{host}"], capture_output=True)
        subprocess.run(["ip", "netns", "delete", f"stt-{host}"], capture_output=True)
    subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True)
    if shutil.which("iptables"):
        subprocess.run(["iptables", "-D", *FORWARD_RULE], capture_output=True)


def inside(host: str, name: str, args: list[str], log: Path) -> Proc:
    return Proc(name, ["ip", "netns", "exec", f"stt-{host}", *args], log)


def pending_of(client: redis.Redis, proc: Proc) -> int:
    """Segments the transcriber ``proc`` holds (its consumer name carries its pid)."""
    summary: Any = client.xpending(keys.segment_stream(POOL), keys.GROUP)
    mine = f"{socket.gethostname()}-{proc.popen.pid}-"
    return sum(int(c["pending"]) for c in summary["consumers"] if c["name"].decode().startswith(mine))


def readiness_ttl(client: redis.Redis, proc: Proc) -> float:
    """Seconds left on transcriber ``proc``'s readiness key."""
    mine = f"{socket.gethostname()}-{proc.popen.pid}-"
    key = next(iter(client.scan_iter(match=keys.consumer_key(POOL, f"{mine}*"))), None)
    return 0.0 if key is None else float(client.pttl(key)) / 1000


def transcribers(client: redis.Redis, procs: dict[str, Proc]) -> int:
    """Transcribers serving now (their readiness keys); fails at once if a process died."""
    dead = next((proc for proc in procs.values() if proc.exited), None)
    if dead is not None:
        raise AssertionError(f"{dead.name} exited: {dead.log[-2000:]}")
    return len(list(client.scan_iter(match=keys.consumer_pattern(POOL))))


def test_a_cut_link_loses_nothing_and_duplicates_nothing(
    network: dict[str, str], speech: Speech, tmp_path: Path
) -> None:
    port = free_port()
    procs: dict[str, Proc] = {}
    try:
        args = [*redis_args(6379, tmp_path, bind=network["redis"]), "--protected-mode", "no"]
        procs["redis"] = inside("redis", "redis", args, tmp_path / "redis.log")
        url = f"redis://{network['redis']}:6379/0"
        client = redis.Redis(host=network["redis"], port=6379)
        wait_until(lambda: _pings(client), 20, "redis-server in its namespace")
        for name in ("t1", "t2"):
            args = [
                sys.executable,
                "-m",
                "services.transcriber",
                "--model-id",
                str(MODEL_DIR),
                "--device",
                "cpu",
            ]
            args += ["--redis-url", url, "--metrics-port", "0", "--claim-idle-ms", "2000", "--max-batch", "1"]
            procs[name] = inside(name, name, args, tmp_path / f"{name}.log")
        args = [sys.executable, "-m", "services.ingest", "--host", network["ingest"], "--port", str(port)]
        args += ["--redis-url", url, "--default-model", POOL, "--metrics-port", "0"]
        procs["ingest"] = inside("ingest", "ingest", args, tmp_path / "ingest.log")
        wait_until(
            lambda: transcribers(client, procs) == 2,
            180,
            "both transcribers",
        )
        stream = speech.stream(16000, (0, 1, 2, 3, 4))  # about 20 s at real-time pace
        live: dict[str, Any] = {}
        talker = threading.Thread(
            target=lambda: live.update(r=run_client(f"ws://{network['ingest']}:{port}", stream.path))
        )
        talker.start()
        # Whichever transcriber takes a segment first is cut off with it in hand (which one the
        # consumer group hands a segment to depends on which blocked read came first).
        cut_off = wait_until(
            lambda: next((n for n in ("t1", "t2") if pending_of(client, procs[n]) > 0), None),
            60,
            "a transcriber to hold a segment",
        )
        other = "t2" if cut_off == "t1" else "t1"
        ip("link", "set", f"v-{cut_off}", "down")
        cut = time.monotonic()
        wait_until(lambda: "reclaimed entry" in procs[other].log, 30, "the other to reclaim the segment")
        reclaim_s = time.monotonic() - cut
        # Back while the session still streams: the late publish of the one cut off.
        ip("link", "set", f"v-{cut_off}", "up")
        # Rejoined: it refreshes its readiness key again (10 s TTL, renewed every 2 s; it decayed
        # while the link was down).
        wait_until(lambda: readiness_ttl(client, procs[cut_off]) > 9.0, 30, "the one cut off to rejoin")
        talker.join(180)
    finally:
        for proc in reversed(procs.values()):
            proc.stop()
    code, events, stderr = live["r"]
    assert code == 0, stderr
    segments = [f["segment"] for f in finals(events)]
    assert segments == sorted(set(segments)), segments  # every segment once, in order
    assert wer(" ".join(stream.texts), " ".join(f["text"] for f in finals(events))) < 0.3
    print(f"partition: {other} reclaimed {cut_off}'s segment {reclaim_s:.1f} s after the cut", end="")
    print(" (--claim-idle-ms 2000)")


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
