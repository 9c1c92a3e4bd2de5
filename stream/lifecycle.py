"""One stream's life: connect, sample, cut clips, hand them to the compressor, reconnect when lost.

States (`StreamState`, published to memory through `set_state` with the stream's metrics, and to the
in-process metrics):
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

from flashlive.memory.errors import MemoryStoreError
from flashlive.memory.types import IngestCounters, StreamState

from .clips import ClipAssembler
from .compressor import Compressor, CompressorClosed, StreamRejected
from .metrics import StreamMetrics
from .sampler import Sampler
from .settings import IngestSettings, Policy, SourceOptions, StreamSettings
from .sources.base import Source
from .types import SourceError, SourceInvalid, SourceUnavailable

log = logging.getLogger(__name__)


class StateSink(Protocol):
    """`flashlive.memory.VideoMemory.set_state`: a stream's status, readable by other processes."""

    async def set_state(
        self,
        stream: str,
        state: StreamState,
        *,
        since: float | None = None,
        source: str | None = None,
        error: str | None = None,
        metrics: IngestCounters | None = None,
        **fields: Any,
    ) -> Any: ...


@dataclass
class Backoff:
    """Exponential backoff with jitter: delay n is initial·factor^n capped at `maximum`, then scaled
    by a random factor in [1 - jitter, 1] so many cameras lost together do not reconnect in step."""

    initial: float
    maximum: float
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


@dataclass(frozen=True)
class StreamSpec:
    """Everything needed to run one stream: its own choices (`fps`, `policy`: None takes the
    settings'), how to open it, and the ingest settings for the rest."""

    name: str
    url: str | None = None  # None: the source is handed in (a WHIP session)
    source: SourceOptions = field(default_factory=SourceOptions)
    fps: float | None = None
    policy: Policy | None = None
    retry: bool = True  # reconnect on SourceUnavailable (False for WHIP: the publisher reconnects)
    settings: IngestSettings = field(default_factory=IngestSettings)

    @classmethod
    def from_settings(cls, name: str, stream: StreamSettings, settings: IngestSettings) -> StreamSpec:
        """The spec of one `streams.NAME` entry of the config."""
        return cls(
            name=name,
            url=stream.url,
            source=stream.source,
            fps=stream.fps,
            policy=stream.policy,
            retry=not stream.whip,
            settings=settings,
        )

    @property
    def sample_fps(self) -> float:
        return self.fps or self.settings.fps

    @property
    def backpressure(self) -> Policy:
        """The stream's policy; a file backfilled as fast as possible waits, so it loses nothing."""
        if self.policy:
            return self.policy
        return "wait" if self.url is not None and not self.source.realtime else self.settings.policy

    @property
    def min_fps(self) -> float:
        return min(self.settings.min_fps, self.sample_fps)


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
        self.sampler = Sampler(spec.sample_fps, max_side=spec.settings.max_side)
        self.assembler = ClipAssembler(spec.name, clip_frames)
        self.backoff = Backoff(spec.settings.backoff_initial_s, spec.settings.backoff_max_s)
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
    def state(self) -> StreamState:
        return self.metrics.state

    async def stop(self) -> None:
        """Ask the stream to end; `run()` then flushes its last clip and returns."""
        self._stopping = True
        self._stop_event.set()
        if self.source is not None:
            await self.source.close()

    async def wait_state(self, *states: str, timeout: float | None = None) -> StreamState:
        """Wait until the stream is in one of `states` (for tests and the CLI)."""

        async def until() -> StreamState:
            while self.state not in states:
                self._changed.clear()
                await self._changed.wait()
            return self.state

        return await asyncio.wait_for(until(), timeout)

    async def _publish(self, state: StreamState, error: str | None = None, **extra: Any) -> None:
        async with self._publish_lock:  # in order: a periodic refresh never lands after a state change
            await self._publish_locked(state, error, **extra)

    async def _publish_locked(self, state: StreamState, error: str | None = None, **extra: Any) -> None:
        self.metrics.set_state(state, error)
        self._changed.set()
        try:
            await self.memory.set_state(
                self.name,
                state,
                since=self.metrics.since,
                source=self.metrics.source,
                error=error or "",
                metrics=self.metrics.counters(),
                **extra,
            )
        except MemoryStoreError as exc:  # memory down: metrics still tell the truth, the stream goes on
            log.warning("%s: could not publish state %s: %s", self.name, state, exc)

    async def run(self) -> None:
        """Run until stopped, the input ends, or it is invalid. Never raises (except cancellation)."""
        spec = self.spec
        self.compressor.register(
            spec.name,
            policy=spec.backpressure,
            max_pending=spec.settings.max_pending_clips,
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
        except Exception as exc:  # the task's boundary: a bug stops this stream (error in meta), no other
            log.exception("%s: unexpected failure", spec.name)
            final_error = f"internal error: {type(exc).__name__}: {exc}"
        finally:
            meta_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await meta_task
            await self._close_source()
            await self._flush()
            await self.compressor.unregister(spec.name, drain=not self.compressor.closing)
            self.error = final_error
            await self._publish(StreamState.STOPPED, final_error)
            log.info("%s: stopped%s", spec.name, f" ({final_error})" if final_error else "")

    async def _loop(self) -> str | None:
        """The connect/ingest/retry loop; returns the error that stopped the stream (None: clean end)."""
        spec = self.spec
        while not self._stopping:
            await self._publish(StreamState.CONNECTING)
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
                await self._publish(StreamState.RETRYING, str(exc), retry_in_s=round(delay, 2))
                await self._sleep(delay)
                self.sampler.reset_source()
            except StreamRejected as exc:
                return str(exc)
            except CompressorClosed:
                return None
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
                await self._publish(StreamState.LIVE)
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
            except (SourceError, OSError) as exc:
                log.warning("%s: closing the source failed: %s", self.name, exc)

    async def _sleep(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), delay)  # stop() wakes it early

    async def _meta_loop(self) -> None:
        while True:
            await asyncio.sleep(self.spec.settings.meta_interval_s)
            async with self._publish_lock:
                if self.state == StreamState.LIVE:  # other states keep their error until they change
                    await self._publish_locked(StreamState.LIVE)
