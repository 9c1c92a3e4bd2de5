"""In-process counters and gauges per stream.

The counters themselves (`IngestCounters`) are defined with the memory, which carries a snapshot of
them with each stream's state to other processes (`VideoMemory.set_state` / `status`). Prometheus
reads those snapshots through the web app's /metrics (web/metrics.py), which covers every ingest
process at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from flashlive.memory.types import IngestCounters, StreamState


@dataclass(kw_only=True)
class StreamMetrics(IngestCounters):
    name: str
    state: StreamState = StreamState.CONNECTING
    source: str = ""  # redacted URL
    last_error: str = ""
    last_clip_end: float = 0.0  # stream time
    since: float = field(default_factory=time.time)  # unix time of the last state change
    _last_frame: float = field(default=0.0, repr=False)
    _mean_dt: float = field(default=0.0, repr=False)

    def set_state(self, state: StreamState, error: str | None = None) -> None:
        state = StreamState(state)  # ValueError for a name that is not a state
        if state != self.state:
            self.since = time.time()
        self.state = state
        if error:
            self.errors += 1
            self.last_error = error

    def count_frame(self, now: float) -> None:
        """Update the decoded-frame rate: 1 / (exponential average of frame intervals, ~20 frames)."""
        self.frames_in += 1
        last, self._last_frame = self._last_frame, now
        if last > 0 and now >= last:
            dt = now - last
            self._mean_dt = dt if self._mean_dt == 0 else 0.95 * self._mean_dt + 0.05 * dt
            self.input_fps = 1.0 / self._mean_dt if self._mean_dt > 0 else 0.0


class Metrics:
    """All streams of one process."""

    def __init__(self) -> None:
        self.streams: dict[str, StreamMetrics] = {}
        self.encode_batches = 0
        self.encode_clips = 0
        self.encode_seconds = 0.0

    def stream(self, name: str) -> StreamMetrics:
        if name not in self.streams:
            self.streams[name] = StreamMetrics(name=name)
        return self.streams[name]

    def snapshot(self) -> dict[str, dict[str, object]]:
        return {
            name: {k: v for k, v in vars(m).items() if not k.startswith("_")}
            for name, m in self.streams.items()
        }
