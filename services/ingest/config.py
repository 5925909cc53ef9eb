"""Ingest settings: one frozen dataclass, built once from flags and env vars."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.config import EnvArgumentParser, add_common_flags, positive
from services.keys import model_name
from services.segmenter import SegmenterConfig


@dataclass(frozen=True)
class IngestConfig:
    host: str
    port: int
    redis_url: str
    default_model: str
    segmenter: SegmenterConfig
    max_frame_bytes: int
    result_timeout: float
    stream_maxlen: int
    drain_timeout: float
    log_level: str


def parse_args(argv: Sequence[str] | None = None) -> IngestConfig:
    parser = EnvArgumentParser(
        prog="python -m services.ingest",
        description="WebSocket ingest: VAD-segments each session's audio, queues segments "
        "on Redis, relays transcripts back in order.",
    )
    parser.env_flag("--host", "HOST", "0.0.0.0", "address to listen on")
    parser.env_flag("--port", "PORT", 8000, "WebSocket port", type=int)
    add_common_flags(parser)
    parser.env_flag(
        "--default-model",
        "DEFAULT_MODEL",
        "swift",
        "model pool for clients that give no ?model= (alias, Hub id or local model dir name)",
    )
    d = SegmenterConfig()
    parser.env_flag("--vad-mode", "VAD_MODE", d.vad_mode, "WebRTC VAD aggressiveness 0..3", type=int)
    parser.env_flag("--silence-ms", "SILENCE_MS", d.silence_ms, "silence that ends a segment (ms)", type=int)
    parser.env_flag(
        "--pre-roll-ms", "PRE_ROLL_MS", d.pre_roll_ms, "audio kept before speech starts (ms)", type=int
    )
    parser.env_flag(
        "--min-speech-ms",
        "MIN_SPEECH_MS",
        d.min_speech_ms,
        "segments with less voiced audio than this are dropped (ms)",
        type=int,
    )
    parser.env_flag(
        "--max-segment-s",
        "MAX_SEGMENT_S",
        d.max_segment_ms / 1000,
        "longest segment; longer speech is cut at a pause (s, < 30)",
        type=float,
    )
    parser.env_flag(
        "--max-frame-bytes",
        "MAX_FRAME_BYTES",
        256 * 1024,
        "largest WebSocket frame accepted (bytes)",
        type=positive(int),
    )
    parser.env_flag(
        "--result-timeout",
        "RESULT_TIMEOUT",
        60.0,
        "seconds a segment may wait for its transcript before the client gets an error for it",
        type=positive(float),
    )
    parser.env_flag(
        "--stream-maxlen",
        "STREAM_MAXLEN",
        2000,
        "approximate cap on entries kept in a model's segment stream",
        type=positive(int),
    )
    parser.env_flag(
        "--drain-timeout",
        "DRAIN_TIMEOUT",
        30.0,
        "on SIGTERM, seconds live sessions get to finish before they are closed with 1001",
        type=positive(float),
    )
    args = parser.parse_args(argv)
    segmenter = SegmenterConfig(
        vad_mode=args.vad_mode,
        silence_ms=args.silence_ms,
        pre_roll_ms=args.pre_roll_ms,
        min_speech_ms=args.min_speech_ms,
        max_segment_ms=round(args.max_segment_s * 1000),
    )
    try:
        segmenter.check()
    except ValueError as exc:
        parser.error(str(exc))
    return IngestConfig(
        host=args.host,
        port=args.port,
        redis_url=args.redis_url,
        default_model=model_name(args.default_model),
        segmenter=segmenter,
        max_frame_bytes=args.max_frame_bytes,
        result_timeout=args.result_timeout,
        stream_maxlen=args.stream_maxlen,
        drain_timeout=args.drain_timeout,
        log_level=args.log_level,
    )
