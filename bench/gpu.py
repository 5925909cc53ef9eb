"""GPU capacity of our transformers backend, with random weights of the real model shapes.

    make gpu-check                     # on a machine with an NVIDIA GPU: python3 -m bench.gpu --device cuda
    python -m bench.gpu --device cpu --sizes toy --batches 1,2 --seconds 2    # the same code, tiny, here

Real Whisper weights cannot travel to the lent GPU machine (64 MiB), and the speed of a
transformer does not depend on its weights' values, only on its shapes and on how many tokens it
decodes. So this builds ``WhisperForConditionalGeneration`` from ``WhisperConfig``s of the real
sizes, with random weights, in float16 on the device: ``swift`` (whisper-base shaped, as
Oriserve's Swift) and ``prime`` (large-v3 shaped, as Prime); ``toy`` is for tests. It drives
the project's own ``services.transcriber.model.WhisperModel`` (log-mel on the device, the
no-speech pass, batched ``generate``), forcing each segment's decode to a realistic length
(``--tokens-per-second``, 6 by default: 12 / 30 / 60 tokens for 2 / 5 / 10 s; end-of-text and
every special token are suppressed, so random weights cannot stop early or emit timestamps),
over segments of ``--seconds`` at batch sizes ``--batches``, with Whisper's fixed 30 s window
and with our context windows (``DEFAULT_CONTEXT_S``).

Per cell: segments/s, p50/p95 latency of one batch call, peak GPU memory. Then, per model and
segment length, the capacity: concurrent callers per GPU at 30 % talk time whose p95 stays within
300 ms beyond the VAD hangover. A segment may wait for the batch in flight and then takes its own,
so the largest batch ``b`` with ``2 * p95(b) <= 0.3 s`` counts; it completes ``b / p50(b)``
segments per second, and a caller talking 30 % of the time produces ``0.3 / seconds`` segments per
second. ``--budget-s`` bounds the run (8 minutes on the device's clock): cells left when it runs
out are reported as not measured.

Needs only torch, transformers and numpy (what the GPU machine has); writes ``--out`` (JSON) and
prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

from bench.measure import percentile
from services.transcriber.interface import DEFAULT_CONTEXT_S, WINDOW_S, Decoding
from services.transcriber.model import WhisperModel

# Shapes of the real models (openai/whisper-base and openai/whisper-large-v3 configs).
SIZES: dict[str, dict[str, int]] = {
    "swift": dict(d_model=512, layers=6, heads=8, ffn=2048, mels=80, vocab=51865),
    "prime": dict(d_model=1280, layers=32, heads=20, ffn=5120, mels=128, vocab=51866),
    "toy": dict(d_model=64, layers=2, heads=2, ffn=128, mels=80, vocab=51865),
}
EOT, SOT, EN = 50257, 50258, 50259
TALK_SHARE = 0.3
EXTRA_P95_S = 0.3


def languages(vocab: int) -> int:
    return 100 if vocab == 51866 else 99


def build(size: str, device: str, dtype: torch.dtype) -> WhisperModel:
    """A random-weight Whisper of ``size``'s shape behind our WhisperModel."""
    s = SIZES[size]
    translate = EN + languages(s["vocab"])
    config = transformers.WhisperConfig(
        vocab_size=s["vocab"],
        num_mel_bins=s["mels"],
        d_model=s["d_model"],
        encoder_layers=s["layers"],
        decoder_layers=s["layers"],
        encoder_attention_heads=s["heads"],
        decoder_attention_heads=s["heads"],
        encoder_ffn_dim=s["ffn"],
        decoder_ffn_dim=s["ffn"],
        max_source_positions=1500,
        max_target_positions=448,
        decoder_start_token_id=SOT,
        eos_token_id=EOT,
        pad_token_id=EOT,
        bos_token_id=EOT,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.WhisperForConditionalGeneration(config).to(dtype).eval()
    generation = transformers.GenerationConfig(
        decoder_start_token_id=SOT,
        eos_token_id=EOT,
        pad_token_id=EOT,
        bos_token_id=EOT,
        no_timestamps_token_id=translate + 5,
        is_multilingual=True,
        lang_to_id={"<|en|>": EN},
        task_to_id={"translate": translate, "transcribe": translate + 1},
        # Random weights must neither stop early nor wander into special or timestamp tokens.
        suppress_tokens=list(range(EOT, s["vocab"])),
        begin_suppress_tokens=[],
        max_length=448,
    )
    model.generation_config = generation
    vocab = {f"t{i}": i for i in range(s["vocab"])}
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=_word_level(vocab),
        additional_special_tokens=[f"t{i}" for i in range(EOT, s["vocab"])],
    )
    processor = types.SimpleNamespace(
        feature_extractor=transformers.WhisperFeatureExtractor(feature_size=s["mels"]), tokenizer=tokenizer
    )
    return WhisperModel(model, processor, device, dtype, Decoding())


