"""Fidelity on real recorded speech: offline whole-utterance decoding against the streaming stack.

    .venv/bin/python -m bench.fidelity [--evalset bench/evalset] [--limit N] [--ids a,b]
        [--languages en,hi] [--offline greedy,beam5] [--modes 16k,8k,mulaw]
        [--levers all|none|context,eager,partials,batching] [--concurrency 4] [--speed 1]
        [--out bench/results/fidelity.json]

The utterances are ``bench/evalset/manifest.jsonl`` (FLAC 16 kHz mono 16-bit, levels as
recorded; ``--limit`` takes that many, spread over the speakers; ``--ids`` names them).

- **Offline**: each utterance decoded whole with Whisper's full 30 s window by the project's own
  CTranslate2 backend (``services/transcriber/ct2_model.py``, ``models/whisper-base-ct2`` int8,
  ``language="en", task="transcribe"``, 2 threads), greedy and beam 5; no VAD, no text guard.
- **Streaming**: ``python -m services.stack`` (what `make run` runs, its defaults; started the way
  ``bench.talkers`` starts it, on a private redis-server), every utterance one WebSocket session
  of 20 ms frames sent at ``--speed`` x real time, ``--concurrency`` sessions at once, then end
  of audio; its finals joined are the hypothesis. Modes: 16 kHz PCM, 8 kHz PCM (resampled by
  ``services.audio``), 8 kHz G.711 mu-law (``?encoding=mulaw``).
- **Levers**, each flipped alone from the defaults at 16 kHz: ``context`` off (``CONTEXT_S=30``:
  Whisper's fixed window), ``eager`` off (``EAGER_MS=0``), ``partials`` on (``?partials=1``),
  ``batching`` off (``MAX_BATCH=1``).

Scores (``tools/romanize.py``): English on Whisper-style tokens, Hindi on the loose romanised
form (WER and CER); WER is pooled (all errors / all reference words) with a bootstrap 95 %
interval over utterances (1000 resamples, seed 0); substitutions, deletions, insertions;
``wer_digits`` the same with number words read as digits on both sides ("ten" = "10").
Counted: utterances with no output (with their peak dBFS); loops (a 1-8 word unit repeated
back to back 3 times or more, the transcriber guard's own rule, so streaming output shows them
only where the guard let one through); hallucinations: a scored utterance whose output has 3
words or more and none in common with the reference, or more than twice the reference's words
plus 3, and any output that is one of Whisper's stock phrases ("thank you", "you", ...) where
the reference does not say it or there is no reference. Utterances without a reference (the
Hindi call clips) are decoded and counted, never scored. The 5 worst are printed side by side.
Results: ``--out`` with the exact command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import redis
import soundfile as sf

from bench.common import Session, write_report
from bench.talkers import child
from services import keys
from services.audio import pcm16_to_float, resample_pcm16
from services.stack import ROOT, free_port, port_open, redis_args, wait_until
from services.transcriber.guard import _loop_at, _norm
from tools.romanize import Score, english_tokens, hindi_tokens, is_devanagari, score

EVALSET = ROOT / "bench" / "evalset"
CT2_DIR = ROOT / "models" / "whisper-base-ct2"
THREADS = 2
CHUNK_MS = 20
MODES = {"16k": (16000, "linear16"), "8k": (8000, "linear16"), "mulaw": (8000, "mulaw")}
LEVERS = {  # name -> (stack environment, partials): each flips one default
    "context": (["CONTEXT_S=30"], False),
    "eager": (["EAGER_MS=0"], False),
    "partials": ([], True),
    "batching": (["MAX_BATCH=1"], False),
}
STOCK_PHRASES = {
    "you",
    "thank you",
    "thank you very much",
    "thanks for watching",
    "thank you for watching",
    "bye",
    "thank you so much",
}
BOOTSTRAP = 1000


@dataclass(frozen=True)
class Utterance:
    id: str
    path: Path
    text: str | None
    language: str
    speaker: str
    duration: float
    peak_dbfs: float

    def pcm(self) -> bytes:
        samples, rate = sf.read(self.path, dtype="int16")
        assert rate == 16000 and samples.ndim == 1, self.path
        return bytes(samples.astype("<i2").tobytes())


def load_evalset(
    folder: Path, limit: int = 0, ids: Sequence[str] = (), languages: Sequence[str] = ()
) -> list[Utterance]:
    """The manifest's utterances; ``limit`` of them taken in turn from each speaker."""
    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines() if line]
    utts = [
        Utterance(
            r["id"], folder / r["file"], r["text"], r["language"], r["speaker"], r["duration"], r["peak_dbfs"]
        )
        for r in rows
        if (not ids or r["id"] in ids) and (not languages or r["language"] in languages)
    ]
    if ids and len(utts) != len(set(ids)):
        raise SystemExit(f"error: unknown ids {sorted(set(ids) - {u.id for u in utts})}")
    if not limit or limit >= len(utts):
        return utts
    by_speaker: dict[str, list[Utterance]] = {}
    for u in utts:
        by_speaker.setdefault(u.speaker, []).append(u)
    picked: list[Utterance] = []
    while len(picked) < limit:
        for group in by_speaker.values():
            if group and len(picked) < limit:
                picked.append(group.pop(0))
    return picked


