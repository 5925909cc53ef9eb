"""The working tree is the repository's, not the test run's: nothing a run writes is tracked, and
the Redis servers the tests start (replicas included, which save their primary's data set to
disk) write only into their own folders."""

from __future__ import annotations

import fnmatch
import subprocess
from pathlib import Path

from services.stack import ROOT, wait_until
from tools.sentinels import Topology

RUN_OUTPUT = ("*.rdb", "*.aof", "*.log", "*.pyc", ".coverage")


def test_no_file_a_run_writes_is_tracked() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    names = tracked.stdout.split()
    written = [name for name in names if any(fnmatch.fnmatch(Path(name).name, p) for p in RUN_OUTPUT)]
    assert not written, f"files a run writes are tracked: {written}"


def test_replicated_redis_writes_nothing_into_the_working_tree(tmp_path: Path) -> None:
    before = {entry.name for entry in ROOT.iterdir()}
    topology = Topology(tmp_path)
    try:
        # Both replicas finished their full sync: each wrote its copy of the primary's data set.
        wait_until(lambda: len(list(tmp_path.glob("replica-*/dump.rdb"))) == 2, 20, "the replicas' syncs")
    finally:
        topology.stop()
    assert {entry.name for entry in ROOT.iterdir()} == before
