"""In-process counters and gauges per stream.

The counters themselves (`IngestCounters`) are defined with the memory, which carries a snapshot of
them with each stream's state to other processes (`VideoMemory.set_state` / `status`). Prometheus
reads those snapshots through the web app's /metrics (web/metrics.py), which covers every ingest
process at once.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from flashlive.memory.types import IngestCounters, StreamState

# Why ingest lost a clip (the memory's own reasons are in memory/store.py: buffer_full, refused, ...).
BACKPRESSURE = "backpressure"  # live: the encoder fell behind and the oldest waiting clip was dropped
ENCODER = "encoder"  # encoding its batch failed
ABANDONED = "abandoned"  # cut, but the stream stopped (memory refused it, or a stop) before it was stored


@dataclass(kw_only=True)
class StreamMetrics(IngestCounters):
    name: str
    state: StreamState = StreamState.CONNECTING
    source: str = ""  # redacted URL
    last_error: str = ""
    last_clip_end: float = 0.0  # stream time
    since: float = field(default_factory=time.time)  # unix time of the last state change
    losses: Counter[str] = field(default_factory=Counter)  # lost and dropped clips, by reason
    corrupt: list[tuple[float, float]] = field(default_factory=list)  # stream times not decodable
    # losses ingest found itself (the memory counts its own), not yet handed to the memory's meta
    _unrecorded: Counter[str] = field(default_factory=Counter, repr=False)
    _last_frame: float = field(default=0.0, repr=False)
    _mean_dt: float = field(default=0.0, repr=False)

    def set_state(self, state: StreamState, error: str | None = None) -> None:
        state = StreamState(state)  # ValueError for a name that is not a state
        if state != self.state:
            self.since = time.time()
        self.state = state
        if error and state != StreamState.STOPPED:  # a stopped stream's text is a note, not an error
            self.errors += 1
            self.last_error = error

    def lose(self, reason: str, count: int = 1, *, recorded: bool = False) -> None:
        """`count` clips lost for `reason` ("backpressure" counts as dropped, the rest as lost);
        `recorded`: the memory has counted them in the stream's meta already."""
        if count <= 0:
            return
        if reason == BACKPRESSURE:
            self.dropped_clips += count
        else:
            self.lost_clips += count
        self.losses[reason] += count
        if not recorded:
            self._unrecorded[reason] += count

    def take_unrecorded(self) -> Counter[str]:
        """The losses to count in the memory's meta now (and forget here)."""
        out, self._unrecorded = self._unrecorded, Counter()
        return out

    @property
    def loss_summary(self) -> str:
        """ "3 clips (2 backpressure, 1 encoder)", or "" when nothing was lost."""
        total = sum(self.losses.values())
        if not total:
            return ""
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(self.losses.items()))
        return f"{total} clip{'s' if total != 1 else ''} ({reasons})"

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