# --- audio ------------------------------------------------------------------------------------


def mulaw_encode(pcm: bytes) -> bytes:
    """16-bit PCM as ITU-T G.711 mu-law (the inverse of ``services.audio``'s table)."""
    x = np.frombuffer(pcm, "<i2").astype(np.int32)
    magnitude = np.minimum(np.abs(x), 32635) + 0x84
    exponent = np.clip(np.floor(np.log2(magnitude)).astype(np.int32) - 7, 0, 7)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    code = ~(((x < 0).astype(np.int32) << 7) | (exponent << 4) | mantissa) & 0xFF
    return bytes(code.astype(np.uint8).tobytes())


def audio_for(utt: Utterance, mode: str) -> bytes:
    rate, encoding = MODES[mode]
    pcm = resample_pcm16(utt.pcm(), 16000, rate)
    return mulaw_encode(pcm) if encoding == "mulaw" else pcm


# --- offline: the model alone ---------------------------------------------------------------------


def offline(utts: Sequence[Utterance], beam: int) -> dict[str, str]:
    """Each utterance decoded whole, Whisper's 30 s window, by the CTranslate2 backend (int8)."""
    from services.transcriber.ct2_model import CTranslate2Model
    from services.transcriber.interface import WINDOW_S, Decoding

    decoding = Decoding(language="en", task="transcribe", beam_size=beam, context_s=(WINDOW_S,))
    model = CTranslate2Model.load(str(CT2_DIR), "cpu", "int8", decoding, THREADS)
    texts = {}
    for utt in utts:
        audio = pcm16_to_float(utt.pcm())
        window = WINDOW_S * 16000  # longer utterances: one window after another
        parts = [model.transcribe([audio[i : i + window]])[0].text for i in range(0, len(audio), window)]
        texts[utt.id] = " ".join(p for p in parts if p)
    return texts


# --- streaming: the real stack --------------------------------------------------------------------


@dataclass
class Sender(Session):
    """Our protocol at ``speed`` x real time, in 16-bit PCM or G.711 mu-law."""

    encoding: str = "linear16"
    speed: float = 1.0
    texts: list[str] = field(default_factory=list)

    @property
    def chunk_bytes(self) -> int:
        return self.rate * self.chunk_ms // 1000 * (1 if self.encoding == "mulaw" else 2)

    def due(self, frame: int) -> float:
        return self.started + frame * self.chunk_ms / 1000 / self.speed

    def url(self) -> str:
        encoding = "" if self.encoding == "linear16" else f"&encoding={self.encoding}"
        return super().url() + encoding