def _word_level(vocab: dict[str, int]) -> Any:
    import tokenizers

    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="t0"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    return tokenizer


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def cell(model: WhisperModel, device: str, batch: int, seconds: float, min_time: float) -> dict[str, Any]:
    """Time one batch size on one segment length: warm-up, then at least 3 calls and ``min_time``."""
    rng = np.random.default_rng(batch)
    clips = [(rng.standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32) for _ in range(batch)]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    out = model.transcribe(clips)  # warm-up: kernels, allocator
    sync(device)
    times: list[float] = []
    while len(times) < 3 or (sum(times) < min_time and len(times) < 20):
        started = time.perf_counter()
        out = model.transcribe(clips)
        sync(device)
        times.append(time.perf_counter() - started)
    p50 = statistics.median(times)
    return {
        "batch": batch,
        "calls": len(times),
        "p50_s": round(p50, 4),
        "p95_s": round(percentile(times, 95), 4),
        "segments_per_s": round(batch / p50, 1),
        "tokens": statistics.mean(len(t.text.split()) for t in out),  # what was decoded per segment
        "gpu_mem_mib": round(torch.cuda.max_memory_allocated() / 2**20) if device == "cuda" else None,
    }


def capacity(rows: list[dict[str, Any]], seconds: float) -> dict[str, Any] | None:
    """Callers at 30 % talk time carried with p95 within 300 ms beyond the hangover (see above)."""
    fit = [r for r in rows if 2 * r["p95_s"] <= EXTRA_P95_S]
    if not fit:
        return None
    best = max(fit, key=lambda r: r["batch"] / r["p50_s"])
    per_caller = TALK_SHARE / seconds
    return {"batch": best["batch"], "callers": int(best["batch"] / best["p50_s"] / per_caller)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--sizes", default="swift,prime", help=f"comma-separated of {', '.join(SIZES)}")
    parser.add_argument("--batches", default="1,4,8,16,32,64")
    parser.add_argument("--seconds", default="2,5,10", help="segment lengths (s)")
    parser.add_argument("--tokens-per-second", type=float, default=6.0)
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds of timed calls per cell")
    parser.add_argument("--budget-s", type=float, default=420.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu.json"))
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA GPU visible; use --device cpu for the toy run")
    dtype = torch.float16 if args.device == "cuda" else torch.float32
    started = time.monotonic()
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "dtype": str(dtype),
        "weights": "random, real shapes",
        "rows": [],
        "not_measured": [],
        "capacity": [],
    }
    contexts = {"30 s window": (WINDOW_S,), "context windows": DEFAULT_CONTEXT_S}
    print("| model | window | segment | batch | segments/s | p50 batch | p95 batch | GPU MiB | tokens |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        model = build(size, args.device, dtype)
        for seconds in [float(x) for x in args.seconds.split(",")]:
            tokens = round(seconds * args.tokens_per_second)
            for context_name, context_s in contexts.items():
                model.decoding = Decoding(context_s=context_s, max_tokens=tokens)
                rows: list[dict[str, Any]] = []
                for batch in [int(x) for x in args.batches.split(",")]:
                    key = {"model": size, "window": context_name, "seconds": seconds, "batch": batch}
                    if time.monotonic() - started > args.budget_s:
                        report["not_measured"].append(key)
                        continue
                    row = {**key, **cell(model, args.device, batch, seconds, args.min_time)}
                    rows.append(row)
                    report["rows"].append(row)
                    print(
                        f"| {size} | {context_name} | {seconds:g} s | {batch} | {row['segments_per_s']} | "
                        f"{row['p50_s'] * 1000:.0f} ms | {row['p95_s'] * 1000:.0f} ms | "
                        f"{row['gpu_mem_mib'] or '-'} | {row['tokens']:g} |",
                        flush=True,
                    )
                fits = capacity(rows, seconds)
                report["capacity"].append(
                    {"model": size, "window": context_name, "seconds": seconds, **(fits or {"callers": 0})}
                )
        del model
        if args.device == "cuda":
            torch.cuda.empty_cache()
    print("\n| model | window | segment | callers per GPU (30 % talk, p95 <= hangover + 300 ms) | at batch |")
    print("|---|---|---|---|---|")
    for c in report["capacity"]:
        print(
            f"| {c['model']} | {c['window']} | {c['seconds']:g} s | {c['callers']} | {c.get('batch', '-')} |"
        )
    if report["not_measured"]:
        print(f"\n{len(report['not_measured'])} cells not measured: the {args.budget_s:.0f} s budget ran out")
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out} in {report['elapsed_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
