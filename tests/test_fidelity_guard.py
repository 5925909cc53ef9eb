"""A guard on real recorded speech: four clips of bench/evalset through `make run`'s defaults.

The stack is started as ``bench.talkers`` and ``bench.fidelity`` start it (``python -m
services.stack`` with its defaults, a private redis-server); each clip is one real-time session
at 16 kHz. It fails if a clip gets no output at all, or if the streaming WER on the four exceeds
the offline whole-utterance WER (the same whisper-base weights through the CTranslate2 backend,
int8, greedy, Whisper's 30 s window) by more than 0.02. One clip is quiet (peaks at -44.7 dBFS):
the VAD before issue 21 part 1 heard nothing of speech that quiet.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.fidelity import EVALSET, hypothesis, load_evalset, offline, stack, stream_all
from tools.romanize import score

GUARD_IDS = ("librivox-0870", "librivox-0890", "goforward", "librivox-0920-quiet")
MARGIN = 0.02


def pooled_wer(texts: dict[str, str], refs: dict[str, str]) -> float:
    edits = [score(refs[i], texts[i], "en").words for i in refs]
    return sum(e.errors for e in edits) / sum(e.ref for e in edits)


def test_streaming_matches_offline_on_real_speech(tmp_path: Path) -> None:
    clips = load_evalset(EVALSET, ids=GUARD_IDS)
    assert min(c.peak_dbfs for c in clips) < -40, "the guard needs its quiet clip"
    refs = {c.id: c.text or "" for c in clips}
    whole = offline(clips, beam=1)
    with stack([], tmp_path, "guard") as uri:
        sent = asyncio.run(stream_all(uri, clips, "16k", False, concurrency=4, speed=1.0))
    streamed = {i: hypothesis(s) for i, s in sent.items()}
    side_by_side = "\n".join(
        f"{c.id} ({c.peak_dbfs} dBFS)\n  ref     {c.text}\n  offline {whole[c.id]}\n"
        f"  stream  {streamed[c.id]}"
        for c in clips
    )
    print(side_by_side)
    silent = [f"{c.id} ({c.peak_dbfs} dBFS)" for c in clips if not streamed[c.id].strip()]
    assert not silent, f"no output for {silent}; errors: {[s.error for s in sent.values() if s.error]}"
    offline_wer, streaming_wer = pooled_wer(whole, refs), pooled_wer(streamed, refs)
    assert streaming_wer <= offline_wer + MARGIN, (
        f"streaming WER {streaming_wer:.3f} > offline {offline_wer:.3f} + {MARGIN}\n{side_by_side}"
    )
