"""Prometheus metrics of both services, registered on a registry passed in.

Names follow Prometheus conventions (base units, ``_seconds``, ``_total``); labels
stay bounded (model, outcome, reason, kind; never a session id). Latency parts of
one segment: VAD hangover (end of speech -> endpoint), queue wait (enqueued ->
model start), model time, relay (model end -> sent to the client); end to end is
endpoint -> sent.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

from services.protocol import ERROR_CODES

# Handshake refusals (HTTP 401/503) counted in stt_sessions_refused_total beside the error codes.
ADMISSION_REFUSALS = ("unauthorized", "capacity", "backlog", "backend_unavailable")

LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 60.0)
SMALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0)


def new_registry() -> CollectorRegistry:
    """A registry with the process (RSS, CPU, fds) and platform collectors."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


class MetricsPortError(OSError):
    """The metrics port cannot be bound; the message says which and why."""


def serve(registry: CollectorRegistry, port: int) -> None:
    """Expose ``/metrics`` on ``port`` (0 turns it off) from a daemon thread."""
    if port:
        try:
            start_http_server(port, registry=registry)
        except OSError as exc:
            raise MetricsPortError(f"cannot serve metrics on port {port}: {exc.strerror or exc}") from None


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.e2e_latency = Histogram(
            "stt_e2e_latency_seconds",
            "End of speech detected (VAD endpoint) to transcript sent to the client",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.vad_hangover = Histogram(
            "stt_vad_hangover_seconds",
            "Last voiced frame to VAD endpoint: the silence waited before a segment closes",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "stt_queue_wait_seconds",
            "Segment enqueued on the stream to model start",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.model_time = Histogram(
            "stt_segment_model_seconds",
            "Model time of the batch that carried a segment",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.relay = Histogram(
            "stt_relay_seconds",
            "Model end to transcript sent: pub/sub, ordering and the WebSocket write",
            ["model"],
            buckets=SMALL_BUCKETS,
            registry=registry,
        )
        self.sessions_active = Gauge("stt_sessions_active", "Open sessions", registry=registry)
        self.sessions_opened = Counter(
            "stt_sessions_opened_total", "Sessions opened", ["model"], registry=registry
        )
        self.sessions_refused = Counter(
            "stt_sessions_refused_total",
            "Sessions refused or ended by an error",
            ["reason"],
            registry=registry,
        )
        self.segments_enqueued = Counter(
            "stt_segments_enqueued_total", "Speech segments queued for a model", ["model"], registry=registry
        )
        self.segments_dropped = Counter(
            "stt_segments_dropped_total", "VAD segments never sent to a model", ["reason"], registry=registry
        )
        self.speech_level = Histogram(
            "stt_speech_peak_dbfs",
            "Peak level of each speech segment sent to a model (dBFS; 0 is full scale)",
            buckets=(-60, -50, -45, -40, -35, -30, -25, -20, -15, -10, -6, -3, -1, 0),
            registry=registry,
        )
        self.warnings = Counter(
            "stt_warnings_total", "Warning events sent (quiet or clipped audio)", ["code"], registry=registry
        )
        self.eager_guesses = Counter(
            "stt_eager_guesses_total",
            "Eager endpointing: guesses queued, confirmed as finals, and wasted (speech resumed)",
            ["model", "outcome"],
            registry=registry,
        )
        self.errors = Counter("stt_errors_total", "Error events sent to clients", ["kind"], registry=registry)
        self.unreplicated = Counter(
            "stt_unreplicated_segments_total",
            "Segments no replica confirmed within --durable-ms (a failover then could lose them)",
            registry=registry,
        )
        self.webhook_deliveries = Counter(
            "stt_webhook_deliveries_total",
            "Telephony finals POSTed to --webhook-url: delivered, failed (after retries), dropped (full)",
            ["outcome"],
            registry=registry,
        )
        self.task_restarts = Counter(
            "stt_task_restarts_total",
            "Side tasks of the ingest (result subscriber, certificate watcher, webhook) that failed "
            "and were started again",
            ["task"],
            registry=registry,
        )
        self.bytes_received = Counter(
            "stt_audio_received_bytes_total", "PCM bytes received from clients", registry=registry
        )
        # Known label values start at 0, so rate() sees the first event of each.
        for code in ERROR_CODES:
            self.errors.labels(code)
            self.sessions_refused.labels(code)
        for reason in ADMISSION_REFUSALS:
            self.sessions_refused.labels(reason)
        for reason in ("too_short", "noise", "no_speech"):
            self.segments_dropped.labels(reason)
        for outcome in ("delivered", "failed", "dropped"):
            self.webhook_deliveries.labels(outcome)


class TranscriberMetrics:
    def __init__(self, registry: CollectorRegistry, model: str) -> None:
        self.model = model
        self.batch_seconds = Histogram(
            "stt_model_batch_seconds",
            "Model time per batch",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "stt_batch_size", "Segments per batch", ["model"], buckets=BATCH_BUCKETS, registry=registry
        )
        self.audio_seconds = Counter(
            "stt_audio_processed_seconds_total", "Seconds of audio transcribed", ["model"], registry=registry
        )
        self.realtime_factor = Histogram(
            "stt_realtime_factor",
            "Model time / audio seconds of a batch (under 1 is faster than real time)",
            ["model"],
            buckets=RTF_BUCKETS,
            registry=registry,
        )
        self.segments = Counter(
            "stt_segments_transcribed_total",
            "Segments answered, by outcome",
            ["model", "outcome"],
            registry=registry,
        )
        self.reclaimed = Counter(
            "stt_segments_reclaimed_total",
            "Segments reclaimed from another consumer",
            ["model"],
            registry=registry,
        )
        self.dead_lettered = Counter(
            "stt_segments_dead_lettered_total",
            "Segments moved to the dead-letter stream",
            ["model"],
            registry=registry,
        )
        self.skipped = Counter(
            "stt_segments_skipped_total",
            "Segments of sessions whose client was gone",
            ["model"],
            registry=registry,
        )
        self.failures = Counter(
            "stt_model_failures_total", "Model calls that raised", ["model"], registry=registry
        )
        self.stream_length = Gauge(
            "stt_stream_length", "Entries in the model's segment stream", ["model"], registry=registry
        )
        self.stream_pending = Gauge(
            "stt_stream_pending",
            "Entries delivered to a consumer but not yet acknowledged",
            ["model"],
            registry=registry,
        )
        self.stream_lag = Gauge(
            "stt_stream_lag",
            "Entries no consumer has read yet: the consumer group's lag, what KEDA scales on "
            "(NaN while Redis cannot tell)",
            ["model"],
            registry=registry,
        )
        self.file_segments = Counter(
            "stt_file_segments_transcribed_total",
            "Segments of uploaded files answered (also counted in stt_segments_transcribed_total)",
            ["model"],
            registry=registry,
        )
        self.file_stream_length = Gauge(
            "stt_file_stream_length",
            "Entries in the model's stream of uploaded files' segments",
            ["model"],
            registry=registry,
        )
        self.file_stream_pending = Gauge(
            "stt_file_stream_pending",
            "File segments delivered to a consumer but not yet acknowledged",
            ["model"],
            registry=registry,
        )
        self.task_restarts = Counter(
            "stt_task_restarts_total",
            "Side tasks of the transcriber (heartbeat) that failed and were started again",
            ["task"],
            registry=registry,
        )
        self.gpu_memory = Gauge("stt_gpu_memory_bytes", "CUDA memory allocated by torch", registry=registry)
        # Export the known model label at 0 from the start, so rates and alerts on rare
        # events (reclaims, dead letters, failures) have a series before the first one.
        for counter in (
            self.audio_seconds,
            self.reclaimed,
            self.dead_lettered,
            self.skipped,
            self.failures,
            self.file_segments,
        ):
            counter.labels(model)