@contextlib.contextmanager
def stack(env: Sequence[str], workdir: Path, tag: str) -> Iterator[str]:
    """`make run`'s stack (``python -m services.stack``) with ``env`` overriding its defaults, on a
    private redis-server, as ``bench.talkers`` starts it; once a transcriber serves. Fails at
    once, with the end of its log, if the stack exits meanwhile."""
    redis_port, port = free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    settings = dict(kv.split("=", 1) for kv in env)
    settings |= {"REDIS_URL": redis_url, "PORT": str(port), "METRICS_PORT": str(free_port())}
    settings |= {"LOG_LEVEL": "WARNING"}
    with child("redis", redis_args(redis_port, workdir), {}, workdir / f"redis-{tag}.log"):
        wait_until(lambda: port_open(redis_port), 10, "redis-server")
        with child(
            "stack", [sys.executable, "-m", "services.stack"], settings, workdir / f"stack-{tag}.log"
        ) as proc:
            with redis.Redis.from_url(redis_url) as client:

                def serving() -> bool:
                    if proc.exited:
                        raise RuntimeError(f"the stack exited: {proc.log[-3000:]}")
                    return port_open(port) and any(client.scan_iter(match=keys.ALIVE_PATTERN))

                wait_until(serving, 300, "the stack to serve")
            yield f"ws://127.0.0.1:{port}"


async def stream_all(
    uri: str, utts: Sequence[Utterance], mode: str, partials: bool, concurrency: int, speed: float
) -> dict[str, Sender]:
    rate, encoding = MODES[mode]
    gate = asyncio.Semaphore(concurrency)

    async def one(utt: Utterance) -> Sender:
        sender = Sender(uri, audio_for(utt, mode), rate, CHUNK_MS, partials, encoding=encoding, speed=speed)
        async with gate:
            try:
                await sender.run(done_timeout=90)
            except (OSError, ConnectionError, TimeoutError) as exc:
                sender.error = sender.error or f"{type(exc).__name__}: {exc}"
        return sender

    sent = await asyncio.gather(*(one(u) for u in utts))
    return {u.id: s for u, s in zip(utts, sent, strict=True)}


def hypothesis(sender: Sender) -> str:
    return " ".join(str(r.event.get("text", "")).strip() for r in sender.finals).strip()


# --- scoring ------------------------------------------------------------------------------------


def tokens(text: str, language: str) -> list[str]:
    if language == "hi":
        return hindi_tokens(text, "devanagari" if is_devanagari(text) else "latin")
    return english_tokens(text)


def loops(text: str) -> bool:
    keys = [_norm(w) for w in text.split()]
    return any(_loop_at(keys, i, 2) is not None for i in range(len(keys)))


def hallucinated(utt: Utterance, hyp: str) -> bool:
    said = " ".join(english_tokens(hyp))
    stock = said in STOCK_PHRASES and (utt.text is None or said not in " ".join(english_tokens(utt.text)))
    if utt.text is None or not hyp.strip():
        return stock
    ref, got = tokens(utt.text, utt.language), tokens(hyp, utt.language)
    return stock or (len(got) >= 3 and not set(ref) & set(got)) or len(got) > 2 * len(ref) + 3


def pooled(errors: np.ndarray, refs: np.ndarray) -> float:
    return float(errors.sum() / max(1, refs.sum()))


def bootstrap(errors: np.ndarray, refs: np.ndarray) -> list[float]:
    """95 % interval of the pooled rate, utterances resampled with replacement."""
    if not len(errors):
        return [0.0, 0.0]
    picks = np.random.default_rng(0).integers(0, len(errors), (BOOTSTRAP, len(errors)))
    rates = errors[picks].sum(axis=1) / np.maximum(1, refs[picks].sum(axis=1))
    return [round(float(np.percentile(rates, 2.5)), 4), round(float(np.percentile(rates, 97.5)), 4)]


