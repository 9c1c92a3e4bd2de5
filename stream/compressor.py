"""The online clip compressor: encode complete clips off the event loop and append them to memory.

One compressor per device owns one worker thread. Streams submit complete clips into their own small
bounded queue; the compressor takes clips round-robin across streams (so batches mix streams and no
stream starves another), encodes a batch in the worker thread, makes a thumbnail per clip, and appends
the results to memory from the event loop.

Backpressure, per stream, when clips arrive faster than the encoder clears them:
- `lower_fps`: halve the stream's sample rate (down to `min_fps`) when its queue is half full, and
  raise it back step by step once the queue stays empty; if the queue still fills, drop the oldest clip.
- `skip`: drop the oldest waiting clip so memory keeps the freshest video.
- `wait`: block the producer (file backfill: the decoder simply slows down, nothing is lost).
In every case a stream holds at most `max_pending` clips: queues never grow without bound.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from flashlive.memory.errors import EncoderMismatchError, MemoryStoreError, OutOfOrderClipError
from flashlive.memory.types import Clip
from flashlive.model.encoder import ClipEncoder

from .clips import PendingClip
from .metrics import Metrics, StreamMetrics
from .sampler import Sampler
from .settings import POLICIES, IngestSettings, Policy
from .thumbnail import jpeg_thumbnail

log = logging.getLogger(__name__)

# What encoding a batch may raise for reasons of its own (bad frames, a device error, out of memory,
# a thumbnail PyAV refused): that batch is lost, the other streams go on. Anything else is a bug and
# stops the compressor, and every stream with it, loudly (`_run`).
ENCODE_ERRORS = (RuntimeError, ValueError, OSError, MemoryError)


class ClipSink(Protocol):
    """Where encoded clips go: `flashlive.memory.VideoMemory` (or anything with this method)."""

    async def append(self, clip: Clip) -> Any: ...


@dataclass
class StreamQueue:
    name: str
    policy: Policy
    max_pending: int
    metrics: StreamMetrics
    sampler: Sampler | None  # rate control for `lower_fps`
    target_fps: float
    min_fps: float
    clips: deque[PendingClip] = field(default_factory=deque)
    in_flight: int = 0
    rejected: str | None = None  # set when memory refused the stream's clips for good
    clips_since_change: int = 0
    idle_streak: int = 0
    closed: bool = False


@dataclass
class EncoderOutput:
    """A clip the worker thread has encoded, on its way to becoming a memory `Clip`."""

    pending: PendingClip
    tokens: np.ndarray  # [T, C] float16
    thumbnail: bytes


class CompressorClosed(RuntimeError):
    pass


class StreamRejected(RuntimeError):
    """Memory refuses this stream's clips for good (another encoder's tokens, clips out of time order):
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
        """Add a stream. Left out, `policy`, `max_pending` and `min_fps` come from the settings."""
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
        self.queues[name] = q
        if name not in self._order:
            self._order.append(name)
        return q

    async def unregister(self, name: str, *, drain: bool = True) -> None:
        q = self.queues.get(name)
        if q is None:
            return
        if drain:
            await self.drain(name)
        q.closed = True
        dropped = len(q.clips)
        q.clips.clear()
        q.metrics.pending_clips = 0
        if dropped:
            q.metrics.dropped_clips += dropped
        self.queues.pop(name, None)
        if name in self._order:
            self._order.remove(name)

    # ---- producer side -------------------------------------------------------------------------

    async def submit(self, clip: PendingClip) -> None:
        """Queue a complete clip, applying the stream's backpressure policy. Never grows a queue past
        `max_pending`; under `wait` it waits for room instead."""
        if self._failed:
            raise StreamRejected(self._failed)
        if self._closing:
            raise CompressorClosed("the compressor is shutting down")
        q = self.queues.get(clip.stream)
        if q is None:
            raise KeyError(f"stream {clip.stream!r} is not registered with the compressor")
        if q.rejected:
            raise StreamRejected(q.rejected)
        if q.policy == "wait":
            async with self._changed:
                await self._changed.wait_for(
                    lambda: len(q.clips) < q.max_pending or q.closed or self._closing or bool(self._failed)
                )
            if self._failed:
                raise StreamRejected(self._failed)
            if q.closed or self._closing:
                raise CompressorClosed(f"stream {clip.stream!r} was closed while waiting")
        else:
            if q.policy == "lower_fps":
                self._adapt_rate(q)
            while len(q.clips) >= q.max_pending:
                old = q.clips.popleft()
                q.metrics.dropped_clips += 1
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
        """Wait until the stream (or every stream) has nothing waiting or being encoded."""

        def idle() -> bool:
            if self._failed:
                return True  # nothing will be encoded any more
            qs = [self.queues[name]] if name in self.queues else [] if name else list(self.queues.values())
            return all(not q.clips and q.in_flight == 0 for q in qs)

        if not idle():
            self.start()
        async with self._changed:
            await self._changed.wait_for(idle)

    async def close(self, *, drain: bool = True) -> None:
        if drain and self._task is not None:
            await self.drain()
        self._closing = True
        async with self._changed:
            self._changed.notify_all()
        if self._task is not None:
            await self._task
        self._pool.shutdown(wait=True)

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
                if q is None or not q.clips or len(batch) >= self.max_batch:
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
                    lambda: self._closing or any(q.clips for q in self.queues.values())
                )
                batch = self._take_batch()
                self._changed.notify_all()  # room in the queues for `wait` producers
            if not batch:
                if self._closing:
                    return
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
                encoded = []
            self.metrics.encode_batches += 1
            self.metrics.encode_clips += len(encoded)
            self.metrics.encode_seconds += time.perf_counter() - t0
            self.batch_sizes = [*self.batch_sizes[-99:], len(batch)]
            for item in encoded:
                await self._store(item)
            for clip in batch:
                q = self.queues.get(clip.stream)
                if q is not None:
                    q.in_flight -= 1
                    self._update_gauges(q)
            async with self._changed:
                self._changed.notify_all()

    def _encode(self, batch: Sequence[PendingClip]) -> list[EncoderOutput]:
        """Worker thread: tower + merge for the whole batch, then one thumbnail per clip."""
        frames = np.stack([c.frames for c in batch])  # [N, clip_frames, H, W, 3] uint8
        tokens = self.encoder.encode(frames)  # [N, T, C] float16
        if tokens.shape[0] != len(batch):
            raise RuntimeError(f"encoder returned {tokens.shape[0]} clips for {len(batch)}")
        return [
            EncoderOutput(
                c, np.ascontiguousarray(tokens[i]), jpeg_thumbnail(c.frames[0], self.thumbnail_width)
            )
            for i, c in enumerate(batch)
        ]

    async def _store(self, item: EncoderOutput) -> None:
        p = item.pending
        m = self.metrics.stream(p.stream)
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
        )
        for attempt in range(self.append_retries + 1):
            try:
                await self.memory.append(clip)
                break
            except (EncoderMismatchError, OutOfOrderClipError) as exc:
                log.error("%s: memory refuses the stream's clips: %s", p.stream, exc)
                m.errors += 1
                m.last_error = f"memory: {exc}"
                q = self.queues.get(p.stream)
                if q is not None:
                    q.rejected = str(exc)
                    q.metrics.dropped_clips += len(q.clips)
                    q.clips.clear()
                return
            except MemoryStoreError as exc:  # this clip only (e.g. invalid): retrying cannot help
                log.error("%s: memory refused clip %.1f-%.1f: %s", p.stream, p.start, p.end, exc)
                m.errors += 1
                m.last_error = f"memory: {exc}"
                return
            except OSError as exc:  # the store is away (VideoMemory buffers instead; other sinks raise)
                if attempt == self.append_retries:
                    log.error("%s: could not store clip %.1f-%.1f: %s", p.stream, p.start, p.end, exc)
                    m.errors += 1
                    m.last_error = f"memory: {exc}"
                    return
                await asyncio.sleep(0.25 * 2**attempt)
        m.clips += 1
        m.last_clip_end = p.end
        m.latency_s = time.monotonic() - p.ready
