"""Ingest settings: one frozen dataclass, built once from flags and env vars."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.catalog import requested_pool
from services.config import EnvArgumentParser, add_common_flags, boolean, from_args, positive
from services.ingest.outputs.webhook import parse_url
from services.segmenter import SegmenterConfig

# A pack is decoded in one window of Whisper's 30 s, with the transcriber's 1 s margin to spare.
MAX_PACK_S = 29.0


@dataclass(frozen=True)
class CallConfig:
    """Telephony calls (/twilio, /exotel, /plivo) and their event streams."""

    events_ttl: float  # a call's event stream expires this long after its last event (s)
    events_maxlen: int  # and keeps at most about this many events
    twilio_auth_token: str  # when set, /twilio checks X-Twilio-Signature
    webhook_url: str  # when set, every final of a call is POSTed there, signed with webhook_secret
    webhook_secret: str


@dataclass(frozen=True)
class FileConfig:
    """Uploaded files (``POST /v1/listen``, ``POST /v1/audio/transcriptions``)."""

    max_files: int  # files transcribed at once by this ingest
    max_pool_files: int  # and by one pool, across every ingest
    max_file_bytes: int  # an upload over this is refused (413)
    max_file_s: float  # and audio longer than this
    file_result_timeout: float  # a file's segment waits this long for its result (behind live audio)
    file_window: int  # a file keeps at most this many jobs (segments or packs) queued and unanswered
    file_pack_s: float  # a file's segments are packed into jobs of up to this much audio (0: one each)


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
    idle_timeout: float
    send_timeout: float
    max_session_s: float
    ping_interval: float
    ping_timeout: float
    max_sessions: int
    max_backlog: int
    pools: frozenset[str]  # pools the deployment runs, maybe at zero transcribers for now
    pool_start_timeout: float  # how long a session of such a pool waits for its first transcriber
    api_keys: frozenset[str]
    allowed_origins: tuple[str, ...]
    web: bool
    partial_ms: int
    eager_max_backlog: int
    durable_ms: int  # > 0: each segment waits for one replica to have it (WAIT), this long at most
    calls: CallConfig
    files: FileConfig
    tls_cert: str  # with tls_key: serve wss:// and https:// (empty: plain ws:// and http://)
    tls_key: str
    metrics_port: int
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
    parser.env_flag(
        "--idle-timeout",
        "IDLE_TIMEOUT",
        30.0,
        "close a session that sends nothing this long (s)",
        type=positive(float),
    )
    parser.env_flag(
        "--send-timeout",
        "SEND_TIMEOUT",
        10.0,
        "close a session whose client does not take an event this long (s)",
        type=positive(float),
    )
    parser.env_flag(
        "--max-session-s",
        "MAX_SESSION_S",
        7200.0,
        "longest session, in audio or wall-clock seconds; what was said is still delivered",
        type=positive(float),
    )
    parser.env_flag(
        "--ping-interval",
        "PING_INTERVAL",
        20.0,
        "WebSocket keepalive ping interval (s)",
        type=positive(float),
    )
    parser.env_flag(
        "--ping-timeout",
        "PING_TIMEOUT",
        20.0,
        "close a connection whose pong is this late (s): a client that never reads",
        type=positive(float),
    )
    parser.env_flag(
        "--max-sessions",
        "MAX_SESSIONS",
        500,
        "sessions this ingest carries; more get HTTP 503",
        type=positive(int),
    )
    parser.env_flag(
        "--max-backlog",
        "MAX_BACKLOG",
        1000,
        "segments waiting in a model's stream above which new sessions get HTTP 503",
        type=positive(int),
    )
    parser.env_flag(
        "--pools",
        "POOLS",
        "",
        "comma-separated pools this deployment runs even while none of their transcribers is up (an "
        "autoscaler at zero replicas): their sessions are accepted and their segments queued",
    )
    parser.env_flag(
        "--pool-start-timeout",
        "POOL_START_TIMEOUT",
        300.0,
        "seconds a session of a --pools pool with no live transcriber waits for one to come up "
        "(then: no_transcriber, 1013)",
        type=positive(float),
    )
    parser.env_flag(
        "--api-keys",
        "API_KEYS",
        "",
        "comma-separated API keys; when set (or --api-keys-file), clients must send "
        "'Authorization: Bearer KEY' or ?token=KEY",
    )
    parser.env_flag("--api-keys-file", "API_KEYS_FILE", "", "file with one API key per line")
    parser.env_flag(
        "--allowed-origins",
        "ALLOWED_ORIGINS",
        "",
        "comma-separated browser origins allowed to connect (default: any); "
        "clients that send no Origin always may",
    )
    parser.env_flag(
        "--web",
        "WEB_UI",
        True,
        "serve the browser microphone page at http://HOST:PORT/ (--web false turns it off)",
        type=boolean,
    )
    parser.env_flag(
        "--partial-ms",
        "PARTIAL_MS",
        1000,
        "for sessions that ask (?partials=1), a partial transcript every this many ms of speech (0: never)",
        type=int,
    )
    parser.env_flag(
        "--eager-ms",
        "EAGER_MS",
        200,
        "eager endpointing: once a pause lasts this long, transcribe what it would close, so the final "
        "is ready when --silence-ms confirms the pause (0: off; at least the post-roll, under the silence)",
        type=int,
    )
    parser.env_flag(
        "--eager-max-backlog",
        "EAGER_MAX_BACKLOG",
        1,
        "no eager guesses while the model's stream holds more segments than this (the pool is busy)",
        type=int,
    )
    parser.env_flag(
        "--durable-ms",
        "DURABLE_MS",
        0,
        "after queueing a segment, wait up to this long for a replica to have it (Redis WAIT; 0: do not)",
        type=int,
    )
    parser.env_flag(
        "--call-events-ttl",
        "CALL_EVENTS_TTL",
        86400.0,
        "a telephony call's event stream is kept this long after its last event (s)",
        type=positive(float),
    )
    parser.env_flag(
        "--call-events-maxlen",
        "CALL_EVENTS_MAXLEN",
        10000,
        "a telephony call's event stream keeps about this many events",
        type=positive(int),
    )
    parser.env_flag(
        "--twilio-auth-token",
        "TWILIO_AUTH_TOKEN",
        "",
        "the Twilio account's auth token: /twilio then accepts only requests with a valid X-Twilio-Signature",
    )
    parser.env_flag(
        "--webhook-url",
        "WEBHOOK_URL",
        "",
        "POST every telephony final there as JSON (signed with --webhook-secret, retried, bounded)",
    )
    parser.env_flag(
        "--webhook-secret", "WEBHOOK_SECRET", "", "key of the webhook's X-STT-Signature (HMAC-SHA256)"
    )
    parser.env_flag(
        "--max-files", "MAX_FILES", 4, "uploaded files transcribed at once by this ingest", type=positive(int)
    )
    parser.env_flag(
        "--max-pool-files",
        "MAX_POOL_FILES",
        8,
        "uploaded files transcribed at once by one pool, across every ingest (over it: 429)",
        type=positive(int),
    )
    parser.env_flag(
        "--max-file-mb", "MAX_FILE_MB", 200, "an uploaded file over this is refused (413)", type=positive(int)
    )
    parser.env_flag(
        "--max-file-s",
        "MAX_FILE_S",
        4 * 3600.0,
        "uploaded audio longer than this is refused (s)",
        type=positive(float),
    )
    parser.env_flag(
        "--file-result-timeout",
        "FILE_RESULT_TIMEOUT",
        300.0,
        "a file's segment waits this long for its result: files wait behind live audio (s)",
        type=positive(float),
    )
    parser.env_flag(
        "--file-window",
        "FILE_WINDOW",
        8,
        "jobs (segments or packs) of one file queued and unanswered at most (enough to fill the pool's "
        "file batches)",
        type=positive(int),
    )
    parser.env_flag(
        "--file-pack-s",
        "FILE_PACK_S",
        28.0,
        "a file's consecutive segments are decoded together in windows of up to this much audio "
        f"(s, at most {MAX_PACK_S:g}; 0: each segment alone)",
        type=float,
    )
    parser.env_flag(
        "--tls-cert",
        "TLS_CERT",
        "",
        "PEM certificate (chain) file: serve wss:// and https:// (picked up again when the file changes)",
    )
    parser.env_flag("--tls-key", "TLS_KEY", "", "PEM private key file of --tls-cert")
    parser.env_flag("--metrics-port", "METRICS_PORT", 9100, "Prometheus /metrics port (0: off)", type=int)
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if not 0 <= args.file_pack_s <= MAX_PACK_S:
        parser.error(f"--file-pack-s must be between 0 and {MAX_PACK_S:g}, not {args.file_pack_s:g}")
    if args.webhook_url and not args.webhook_secret:
        parser.error("--webhook-url needs --webhook-secret: receivers must be able to check what they get")
    if args.webhook_url:
        try:
            parse_url(args.webhook_url)
        except ValueError as exc:
            parser.error(str(exc))
    segmenter = SegmenterConfig(
        vad_mode=args.vad_mode,
        silence_ms=args.silence_ms,
        pre_roll_ms=args.pre_roll_ms,
        min_speech_ms=args.min_speech_ms,
        max_segment_ms=round(args.max_segment_s * 1000),
        eager_ms=args.eager_ms,
    )
    try:
        segmenter.check()
    except ValueError as exc:
        parser.error(str(exc))
    api_keys = {key.strip() for key in args.api_keys.split(",") if key.strip()}
    if args.api_keys_file:
        try:
            with open(args.api_keys_file) as keys_file:
                api_keys |= {line.strip() for line in keys_file if line.strip() and not line.startswith("#")}
        except OSError as exc:
            parser.error(f"cannot read --api-keys-file: {exc}")
        if not api_keys:
            parser.error(f"--api-keys-file {args.api_keys_file} holds no key")
    # Every other field is its flag as parsed.
    return from_args(
        IngestConfig,
        args,
        default_model=requested_pool(args.default_model),
        segmenter=segmenter,
        pools=frozenset(requested_pool(name) for name in args.pools.split(",") if name.strip()),
        api_keys=frozenset(api_keys),
        allowed_origins=tuple(o.strip() for o in args.allowed_origins.split(",") if o.strip()),
        calls=from_args(
            CallConfig, args, events_ttl=args.call_events_ttl, events_maxlen=args.call_events_maxlen
        ),
        files=from_args(FileConfig, args, max_file_bytes=args.max_file_mb * 1_000_000),
    )