def summarise(
    label: str, utts: Sequence[Utterance], hyps: dict[str, str], extra: dict[str, Any]
) -> dict[str, Any]:
    scored = [u for u in utts if u.text is not None]
    scores: dict[str, Score] = {u.id: score(u.text or "", hyps[u.id], u.language) for u in scored}
    errors = np.array([scores[u.id].words.errors for u in scored])
    refs = np.array([scores[u.id].words.ref for u in scored])
    digits = [score(u.text or "", hyps[u.id], u.language, digits=True).words for u in scored]
    out: dict[str, Any] = {
        "label": label,
        "utterances": len(utts),
        "scored": len(scored),
        "ref_words": int(refs.sum()),
        "wer": round(pooled(errors, refs), 4),
        "wer_ci95": bootstrap(errors, refs),
        "wer_digits": round(sum(d.errors for d in digits) / max(1, sum(d.ref for d in digits)), 4),
        **{
            k: sum(getattr(scores[u.id].words, k) for u in scored)
            for k in ("substitutions", "deletions", "insertions")
        },
    }
    for language in sorted({u.language for u in scored}):
        mine = [u for u in scored if u.language == language]
        e = np.array([scores[u.id].words.errors for u in mine])
        r = np.array([scores[u.id].words.ref for u in mine])
        out[f"wer_{language}"] = round(pooled(e, r), 4)
        ce = sum(scores[u.id].chars.errors for u in mine)
        out[f"cer_{language}"] = round(ce / max(1, sum(scores[u.id].chars.ref for u in mine)), 4)
    out["no_output"] = [{"id": u.id, "peak_dbfs": u.peak_dbfs} for u in utts if not hyps[u.id].strip()]
    out["loops"] = [u.id for u in utts if loops(hyps[u.id])]
    out["hallucinations"] = [u.id for u in utts if hallucinated(u, hyps[u.id])]
    ranked = sorted(scored, key=lambda u: (scores[u.id].words.rate, scores[u.id].words.errors), reverse=True)
    out["worst"] = [
        {"id": u.id, "wer": round(scores[u.id].words.rate, 3), "ref": u.text, "hyp": hyps[u.id]}
        for u in ranked[:5]
    ]
    out |= extra
    out["texts"] = {u.id: hyps[u.id] for u in utts}
    return out


def print_run(run: dict[str, Any]) -> None:
    lo, hi = run["wer_ci95"]
    langs = ", ".join(
        f"{k} {v}" for k, v in run.items() if k.startswith(("wer_", "cer_")) and k != "wer_ci95"
    )
    print(
        f"{run['label']}: WER {run['wer']} [{lo}, {hi}] ({langs}); S/D/I {run['substitutions']}/"
        f"{run['deletions']}/{run['insertions']} of {run['ref_words']} words; no output "
        f"{len(run['no_output'])} {[(n['id'], n['peak_dbfs']) for n in run['no_output']]}; loops "
        f"{len(run['loops'])}; hallucinations {len(run['hallucinations'])} {run['hallucinations']}",
        flush=True,
    )
    for w in run["worst"]:
        print(f"    {w['id']} ({w['wer']}): ref {w['ref']!r}\n    {'':{len(w['id']) + 8}}hyp {w['hyp']!r}")


# --- main ------------------------------------------------------------------------------------------


