"""In-process counters and gauges per stream.

The counters themselves (`IngestCounters`) are defined with the memory, which carries a snapshot of
them with each stream's state to other processes (`VideoMemory.set_state` / `status`).
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

    def prometheus_text(self) -> str:
        """The Prometheus text exposition format (0.0.4)."""
        lines: list[str] = []

        def family(metric: str, kind: str, help_text: str, values: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {metric} {help_text}")
            lines.append(f"# TYPE {metric} {kind}")
            lines.extend(f"{metric}{{{labels}}} {value:g}" for labels, value in values)

        ms = sorted(self.streams.values(), key=lambda m: m.name)

        def per(attr: str) -> list[tuple[str, float]]:
            return [(f'stream="{_escape(m.name)}"', float(getattr(m, attr))) for m in ms]

        family(
            "flashlive_stream_state",
            "gauge",
            "1 for the stream's current state",
            [
                (f'stream="{_escape(m.name)}",state="{s}"', float(m.state == s))
                for m in ms
                for s in StreamState
            ],
        )
        family("flashlive_stream_frames_total", "counter", "Decoded frames", per("frames_in"))
        family("flashlive_stream_sampled_frames_total", "counter", "Sampled frames", per("frames_sampled"))
        family("flashlive_stream_clips_total", "counter", "Clips stored in memory", per("clips"))
        family(
            "flashlive_stream_duplicate_clips_total",
            "counter",
            "Clips memory already held (resumed backfill)",
            per("duplicates"),
        )
        family(
            "flashlive_stream_lost_clips_total",
            "counter",
            "Clips lost otherwise (encoder, memory buffer full, refused)",
            per("lost_clips"),
        )
        family(
            "flashlive_stream_buffered_clips",
            "gauge",
            "Clips waiting in the memory's local buffer for Redis",
            per("buffered_clips"),
        )
        family(
            "flashlive_stream_dropped_clips_total",
            "counter",
            "Clips skipped by backpressure",
            per("dropped_clips"),
        )
        family("flashlive_stream_reconnects_total", "counter", "Reconnect attempts", per("reconnects"))
        family("flashlive_stream_errors_total", "counter", "Source errors", per("errors"))
        family(
            "flashlive_stream_pending_clips", "gauge", "Clips waiting for the encoder", per("pending_clips")
        )
        family(
            "flashlive_stream_lag_seconds",
            "gauge",
            "How long the oldest waiting clip has waited",
            per("lag_s"),
        )
        family("flashlive_stream_latency_seconds", "gauge", "Last clip, complete to stored", per("latency_s"))
        family("flashlive_stream_sample_fps", "gauge", "Current sample rate", per("sample_fps"))
        family("flashlive_stream_input_fps", "gauge", "Decoded frame rate", per("input_fps"))
        family("flashlive_encode_clips_total", "counter", "Clips encoded", [("", float(self.encode_clips))])
        family(
            "flashlive_encode_seconds_total", "counter", "Time spent encoding", [("", self.encode_seconds)]
        )
        return "\n".join(line.replace("{}", "") for line in lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
