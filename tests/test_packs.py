"""A file's segments packed into one decode window and answered one by one: the ingest's packer
(``services.ingest.core.packs``), the stream entry's parts, and the transcriber's split
(``services.transcriber.packs``, ``services.transcriber.batch``). Pure, with a stand-in model
that says words at given times: the split and its judging are what is tested here; real weights
decode packs in ``tests/test_files.py``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from services.ingest.core.packs import Packer, pack
from services.metrics import TranscriberMetrics, new_registry
from services.protocol import Part, SegmentJob
from services.transcriber.batch import Entry, transcribe
from services.transcriber.interface import Clips, Transcript
from services.transcriber.packs import split
from services.transcriber.words import Word

RATE = 16000


def job(segment: int, start: float, seconds: float, channel: int = 0, **options: object) -> SegmentJob:
    pcm = np.full(round(seconds * RATE), 1000 + segment, np.int16).tobytes()
    fields = {"words": False, "prompt": "", "partial": False, "eager": 0} | options
    return SegmentJob(
        "s1",
        segment,
        pcm,
        start,
        start + seconds,
        endpoint_at=100.0 + segment,
        enqueued_at=100.5 + segment,
        channel=channel,
        words=bool(fields["words"]),
        partial=bool(fields["partial"]),
        eager=int(str(fields["eager"])),
    )


def test_consecutive_segments_are_joined_by_silence_with_each_ones_place() -> None:
    a, b = job(1, 2.0, 3.0), job(2, 7.5, 2.0, words=True)
    packed = pack([a, b], gap_s=1.0)
    samples = np.frombuffer(packed.pcm, np.int16)
    assert len(samples) == (3.0 + 1.0 + 2.0) * RATE
    assert (samples[: 3 * RATE] == 1001).all() and not samples[3 * RATE : 4 * RATE].any()
    assert (samples[4 * RATE :] == 1002).all()
    assert packed.parts == (Part(1, 2.0, 5.0, 0.0, 3.0), Part(2, 7.5, 9.5, 4.0, 2.0))
    assert (packed.segment, packed.start, packed.end) == (1, 2.0, 9.5)
    assert packed.endpoint_at == b.endpoint_at and packed.words  # one asking for words asks for all
    assert packed.segments == [1, 2]
    assert pack([a], 1.0) is a


def test_the_packer_fills_each_window_and_flushes_the_rest() -> None:
    packer = Packer(limit_s=10.5, gap_s=1.0)
    out = packer.add([job(1, 0.0, 4.0), job(2, 5.0, 4.0)])  # 4 + 1 + 4 = 9 s: held
    assert out == [] and packer.held == 2
    out = packer.add([job(3, 10.0, 1.0)])  # 9 + 1 + 1 = 11 s: the first two go
    assert [j.segments for j in out] == [[1, 2]] and packer.held == 1
    out = packer.add([job(4, 12.0, 12.0)])  # longer than a window: a job of its own, at once
    assert [j.segments for j in out] == [[3], [4]] and out[1].parts == () and packer.held == 0
    packer.add([job(5, 30.0, 2.0)])
    assert [j.segments for j in packer.flush()] == [[5]] and packer.held == 0 and packer.flush() == []


def test_each_channel_is_packed_apart_and_partials_and_guesses_never() -> None:
    packer = Packer(limit_s=28.0, gap_s=1.0)
    out = packer.add([job(1, 0.0, 2.0), job(1, 0.5, 2.0, channel=1), job(2, 3.0, 1.0, partial=True)])
    out += packer.add([job(2, 4.0, 2.0, eager=7), job(2, 3.0, 2.0), job(2, 4.0, 2.0, channel=1)])
    assert [(j.segment, j.partial, j.eager) for j in out] == [(2, True, 0), (2, False, 7)]
    packs = {j.channel: j for j in packer.flush()}
    assert packs[0].segments == [1, 2] and packs[1].segments == [1, 2]


def test_a_packs_parts_travel_in_the_stream_entry() -> None:
    packed = pack([job(1, 2.0, 3.0), job(2, 7.5, 2.0)], gap_s=1.0)
    fields = {
        key.encode(): value if isinstance(value, bytes) else value.encode()
        for key, value in packed.to_fields().items()
    }
    assert SegmentJob.from_fields(fields) == packed
    single = job(3, 1.0, 1.0)
    fields = {
        key.encode(): value if isinstance(value, bytes) else value.encode()
        for key, value in single.to_fields().items()
    }
    assert SegmentJob.from_fields(fields).parts == ()
    for bad in (b"[[1, 2.0]]", b"{", b'{"a": 1}', b"3"):
        with pytest.raises(ValueError, match="malformed"):
            SegmentJob.from_fields(fields | {b"parts": bad})


PARTS = (Part(4, 10.0, 13.0, 0.0, 3.0), Part(5, 20.0, 22.0, 4.0, 2.0), Part(6, 30.0, 31.0, 7.0, 1.0))


def test_each_word_goes_to_the_part_its_middle_is_in_with_the_parts_own_times() -> None:
    words = [
        Word("one", 0.2, 1.0, 0.9),
        Word("two", 2.5, 3.3, 0.8),  # runs 0.3 s into the gap: kept within its part
        Word("three", 3.4, 4.4, 0.7),  # its middle (3.9) is past the gap's (3.5): the second part
        Word("four", 5.5, 6.0, 0.6),
    ]
    first, second, third = split(PARTS, words)
    assert [(w.word, w.start, w.end) for w in first] == [("one", 0.2, 1.0), ("two", 2.5, 3.0)]
    assert [(w.word, w.start, w.end) for w in second] == [
        ("three", 0.0, pytest.approx(0.4)),
        ("four", 1.5, 2.0),
    ]
    assert third == []


class SaysWords:
    """A stand-in model: each clip's transcript is ``words`` (times in the clip)."""

    def __init__(self, words: Sequence[Word], no_speech_prob: float = 0.01) -> None:
        self.words = tuple(words)
        self.no_speech_prob = no_speech_prob
        self.asked: list[bool] = []

    def transcribe(
        self, batch: Clips, words: Sequence[bool] = (), prompts: Sequence[str] = ()
    ) -> list[Transcript]:
        self.asked += list(words)
        text = " ".join(w.word for w in self.words)
        return [
            Transcript(text, self.no_speech_prob, self.words if words[n] else ()) for n in range(len(batch))
        ]


