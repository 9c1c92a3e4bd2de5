"""/metrics: Prometheus metrics through `prometheus_client`, read from Redis at each scrape.

The stream figures are the status snapshots ingest writes into each stream's meta hash (so one scrape
of any web process covers every ingest process), the queue depth and the workers' heartbeats. Redis is
async and a collector's `collect()` is not, so the route reads a `Snapshot` first and the collector
turns it into metric families; a lock keeps two scrapes from interleaving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from flashlive.memory.jobs import QueueDepth, WorkerInfo
from flashlive.memory.types import StreamState
from flashlive.web.schemas import StreamOut
from flashlive.web.services import Services
from flashlive.web.status import all_streams, queue_and_workers


@dataclass
class Snapshot:
    streams: list[StreamOut] = field(default_factory=list)
    depth: QueueDepth = field(default_factory=lambda: QueueDepth(0, 0))
    workers: list[WorkerInfo] = field(default_factory=list)
    ws_clients: int = 0
    live_events: int = 0
    rate_limited: int = 0
    asks: dict[str, int] = field(default_factory=dict)


class SnapshotCollector(Collector):
    def __init__(self) -> None:
        self.snapshot = Snapshot()

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        s = self.snapshot
        state = GaugeMetricFamily(
            "flashlive_stream_state", "1 for the stream's current state", labels=["stream", "state"]
        )
        for row in s.streams:
            for st in [*(x.value for x in StreamState), "pending"]:
                state.add_metric([row.name, st], float(row.state == st))
        yield state
        gauges = (
            ("flashlive_stream_stale", "1 when the stream's ingest process stopped reporting", "stale"),
            ("flashlive_stream_clips", "Clips held in memory", "clips"),
            ("flashlive_stream_bytes", "Token and thumbnail bytes held in memory", "bytes"),
            ("flashlive_stream_span_seconds", "Time span of the memory", "span_s"),
            ("flashlive_stream_lag_seconds", "Wait of the oldest clip queued for the encoder", "lag_s"),
            ("flashlive_stream_latency_seconds", "Last clip, complete to stored", "latency_s"),
            ("flashlive_stream_sample_fps", "Current sample rate", "fps"),
            ("flashlive_stream_input_fps", "Decoded frame rate", "input_fps"),
            ("flashlive_stream_pending_clips", "Clips waiting for the encoder", "pending_clips"),
        )  # fmt: skip
        for name, doc, attr in gauges:
            g = GaugeMetricFamily(name, doc, labels=["stream"])
            for row in s.streams:
                g.add_metric([row.name], float(getattr(row, attr)))
            yield g
        for name, doc, attr in (
            ("flashlive_stream_dropped_clips", "Clips skipped by backpressure", "dropped_clips"),
            ("flashlive_stream_reconnects", "Reconnect attempts", "reconnects"),
        ):
            c = CounterMetricFamily(name, doc, labels=["stream"])
            for row in s.streams:
                c.add_metric([row.name], float(getattr(row, attr)))
            yield c
        queue = GaugeMetricFamily("flashlive_queue_jobs", "Ask jobs in the queue", labels=["status"])
        queue.add_metric(["waiting"], float(s.depth.waiting))
        queue.add_metric(["running"], float(s.depth.running))
        yield queue
        yield GaugeMetricFamily(
            "flashlive_workers", "Query workers with a live heartbeat", value=len(s.workers)
        )
        busy = GaugeMetricFamily(
            "flashlive_worker_running_jobs", "Jobs a worker runs now", labels=["worker", "model"]
        )
        for w in s.workers:
            busy.add_metric([w.name, w.model], float(len(w.running)))
        yield busy
        asks = CounterMetricFamily("flashlive_asks", "Questions submitted here, by API", labels=["api"])
        for api in ("ask", "openai"):
            asks.add_metric([api], float(s.asks.get(api, 0)))
        yield asks
        yield GaugeMetricFamily("flashlive_ws_clients", "Open WebSocket connections", value=s.ws_clients)
        yield CounterMetricFamily(
            "flashlive_live_events", "Live events received by this web process", value=s.live_events
        )
        yield CounterMetricFamily(
            "flashlive_rate_limited_requests", "Requests refused by the rate limit", value=s.rate_limited
        )


class WebMetrics:
    """The app's metrics registry: the snapshot collector plus counters the app keeps itself."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.collector = SnapshotCollector()
        self.registry.register(self.collector)
        self.ws_clients = 0
        self._lock = asyncio.Lock()

    async def render(self, svc: Services) -> bytes:
        async with self._lock:
            depth, workers = await queue_and_workers(svc)
            self.collector.snapshot = Snapshot(
                streams=await all_streams(svc), depth=depth, workers=workers, ws_clients=self.ws_clients,
                live_events=svc.hub.received, rate_limited=svc.limiter.refused, asks=dict(svc.asks),
            )  # fmt: skip
            return generate_latest(self.registry)
