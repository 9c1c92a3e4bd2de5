"""One stream's life: connect, sample, cut clips, hand them to the compressor, reconnect when lost.

States (published to memory meta through `set_state` and to metrics):
  connecting -> live -> (retrying -> connecting -> live)* -> stopped
`SourceUnavailable` retries with exponential backoff and jitter; `SourceInvalid`, the end of a file or
of a WHIP session, and `stop()` end in `stopped` (with the error in meta when there was one). Every
exception stays inside the stream's task: one bad stream never disturbs another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .clips import ClipAssembler
from .compressor import Compressor, CompressorClosed, Policy, StreamRejected
from .metrics import StreamMetrics
from .sampler import Sampler
from .sources.base import Source
from .types import SourceInvalid, SourceUnavailable

log = logging.getLogger(__name__)


class StateSink(Protocol):
    """`flashlive.memory.VideoMemory.set_state`: stream state plus extra meta fields."""

    async def set_state(self, stream: str, state: str, **fields: Any) -> Any: ...


@dataclass
class Backoff:
    """Exponential backoff with jitter: delay n is initial·factor^n capped at `maximum`, then scaled
    by a random factor in [1 - jitter, 1] so many cameras lost together do not reconnect in step."""

    initial: float = 0.5
    maximum: float = 10.0
    factor: float = 2.0
    jitter: float = 0.5
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def next_delay(self) -> float:
        base = min(self.maximum, self.initial * self.factor**self.attempt)
        self.attempt += 1
        return base * (1.0 - self.jitter * self.rng.random())

    def reset(self) -> None:
        self.attempt = 0


@dataclass
class StreamSpec:
    """Everything needed to run one stream (built from the config file or the command line)."""

    name: str
    url: str | None = None  # None: the source is handed in (a WHIP session)
    source_options: dict[str, Any] = field(default_factory=dict)
    fps: float = 1.0
    policy: Policy = "lower_fps"
    max_pending: int = 4
    min_fps: float = 0.125
    max_side: int | None = 960
    retry: bool = True  # reconnect on SourceUnavailable (False for WHIP: the publisher reconnects)
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 10.0
    meta_interval_s: float = 2.0  # how often lag/dropped/fps go to memory meta while live


class StreamRunner:
    def __init__(
        self,
        spec: StreamSpec,
        compressor: Compressor,
        memory: StateSink,
        *,
        opener: Callable[[], Source],
        clip_frames: int = 4,
    ) -> None:
        self.spec = spec
        self.compressor = compressor
        self.memory = memory
        self.opener = opener
        self.metrics: StreamMetrics = compressor.metrics.stream(spec.name)
        self.sampler = Sampler(spec.fps, max_side=spec.max_side)
        self.assembler = ClipAssembler(spec.name, clip_frames)
        self.backoff = Backoff(spec.backoff_initial_s, spec.backoff_max_s)
        self.source: Source | None = None
        self.error: str | None = None
        self._stopping = False
        self._live_seen = False
        self._changed = asyncio.Event()  # any state change
        self._stop_event = asyncio.Event()
        self._publish_lock = asyncio.Lock()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def state(self) -> str:
        return self.metrics.state

    async def stop(self) -> None:
        """Ask the stream to end; `run()` then flushes its last clip and returns."""
        self._stopping = True
        self._stop_event.set()
        if self.source is not None:
            await self.source.close()

    async def wait_state(self, *states: str, timeout: float | None = None) -> str:
        """Wait until the stream is in one of `states` (for tests and the CLI)."""

        async def until() -> str:
            while self.state not in states:
                self._changed.clear()
                await self._changed.wait()
            return self.state

        return await asyncio.wait_for(until(), timeout)

    async def _publish(self, state: str, error: str | None = None, **extra: Any) -> None:
        async with self._publish_lock:  # in order: a periodic refresh never lands after a state change
            await self._publish_locked(state, error, **extra)

    async def _publish_locked(self, state: str, error: str | None = None, **extra: Any) -> None:
        self.metrics.set_state(state, error)
        self._changed.set()
        fields: dict[str, Any] = {
            "source": self.metrics.source,
            "error": error or "",
            "sample_fps": round(self.sampler.fps, 6),
            "lag_s": round(self.metrics.lag_s, 3),
            "dropped_clips": self.metrics.dropped_clips,
            "reconnects": self.metrics.reconnects,
            **extra,
        }
        try:
            await self.memory.set_state(self.name, state, **fields)
        except Exception as exc:  # memory down: metrics still tell the truth, the stream goes on
            log.warning("%s: could not publish state %s: %s", self.name, state, exc)

    async def run(self) -> None:
        """Run until stopped, the input ends, or it is invalid. Never raises (except cancellation)."""
        spec = self.spec
        self.compressor.register(
            spec.name,
            policy=spec.policy,
            max_pending=spec.max_pending,
            sampler=self.sampler,
            min_fps=spec.min_fps,
        )
        meta_task = asyncio.create_task(self._meta_loop(), name=f"meta-{spec.name}")
        final_error: str | None = None
        try:
            final_error = await self._loop()
        except asyncio.CancelledError:
            final_error = None
            raise
        finally:
            meta_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await meta_task
            await self._close_source()
            await self._flush()
            with contextlib.suppress(Exception):
                await self.compressor.unregister(spec.name, drain=not self.compressor.closing)
            self.error = final_error
            await self._publish("stopped", final_error)
            log.info("%s: stopped%s", spec.name, f" ({final_error})" if final_error else "")

    async def _loop(self) -> str | None:
        """The connect/ingest/retry loop; returns the error that stopped the stream (None: clean end)."""
        spec = self.spec
        while not self._stopping:
            await self._publish("connecting")
            try:
                source = self.opener()
                self.source = source
                if self._stopping:  # stop() came while connecting
                    return None
                self.metrics.source = source.url_redacted
                if not self._live_seen:
                    self.sampler.live = source.live
                await self._ingest(source)
                if self._stopping or not (source.live and spec.retry):
                    return None  # a file, a WHIP session or stop(): a clean end
                raise SourceUnavailable(f"{source.url_redacted}: the stream ended")
            except SourceInvalid as exc:
                log.error("%s: %s", spec.name, exc)
                return str(exc)
            except SourceUnavailable as exc:
                await self._close_source()
                await self._flush()
                if self._stopping:
                    return None
                if not spec.retry:
                    return str(exc)
                delay = self.backoff.next_delay()
                log.warning("%s: %s; reconnecting in %.1fs", spec.name, exc, delay)
                self.metrics.reconnects += 1
                await self._publish("retrying", str(exc), retry_in_s=round(delay, 2))
                await self._sleep(delay)
                self.sampler.reset_source()
            except StreamRejected as exc:
                return str(exc)
            except CompressorClosed:
                return None
            except Exception as exc:  # a bug must stop this stream only
                log.exception("%s: unexpected failure", spec.name)
                return f"internal error: {type(exc).__name__}: {exc}"
            finally:
                await self._close_source()
        return None

    async def _ingest(self, source: Source) -> None:
        first = True
        async for sf in source.frames():
            if first:
                first = False
                self._live_seen = True
                self.backoff.reset()
                await self._publish("live")
            self.metrics.count_frame(time.monotonic())
            kept = self.sampler.push(sf)
            if kept is None:
                continue
            self.metrics.frames_sampled += 1
            for clip in self.assembler.push(kept, self.sampler.step):
                await self.compressor.submit(clip)

    async def _flush(self) -> None:
        """Cut the partial clip (padded) so a disconnect or the end of a file loses no sampled frame."""
        for clip in self.assembler.flush(self.sampler.step):
            with contextlib.suppress(CompressorClosed, StreamRejected, KeyError):
                await self.compressor.submit(clip)

    async def _close_source(self) -> None:
        source, self.source = self.source, None
        if source is not None:
            try:
                await source.close()
            except Exception as exc:
                log.warning("%s: closing the source failed: %s", self.name, exc)

    async def _sleep(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), delay)  # stop() wakes it early

    async def _meta_loop(self) -> None:
        while True:
            await asyncio.sleep(self.spec.meta_interval_s)
            async with self._publish_lock:
                if self.state == "live":
                    await self._publish_locked("live")
