"""Which encoder windows and beam width to use: WER, drift, loops, hallucinations and speed.

    .venv/bin/python -m bench.context [--backends ct2-int8,transformers] [--beams 1,5]
                                      [--windows "30;10,20,30;5,10,20,30"] [--out bench/results/context.json]

Whisper pads every clip to a 30 s window; ``--context`` pads a segment only to the smallest
window that holds it (``services.transcriber.interface.context_frames``). Whisper was trained on
30 s windows, so each window set is checked on what could go wrong, per backend and beam width,
one segment at a time on 2 threads:

- WER on 26 espeak-ng sentences: the six of the tests and twenty more (each with 0.3 s of
  silence on both sides);
- drift on the six real Hindi clips in audio/oriserve-examples (no references: the WER of the
  output against the same backend's 30 s greedy output);
- loops: outputs that the repetition guard (``collapse_repeats``) has to cut;
- hallucinations: text that passes the guard (``judge``) on 2 s of digital silence, white noise
  and low-frequency hum, which the VAD would normally keep away from the model;
- model seconds per segment.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from bench.backends import BACKENDS, RATE, Clip, hindi_clips, machine
from bench.common import write_report
from services.stack import ROOT
from services.transcriber.guard import collapse_repeats, judge
from services.transcriber.interface import Decoding, SpeechModel
from tools.speech import Speech, espeak, to_rate, wer

PAD_S = 0.3
THREADS = 2


# Twenty more sentences of the kind a contact centre hears, so that one word is under 0.004 of WER.
MORE_SENTENCES = (
    "I want to know why my last bill was so much higher than usual.",
    "The delivery was supposed to arrive on Monday but it never came.",
    "Could you please send the statement to my registered email address?",
    "My card was blocked after I entered the wrong pin three times.",
    "I would like to speak to someone about upgrading my plan.",
    "The technician said he would come between ten and twelve.",
    "Please cancel the order I placed yesterday evening.",
    "How many days will it take for the money to reach my account?",
    "I have already shared my documents twice with your team.",
    "The app keeps crashing whenever I try to make a payment.",
    "Can I change the date of my appointment to next Friday?",
    "My mother's name is on the account, but I pay the bills.",
    "There is no network in my area since the storm last night.",
    "I did not receive any message about the interest rate change.",
    "Please note my new phone number and update your records.",
    "The product I received is damaged and I want a replacement.",
    "Is there any charge for closing the account before one year?",
    "I called yesterday and the agent promised to call me back.",
    "We are a family of four and need a bigger data pack.",
    "Thank you for your help, that solves my problem completely.",
)


def espeak_clips(workdir: Path) -> tuple[list[Clip], tuple[str, ...]]:
    """The tests' six sentences and MORE_SENTENCES, each with PAD_S of silence on both sides."""
    stream = Speech(workdir).stream(RATE, (0, 1, 2, 3, 4, 5))
    clips = stream.clips(PAD_S)
    pad = np.zeros(int(PAD_S * RATE), np.float32)
    for n, text in enumerate(MORE_SENTENCES):
        path = to_rate(espeak(text, workdir / f"more-{n}.wav"), RATE, workdir, f"more-{n}")
        samples, _ = sf.read(path, dtype="float32")
        clips.append(np.concatenate([pad, samples, pad]))
    return clips, stream.texts + MORE_SENTENCES


def non_speech() -> list[Clip]:
    rng = np.random.default_rng(0)
    t = np.arange(2 * RATE) / RATE
    return [
        np.zeros(2 * RATE, np.float32),
        (rng.standard_normal(2 * RATE) * 0.05).astype(np.float32),
        (0.05 * np.sin(2 * np.pi * 50 * t)).astype(np.float32),
    ]


def run(model: SpeechModel, clips: list[Clip]) -> tuple[list[str], list[float], float]:
    """Texts, no-speech probabilities and seconds per clip, one clip at a time."""
    texts, no_speech, started = [], [], time.perf_counter()
    for clip in clips:
        [transcript] = model.transcribe([clip])
        texts.append(transcript.text)
        no_speech.append(transcript.no_speech_prob)
    return texts, no_speech, (time.perf_counter() - started) / len(clips)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="ct2-int8,transformers")
    parser.add_argument("--beams", default="1,5")
    parser.add_argument("--windows", default="30;10,20,30;5,10,20,30", help="window sets (s), ';' between")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "context.json")
    args = parser.parse_args()
    windows = [tuple(int(x) for x in w.split(",")) for w in args.windows.split(";")]
    with tempfile.TemporaryDirectory() as tmp:
        english, references = espeak_clips(Path(tmp))
    hindi, silence = hindi_clips(), non_speech()
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "threads": THREADS,
        "rows": [],
    }
    print(f"{'backend':<13} {'beam':>4} {'windows':<12} | {'WER':>5} {'s/seg':>6} | {'hindi drift':>11} "
          f"{'s/seg':>6} | {'loops':>5} {'halluc.':>7}")  # fmt: skip
    for name in args.backends.split(","):
        torch.set_num_threads(THREADS)
        reference, _, _ = run(BACKENDS[name].load(THREADS, Decoding()), hindi)  # 30 s, greedy
        for beam in [int(x) for x in args.beams.split(",")]:
            for window in windows:
                torch.set_num_threads(THREADS)
                model = BACKENDS[name].load(THREADS, Decoding(beam_size=beam, context_s=window))
                model.transcribe(english[:1])  # warm-up
                en_texts, _, en_s = run(model, english)
                hi_texts, _, hi_s = run(model, hindi)
                noise_texts, noise_p, _ = run(model, silence)
                outputs = en_texts + hi_texts + noise_texts
                row = {
                    "backend": name,
                    "beam": beam,
                    "windows": list(window),
                    "wer": round(wer(" ".join(references), " ".join(en_texts)), 3),
                    "s_per_segment": round(en_s, 3),
                    "hindi_drift": round(wer(" ".join(reference), " ".join(hi_texts)), 3),
                    "hindi_s_per_segment": round(hi_s, 3),
                    "loops": sum(collapse_repeats(t) != t.strip() for t in outputs),
                    "hallucinations": sum(
                        bool(judge(t, p).text) for t, p in zip(noise_texts, noise_p, strict=True)
                    ),
                    "texts": {"espeak": en_texts, "hindi": hi_texts, "non_speech": noise_texts},
                }
                report["rows"].append(row)
                write_report(args.out, report)
                print(
                    f"{name:<13} {beam:>4} {','.join(map(str, window)):<12} | {row['wer']:>5.3f} "
                    f"{row['s_per_segment']:>6.3f} | {row['hindi_drift']:>11.3f} "
                    f"{row['hindi_s_per_segment']:>6.3f} | {row['loops']:>5} {row['hallucinations']:>7}",
                    flush=True,
                )
                del model
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
