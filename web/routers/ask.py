"""/api/ask: a question about a stream's memory, answered as server-sent events (or JSON)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.sse import EventSourceResponse, format_sse_event

from flashlive.memory.messages import JOB_ID, ErrorRecord, FinalRecord, Generation, Piece
from flashlive.memory.results import AnswerText, UnknownJobError
from flashlive.web.answers import cancel_later, check_window, follow, make_job, require_worker, submit
from flashlive.web.errors import STATUS_OF_CODE, ApiError, error_response
from flashlive.web.schemas import AskAccepted, AskRequest, AskStatus, CancelOut
from flashlive.web.security import require_token
from flashlive.web.services import Services, services

router = APIRouter(prefix="/api/ask", tags=["ask"], dependencies=[Depends(require_token)])
Svc = Annotated[Services, Depends(services)]
KEEPALIVE = b": keep-alive\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy may buffer the pieces


@router.post("", response_model=None, status_code=200)
async def ask(body: AskRequest, request: Request, svc: Svc) -> Response:
    """Server-sent events by default: `job`, then `piece`s, then one `final` or `error`. With
    `Accept: application/json`, waits and answers the final record. With `detach`, 202 at once."""
    job = make_job(
        svc, stream=body.stream, question=body.question, window=body.window, budget=body.budget,
        recent=body.recent, dropout=body.dropout,
        generation=Generation(
            max_new_tokens=body.max_new_tokens, temperature=body.temperature, top_p=body.top_p, seed=body.seed
        ),
    )  # fmt: skip
    await check_window(svc, body.stream, body.window)
    await require_worker(svc)
    await submit(svc, job, "ask")
    if body.detach:
        accepted = AskAccepted(
            job=job.id, events_url=f"/api/ask/{job.id}/events", cancel_url=f"/api/ask/{job.id}"
        )
        return JSONResponse(accepted.model_dump(), status_code=202)
    accept = request.headers.get("accept", "")
    if "application/json" in accept and "text/event-stream" not in accept:
        return await _wait(svc, job.id, job.deadline)
    stream = _events(svc, job.id, "0-0", job.deadline, cancel_on_exit=True, start=True)
    return EventSourceResponse(stream, headers=SSE_HEADERS)


@router.get("/{job}/events")
async def events(
    job: str,
    svc: Svc,
    after: Annotated[str | None, Query(description="the last record id seen")] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> Response:
    """Resume a job's events after the last record id seen (`Last-Event-ID`, as EventSource sends it
    on reconnect, or `?after=`). Leaving does not cancel the job."""
    status = await _status(svc, job)
    cursor = last_event_id or after or "0-0"
    stream = _events(svc, job, cursor, status.deadline, cancel_on_exit=False, start=False)
    return EventSourceResponse(stream, headers=SSE_HEADERS)


@router.get("/{job}", response_model=AskStatus)
async def job_status(job: str, svc: Svc) -> AskStatus:
    status = await _status(svc, job)
    result: dict[str, Any] | None = None
    if status.final:
        entries: Any = await svc.client.xrange(svc.queue.keys(job).results, status.final, status.final)
        if entries:
            result = json.loads(entries[0][1][b"m"])
    return AskStatus(
        job=job, status=status.status, attempt=status.attempt, submitted=status.submitted,
        deadline=status.deadline, result=result,
    )  # fmt: skip


@router.delete("/{job}", response_model=CancelOut)
async def cancel(job: str, svc: Svc) -> CancelOut:
    _check_id(job)
    outcome = await svc.queue.cancel(job)
    if outcome.value == "unknown":
        raise ApiError(404, "unknown_job", str(UnknownJobError(job)))
    return CancelOut(job=job, status=outcome.value)


async def _status(svc: Services, job: str) -> Any:
    _check_id(job)
    status = await svc.queue.status(job)
    if status is None:
        raise ApiError(404, "unknown_job", str(UnknownJobError(job)))
    return status


def _check_id(job: str) -> None:
    import re

    if not re.match(JOB_ID, job):
        raise ApiError(400, "invalid_request", f"bad job id {job!r}")


def sse(event: str, data: Any, rid: str | None = None) -> bytes:
    return format_sse_event(event=event, data_str=json.dumps(data, separators=(",", ":")), id=rid or None)


async def _events(
    svc: Services, job: str, after: str, deadline: float, *, cancel_on_exit: bool, start: bool
) -> AsyncIterator[bytes]:
    text = AnswerText()
    finished = False
    try:
        if start:
            yield sse("job", {"job": job})
        async for item in follow(svc, job, after=after, deadline=deadline):
            if item is None:
                yield KEEPALIVE
                continue
            rid, record = item
            if isinstance(record, Piece):
                delta = text.add(record)
                data = {"text": delta, "attempt": record.attempt, "seq": record.seq, "reset": text.reset}
                yield sse("piece", data, rid)
            elif isinstance(record, FinalRecord):
                finished = True
                yield sse("final", record.model_dump(mode="json"), rid)
            else:
                finished = True
                yield sse("error", {"code": record.code, "message": record.message, "job": job}, rid)
    finally:
        if cancel_on_exit and not finished:
            cancel_later(svc, job)


async def _wait(svc: Services, job: str, deadline: float) -> Response:
    async for item in follow(svc, job, deadline=deadline):
        if item is None:
            continue
        _, record = item
        if isinstance(record, FinalRecord):
            return JSONResponse(record.model_dump(mode="json"))
        if isinstance(record, ErrorRecord):
            return error_response(STATUS_OF_CODE.get(record.code, 500), record.code, record.message)
    return error_response(500, "internal", "the job ended without a final record")
