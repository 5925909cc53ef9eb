"""A Redis primary, two replicas and three Sentinels on loopback, for the tests and benches of
failover: real ``redis-server`` processes (Sentinels in ``--sentinel`` mode), on free ports."""

from __future__ import annotations

import signal
from pathlib import Path

import redis

from services.stack import Proc, free_port, port_open, redis_args, wait_until

SERVICE = "stt"


class Topology:
    """redis-server primary + two replicas + three Sentinels watching them, on free ports."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.primary_port = free_port()
        self.procs: dict[str, Proc] = {}
        self.servers = {"primary": self.primary_port, "replica-1": free_port(), "replica-2": free_port()}
        for name, port in self.servers.items():
            (workdir / name).mkdir(exist_ok=True)
            args = redis_args(port, workdir / name)
            if name != "primary":
                args += ["--replicaof", "127.0.0.1", str(self.primary_port)]
            self.procs[name] = Proc(name, args, workdir / f"{name}.log")
        self.sentinel_ports = [free_port() for _ in range(3)]
        for n, port in enumerate(self.sentinel_ports):
            conf = workdir / f"sentinel-{n}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary_port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 5000\n"
            )
            self.procs[f"sentinel-{n}"] = Proc(
                f"sentinel-{n}", ["redis-server", str(conf), "--sentinel"], workdir / f"sentinel-{n}.log"
            )
        wait_until(
            lambda: all(port_open(p) for p in [*self.servers.values(), *self.sentinel_ports]),
            20,
            "Redis and Sentinels",
        )
        wait_until(lambda: self.replicas_known() == 2, 30, "the Sentinels to see both replicas")
        self.url = (
            "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports) + f"/{SERVICE}/0"
        )

    def sentinel(self) -> redis.Redis:
        return redis.Redis(port=self.sentinel_ports[0])

    def replicas_known(self) -> int:
        with self.sentinel() as client:
            return len(client.sentinel_slaves(SERVICE))

    def primary(self) -> int:
        with self.sentinel() as client:
            _, port = client.sentinel_get_master_addr_by_name(SERVICE)
        return int(port)

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop(signal.SIGKILL)
