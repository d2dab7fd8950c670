"""The server's Prometheus metrics, shown at /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()  # one per app: tests start many
        r = self.registry
        self.requests = Counter("fingpt_requests", "HTTP requests", ["path", "status"], registry=r)
        self.tokens = Counter("fingpt_generated_tokens", "Tokens generated", registry=r)
        self.queue_depth = Gauge("fingpt_queue_depth", "Choices waiting for a batch row", registry=r)
        self.batch_size = Histogram(
            "fingpt_batch_size", "Rows per decoding step", buckets=(1, 2, 4, 8, 16, 32, 64), registry=r
        )
        self.latency = Histogram("fingpt_request_latency_seconds", "Request latency", ["path"], registry=r)
        self.first_token = Histogram("fingpt_time_to_first_token_seconds", "Time to first token", registry=r)
