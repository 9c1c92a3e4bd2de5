"""/api/watches (standing questions) and /api/events (their alerts, paged by entry id)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from flashlive.memory.keys import STREAM_NAME
from flashlive.memory.messages import JOB_ID, Watch
from flashlive.memory.watches import WatchLimitError
from flashlive.web.answers import check_question
from flashlive.web.errors import ApiError
from flashlive.web.routers.memory import thumbnail_url
from flashlive.web.schemas import EventOut, EventPage, WatchCreate, WatchList
from flashlive.web.security import require_token
from flashlive.web.services import Services, services

router = APIRouter(prefix="/api", tags=["watches"], dependencies=[Depends(require_token)])
Svc = Annotated[Services, Depends(services)]
ENTRY_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


async def watch_out(svc: Services, watch: Watch) -> dict[str, Any]:
    """The watch with its last score and whether an event is open."""
    state = (await svc.watches.states(watch.stream)).get(watch.id)
    data = watch.model_dump(mode="json")
    data["state"] = {
        "active": state.active if state else False,
        "score": state.score if state else None,
        "evaluations": state.evaluations if state else 0,
        "last_eval": state.last_eval if state else None,
    }
    return data


@router.post("/watches", status_code=201)
async def add_watch(body: WatchCreate, svc: Svc) -> dict[str, Any]:
    check_question(svc, body.condition)
    try:
        watch = await svc.watches.add(Watch(**body.model_dump()))
    except WatchLimitError as exc:
        raise ApiError(409, "too_many_watches", str(exc)) from None
    return await watch_out(svc, watch)


@router.get("/watches", response_model=WatchList)
async def list_watches(svc: Svc, stream: Annotated[str | None, Query()] = None) -> WatchList:
    if stream is not None and not STREAM_NAME.match(stream):
        raise ApiError(400, "invalid_request", f"bad stream name {stream!r}")
    return WatchList(watches=[await watch_out(svc, w) for w in await svc.watches.all(stream)])


@router.get("/watches/{watch_id}")
async def get_watch(watch_id: str, svc: Svc) -> dict[str, Any]:
    watch = await svc.watches.get(_checked(watch_id))
    if watch is None:
        raise ApiError(404, "unknown_watch", f"no watch {watch_id!r}")
    return await watch_out(svc, watch)


@router.delete("/watches/{watch_id}")
async def delete_watch(watch_id: str, svc: Svc) -> dict[str, Any]:
    watch = await svc.watches.delete(_checked(watch_id))
    if watch is None:
        raise ApiError(404, "unknown_watch", f"no watch {watch_id!r}")
    return {"deleted": watch.id, "stream": watch.stream}


@router.get("/events", response_model=EventPage)
async def events(
    svc: Svc,
    stream: Annotated[str, Query(description="the stream whose events to page through")],
    after: Annotated[str, Query(description="entry id of the last event seen; 0-0: from the start")] = "0-0",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> EventPage:
    """Events oldest first after `after`; page on with `after=next_after`."""
    if not STREAM_NAME.match(stream):
        raise ApiError(400, "invalid_request", f"bad stream name {stream!r}")
    if not ENTRY_ID.match(after):
        raise ApiError(400, "invalid_request", f"bad event id {after!r}: expected <ms>-<seq>, e.g. 0-0")
    page = await svc.events.read(stream, after=after, count=limit)
    return EventPage(
        stream=stream,
        events=[EventOut(id=i, event=e, thumbnail_url=thumbnail_url(e.stream, e.thumbnail)) for i, e in page],
        next_after=page[-1][0] if page else after,
    )


def _checked(watch_id: str) -> str:
    if not re.match(JOB_ID, watch_id):
        raise ApiError(400, "invalid_request", f"bad watch id {watch_id!r}")
    return watch_id
