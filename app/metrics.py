"""Prometheus metrics, one registry per app so that several servers in one process (tests) never collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128)
RTF_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)


class Metrics:
    """Everything the service exports at ``/metrics``; the engine and the routes write, nothing reads back."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("asr_requests", "Requests by route and final status (HTTP status or WebSocket close code)",
                                ["route", "status"], registry=r)
        self.latency = Histogram("asr_request_latency_seconds", "Wall time from request start to response",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("asr_queue_wait_seconds", "Time a segment waited in the batching queue",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("asr_batch_size", "Segments per model batch (its _count is the number of batches)",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("asr_batch_compute_seconds", "Model time per batch",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("asr_queue_depth", "Segments waiting for a batch", registry=r)
        self.queue_depth_peak = Gauge("asr_queue_depth_peak", "Most segments ever waiting at once", registry=r)
        self.active_streams = Gauge("asr_active_streams", "Open WebSocket streaming sessions", registry=r)
        self.audio_seconds = Counter("asr_audio_seconds", "Seconds of audio run through the model", registry=r)
        self.rtf = Histogram("asr_real_time_factor", "Model time / audio seconds, per batch",
                             buckets=RTF_BUCKETS, registry=r)
        self.item_failures = Counter("asr_segment_failures", "Segments whose decoding raised", registry=r)
        self.partials_dropped = Counter("asr_stream_partials_dropped", "Streaming partials not sent: shed under "
                                        "load or overtaken by their segment's final", registry=r)
        self.cancelled = Counter("asr_cancelled_segments", "Segments dropped because their client went away",
                                 registry=r)
        self.ready = Gauge("asr_ready", "1 once the model is loaded and warmed up", registry=r)

    def observe_batch(self, size: int, compute_s: float, audio_s: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(compute_s)
        self.audio_seconds.inc(audio_s)
        if audio_s > 0:
            self.rtf.observe(compute_s / audio_s)
