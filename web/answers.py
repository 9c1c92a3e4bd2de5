"""Asking: build and check a job, submit it, follow its records. Shared by /api/ask, /v1 and /ws."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from flashlive.memory.errors import UnknownStreamError
from flashlive.memory.messages import (
    AskJob,
    DropoutSettings,
    ErrorCode,
    ErrorRecord,
    Generation,
    Window,
)
from flashlive.memory.results import Record, ResultTimeoutError, read_results
from flashlive.web.errors import ApiError
from flashlive.web.services import Services

log = logging.getLogger(__name__)

KEEPALIVE_S = 15.0  # a comment line on SSE streams this often while no record comes
GRACE_S = 30.0  # after a job's deadline, how long we wait for its worker's own record


def check_question(svc: Services, question: str) -> str:
    limit = svc.settings.max_question_chars
    if len(question) > limit:
        raise ApiError(
            413, "question_too_long", f"the question has {len(question)} characters; the limit is {limit}"
        )
    if not question.strip():
        raise ApiError(400, "invalid_request", "the question is blank")
    return question


def make_job(
    svc: Services,
    *,
    stream: str,
    question: str,
    window: Window,
    budget: int | None = None,
    recent: int = 0,
    dropout: DropoutSettings | None = None,
    generation: Generation | None = None,
) -> AskJob:
    check_question(svc, question)
    now = time.time()
    fields: dict[str, Any] = dict(
        stream=stream, question=question, window=window, recent=recent, dropout=dropout,
        generation=generation or Generation(), submitted=now, deadline=now + svc.settings.job_timeout_s,
    )  # fmt: skip
    if budget is not None:
        fields["budget"] = budget
    return AskJob(**fields)


async def check_window(svc: Services, stream: str, window: Window) -> None:
    """Refuse at once what the worker would refuse: an unknown stream, an empty memory, a window that
    misses the memory's span. (The worker checks again: the memory moves on meanwhile.)"""
    try:
        stats = await svc.memory.stats(stream)
    except UnknownStreamError:
        raise ApiError(404, ErrorCode.UNKNOWN_STREAM, str(UnknownStreamError(stream))) from None
    if stats.clips == 0 or stats.first_start is None or stats.last_end is None:
        raise ApiError(409, ErrorCode.EMPTY_MEMORY, f"stream {stream!r} holds no clips yet")
    lo, hi = stats.first_start, stats.last_end
    if (window.end is not None and window.end <= lo) or (window.start is not None and window.start >= hi):
        raise ApiError(
            404,
            ErrorCode.WINDOW_OUTSIDE_MEMORY,
            f"no clip of stream {stream!r} starts in {window.describe()}: the memory holds clips "
            f"from {lo:g} to {hi:g} s",
        )


async def require_worker(svc: Services) -> None:
    if not await svc.queue.workers():
        raise ApiError(
            503,
            "no_worker",
            "no query worker is alive to answer (starting, or none running); try again shortly",
            headers={"Retry-After": "5"},
        )


async def submit(svc: Services, job: AskJob, api: str) -> None:
    await svc.queue.submit(job)
    svc.asks[api] += 1
    log.info("job %s: %s, %s", job.id, job.stream, job.window.describe())


async def follow(
    svc: Services, job: str, *, after: str = "0-0", deadline: float | None = None
) -> AsyncIterator[tuple[str, Record] | None]:
    """The job's records after `after` until its terminal one; None every KEEPALIVE_S without one
    (for keep-alive comments). Past the deadline (+ grace) with no terminal record (no worker took
    it), the job is cancelled and a `deadline_exceeded` record is yielded (not stored)."""
    last = after
    while True:
        try:
            async for rid, record in read_results(
                svc.client, job, prefix=svc.queue.prefix, after=last, timeout=KEEPALIVE_S
            ):
                last = rid
                yield rid, record
                if record.type in ("final", "error"):
                    return
        except ResultTimeoutError:
            if deadline is not None and time.time() > deadline + GRACE_S:
                await svc.queue.cancel(job)
                message = "no worker answered before the deadline"
                yield "", ErrorRecord(job=job, code=ErrorCode.DEADLINE_EXCEEDED, message=message)
                return
            yield None


def cancel_later(svc: Services, job: str) -> None:
    """Cancel a job from a place that is itself being cancelled (a disconnected client's stream)."""

    async def cancel() -> None:
        try:
            status = await svc.queue.cancel(job)
            log.info("job %s: the client went away; cancel: %s", job, status)
        except Exception as exc:
            log.warning("job %s: cancelling after the client went away failed: %s", job, exc)

    task = asyncio.get_running_loop().create_task(cancel(), name=f"cancel-{job}")
    svc.background.add(task)
    task.add_done_callback(svc.background.discard)
