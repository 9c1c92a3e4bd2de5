"""One stream's life: take the stream, connect, sample, cut clips, hand them to the compressor,
reconnect when lost, and account for every clip at the end.

States (`StreamState`, published to memory through `set_state` with the stream's metrics, and to the
in-process metrics):
  connecting -> live -> (retrying -> connecting -> live)* -> stopped | error
First the runner takes the stream's write lease (one writer per stream; a stream holding another
source's clips needs `new_source`); refused, it ends at once and writes nothing, since the stream is
not its to write. `SourceUnavailable` retries with exponential backoff and jitter. The end of a file or
of a WHIP session, and `stop()`, end in `stopped` when every clip cut is stored (or was there already);
`SourceInvalid`, a refusal by memory, or any lost clip end in `error`, with the reason in the meta.
Every exception stays inside the stream's task: one bad stream never disturbs another.
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
from flashlive.memory.leases import Lease
from flashlive.memory.types import IngestCounters, StreamState

from .clips import ClipAssembler
from .compressor import Compressor, CompressorClosed, StreamRejected
from .metrics import StreamMetrics
from .sampler import Sampler
from .settings import IngestSettings, Policy, SourceOptions, StreamSettings
from .sources.base import Source
from .types import SourceError, SourceInvalid, SourceUnavailable

log = logging.getLogger(__name__)


async def stop_task(task: asyncio.Task[Any], retry_s: float = 1.0) -> None:
    """Cancel `task` and wait for it to end. Python 3.11's asyncio.wait_for (redis-py sends each
    command through one when a socket timeout is set, as ours is) loses a cancellation that lands
    just as its inner call finishes (CPython gh-86296): a loop cancelled then runs on, and whoever
    awaits it waits forever (a `flashlive serve` that did not stop on Ctrl-C). So the cancellation is
    repeated until the task ends."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=retry_s)
    with contextlib.suppress(asyncio.CancelledError):
        await task


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
    new_source: bool = False  # continue a stream that holds clips of another source

    @property
    def source_id(self) -> str:
        """What the stream's meta remembers as its source (a file's absolute path, a masked URL)."""
        if self.url is None:
            return f"whip://{self.name}"
        from .sources.av_source import source_identity

        return source_identity(self.url)

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
        self.error: str | None = None  # why the stream ended in `error` (None: it did not)
        self.note: str = ""  # what the final report says besides (a file stopped before its end)
        self.lease: Lease | None = None
        self.refused = False  # the stream was not ours to write: nothing was written to it
        self.incomplete = False  # a file stopped before its end
        self._stopping = False
        self._live_seen = False
        self._file: tuple[float | None, float | None] | None = None  # a file's (position, duration)
        self._corrupt_seen = 0
        self._changed = asyncio.Event()  # any state change
        self._stop_event = asyncio.Event()
        self._publish_lock = asyncio.Lock()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def state(self) -> StreamState:
        return self.metrics.state

    @property
    def ok(self) -> bool:
        """The stream ended with every clip it cut stored (or already there), and a file read to its end."""
        return self.state == StreamState.STOPPED and not self.incomplete and not self.refused

    async def stop(self) -> None:
        """Ask the stream to end; `run()` then stores its last clips (within the stop budget) and returns."""
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

    async def _publish(
        self, state: StreamState, error: str | None = None, *, previous: str = "", **extra: Any
    ) -> bool:
        """Report the state; False when it could not be written for a reason that may pass. `previous`:
        an earlier error the report keeps showing (not counted again)."""
        async with self._publish_lock:  # in order: a periodic refresh never lands after a state change
            return await self._publish_locked(state, error, previous=previous, **extra)

    async def _publish_locked(
        self, state: StreamState, error: str | None = None, *, previous: str = "", **extra: Any
    ) -> bool:
        self.metrics.set_state(state, error)
        self._changed.set()
        if self.refused:
            return True  # not our stream: its state belongs to whoever holds it
        record_loss = getattr(self.memory, "record_loss", None)
        try:
            if record_loss is not None:
                for reason, count in self.metrics.take_unrecorded().items():
                    await record_loss(self.name, count, reason)  # kept by the memory until written
            if self.metrics.corrupt:
                extra["corrupt"] = ",".join(f"{a:.3f}-{b:.3f}" for a, b in self.metrics.corrupt[:20])
            await self.memory.set_state(
                self.name,
                state,
                since=self.metrics.since,
                source=self.metrics.source,
                error=error or previous,
                metrics=self.metrics.counters(),
                **extra,
            )
        except MemoryStoreError as exc:  # memory down: metrics still tell the truth, the stream goes on
            log.warning("%s: could not publish state %s: %s", self.name, state, exc)
            return not exc.transient  # False: worth trying again (Redis away, out of memory, ...)
        return True

    async def run(self) -> None:
        """Run until stopped, the input ends, or it is invalid. Never raises (except cancellation)."""
        spec = self.spec
        try:
            await self._take_stream()
        except MemoryStoreError as exc:
            self.refused = True
            self.error = str(exc)
            log.info("%s: %s", spec.name, exc)
            self.metrics.set_state(StreamState.ERROR, self.error)
            self._changed.set()
            return
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
            await stop_task(meta_task)
            await self._close_source()
            await self._flush()
            await self._finish(final_error)

    async def _take_stream(self) -> None:
        """Take the stream's write lease, waiting for Redis (up to `memory_wait_s`) when it is away."""
        acquire = getattr(self.memory, "acquire", None)
        if acquire is None:  # a memory without leases (a test's fake)
            return
        settings = self.spec.settings
        deadline = time.monotonic() + settings.memory_wait_s
        delay = 0.1
        while True:
            try:
                self.lease = await acquire(
                    self.name,
                    source=self.spec.source_id,
                    ttl_s=settings.lease_ttl_s,
                    new_source=self.spec.new_source,
                )
                break
            except MemoryStoreError as exc:
                if not exc.transient or self._stopping or time.monotonic() + delay > deadline:
                    raise
                log.warning("%s: %s; trying again", self.name, exc)
                await self._sleep(delay)
                delay = min(delay * 2, 2.0)
        assert self.lease is not None
        self.sampler.origin = self.lease.origin
        if self.lease.previous_source:
            lease = self.lease
            log.warning("%s: continues after %s with %s, from %.3f s on the stream's timeline",
                        self.name, lease.previous_source, self.spec.source_id, lease.origin)  # fmt: skip

    async def _finish(self, final_error: str | None) -> None:
        """Store what is left, account for every clip, report. After `stop()` all of it fits in the stop
        budget (`stop_timeout_s`, plus a moment); otherwise it waits for Redis up to `memory_wait_s`."""
        spec = self.spec
        deadline = time.monotonic() + spec.settings.stop_timeout_s if self._stopping else None

        def left(otherwise: float | None) -> float | None:
            return otherwise if deadline is None else max(0.0, deadline - time.monotonic())

        await self.compressor.unregister(spec.name, drain=not self.compressor.closing, timeout=left(None))
        flush = getattr(self.memory, "flush", None)
        if flush is not None and not await flush(left(spec.settings.memory_wait_s), stream=spec.name):
            lost = self.memory.discard(spec.name)  # type: ignore[attr-defined]
            log.error("%s: %d clips were still waiting for Redis: lost", spec.name, lost)
        state, message = self._verdict(final_error)
        self.error = message if state == StreamState.ERROR else None
        self.note = message if state == StreamState.STOPPED else ""
        try:
            # a Redis that hangs must not hold a stop past its budget (connection refused is instant)
            async with asyncio.timeout(
                None if deadline is None else max(0.0, deadline - time.monotonic()) + 0.3
            ):
                if self.lease is not None and not await self._still_ours():
                    self.refused = True  # another writer took the stream over: not ours to report on
                await self._report(state, message, left(spec.settings.memory_wait_s) or 0.0)
                release = getattr(self.memory, "release", None)
                if release is not None and not self.refused:
                    await release(spec.name)
        except TimeoutError:
            log.error(
                "%s: Redis did not answer in time: the final state %s was not recorded", spec.name, state
            )
        log.info("%s: %s%s", spec.name, state, f" ({message})" if message else "")

    def _verdict(self, final_error: str | None) -> tuple[StreamState, str]:
        m = self.metrics
        lost = f"lost {m.loss_summary}" if m.losses else ""
        if final_error:
            return StreamState.ERROR, f"{final_error}; {lost}" if lost else final_error
        if lost:
            return StreamState.ERROR, lost
        if self._file is not None and self._stopping:
            self.incomplete = True
            at, duration = self._file
            where = f"{at:.1f} s" if at is not None else "the start"
            of = f" of {duration:.1f} s" if duration else ""
            return (
                StreamState.STOPPED,
                f"stopped at {where}{of}, before the end of the file: run it again to resume",
            )
        if m.corrupt:
            spans = ", ".join(f"{a:.1f}-{b:.1f} s" for a, b in m.corrupt[:5])
            return StreamState.STOPPED, f"{m.corrupt_s:.1f} s of the source could not be decoded ({spans})"
        return StreamState.STOPPED, ""

    async def _still_ours(self) -> bool:
        holds = getattr(self.memory, "holds", None)
        if holds is None:
            return True
        try:
            return bool(await holds(self.name))
        except MemoryStoreError:
            return True  # cannot tell: the report will fail the same way

    async def _report(self, state: StreamState, message: str, within: float) -> None:
        """The final report, retried while Redis is away (up to `within` s)."""
        deadline = time.monotonic() + within
        delay = 0.1
        while not await self._publish(state, message):
            if time.monotonic() + delay > deadline:
                log.error("%s: could not record the final state %s in memory", self.name, state)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _loop(self) -> str | None:
        """The connect/ingest/retry loop; returns the error that stopped the stream (None: clean end)."""
        spec = self.spec
        last_error = ""  # while reconnecting, the report keeps saying why the last try failed
        while not self._stopping:
            await self._publish(StreamState.CONNECTING, previous=last_error)
            try:
                source = self.opener()
                self.source = source
                if self._stopping:  # stop() came while connecting
                    return None
                self.metrics.source = source.url_redacted
                if not self._live_seen:
                    self.sampler.live = source.live
                if not source.live and not getattr(source, "loop", False):
                    self._file = (None, None)  # a file that ends: was it read to the end?
                await self._ingest(source)
                if not source.live and source.progress.ended:
                    self._file = None  # read to its end
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
                last_error = str(exc)
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
            if self._file is not None:
                self._file = (self.sampler.time_of(sf.pts), source.progress.duration)
            if len(source.progress.corrupt) > self._corrupt_seen:
                self._note_corrupt(source)
            if kept is None:
                continue
            self.metrics.frames_sampled += 1
            for clip in self.assembler.push(kept, self.sampler.step):
                await self.compressor.submit(clip)

    def _note_corrupt(self, source: Source) -> None:
        """Stretches the source could not decode, on the stream's timeline (reported in the meta)."""
        for a, b in source.progress.corrupt[self._corrupt_seen :]:
            start, end = self.sampler.time_of(a), self.sampler.time_of(b)
            if start is not None and end is not None:
                self.metrics.corrupt.append((start, end))
                self.metrics.corrupt_s += end - start
        self._corrupt_seen = len(source.progress.corrupt)

    async def _flush(self) -> None:
        """Cut the partial clip (padded) so a disconnect or the end of a file loses no sampled frame."""
        for clip in self.assembler.flush(self.sampler.step):
            with contextlib.suppress(CompressorClosed, StreamRejected, KeyError):
                await self.compressor.submit(clip)

    async def _close_source(self) -> None:
        source, self.source = self.source, None
        if source is not None:
            if len(source.progress.corrupt) > self._corrupt_seen:
                self._note_corrupt(source)
            try:
                await source.close()
            except (SourceError, OSError) as exc:
                log.warning("%s: closing the source failed: %s", self.name, exc)

    async def _sleep(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), delay)  # stop() wakes it early

    async def _meta_loop(self) -> None:  # runs until cancelled (stop_task)
        while True:
            await asyncio.sleep(self.spec.settings.meta_interval_s)
            async with self._publish_lock:
                if self.state == StreamState.LIVE:  # other states keep their error until they change
                    await self._publish_locked(StreamState.LIVE)
