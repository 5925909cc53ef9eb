"""Random frames and messages at the protocol parser and the segmenter (hypothesis).

At least 10,000 frames in all: nothing but ProtocolError/ValueError escapes, and the
segmenter never holds more than its bound, whatever arrives.
"""

from __future__ import annotations

import contextlib
import json
import tracemalloc
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services import metrics
from services.ingest.config import parse_args
from services.ingest.core.channels import Channels
from services.ingest.core.inputs import EndOfAudio, Finalize
from services.ingest.protocols.native import parse_text
from services.metrics import IngestMetrics
from services.protocol import (
    ENCODINGS,
    SAMPLE_RATES,
    ProtocolError,
    SegmentJob,
    SegmentResult,
    SessionParams,
    parse_query,
)
from services.segmenter import SegmenterConfig

FRAMES = st.one_of(
    st.binary(max_size=6000),
    st.text(max_size=300),
    st.sampled_from(["EOF", '{"type": "eof"}', '{"type": 1}', "[]", "{}", "null", '{"type": "eof"']).map(
        lambda s: s
    ),
)
EXAMPLES = 1000
FRAMES_PER_EXAMPLE = 10
seen = {"frames": 0}
CONFIG = SegmenterConfig(max_segment_ms=3000, cut_search_ms=1000)
INGEST = replace(parse_args([]), segmenter=CONFIG)
METRICS = IngestMetrics(metrics.new_registry())


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rate=st.sampled_from(SAMPLE_RATES),
    encoding=st.sampled_from(ENCODINGS),
    channels=st.sampled_from((1, 2)),
    frames=st.lists(FRAMES, min_size=FRAMES_PER_EXAMPLE, max_size=FRAMES_PER_EXAMPLE + 10),
    query=st.text(max_size=80),
)
def fuzz_frames(rate: int, encoding: str, channels: int, frames: list[bytes | str], query: str) -> None:
    with contextlib.suppress(ProtocolError):
        parse_query(query)
    params = SessionParams(rate, None, encoding=encoding, channels=channels)
    session = Channels("fuzz", "swift", params, INGEST, METRICS, now=0.0)
    for frame in frames:
        seen["frames"] += 1
        try:
            if isinstance(frame, str):
                message = parse_text(frame)
                if isinstance(message, EndOfAudio):
                    session.end_of_audio(1.0)
                elif isinstance(message, Finalize):
                    session.finalize(1.0)
            else:
                session.audio(frame, 1.0)
        except ProtocolError as err:
            assert err.code in {"bad_message", "bad_audio"} and err.message
            continue
        for core in session.cores:
            assert core.segmenter.held_bytes <= core.segmenter.max_held_bytes
        for job in session.jobs_to_queue():
            assert job.end - job.start <= CONFIG.max_segment_ms / 1000 + 0.05
            assert 0 <= job.channel < channels


@settings(max_examples=500, deadline=None)
@given(
    fields=st.dictionaries(
        st.sampled_from(
            [b"session", b"segment", b"pcm", b"start", b"end", b"endpoint_at", b"enqueued_at", b"x"]
        ),
        st.binary(max_size=40),
    ),
    raw=st.one_of(st.binary(max_size=200), st.text(max_size=200)),
)
def test_hostile_queue_messages_raise_only_value_error(fields: dict[bytes, bytes], raw: bytes | str) -> None:
    for decode in (lambda: SegmentJob.from_fields(fields), lambda: SegmentResult.from_json(raw)):
        with contextlib.suppress(ValueError):
            decode()
    with pytest.raises(ValueError):
        SegmentResult.from_json(json.dumps({"session": 1, "segment": "x", "outcome": "text", "timings": []}))


def test_random_frames_never_escape_and_memory_stays_bounded() -> None:
    """Runs the frame fuzzer under tracemalloc and checks how many frames it threw and the peak."""
    seen["frames"] = 0
    tracemalloc.start()
    try:
        fuzz_frames()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen["frames"] >= EXAMPLES * FRAMES_PER_EXAMPLE
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.1f} MiB"