def answers(model: SaysWords, packed: SegmentJob) -> list[tuple[int, str, str, list[tuple[float, float]]]]:
    metrics = TranscriberMetrics(new_registry(), "m")
    results = transcribe(model, [Entry(b"1-0", packed)], metrics)[b"1-0"]
    return [(r.segment, r.outcome, r.text, [(w["start"], w["end"]) for w in r.words]) for r in results]


def test_a_pack_is_answered_segment_by_segment_each_judged_alone() -> None:
    packed = SegmentJob("s1", 4, bytes(2 * 8 * RATE), 10.0, 31.0, 1.0, 2.0, parts=PARTS)
    said = [Word("Hello", 0.5, 1.0, 0.9), Word("there.", 1.0, 1.5, 0.9), Word("Bye-bye.", 4.2, 4.5, 0.2)]
    model = SaysWords(said)
    assert answers(model, packed) == [
        (4, "text", "Hello there.", []),  # words are timed for the split, not sent unasked
        (5, "text", "Bye-bye.", []),
        (6, "empty", "", []),  # nothing was said in it
    ] and model.asked == [True]
    timed = SegmentJob("s1", 4, bytes(2 * 8 * RATE), 10.0, 31.0, 1.0, 2.0, words=True, parts=PARTS)
    assert answers(SaysWords(said[:2]), timed)[0] == (4, "text", "Hello there.", [(10.5, 11.0), (11.0, 11.5)])
    assert [a[1] for a in answers(SaysWords(said, no_speech_prob=0.9), packed)] == ["empty"] * 3
