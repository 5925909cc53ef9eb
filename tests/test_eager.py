"""Eager endpointing: its bookkeeping in-process (no Redis, no model), then end to end."""

from __future__ import annotations

from pathlib import Path

from services.ingest.core.eager import Eager
from services.protocol import SegmentResult
from services.segmenter import Segment
from services.stack import POOL, Stack, counter, free_port, start_ingest
from tests.helpers import finals, run_client
from tools.speech import Speech


def segment(start: float, end: float) -> Segment:
    return Segment(b"\0\0" * 160, start, end, end - 0.2, end - start - 0.4, "silence")


def result(number: int, token: int, text: str = "hello") -> SegmentResult:
    return SegmentResult("s", number, "text", text, eager=token)


def test_a_confirmed_guess_is_the_final_whether_its_result_came_before_or_after() -> None:
    eager = Eager(timeout=60)
    token = eager.propose(0, segment(1.0, 2.5), now=0)
    assert token is not None
    assert eager.result(result(0, token)) == "held"  # before the pause is confirmed
    guess = eager.close(0, segment(1.0, 2.5))
    assert guess is not None and guess.result == result(0, token)

    token = eager.propose(1, segment(4.0, 5.0), now=1)
    assert token is not None
    guess = eager.close(1, segment(4.0, 5.0))
    assert guess is not None and guess.result is None  # confirmed first: its result is the final
    assert eager.result(result(1, token)) == "final"
    assert eager.result(result(1, token)) == "wasted"  # a duplicate (reclaimed) delivery


def test_speech_that_resumes_wastes_the_guess_and_the_segment_is_queued_anew() -> None:
    eager = Eager(timeout=60)
    first = eager.propose(0, segment(1.0, 2.5), now=0)
    assert first is not None
    # Speech resumed; a second pause comes while the first guess is still in flight: no new guess.
    assert eager.propose(0, segment(1.0, 4.0), now=0.3) is None
    assert eager.close(0, segment(1.0, 4.0)) is None  # queued as an ordinary segment
    assert eager.result(result(0, first)) == "wasted"
    # The guess in flight is answered: the next pause may be guessed again.
    assert eager.propose(1, segment(6.0, 7.0), now=1) is not None


def test_a_guess_whose_bounds_or_number_differ_is_not_used() -> None:
    eager = Eager(timeout=60)
    token = eager.propose(3, segment(1.0, 2.5), now=0)
    assert token is not None
    assert eager.close(3, segment(1.0, 2.53)) is None
    token = eager.propose(3, segment(1.0, 2.5), now=100)
    assert eager.close(4, segment(1.0, 2.5)) is None
    eager.propose(4, segment(1.0, 2.5), now=200)
    eager.abandon()  # the segment was dropped
    assert eager.close(4, segment(1.0, 2.5)) is None


def test_a_lost_guess_blocks_new_ones_only_until_the_timeout() -> None:
    eager = Eager(timeout=5)
    assert eager.propose(0, segment(1.0, 2.0), now=0) is not None
    assert eager.propose(0, segment(1.0, 3.0), now=4.9) is None
    assert eager.propose(0, segment(1.0, 3.0), now=5.0) is not None


def test_finals_are_the_same_with_and_without_eager_endpointing(
    base_stack: Stack, speech: Speech, tmp_path: Path
) -> None:
    """Real ingests, the real whisper-base transcriber, real-time client: eager guesses are
    confirmed and used, and what the client gets does not change."""
    stream = speech.stream(16000, (1, 3))
    got = {}
    for eager_ms in ("0", "200"):
        metrics_port = free_port()
        flags = ("--eager-ms", eager_ms, "--metrics-port", str(metrics_port))
        uri, ingest = start_ingest(base_stack.redis_url, POOL, *flags)
        try:
            code, events, stderr = run_client(uri, stream.path)
            assert code == 0, stderr
            got[eager_ms] = [(f["segment"], f["start"], f["end"], f["text"]) for f in finals(events)]
            confirmed = counter(metrics_port, "stt_eager_guesses_total", outcome="confirmed")
            queued = counter(metrics_port, "stt_eager_guesses_total", outcome="queued")
        finally:
            ingest.stop()
        if eager_ms == "0":
            assert queued == 0
        else:
            assert confirmed == len(stream.utterances) and queued >= confirmed
    assert got["200"] == got["0"] and len(got["0"]) == len(stream.utterances)
