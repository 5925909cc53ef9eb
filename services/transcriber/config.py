"""Transcriber settings: one frozen dataclass, built once from flags and env vars."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from services.catalog import served_pool
from services.config import EnvArgumentParser, add_common_flags, auto_or, from_args, positive
from services.transcriber.interface import DEFAULT_CONTEXT_S, WINDOW_S, Decoding

DEFAULT_MODEL_ID = "Oriserve/Whisper-Hindi2Hinglish-Swift"
# See the comment on Worker._read_batch for how this was chosen.
DEFAULT_BATCH_WAIT_MS = 10
# Most segments of uploaded files in one batch (--file-batch auto: these). Between two file
# batches the transcriber looks at the live streams again, so a live segment that arrives while a
# file is transcribed waits for at most one file batch. On the 2-core CPU a batch costs about as
# much per segment as its segments one by one (Worker._fill: 0.8-1.0 s per segment at batch 1, 4
# or 8), so a big file batch buys little throughput there and holds a newly arrived live segment
# back longer (4 segments: 3-4 s). bench.files, 8 talkers beside a 10-minute file
# (docs/performance.md): their p95 rose 47-88 % at 4 (two runs) and 6-35 % at 1 (three), the
# file at 0.72-0.74 of faster-whisper's speed at 1 against 0.74-0.78 at 4. On a GPU, where a
# batch of 8-16 costs little more than one segment, 4 stays (the earlier default everywhere; not
# measured on a GPU).
CPU_FILE_BATCH = 1
GPU_FILE_BATCH = 4
# While any transcriber of the pool has read a live entry (a final or a partial request) this
# recently, the finals transcribers leave the file lane to the partials transcriber (nice +19),
# whose file work takes only the CPU live work leaves: then a live segment waits for no file batch
# at all. bench.files, 8 talkers beside a 10-minute file on the 2-core CPU: their p95 rose 119 %
# while the finals transcribers took file batches between live segments, 63 % while each judged
# the pause by its own reads alone (docs/performance.md). 2 s is longer than the gap between two
# talkers' segments under load and shorter than the pauses in which a quiet pool has time for files.
DEFAULT_FILE_IDLE_S = 2.0
ROLES = ("all", "finals", "partials")
# A partials-only transcriber's niceness: when it shares the CPU with a finals transcriber,
# Linux gives it about 1/70 of the other's share (CFS weights 15 vs 1024) while both are busy.
PARTIALS_NICE = 19


def non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError(f"{raw} is < 0")
    return value


def non_negative_float(raw: str) -> float:
    value = float(raw)
    if not value >= 0:
        raise ValueError(f"{raw} is not >= 0")
    return value


class ConfigError(Exception):
    """A setting that cannot work on this machine; the message is one line."""


@dataclass(frozen=True)
class TranscriberConfig:
    redis_url: str
    model_id: str
    name: str  # the pool (and stream) this transcriber serves
    role: str  # "all" (finals, files, partials), "finals" (finals, files) or "partials"
    backend: str  # "transformers" (the reference) or "ctranslate2"
    device: str
    dtype: str  # transformers weights precision
    compute_type: str  # CTranslate2 compute type
    decoding: Decoding
    max_batch: int
    batch_wait_ms: int
    file_batch: int  # most segments of uploaded files transcribed in one batch
    file_idle_s: float  # a finals transcriber takes files only this long after the pool's last live read
    claim_idle_ms: int
    max_attempts: int
    threads: int
    metrics_port: int
    consumer: str
    log_level: str


def cuda_available(backend: str) -> tuple[bool, str]:
    """Whether ``backend`` can use a CUDA GPU here, and if not, why."""
    if backend == "ctranslate2":
        import ctranslate2  # type: ignore[import-untyped]

        return ctranslate2.get_cuda_device_count() > 0, "CTranslate2 sees no CUDA GPU"
    import torch

    why = "this torch is a CPU-only build" if torch.version.cuda is None else "no CUDA GPU is visible"
    return torch.cuda.is_available(), why


def resolve_device(backend: str, device: str, dtype: str) -> tuple[str, str]:
    """Turn ``auto`` into a real device and dtype; refuse what cannot work here."""
    cuda, why = cuda_available(backend)
    if device == "cuda" and not cuda:
        raise ConfigError(f"--device cuda asked for, but CUDA is not available ({why}); use --device cpu")
    resolved = device if device != "auto" else ("cuda" if cuda else "cpu")
    if dtype == "float16" and resolved == "cpu":
        raise ConfigError("--dtype float16 needs a CUDA device; on CPU use --dtype float32")
    if dtype == "auto":
        dtype = "float16" if resolved == "cuda" else "float32"
    return resolved, dtype


CPU_COMPUTE_TYPES = ("int8", "int8_float32", "float32")


def resolve_compute_type(backend: str, device: str, dtype: str, compute_type: str) -> str:
    """Turn ``auto`` into int8 (CPU) or float16 (CUDA); refuse flags of the other backend."""
    if backend == "transformers":
        if compute_type != "auto":
            raise ConfigError(
                "--compute-type is for --backend ctranslate2; the transformers backend uses --dtype"
            )
        return compute_type
    if dtype != "auto":
        raise ConfigError(
            "--dtype is for --backend transformers; the ctranslate2 backend uses --compute-type"
        )
    if compute_type == "auto":
        return "float16" if device == "cuda" else "int8"
    if device == "cpu" and compute_type not in CPU_COMPUTE_TYPES:
        raise ConfigError(f"--compute-type {compute_type} needs a CUDA device; on CPU use int8 or float32")
    return compute_type


def context_seconds(raw: str) -> tuple[int, ...]:
    """``10,20,30``: the encoder window lengths (s) a segment may be padded to; 30 must be one."""
    try:
        windows = tuple(sorted({int(x) for x in raw.split(",") if x.strip()}))
    except ValueError:
        raise ValueError(f"{raw!r} is not a comma-separated list of seconds") from None
    if not windows or windows[-1] != WINDOW_S or windows[0] < 1:
        raise ValueError(f"{raw!r}: windows must be 1..{WINDOW_S} s and include {WINDOW_S}")
    return windows


def resolve_file_batch(file_batch: int | str, device: str) -> int:
    """``--file-batch auto``: the batch for this device (see CPU_FILE_BATCH)."""
    if file_batch != "auto":
        return int(file_batch)
    return GPU_FILE_BATCH if device == "cuda" else CPU_FILE_BATCH


def parse_args(argv: Sequence[str] | None = None) -> TranscriberConfig:
    """Parse flags; raise ConfigError when the device or dtype cannot work here."""
    parser = EnvArgumentParser(
        prog="python -m services.transcriber",
        description="Whisper transcriber: reads speech segments of one model's stream "
        "with a consumer group, publishes each transcript on the session's channel.",
    )
    parser.env_flag(
        "--model-id", "MODEL_ID", DEFAULT_MODEL_ID, "Hugging Face Hub id or local model directory"
    )
    parser.env_flag(
        "--serve-as",
        "SERVE_AS",
        "",
        "pool name clients select with ?model= (default: swift/prime for Oriserve's models, "
        "else the directory name or Hub id)",
    )
    parser.env_flag(
        "--role",
        "ROLE",
        "all",
        "which requests to serve: all (finals first, partials when no final waits, segments of "
        "uploaded files when no live one waits), finals (finals, then files), or "
        f"partials (at OS priority nice +{PARTIALS_NICE}, so that it never slows a finals transcriber "
        "on the same CPU; partials, then files one segment at a time)",
        choices=list(ROLES),
    )
    parser.env_flag(
        "--backend",
        "BACKEND",
        "transformers",
        "inference library: transformers (the reference; GPU default) or ctranslate2 "
        "(int8 on CPU, --model-id is a CTranslate2 directory such as models/whisper-base-ct2)",
        choices=["transformers", "ctranslate2"],
    )
    parser.env_flag("--device", "DEVICE", "auto", "where the model runs", choices=["auto", "cuda", "cpu"])
    parser.env_flag(
        "--dtype",
        "DTYPE",
        "auto",
        "weights precision (auto: float16 on CUDA, float32 on CPU)",
        choices=["auto", "float16", "float32"],
    )
    parser.env_flag(
        "--compute-type",
        "COMPUTE_TYPE",
        "auto",
        "CTranslate2 compute type (auto: int8 on CPU, float16 on CUDA)",
        choices=["auto", "int8", "int8_float32", "int8_float16", "float16", "float32"],
    )
    parser.env_flag(
        "--language", "LANGUAGE", "en", "decoding language; 'en' makes Oriserve's models write Hinglish"
    )
    parser.env_flag("--task", "TASK", "transcribe", "Whisper task", choices=["transcribe", "translate"])
    parser.env_flag("--beam-size", "BEAM_SIZE", 1, "beam search width (1: greedy)", type=positive(int))
    parser.env_flag(
        "--context",
        "CONTEXT_S",
        ",".join(map(str, DEFAULT_CONTEXT_S)),
        "encoder windows (s) a segment is padded to, the smallest that holds it; "
        f"'{WINDOW_S}' is Whisper's own fixed 30 s window (slowest on short segments)",
        type=context_seconds,
    )
    parser.env_flag(
        "--max-batch", "MAX_BATCH", 8, "most segments transcribed in one batch", type=positive(int)
    )
    parser.env_flag(
        "--batch-wait-ms",
        "BATCH_WAIT_MS",
        DEFAULT_BATCH_WAIT_MS,
        "after a batch's first segment arrives, wait at most this long for more (0: take what is there)",
        type=non_negative_int,
    )
    parser.env_flag(
        "--file-batch",
        "FILE_BATCH",
        "auto",
        "most segments of uploaded files per batch; files are served only when no live segment "
        f"waits, so a live segment waits at most one such batch (auto: {CPU_FILE_BATCH} on a CPU, "
        f"{GPU_FILE_BATCH} on a GPU)",
        type=auto_or(positive(int)),
    )
    parser.env_flag(
        "--file-idle-s",
        "FILE_IDLE_S",
        DEFAULT_FILE_IDLE_S,
        "a finals (or all) transcriber takes segments of uploaded files only when no transcriber "
        "of its pool has read a live entry (final or partial) for this long; meanwhile the "
        "partials transcriber takes them in the CPU time live work leaves (0: whenever no live "
        "segment waits)",
        type=non_negative_float,
    )
    parser.env_flag(
        "--claim-idle-ms",
        "CLAIM_IDLE_MS",
        15_000,
        "reclaim entries another consumer left pending this long (a dead transcriber's batch)",
        type=positive(int),
    )
    parser.env_flag(
        "--max-attempts",
        "MAX_ATTEMPTS",
        3,
        "deliveries of a segment before it goes to the dead-letter stream",
        type=positive(int),
    )
    parser.env_flag(
        "--threads",
        "TORCH_THREADS",
        0,
        "CPU threads of the model: torch's, or CTranslate2's intra_threads (0: the library's default)",
        type=int,
    )
    parser.env_flag("--metrics-port", "METRICS_PORT", 9101, "Prometheus /metrics port (0: off)", type=int)
    add_common_flags(parser)
    args = parser.parse_args(argv)
    compute_dtype = args.dtype if args.backend == "transformers" else "auto"
    device, dtype = resolve_device(args.backend, args.device, compute_dtype)
    compute_type = resolve_compute_type(args.backend, device, args.dtype, args.compute_type)
    consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    # Every other field is its flag as parsed.
    return from_args(
        TranscriberConfig,
        args,
        name=served_pool(args.model_id, args.serve_as),
        device=device,
        dtype=dtype,
        file_batch=resolve_file_batch(args.file_batch, device),
        compute_type=compute_type,
        decoding=Decoding(args.language, args.task, args.beam_size, args.context),
        consumer=consumer,
    )
