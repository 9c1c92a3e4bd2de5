"""The online clip compressor: encode complete clips off the event loop and append them to memory.

One compressor per device owns one worker thread. Streams submit complete clips into their own small
bounded queue; the compressor takes clips round-robin across streams (so batches mix streams and no
stream starves another), encodes a batch in the worker thread, makes a thumbnail and a content digest
per clip, and hands each stream's encoded clips to that stream's own store task, which appends them to
memory in order. A stream whose store is behind (a backfill waiting for Redis) gets no new batches, and
never holds up the other streams' encoding.

Backpressure, per stream, when clips arrive faster than the encoder clears them:
- `lower_fps`: halve the stream's sample rate (down to `min_fps`) when its queue is half full, and
  raise it back step by step once the queue stays empty; if the queue still fills, drop the oldest clip.
- `skip`: drop the oldest waiting clip so memory keeps the freshest video.
- `wait`: block the producer (file backfill: the decoder simply slows down, nothing is lost). Its
  appends wait for Redis too (`memory_wait_s`), so an outage pauses the backfill instead of losing it.
In every case a stream holds at most `max_pending` clips: queues never grow without bound.

Every clip submitted is accounted for in the stream's metrics: stored (`clips`), already stored
(`duplicates`), dropped by backpressure (`dropped_clips`), or lost with a reason (`lost_clips`,
`losses`); in flight meanwhile (`pending_clips`, `buffered_clips`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from flashlive.memory.codec import content_digest
from flashlive.memory.errors import InvalidClipError, MemoryStoreError
from flashlive.memory.store import AppendStatus, ClipOutcome
from flashlive.memory.types import Clip
from flashlive.model.encoder import ClipEncoder

from .clips import PendingClip
from .metrics import ABANDONED, BACKPRESSURE, ENCODER, Metrics, StreamMetrics
from .sampler import Sampler
from .settings import POLICIES, IngestSettings, Policy
from .thumbnail import jpeg_thumbnail

log = logging.getLogger(__name__)

# What encoding a batch may raise for reasons of its own (bad frames, a device error, out of memory,
# a thumbnail PyAV refused): that batch is lost, the other streams go on. Anything else is a bug and
# stops the compressor, and every stream with it, loudly (`_run`).
ENCODE_ERRORS = (RuntimeError, ValueError, OSError, MemoryError)


class ClipSink(Protocol):
    """Where encoded clips go: `flashlive.memory.VideoMemory` (or anything with this method).
    `wait_s`: how long the append may wait for the store (None: it must not wait)."""

    async def append(self, clip: Clip, *, wait_s: float | None = None) -> Any: ...


@dataclass
class EncoderOutput:
    """A clip the worker thread has encoded, on its way to becoming a memory `Clip`."""

    pending: PendingClip
    tokens: np.ndarray  # [T, C] float16
    thumbnail: bytes
    digest: str  # of the sampled frames: what the clip shows


@dataclass
class StreamQueue:
    name: str
    policy: Policy
    max_pending: int
    metrics: StreamMetrics
    sampler: Sampler | None  # rate control for `lower_fps`
    target_fps: float
    min_fps: float
    wait_s: float | None = None  # `wait`: how long appends wait for memory
    clips: deque[PendingClip] = field(default_factory=deque)  # waiting for the encoder
    storing: deque[EncoderOutput] = field(default_factory=deque)  # encoded, waiting to be appended
    in_flight: int = 0  # taken for encoding and not yet stored
    rejected: str | None = None  # set when memory refused the stream's clips for good
    clips_since_change: int = 0
    idle_streak: int = 0
    closed: bool = False
    store_task: asyncio.Task[None] | None = None


def frames_digest(frames: np.ndarray) -> str:
    """What a clip shows, as a short hash of its sampled frames [F, H, W, 3]: every 4th row and column
    (1/16 of the bytes: ~0.4 ms a clip at 640x360 instead of ~6 ms) tells one video from another; it
    guards against mixing videos by accident, not against a forger."""
    return content_digest(np.ascontiguousarray(frames[:, ::4, ::4]).tobytes())


class CompressorClosed(RuntimeError):
    pass


class StreamRejected(RuntimeError):
    """Memory refuses this stream's clips for good (another encoder's tokens, clips out of time order,
    another writer, a refusal waiting cannot cure, or Redis away past `memory_wait_s` for a backfill):
    the stream must stop with this message rather than encode clips nobody can store."""


class Compressor:
    """Encodes clips of many streams on one device, batching across streams."""

    def __init__(
        self,
        encoder: ClipEncoder,
        memory: ClipSink,
        metrics: Metrics | None = None,
        *,
        settings: IngestSettings | None = None,
        append_retries: int = 3,
        raise_after: int = 3,
    ) -> None:
        self.encoder = encoder
        self.memory = memory
        self.metrics = metrics or Metrics()
        self.settings = settings or IngestSettings()
        self.max_batch = self.settings.max_batch
        if self.max_batch < 1:  # a batch of none would make the loop spin without ever yielding
            raise ValueError(f"max_batch must be >= 1, not {self.max_batch}")
        self.thumbnail_width = self.settings.thumbnail_width
        self.append_retries = append_retries
        self.raise_after = raise_after
        self.queues: dict[str, StreamQueue] = {}
        self._order: deque[str] = deque()  # round-robin order of stream names
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"encode-{encoder.device}")
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._failed: str | None = None  # why the compressor stopped on a bug
        self.batch_sizes: list[int] = []  # recent batch sizes, for tests and the benchmark
        add_listener = getattr(memory, "add_listener", None)
        if add_listener is not None:  # a VideoMemory tells what became of the clips it buffered
            add_listener(self._on_outcome)

    @property
    def closing(self) -> bool:
        return self._closing

    # ---- streams -------------------------------------------------------------------------------

    def register(
        self,
        name: str,
        *,
        policy: Policy | None = None,
        max_pending: int | None = None,
        sampler: Sampler | None = None,
        min_fps: float | None = None,
    ) -> StreamQueue:
        """Add a stream. Left out, `policy`, `max_pending` and `min_fps` come from the settings. A `wait`
        stream's appends wait for memory up to the settings' `memory_wait_s`."""
        policy = policy or self.settings.policy
        max_pending = self.settings.max_pending_clips if max_pending is None else max_pending
        min_fps = min_fps or self.settings.min_fps
        if policy not in POLICIES:
            raise ValueError(f"unknown backpressure policy {policy!r}; choose one of {', '.join(POLICIES)}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        if name in self.queues and not self.queues[name].closed:
            raise ValueError(f"stream {name!r} is already registered with this compressor")
        m = self.metrics.stream(name)
        target = sampler.fps if sampler else self.settings.fps
        m.sample_fps = target
        q = StreamQueue(name, policy, max_pending, m, sampler, target, min(min_fps, target))
        q.wait_s = self.settings.memory_wait_s if policy == "wait" else None
        q.store_task = asyncio.get_running_loop().create_task(self._store_loop(q), name=f"store-{name}")
        self.queues[name] = q
        if name not in self._order:
            self._order.append(name)
        return q

    async def unregister(self, name: str, *, drain: bool = True, timeout: float | None = None) -> None:
        """Remove a stream. With `drain`, first wait (up to `timeout` s) until its clips are encoded and
        stored; the ones still waiting then are lost (`abandoned`), counted in the stream's metrics."""
        q = self.queues.get(name)
        if q is None:
            return
        if drain:
            try:
                await asyncio.wait_for(self.drain(name), timeout)
            except TimeoutError:
                log.warning("%s: stopping before %d clips were stored", name, q.in_flight + len(q.clips))
        q.closed = True
        abandoned = len(q.clips) + q.in_flight
        q.clips.clear()
        q.storing.clear()
        q.in_flight = 0
        q.metrics.pending_clips = 0
        q.metrics.lose(ABANDONED, abandoned)
        self.queues.pop(name, None)
        if name in self._order:
            self._order.remove(name)
        async with self._changed:
            self._changed.notify_all()
        if q.store_task is not None:
            q.store_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await q.store_task

    # ---- producer side -------------------------------------------------------------------------

    async def submit(self, clip: PendingClip) -> None:
        """Queue a complete clip, applying the stream's backpressure policy. Never grows a queue past
        `max_pending`; under `wait` it waits for room instead."""
        q = self.queues.get(clip.stream)
        if q is not None:
            q.metrics.clips_cut += 1
        refused = self._failed or (q.rejected if q is not None else None)
        if refused or self._closing:
            if q is not None:
                q.metrics.lose(ABANDONED)
            if refused:
                raise StreamRejected(refused)
            raise CompressorClosed("the compressor is shutting down")
        if q is None:
            raise KeyError(f"stream {clip.stream!r} is not registered with the compressor")
        if q.policy == "wait":
            async with self._changed:
                await self._changed.wait_for(
                    lambda: (
                        len(q.clips) < q.max_pending
                        or q.closed
                        or self._closing
                        or bool(self._failed)
                        or bool(q.rejected)
                    )
                )
            if self._failed or q.rejected:
                q.metrics.lose(ABANDONED)
                raise StreamRejected(self._failed or q.rejected or "")
            if q.closed or self._closing:
                q.metrics.lose(ABANDONED)
                raise CompressorClosed(f"stream {clip.stream!r} was closed while waiting")
        else:
            if q.policy == "lower_fps":
                self._adapt_rate(q)
            while len(q.clips) >= q.max_pending:
                old = q.clips.popleft()
                q.metrics.lose(BACKPRESSURE)
                log.warning(
                    "%s: encoder behind, dropped clip %.1f-%.1f (%d dropped)",
                    q.name,
                    old.start,
                    old.end,
                    q.metrics.dropped_clips,
                )
        q.clips.append(clip)
        self._update_gauges(q)
        async with self._changed:
            self._changed.notify_all()
        self.start()

    def _adapt_rate(self, q: StreamQueue) -> None:
        """Called per submitted clip. Judged in clips, not seconds, so one rule fits any rate: after a
        change, wait for a clip sampled at the new rate before lowering again, and for `raise_after`
        clips in a row finding the encoder idle before raising."""
        if q.sampler is None:
            return
        q.clips_since_change += 1
        fps = q.sampler.fps
        if len(q.clips) >= max(1, q.max_pending // 2):
            q.idle_streak = 0
            if fps <= q.min_fps or q.clips_since_change < 2:
                return
            new = max(q.min_fps, fps / 2)
        elif not q.clips and q.in_flight == 0:
            q.idle_streak += 1
            if fps >= q.target_fps or q.idle_streak < self.raise_after:
                return
            new = min(q.target_fps, fps * 1.5)
        else:
            q.idle_streak = 0
            return
        q.sampler.fps = new
        q.metrics.sample_fps = new
        q.clips_since_change = 0
        q.idle_streak = 0
        log.warning(
            "%s: sample rate %.3g -> %.3g fps (encoder %s)",
            q.name,
            fps,
            new,
            "behind" if new < fps else "caught up",
        )

    def _update_gauges(self, q: StreamQueue) -> None:
        q.metrics.pending_clips = len(q.clips) + q.in_flight
        q.metrics.lag_s = time.monotonic() - q.clips[0].ready if q.clips else 0.0

    # ---- consumer side -------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="compressor")

    async def drain(self, name: str | None = None) -> None:
        """Wait until the stream (or every stream) has nothing waiting, being encoded or being stored."""

        def idle() -> bool:
            if self._failed:
                return True  # nothing will be encoded any more
            qs = [self.queues[name]] if name in self.queues else [] if name else list(self.queues.values())
            return all((not q.clips or q.rejected) and q.in_flight == 0 for q in qs)

        if not idle():
            self.start()
        async with self._changed:
            await self._changed.wait_for(idle)

    async def close(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """Stop encoding. With `drain`, first wait (up to `timeout` s) for the clips still queued; a
        batch in the worker thread past the timeout is left to finish there, unstored."""
        if drain and self._task is not None:
            try:
                await asyncio.wait_for(self.drain(), timeout)
            except TimeoutError:
                log.warning("the compressor stops with clips still queued")
        self._closing = True
        async with self._changed:
            self._changed.notify_all()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._task.cancel()
        for q in list(self.queues.values()):
            await self.unregister(q.name, drain=False)
        remove = getattr(self.memory, "remove_listener", None)
        if remove is not None:
            remove(self._on_outcome)
        self._pool.shutdown(wait=timeout is None, cancel_futures=True)

    def _ready(self, q: StreamQueue) -> bool:
        """The stream has a clip to encode and room to store it (its store is not behind)."""
        return bool(q.clips) and not q.rejected and len(q.storing) < q.max_pending

    def _take_batch(self) -> list[PendingClip]:
        """Round-robin over streams, one clip each per turn, all of one frame shape."""
        batch: list[PendingClip] = []
        shape: tuple[int, ...] | None = None
        progress = True
        while len(batch) < self.max_batch and progress:
            progress = False
            for _ in range(len(self._order)):
                name = self._order[0]
                self._order.rotate(-1)
                q = self.queues.get(name)
                if q is None or not self._ready(q) or len(batch) >= self.max_batch:
                    continue
                if shape is not None and q.clips[0].frames.shape != shape:
                    continue
                clip = q.clips.popleft()
                shape = clip.frames.shape
                q.in_flight += 1
                batch.append(clip)
                progress = True
        return batch

    async def _run(self) -> None:
        try:
            await self._serve()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A bug, not a bad batch (ENCODE_ERRORS): refuse every stream's clips from now on, so their
            # runners stop with this error in memory instead of queueing clips nobody encodes.
            log.exception("the compressor failed; every stream on it stops")
            self._failed = f"internal error in the compressor: {type(exc).__name__}: {exc}"
            async with self._changed:
                self._changed.notify_all()

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            async with self._changed:
                await self._changed.wait_for(
                    lambda: self._closing or any(self._ready(q) for q in self.queues.values())
                )
                batch = self._take_batch()
                self._changed.notify_all()  # room in the queues for `wait` producers
            if not batch:
                if self._closing:
                    return
                await asyncio.sleep(0.01)  # never spin: let the stores and producers move
                continue
            t0 = time.perf_counter()
            try:
                encoded = await loop.run_in_executor(self._pool, self._encode, batch)
            except ENCODE_ERRORS as exc:  # a broken batch must not stop the other streams
                log.exception("encoding %d clips failed", len(batch))
                for clip in batch:
                    m = self.metrics.stream(clip.stream)
                    m.errors += 1
                    m.last_error = f"encoder: {exc}"
                    q = self.queues.get(clip.stream)
                    if q is not None:  # (a closed stream has counted it already)
                        q.in_flight -= 1
                        m.lose(ENCODER)
                        self._update_gauges(q)
                encoded = []
            self.metrics.encode_batches += 1
            self.metrics.encode_clips += len(encoded)
            self.metrics.encode_seconds += time.perf_counter() - t0
            self.batch_sizes = [*self.batch_sizes[-99:], len(batch)]
            for item in encoded:
                q = self.queues.get(item.pending.stream)
                if q is not None and not q.closed:
                    q.storing.append(item)
            async with self._changed:
                self._changed.notify_all()

    def _encode(self, batch: Sequence[PendingClip]) -> list[EncoderOutput]:
        """Worker thread: tower + merge for the whole batch, then a thumbnail and a digest per clip."""
        frames = np.stack([c.frames for c in batch])  # [N, clip_frames, H, W, 3] uint8
        tokens = self.encoder.encode(frames)  # [N, T, C] float16
        if tokens.shape[0] != len(batch):
            raise RuntimeError(f"encoder returned {tokens.shape[0]} clips for {len(batch)}")
        return [
            EncoderOutput(
                c,
                np.ascontiguousarray(tokens[i]),
                jpeg_thumbnail(c.frames[0], self.thumbnail_width),
                frames_digest(c.frames[: c.real_frames]),
            )
            for i, c in enumerate(batch)
        ]

    # ---- storing, per stream, in order -----------------------------------------------------------

    async def _store_loop(self, q: StreamQueue) -> None:
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: bool(q.storing) or q.closed)
            if q.closed:
                return
            item = q.storing[0]
            if q.rejected:
                q.metrics.lose(ABANDONED)
            else:
                await self._store(q, item)
            if q.closed:
                return
            q.storing.popleft()
            q.in_flight -= 1
            self._update_gauges(q)
            async with self._changed:
                self._changed.notify_all()

    async def _store(self, q: StreamQueue, item: EncoderOutput) -> None:
        p = item.pending
        m = q.metrics
        clip = Clip(
            stream=p.stream,
            start=p.start,
            end=p.end,
            frames=p.real_frames,
            tokens=item.tokens,
            encoder_id=self.encoder.encoder_id,
            thumbnail=item.thumbnail,
            wall_start=p.wall_start,
            extra={"sample_fps": f"{1.0 / p.step:.6g}"},
            digest=item.digest,
        )
        for attempt in range(self.append_retries + 1):
            try:
                if q.wait_s is None:
                    status = await self.memory.append(clip)
                else:
                    status = await self.memory.append(clip, wait_s=q.wait_s)
                break
            except InvalidClipError as exc:  # this clip only: retrying cannot help
                log.error("%s: memory refused clip %.1f-%.1f: %s", p.stream, p.start, p.end, exc)
                m.errors += 1
                m.last_error = f"memory: {exc}"
                m.lose("invalid")
                return
            except MemoryStoreError as exc:  # the stream cannot be stored any more (or not in time)
                log.error("%s: memory refuses the stream's clips: %s", p.stream, exc)
                m.errors += 1
                m.last_error = f"memory: {exc}"
                m.lose("refused")
                self._reject(q, str(exc))
                return
            except OSError as exc:  # a store that is not a VideoMemory (that one buffers or waits)
                if attempt == self.append_retries:
                    log.error("%s: could not store clip %.1f-%.1f: %s", p.stream, p.start, p.end, exc)
                    m.errors += 1
                    m.last_error = f"memory: {exc}"
                    m.lose("refused")
                    return
                await asyncio.sleep(0.25 * 2**attempt)
        if status == AppendStatus.DUPLICATE:
            m.duplicates += 1
        elif status == AppendStatus.BUFFERED:
            m.buffered_clips += 1
        else:
            m.clips += 1
        m.last_clip_end = p.end
        m.latency_s = time.monotonic() - p.ready

    def _reject(self, q: StreamQueue, reason: str) -> None:
        """Memory refuses the stream for good: its waiting clips are abandoned and its producer stops."""
        if q.rejected:
            return
        q.rejected = reason
        q.metrics.lose(ABANDONED, len(q.clips))
        q.clips.clear()
        self._update_gauges(q)

    def _on_outcome(self, outcome: ClipOutcome) -> None:
        """The memory's word on a clip it buffered (or acknowledged and then lost)."""
        if outcome.stream not in self.metrics.streams:
            return  # another compressor's stream (one memory may serve several)
        q = self.queues.get(outcome.stream)
        m = self.metrics.stream(outcome.stream)
        if outcome.previous == AppendStatus.BUFFERED:
            m.buffered_clips = max(0, m.buffered_clips - 1)
        elif outcome.status == AppendStatus.LOST:
            m.clips -= 1  # Redis had acknowledged it
        if outcome.status == AppendStatus.STORED:
            m.clips += 1
        elif outcome.status == AppendStatus.DUPLICATE:
            m.duplicates += 1
        elif outcome.status == AppendStatus.LOST:
            m.lose(outcome.reason, recorded=True)  # the memory counts its own losses in the meta
            if outcome.error:
                m.errors += 1
                m.last_error = f"memory: {outcome.error}"
            if outcome.fatal and q is not None:
                self._reject(q, outcome.error)
