"""Speech at every level a microphone or phone line delivers is heard; nothing that is not speech
reaches the model, at any gain (issue 21). On the old segmenter (WebRTC VAD on the raw level)
real speech peaking at -40 or -50 dBFS gave no segment at all, and mains hum at -20 dBFS gave
one; these tests fail there.

Real speech: the six real Hindi call clips in audio/oriserve-examples (no references: their
normal-level transcripts are the reference for their quiet versions) and espeak-ng English
(exact references). Noise: white, pink (high-passed brown), 50 and 60 Hz mains hum with
harmonics, silence and dither, each at -70 to 0 dBFS."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from numpy.typing import NDArray

from services import voice
from services.segmenter import CONFIRMED_S, SCAN_FRAMES_PER_STEP, Dropped, Segment, Segmenter, SegmenterConfig
from services.stack import POOL, Stack, counter, free_port, start_ingest
from services.voice import LevelledVad, SpeechConfirmer, clipped_share, peak_db
from tests.helpers import finals, run_client
from tools.levels import RATE, REAL, at_peak, noises, pcm16, real_clip
from tools.speech import Speech, wer

LEVELS = (-50.0, -40.0, -30.0)


def segments(pcm: bytes, rate: int = RATE) -> tuple[list[Segment], list[Dropped]]:
    seg = Segmenter(rate, SegmenterConfig())
    events = seg.feed(pcm) + seg.flush()
    return [e for e in events if isinstance(e, Segment)], [e for e in events if isinstance(e, Dropped)]


@pytest.mark.parametrize("level", [*LEVELS, None], ids=["-50dBFS", "-40dBFS", "-30dBFS", "clipped"])
@pytest.mark.parametrize("clip", REAL, ids=lambda p: p.name[:8])
def test_real_speech_at_any_level_is_heard_as_at_its_own(clip: Path, level: float | None) -> None:
    samples = real_clip(REAL.index(clip))
    (normal,), _ = segments(pcm16(samples))
    found, _ = segments(pcm16(at_peak(samples, level)))
    assert found, "no segment"
    assert sum(s.voiced for s in found) >= 0.5 * normal.voiced


NOISES = noises()


@pytest.mark.parametrize("level", [-70, -60, -50, -40, -30, -20, -10, 0])
@pytest.mark.parametrize("name", NOISES)
def test_noise_hum_and_silence_never_reach_the_model_at_any_gain(name: str, level: int) -> None:
    found, _ = segments(pcm16(NOISES[name] * 10 ** (level / 20)))
    assert not found
    assert not segments(bytes(RATE * 4))[0]  # digital silence


def test_level_measures_and_the_detectors_parts() -> None:
    loud = np.array([0, 16384, -32768, 32767, 100], np.int16)
    assert peak_db(loud) == pytest.approx(0.0)
    assert peak_db(np.zeros(4, np.int16)) == -np.inf
    assert clipped_share(loud) == pytest.approx(2 / 5)
    heard: list[float] = []

    def vad(frame: bytes) -> bool:
        heard.append(peak_db(np.frombuffer(frame, "<i2")))
        return False

    levelled = LevelledVad(vad, 30)
    quiet = pcm16(np.full(480, 10 ** (-50 / 20)))
    levelled(quiet)
    assert heard[-1] == pytest.approx(-20.0, abs=0.5)  # lifted to a normal peak
    levelled(bytes(960))
    assert heard[-1] == -np.inf  # silence stays silence
    confirm = SpeechConfirmer(RATE)
    speech = at_peak(real_clip(3), -50.0)
    assert confirm(pcm16(speech)) > 0.5
    assert confirm(pcm16(NOISES["hum50"] * 0.1)) == 0.0


def test_the_second_detector_reads_only_until_it_has_heard_enough() -> None:
    """Silero ran on the ingest's event loop over every window of every candidate segment: at 50
    sessions it took over half the loop (py-spy), and frame lag p99 rose from 1.5 to 68 ms. The
    segmenter needs only ``CONFIRMED_S`` of speech, so the confirmer stops once it has that."""
    confirm = SpeechConfirmer(RATE)
    speech = pcm16(real_clip(0))
    assert confirm(speech) > 1.0  # the whole clip: seconds of speech
    window_s = 512 / RATE
    assert CONFIRMED_S <= confirm(speech, CONFIRMED_S) < CONFIRMED_S + window_s
    assert confirm(pcm16(NOISES["hum50"] * 0.1), CONFIRMED_S) == 0.0  # noise is read to its end


def test_a_long_stretch_of_noise_is_read_as_it_comes_not_at_its_close(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Silero ran at a segment's close over all of it: a 23 s segment of mains hum, which lifted
    WebRTC VAD takes for speech, held the ingest's event loop some 200 ms for every session. Now
    it reads the segment as it grows, a few windows per frame, so no feed reads much at once."""
    session = voice._silero()
    reads: list[int] = []

    class Counted:
        def run(self, *args: Any, **kwargs: Any) -> Any:
            reads[-1] += 1
            return session.run(*args, **kwargs)

    monkeypatch.setattr(voice, "_silero", Counted)
    seg = Segmenter(RATE, SegmenterConfig())
    pcm = (pcm16(NOISES["hum50"] * 10 ** (-30 / 20)) * 6)[: 30 * RATE * 2]
    events = []
    for at in range(0, len(pcm), RATE * 2 // 50):  # 20 ms at a time, as clients send
        reads.append(0)
        events += seg.feed(pcm[at : at + RATE * 2 // 50])
    assert [e.reason for e in events if isinstance(e, Dropped)][:1] == ["no_speech"]
    assert sum(reads) > 500  # the detector did read the noise through
    assert max(reads) <= 2 * SCAN_FRAMES_PER_STEP


# --- through the stack ----------------------------------------------------------------------------


def texts(events: list[dict[str, Any]]) -> str:
    return " ".join(f["text"] for f in finals(events))


def streamed(uri: str, samples: NDArray[np.floating], tmp_path: Path, name: str) -> list[dict[str, Any]]:
    path = tmp_path / f"{name}.wav"
    sf.write(path, np.clip(samples, -1, 1), RATE, subtype="PCM_16")
    code, events, stderr = run_client(uri, path, "--fast")
    assert code == 0, stderr
    return events


@pytest.fixture(scope="module")
def levels_ingest(base_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """An ingest with its own metrics port; (its URI, that port)."""
    port = free_port()
    logs = tmp_path_factory.mktemp("levels")
    uri, ingest = start_ingest(base_stack.redis_url, POOL, "--metrics-port", str(port), logs=logs)
    yield uri, port
    ingest.stop()


def test_quiet_and_clipped_speech_is_transcribed_like_speech_at_a_normal_level(
    levels_ingest: tuple[str, int], speech: Speech, tmp_path: Path
) -> None:
    uri, metrics = levels_ingest
    stream = speech.stream(RATE, (1, 3))
    normal = np.frombuffer(stream.pcm, np.int16) / 32768
    truth = " ".join(stream.texts)
    base = wer(truth, texts(streamed(uri, normal, tmp_path, "normal")))
    warned: dict[str, list[str]] = {}
    for level in [*LEVELS, None]:
        events = streamed(uri, at_peak(normal, level), tmp_path, f"at-{level}")
        assert wer(truth, texts(events)) <= base + 0.1, (level, texts(events))
        warned[str(level)] = [e["code"] for e in events if e["type"] == "warning"]
    # -40 dBFS is the line: the stream peaks there, its quieter sentence just below.
    assert (warned["-50.0"], warned["-30.0"], warned["None"]) == (["quiet_audio"], [], ["clipped_audio"])
    assert counter(metrics, "stt_speech_peak_dbfs_count") >= 8
    assert counter(metrics, "stt_speech_peak_dbfs_bucket", le="-45.0") >= 2
    quiet_sessions = sum(codes.count("quiet_audio") for codes in warned.values())
    assert counter(metrics, "stt_warnings_total", code="quiet_audio") == quiet_sessions


def test_real_speech_at_every_level_gives_text(levels_ingest: tuple[str, int], tmp_path: Path) -> None:
    """Every real clip at every level comes back as text (the old ingest answered ready, then
    done, with nothing between, below -40 dBFS). Its words are not compared: whisper-base forced
    to English on Hindi audio gives unstable text even at the clip's own level ("chain the cycle
    chain" / "Change the cycle chain" at -30 dBFS, unlifted), so the WER bound is checked on
    speech with exact references (above, and bench/fidelity.py on real recordings)."""
    uri, _ = levels_ingest
    for index, clip in enumerate(REAL):
        samples = real_clip(index)
        for level in [*LEVELS, None]:
            assert texts(streamed(uri, at_peak(samples, level), tmp_path, f"real-{level}")), (
                clip.name,
                level,
            )


def test_noise_and_hum_at_any_gain_give_no_text(levels_ingest: tuple[str, int], tmp_path: Path) -> None:
    uri, metrics = levels_ingest
    before = counter(metrics, "stt_segments_dropped_total", reason="no_speech")
    for name in ("pink", "hum50"):
        for level in (-60, -30, -10):
            events = streamed(uri, NOISES[name] * 10 ** (level / 20), tmp_path, f"{name}{level}")
            assert not finals(events), (name, level, json.dumps(events))
    assert counter(metrics, "stt_segments_dropped_total", reason="no_speech") > before
