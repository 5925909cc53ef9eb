"""Per-session ordering, de-duplication and timeouts."""

from __future__ import annotations

from services.ingest.core.ledger import Ledger
from services.protocol import ErrorEvent, Final, SegmentResult


def result(segment: int, text: str = "", outcome: str = "text") -> SegmentResult:
    return SegmentResult("s", segment, outcome, text=text or f"seg {segment}")  # type: ignore[arg-type]


def test_results_are_released_in_order_and_duplicates_dropped() -> None:
    ledger = Ledger(timeout=10)
    for i in range(3):
        assert ledger.add(i, i + 1, endpoint_at=100.0 + i, now=100.0 + i) == i
    assert ledger.resolve(result(2), 105) == []  # waits for 0 and 1
    assert ledger.resolve(result(1, outcome="empty"), 105) == []
    released = ledger.resolve(result(0), 106)
    seen = [(type(e), getattr(e, "segment", None), getattr(e, "silent", None)) for e in released]
    # The empty one is answered too, silent: our protocol sends nothing for it, others do.
    assert seen == [(Final, 0, False), (Final, 1, True), (Final, 2, False)]
    assert isinstance(released[0], Final) and released[0].latency == 6.0
    assert ledger.resolve(result(0), 107) == []  # a duplicate after release
    assert ledger.resolve(result(9), 107) == []  # never issued
    assert ledger.unanswered == 0


def test_a_lost_result_times_out_into_an_error_and_unblocks_the_rest() -> None:
    ledger = Ledger(timeout=5)
    ledger.add(0, 1, 100.0, 100.0)
    ledger.add(1, 2, 101.0, 101.0)
    assert ledger.resolve(result(1), 102) == []
    assert ledger.next_deadline() == 105.0
    assert ledger.expire(104.9) == []
    released = ledger.expire(105.0)
    assert isinstance(released[0], ErrorEvent) and released[0].code == "timeout" and released[0].segment == 0
    assert isinstance(released[1], Final) and released[1].segment == 1
    assert ledger.resolve(result(0), 106) == []  # too late: already reported
    assert ledger.next_deadline() is None


def test_model_failure_becomes_an_error_event() -> None:
    ledger = Ledger(timeout=5)
    ledger.add(0, 1, 100.0, 100.0)
    (event,) = ledger.resolve(SegmentResult("s", 0, "error", reason="model failed: boom"), 101)
    assert isinstance(event, ErrorEvent) and event.code == "transcription_failed"
