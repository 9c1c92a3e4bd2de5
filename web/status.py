"""The state of every stream, the queue and the workers, as the API, /ws, /metrics and /healthz show it.

Read from Redis only (what ingest reports with `VideoMemory.set_state`, what workers put in their
heartbeats), so it is the same whichever web process answers and however many ingest processes run.
"""

from __future__ import annotations

import asyncio
import time

from flashlive.memory.errors import CorruptEntryError, UnknownStreamError
from flashlive.memory.jobs import QueueDepth, WorkerInfo
from flashlive.memory.types import IngestCounters, StreamStats, StreamStatus
from flashlive.web.schemas import StreamOut
from flashlive.web.services import Services

# a status report older than this means its ingest process is gone (ingest reports every 2 s)
STALE_AFTER_S = 15.0


async def stream_names(svc: Services) -> list[str]:
    names = set(await svc.memory.streams())
    names.update(await svc.registry.all())
    return sorted(names)


async def stream_out(svc: Services, name: str, registered: bool) -> StreamOut | None:
    """One stream's row; None when it vanished meanwhile (deleted)."""
    stats: StreamStats | None
    status: StreamStatus | None
    try:
        stats = await svc.memory.stats(name)
    except UnknownStreamError:
        stats = None
    try:
        status = await svc.memory.status(name)
    except (UnknownStreamError, CorruptEntryError):
        status = None
    if stats is None and status is None and not registered:
        return None
    m = status.metrics if status is not None else IngestCounters()
    now = time.time()
    if status is not None:
        state = status.state.value
        stale = state != "stopped" and now - status.reported > STALE_AFTER_S
    else:
        state, stale = ("pending" if registered else "unknown"), False
    return StreamOut(
        name=name, state=state, stale=stale,
        since=status.since if status else None, reported=status.reported if status else None,
        source=status.source if status else "", error=status.error if status else "",
        registered=registered,
        clips=stats.clips if stats else 0, bytes=stats.bytes if stats else 0,
        first_start=stats.first_start if stats else None, last_end=stats.last_end if stats else None,
        span_s=stats.span if stats else 0.0,
        lag_s=m.lag_s, latency_s=m.latency_s, fps=m.sample_fps, input_fps=m.input_fps,
        dropped_clips=m.dropped_clips, pending_clips=m.pending_clips, reconnects=m.reconnects,
        encoder_id=stats.encoder_id if stats else "",
    )  # fmt: skip


async def all_streams(svc: Services) -> list[StreamOut]:
    registered = set(await svc.registry.all())
    names = sorted(set(await svc.memory.streams()) | registered)
    rows = await asyncio.gather(*(stream_out(svc, n, n in registered) for n in names))
    return [r for r in rows if r is not None]


async def queue_and_workers(svc: Services) -> tuple[QueueDepth, list[WorkerInfo]]:
    return await svc.queue.depth(), await svc.queue.workers()
