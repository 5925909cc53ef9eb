"""Voice-activity segmenter: a sans-I/O state machine, bytes in, events out.

Feed it 16-bit mono PCM of any chunk size at one of the WebRTC VAD rates; it
re-frames into ``frame_ms`` VAD frames and emits a ``Segment`` each time speech
is followed by ``silence_ms`` of silence, or when a segment reaches
``max_segment_ms`` (cut at the quietest point of its last ``cut_search_ms``).
Once a pause has lasted ``eager_ms`` it emits a ``Tentative``: the segment that
pause will close if no more speech comes, so that it can be transcribed while
the pause is still being confirmed (eager endpointing; its ``Segment`` follows
with the same bounds, or, if speech resumes, with others).
Segments with less than ``min_speech_ms`` of voiced frames are dropped
(``Dropped``), and so are those whose voiced frames are spectrally flat
(WebRTC VAD calls loud white noise speech) and those in which a second, level-robust detector
hears no speech (``services.voice``): blips and noise never reach the model. WebRTC VAD hears
each frame lifted to a normal level, so quiet talkers are heard too.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import webrtcvad

from services.audio import spectral_flatness
from services.protocol import SAMPLE_RATES
from services.voice import LevelledVad, SpeechConfirmer, SpeechScan, clipped_share, for_model, peak_db

VadFn = Callable[[bytes], bool]
# Speech the second detector must hear in a segment for it to reach the model: two of its windows.
CONFIRMED_S = 0.064
# What the second detector reads before a segment's first voiced frame: its state needs the onset
# (from the first voiced frame itself, one quiet real clip in 30 was not confirmed; from 60 ms
# before it, none), and the rest of the pre-roll is silence that only delays its answer.
CONFIRM_LEAD_MS = 150
# Frames of the open segment the second detector reads per frame fed: it keeps up as the segment
# grows, so a close reads only what it had not caught up on (after a length cut, the rest it
# carries over), never a whole long segment at once on the caller's thread.
SCAN_FRAMES_PER_STEP = 4
# Why a segment closed: its pause, its length limit, end of audio, or the client asked (finalize).
Reason = Literal["silence", "max_length", "eof", "finalize"]
# A segment ends once no more than this share of the trailing silence window is voiced,
# so a lone noise frame inside a pause does not hold a segment open.
END_VOICED_SHARE = 0.1
# Speech starts once this share of the start window is voiced.
START_VOICED_SHARE = 0.5


def webrtc_vad(rate: int, mode: int) -> VadFn:
    detector = webrtcvad.Vad(mode)

    def is_speech(frame: bytes) -> bool:
        return bool(detector.is_speech(frame, rate))

    return is_speech


@dataclass(frozen=True)
class SegmenterConfig:
    vad_mode: int = 3
    frame_ms: int = 30
    silence_ms: int = 500
    start_ms: int = 240
    pre_roll_ms: int = 300
    post_roll_ms: int = 200
    min_speech_ms: int = 250
    max_segment_ms: int = 28_000
    cut_search_ms: int = 5_000
    max_flatness: float = 0.5
    eager_ms: int = 0  # 0: no Tentative events (the ingest turns them on: --eager-ms)
    level_gain: bool = True  # WebRTC VAD hears frames lifted to a normal level (services.voice)
    confirm_speech: bool = True  # Silero must hear speech in a segment (services.voice)

    def check(self) -> None:
        """Raise ValueError with one clear sentence if a value cannot work."""
        if self.vad_mode not in (0, 1, 2, 3):
            raise ValueError(f"VAD mode must be 0..3, not {self.vad_mode}")
        if self.frame_ms not in (10, 20, 30):
            raise ValueError(f"VAD frame must be 10, 20 or 30 ms, not {self.frame_ms}")
        for name in ("silence_ms", "start_ms", "min_speech_ms"):
            if getattr(self, name) < self.frame_ms:
                raise ValueError(f"{name} must be at least one VAD frame ({self.frame_ms} ms)")
        if not 0 <= self.pre_roll_ms <= 2000 or not 0 <= self.post_roll_ms <= self.silence_ms:
            raise ValueError("pre-roll must be 0..2000 ms and post-roll 0..silence ms")
        if not 1000 <= self.max_segment_ms <= 29_000:
            raise ValueError("max segment must be 1..29 s (Whisper's window is 30 s)")
        if not self.frame_ms <= self.cut_search_ms < self.max_segment_ms:
            raise ValueError("cut search window must be shorter than the max segment")
        if self.eager_ms and not self.post_roll_ms <= self.eager_ms < self.silence_ms:
            raise ValueError("eager endpointing must start between the post-roll and the silence (ms)")
        if not 0 < self.max_flatness <= 1:
            raise ValueError("max spectral flatness must be in (0, 1]")


@dataclass(frozen=True)
class Segment:
    """Speech to transcribe. Times are seconds from the start of the stream; ``peak_db`` its
    peak level (dBFS), ``clipped`` the share of its samples at full scale."""

    pcm: bytes
    start: float
    end: float
    speech_end: float
    voiced: float
    reason: Reason
    peak_db: float = 0.0
    clipped: float = 0.0


@dataclass(frozen=True)
class Dropped:
    """A stretch that started like speech but was not: too little of it voiced
    (``too_short``), its voiced frames have the flat spectrum of noise (``noise``), or the
    second detector heard no speech in it (``no_speech``: hum, noise the lifted VAD took for
    speech)."""

    start: float
    end: float
    voiced: float
    reason: Literal["too_short", "noise", "no_speech"]
    peak_db: float = 0.0


@dataclass(frozen=True)
class Tentative:
    """The segment a pause under way will close if no more speech comes: the ``Segment``
    that follows has the same ``start`` and ``end`` exactly when it did not."""

    segment: Segment


Event = Segment | Dropped | Tentative


class Segmenter:
    def __init__(self, rate: int, config: SegmenterConfig, vad: VadFn | None = None) -> None:
        """``vad`` replaces the detectors (tests give deterministic ones); by default WebRTC VAD
        (lifted to a normal level) and Silero, as ``config`` turns them on."""
        if rate not in SAMPLE_RATES:
            raise ValueError(f"unsupported sample rate {rate}")
        config.check()
        self.rate = rate
        self.config = config
        self._frame_bytes = rate * config.frame_ms // 1000 * 2
        confirm_by_default = vad is None
        if vad is None:
            vad = webrtc_vad(rate, config.vad_mode)
            if config.level_gain:
                vad = LevelledVad(vad, config.frame_ms)
        self._vad = vad
        self._confirmer = SpeechConfirmer(rate) if config.confirm_speech and confirm_by_default else None
        # The second detector's scan of the open segment: from its frame ``_scan_from`` (the lead
        # before its first voiced frame), fed up to (not including) frame ``_scanned``.
        self._scan: SpeechScan | None = None
        self._scan_from = self._scanned = 0
        n = self._frames
        self._start_frames = n(config.start_ms)
        self._pre_frames = n(config.pre_roll_ms)
        self._post_frames = n(config.post_roll_ms)
        self._max_frames = n(config.max_segment_ms)
        self._search_frames = n(config.cut_search_ms)
        self._min_voiced = n(config.min_speech_ms)
        self._confirm_lead = n(CONFIRM_LEAD_MS)
        self._eager_frames = max(n(config.eager_ms), self._post_frames) if config.eager_ms else 0
        self._pending = bytearray()
        self._count = 0  # frames seen so far
        # Waiting for speech: the frames that may open a segment (the start window and the
        # pre-roll before it), and the start window's voiced flags.
        self._history: deque[tuple[bytes, bool]] = deque(maxlen=self._start_frames + self._pre_frames)
        self._start_window: deque[bool] = deque(maxlen=self._start_frames)
        # In speech: the voiced flags of the pause window that may close it.
        self._trail: deque[bool] = deque(maxlen=n(config.silence_ms))
        self._speech: list[tuple[bytes, bool]] | None = None  # the open segment's frames
        self._speech_first = 0  # index of the open segment's first frame

    def _frames(self, ms: int) -> int:
        return max(1, ms // self.config.frame_ms)

    def _seconds(self, frames: int) -> float:
        return frames * self.config.frame_ms / 1000

    @property
    def position(self) -> float:
        """Seconds of audio fed so far (whole VAD frames)."""
        return self._seconds(self._count)

    @property
    def in_speech(self) -> bool:
        return self._speech is not None

    @property
    def speech_start(self) -> float | None:
        """Where the segment being spoken starts (seconds), or None when none is open."""
        return None if self._speech is None else self._seconds(self._speech_first)

    @property
    def trailing_silence(self) -> float:
        """Seconds of unvoiced frames at the end of the open segment (0 when none is open)."""
        if self._speech is None:
            return 0.0
        run = 0
        for voiced in reversed(self._trail):
            if voiced:
                break
            run += 1
        return self._seconds(run)

    def open_pcm(self) -> tuple[float, bytes]:
        """Start time and audio so far of the segment being spoken (``b""`` when none)."""
        if self._speech is None:
            return self.position, b""
        pcm = b"".join(f for f, _ in self._speech)
        return self._seconds(self._speech_first), for_model(pcm) if self.config.level_gain else pcm

    @property
    def held_bytes(self) -> int:
        """PCM held inside: under one frame of remainder plus at most the pre-roll
        history or one maximum-length segment."""
        held = len(self._pending) + sum(len(f) for f, _ in self._history)
        return held + sum(len(f) for f, _ in self._speech or [])

    @property
    def max_held_bytes(self) -> int:
        frames = max(self._history.maxlen or 0, self._max_frames)
        return (frames + 1) * self._frame_bytes

    def feed(self, pcm: bytes) -> list[Event]:
        """Take any number of bytes of 16-bit PCM; return the events they complete."""
        self._pending += pcm
        events: list[Event] = []
        size = self._frame_bytes
        whole = len(self._pending) - len(self._pending) % size
        for offset in range(0, whole, size):
            frame = bytes(self._pending[offset : offset + size])
            events.extend(self._step(frame, self._vad(frame)))
        del self._pending[:whole]
        return events

    def finalize(self) -> list[Event]:
        """Close the open segment now (the client asked); the stream goes on."""
        if self._speech is None:
            return []
        return [self._close(len(self._speech), "finalize")]

    def flush(self) -> list[Event]:
        """End of stream: close any open segment (a partial last frame is ignored)."""
        self._pending.clear()
        if self._speech is None:
            return []
        return [self._close(len(self._speech), "eof")]

    def _step(self, frame: bytes, voiced: bool) -> list[Event]:
        """One VAD frame: waiting for speech, or in it."""
        self._count += 1
        if self._speech is None:
            self._wait_for_speech(frame, voiced)
            return []
        return self._in_speech(frame, voiced)

    def _wait_for_speech(self, frame: bytes, voiced: bool) -> None:
        """Speech starts once ``START_VOICED_SHARE`` of the start window is voiced: the segment
        opens at the window's first voiced frame, less the pre-roll."""
        self._history.append((frame, voiced))
        self._start_window.append(voiced)
        if sum(self._start_window) < START_VOICED_SHARE * self._start_frames:
            return
        window_first = len(self._history) - len(self._start_window)
        begin = max(0, window_first + self._start_window.index(True) - self._pre_frames)
        self._speech = list(self._history)[begin:]
        self._speech_first = self._count - len(self._speech)
        self._history.clear()
        self._start_window.clear()
        self._trail.clear()
        self._start_scan()

    def _in_speech(self, frame: bytes, voiced: bool) -> list[Event]:
        """The segment closes once no more than ``END_VOICED_SHARE`` of the pause window is
        voiced (its post-roll kept), or is cut at its length limit."""
        speech = self._speech
        assert speech is not None
        speech.append((frame, voiced))
        self._trail.append(voiced)
        if self._scan is None and voiced:
            self._start_scan()
        self._scan_up_to(min(len(speech), self._scanned + SCAN_FRAMES_PER_STEP))
        if len(self._trail) == self._trail.maxlen and sum(self._trail) <= END_VOICED_SHARE * len(self._trail):
            # None voiced when a length cut fell inside the pause: what is left closes as a drop.
            last_voiced = max((i for i, (_, v) in enumerate(speech) if v), default=-1)
            return [self._close(min(len(speech), last_voiced + 1 + self._post_frames), "silence")]
        if len(speech) >= self._max_frames:
            return [self._close(self._cut_point(), "max_length")]
        if self._eager_frames and not voiced:
            return self._eager_guess(speech)
        return []

    def _eager_guess(self, speech: list[tuple[bytes, bool]]) -> list[Event]:
        """Once a pause has lasted ``eager_ms``: the segment it will close if no more speech
        comes (``Tentative``), unless that one would be dropped."""
        eager = self._eager_frames
        if len(speech) > eager and self._unvoiced_run() == eager:
            last_voiced = len(speech) - eager - 1
            guess = self._event(speech[: last_voiced + 1 + self._post_frames], "silence")
            if isinstance(guess, Segment):
                return [Tentative(guess)]
        return []

    def _unvoiced_run(self) -> int:
        """Unvoiced frames at the end of the open segment (at most ``eager_frames + 1`` counted)."""
        assert self._speech is not None
        run = 0
        for _, voiced in reversed(self._speech):
            if voiced or run > self._eager_frames:
                break
            run += 1
        return run

    def _cut_point(self) -> int:
        """Where to cut an over-long segment: the middle of the longest pause in the
        search window, or its quietest frame when it holds no pause."""
        assert self._speech is not None
        lo = len(self._speech) - self._search_frames
        best_len, best_at, run = 0, -1, 0
        for i in range(lo, len(self._speech)):
            run = 0 if self._speech[i][1] else run + 1
            if run > best_len:
                best_len, best_at = run, i - run // 2
        if best_at > 0:
            return best_at
        energy = [float(np.abs(np.frombuffer(f, "<i2")).mean()) for f, _ in self._speech[lo:]]
        return max(1, lo + int(np.argmin(energy)))

    def _close(self, keep: int, reason: Reason) -> Segment | Dropped:
        """Emit the first ``keep`` frames of the open segment as one event."""
        assert self._speech is not None
        frames, rest = self._speech[:keep], self._speech[keep:]
        event = self._event(frames, reason)
        self._scan = None
        if reason == "max_length":
            # The speaker goes on: the rest opens the next segment.
            self._speech, self._speech_first = rest, self._speech_first + keep
            self._trail.clear()
            self._start_scan()
        else:
            self._speech = None
            self._history.extend(rest)
            self._start_window.extend(v for _, v in rest)
        return event

    def _event(self, frames: list[tuple[bytes, bool]], reason: Reason) -> Segment | Dropped:
        """What the open segment's first ``len(frames)`` frames make, closed for ``reason``."""
        first = self._speech_first
        voiced_flags = [v for _, v in frames]
        voiced = sum(voiced_flags)
        last_voiced = max((i for i, v in enumerate(voiced_flags) if v), default=-1)
        start, end = self._seconds(first), self._seconds(first + len(frames))
        pcm = b"".join(f for f, _ in frames)
        samples = np.frombuffer(pcm, "<i2")
        level = peak_db(samples)
        if voiced < self._min_voiced:
            return Dropped(start, end, self._seconds(voiced), "too_short", level)
        if spectral_flatness(b"".join(f for f, v in frames if v), self.rate) > self.config.max_flatness:
            return Dropped(start, end, self._seconds(voiced), "noise", level)
        if not self._speech_heard(len(frames)):
            return Dropped(start, end, self._seconds(voiced), "no_speech", level)
        return Segment(
            pcm=for_model(pcm) if self.config.level_gain else pcm,
            start=start,
            end=end,
            speech_end=self._seconds(first + last_voiced + 1),
            voiced=self._seconds(voiced),
            reason=reason,
            peak_db=level,
            clipped=clipped_share(samples),
        )

    def _start_scan(self) -> None:
        """Begin the second detector's scan of the open segment at ``CONFIRM_LEAD_MS`` before its
        first voiced frame, if it has one yet."""
        assert self._speech is not None
        first_voiced = next((i for i, (_, v) in enumerate(self._speech) if v), None)
        if self._confirmer is None or first_voiced is None:
            return
        self._scan = self._confirmer.scan(CONFIRMED_S)
        self._scan_from = self._scanned = max(first_voiced - self._confirm_lead, 0)

    def _scan_up_to(self, end: int) -> None:
        """Feed the scan the open segment's frames before ``end`` that it has not read."""
        if self._scan is None or end <= self._scanned:
            return
        assert self._speech is not None
        self._scan.feed(b"".join(f for f, _ in self._speech[self._scanned : end]))
        self._scanned = end

    def _speech_heard(self, frames: int) -> bool:
        """Whether the second detector heard ``CONFIRMED_S`` of speech in the open segment's
        first ``frames`` frames (every event is such a prefix); True when it is off."""
        if self._confirmer is None:
            return True
        if self._scan is None:  # not started: no voiced frame (the caller drops such a segment)
            return False
        self._scan_up_to(frames)
        at = self._scan.confirmed_at
        return at is not None and at <= (frames - self._scan_from) * self._frame_bytes
