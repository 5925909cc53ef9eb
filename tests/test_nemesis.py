"""A short nemesis in the suite: bench/nemesis.py's machinery against the Compose stack in real
containers (docker-compose.yml + docker-compose.test.yml) for about a minute, every kind of fault
at least once; and its checks, shown to catch what they are meant to catch on made-up sessions.

The live run needs the Docker engine (installed and started as root when missing, as in
tests/test_compose.py: never skipped) and `make offline-model`; it takes about two minutes.
"""

from __future__ import annotations

import json
from typing import Any

from bench import nemesis
from bench.nemesis import KINDS, SENTENCES, Plan, Session
from services.stack import ROOT

TEXTS = (SENTENCES[0], SENTENCES[1])


def session(finals: list[tuple[int, str]], code: int = 0, stderr: str = "", start: float = 10) -> Session:
    """A made-up session of TEXTS that got ``finals`` (segment, text) and ended with ``code``."""
    events: list[dict[str, Any]] = [{"type": "ready"}]
    events += [{"type": "final", "segment": n, "text": text} for n, text in finals]
    return Session(0, TEXTS, started=start, ended=start + 20, code=code, events=events, stderr=stderr)


ANSWERED = [(0, SENTENCES[0]), (1, SENTENCES[1])]
INGEST_KILL = {"kind": "kill_ingest", "start": 15.0, "end": 18.0}


def test_a_fully_answered_session_is_complete() -> None:
    report = nemesis.check([session(ANSWERED)], [])
    assert report["outcomes"] == {"complete": 1}
    assert (report["duplicated"], report["lost_in_complete_exits"], report["foreign_finals"]) == (0, 0, 0)


def test_a_final_missing_from_a_normal_ending_is_lost_and_unclear() -> None:
    report = nemesis.check([session(ANSWERED[:1])], [])
    assert (report["unclear"], report["lost_in_complete_exits"]) == (1, 1)


def test_a_final_answered_twice_or_out_of_order_is_caught() -> None:
    twice = nemesis.check([session([*ANSWERED, ANSWERED[1]])], [])
    assert twice["duplicated"] == 1 and twice["unclear"] == 1
    swapped = nemesis.check([session(ANSWERED[::-1])], [])
    assert swapped["unclear"] == 1 and "out of order" in swapped["problems"][0]


def test_another_sessions_text_is_foreign() -> None:
    report = nemesis.check([session([(0, SENTENCES[0]), (1, SENTENCES[5])])], [])
    assert report["foreign_finals"] == 1


def test_a_lost_connection_is_clear_only_while_the_ingest_was_killed() -> None:
    cut = session(ANSWERED[:1], code=1, stderr="connection lost: closed without a close frame")
    assert nemesis.check([cut], [INGEST_KILL])["outcomes"] == {"cut_or_unserved_by_ingest_kill": 1}
    assert nemesis.check([cut], [])["unclear"] == 1
    refused = session([], code=1, stderr="server refused the connection: HTTP 503")
    assert nemesis.check([refused], [])["outcomes"] == {"clear_error": 1}


def test_what_is_left_in_redis_is_named() -> None:
    service_keys = {"stt:alive:swift": "string", "stt:segments:swift": "stream"}
    clean: dict[str, Any] = {
        "keys": service_keys,
        "length": {"stt:segments:swift": 0},
        "pending": {"stt:segments:swift": 0},
        "result_channels": [],
    }
    assert nemesis.left_behind(clean) == []
    dirty = {
        "keys": {**service_keys, "stt:dead:swift": "stream"},
        "length": {"stt:segments:swift": 2, "stt:dead:swift": 1},
        "pending": {"stt:segments:swift": 1},
        "result_channels": ["stt:results:abc"],
    }
    assert nemesis.left_behind(dirty) == [
        "key stt:dead:swift",
        "2 entries in stt:segments:swift",
        "1 entries in stt:dead:swift",
        "1 pending in stt:segments:swift",
        "result channel stt:results:abc still subscribed",
    ]


def test_a_report_is_clean_only_with_every_fault_and_no_problem() -> None:
    report = {
        **nemesis.check([session(ANSWERED)], []),
        "faults": dict.fromkeys(KINDS, 1),
        "left_in_redis": [],
    }
    assert nemesis.failures(report) == []
    assert nemesis.failures({**report, "faults": {"kill_ingest": 1}}) == [
        f"fault never injected: {kind}" for kind in KINDS if kind != "kill_ingest"
    ]
    assert nemesis.failures({**report, "duplicated": 1}) == ["1 duplicated finals"]


def test_docker_stats_memory_reads_in_mib() -> None:
    assert [nemesis.mib(u) for u in ("283.6MiB", "1.5GiB", "512KiB", "0B")] == [283.6, 1536.0, 0.5, 0.0]


def test_a_short_nemesis_against_the_compose_stack_loses_nothing_and_leaves_nothing() -> None:
    """About a minute of faults, every kind at least once (a transcriber killed, the ingest
    killed, Redis restarted, a transcriber cut off the network and healed, one paused past the
    claim timeout), three clients streaming throughout."""
    assert (ROOT / "models" / "whisper-base-ct2" / "model.bin").is_file(), "run `make offline-model` first"
    # Its own Compose project: a bench.nemesis run beside it is never torn down by it.
    plan = Plan(sessions=3, minutes=1.0, seed=3, gap_s=(2.0, 4.0), project="stt-nemesis-test")
    report = nemesis.run(plan)
    shown = {k: v for k, v in report.items() if k != "redis_after"}
    print(json.dumps(shown, indent=2))
    assert not nemesis.failures(report), nemesis.failures(report)
    assert set(report["faults"]) == set(KINDS)
    assert report["outcomes"].get("complete"), "no session was answered in full"