def streaming_runs(args: argparse.Namespace) -> Iterator[tuple[str, list[str], str, bool]]:
    """(label, stack environment, mode, partials) of each streaming run, one stack per environment."""
    for mode in args.modes:
        yield f"streaming {mode}, make run defaults", [], mode, False
    for lever in args.levers:
        env, partials = LEVERS[lever]
        what = "on" if partials else "off"
        yield f"streaming 16k, {lever} {what}", env, "16k", partials


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--evalset", type=Path, default=EVALSET)
    parser.add_argument(
        "--limit", type=int, default=0, help="this many utterances, spread over speakers (0: all)"
    )
    parser.add_argument("--ids", default="", help="comma-separated utterance ids (default: all)")
    parser.add_argument("--languages", default="", help="comma-separated languages (default: all)")
    parser.add_argument("--offline", default="greedy,beam5", help="greedy, beam5, both or none")
    parser.add_argument(
        "--modes", default="16k,8k,mulaw", help=f"streaming modes of {', '.join(MODES)}, or none"
    )
    parser.add_argument("--levers", default="all", help=f"all, none, or some of {', '.join(LEVERS)}")
    parser.add_argument("--concurrency", type=int, default=4, help="sessions streaming at once")
    parser.add_argument("--speed", type=float, default=1.0, help="x real time (1: real time)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fidelity.json")
    args = parser.parse_args(argv)

    def listed(raw: str, known: Sequence[str], what: str) -> list[str]:
        chosen = list(known) if raw == "all" else [] if raw in ("none", "") else raw.split(",")
        if set(chosen) - set(known):
            parser.error(f"unknown {what} {sorted(set(chosen) - set(known))}; choose from {', '.join(known)}")
        return chosen

    offline_runs = listed(args.offline, ("greedy", "beam5"), "offline decodings")
    args.modes = listed(args.modes, tuple(MODES), "modes")
    args.levers = listed(args.levers, tuple(LEVERS), "levers")
    ids = [i for i in args.ids.split(",") if i]
    languages = [x for x in args.languages.split(",") if x]
    utts = load_evalset(args.evalset, args.limit, ids, languages)
    command = shlex.join(
        [".venv/bin/python", "-m", "bench.fidelity", *(sys.argv[1:] if argv is None else argv)]
    )
    report: dict[str, Any] = {
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "evalset": {
            "folder": str(
                args.evalset.relative_to(ROOT) if args.evalset.is_relative_to(ROOT) else args.evalset
            ),
            "utterances": len(utts),
            "scored": sum(u.text is not None for u in utts),
            "minutes": round(sum(u.duration for u in utts) / 60, 2),
            "speakers": len({u.speaker for u in utts}),
            "languages": {x: sum(u.language == x for u in utts) for x in sorted({u.language for u in utts})},
            "ids": [u.id for u in utts],
        },
        "runs": [],
    }
    print(f"{len(utts)} utterances, {report['evalset']['minutes']} min", flush=True)
    for name in offline_runs:
        started = time.monotonic()
        texts = offline(utts, 1 if name == "greedy" else 5)
        extra: dict[str, Any] = {"kind": "offline", "beam": 1 if name == "greedy" else 5, "window_s": 30}
        extra["wall_s"] = round(time.monotonic() - started, 1)
        run = summarise(f"offline {name}, 30 s window, CTranslate2 int8", utts, texts, extra)
        report["runs"].append(run)
        print_run(run)
        write_report(args.out, report)
    plan = list(streaming_runs(args))
    with tempfile.TemporaryDirectory() as tmp:
        for env in dict.fromkeys(tuple(e) for _, e, _, _ in plan):
            with stack(env, Path(tmp), f"fidelity-{len(report['runs'])}") as uri:
                for label, run_env, mode, partials in plan:
                    if tuple(run_env) != env:
                        continue
                    started = time.monotonic()
                    sent = asyncio.run(stream_all(uri, utts, mode, partials, args.concurrency, args.speed))
                    extra = {
                        "kind": "streaming",
                        "mode": mode,
                        "env": list(env),
                        "partials": partials,
                        "speed": args.speed,
                        "concurrency": args.concurrency,
                        "wall_s": round(time.monotonic() - started, 1),
                        "session_errors": {k: s.error for k, s in sent.items() if s.error},
                        "warnings": {
                            k: [r.event.get("code") for r in s.events if r.event["type"] == "warning"]
                            for k, s in sent.items()
                            if any(r.event["type"] == "warning" for r in s.events)
                        },
                    }
                    run = summarise(label, utts, {k: hypothesis(s) for k, s in sent.items()}, extra)
                    report["runs"].append(run)
                    print_run(run)
                    write_report(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
