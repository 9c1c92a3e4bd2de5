"""/api/streams: the streams with their state, registering pulled streams, removing streams."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Query

from flashlive.memory.errors import UnknownStreamError
from flashlive.memory.registry import StreamRegistration
from flashlive.memory.types import StreamState
from flashlive.web.errors import ApiError
from flashlive.web.schemas import StreamCreate, StreamDeleted, StreamList, StreamOut
from flashlive.web.security import require_token
from flashlive.web.services import Services, services
from flashlive.web.status import STALE_AFTER_S, all_streams, stream_out

router = APIRouter(prefix="/api/streams", tags=["streams"], dependencies=[Depends(require_token)])
Svc = Annotated[Services, Depends(services)]

PULLED_SCHEMES = ("rtsp", "rtsps", "http", "https")
STOP_WAIT_S = 10.0  # how long DELETE waits for the ingest process to stop a registered stream


@router.get("", response_model=StreamList)
async def list_streams(svc: Svc) -> StreamList:
    return StreamList(streams=await all_streams(svc))


@router.get("/{name}", response_model=StreamOut)
async def get_stream(name: str, svc: Svc) -> StreamOut:
    row = await stream_out(svc, name, await svc.registry.get(name) is not None)
    if row is None:
        raise UnknownStreamError(name)
    return row


@router.post("", response_model=StreamOut, status_code=201)
async def add_stream(body: StreamCreate, svc: Svc) -> StreamOut:
    _check_url(body.url, svc.settings.allow_file_sources)
    if body.name in await svc.memory.streams():
        raise ApiError(409, "stream_exists", f"a stream named {body.name!r} exists already")
    reg = StreamRegistration(
        name=body.name, url=body.url, transport=body.transport, fps=body.fps, loop=body.loop
    )
    if not await svc.registry.add(reg):
        raise ApiError(409, "stream_exists", f"a stream named {body.name!r} is registered already")
    row = await stream_out(svc, body.name, True)
    assert row is not None
    return row


@router.delete("/{name}", response_model=StreamDeleted)
async def delete_stream(
    name: str,
    svc: Svc,
    keep_memory: Annotated[bool, Query(description="stop ingesting but keep the clips")] = False,
) -> StreamDeleted:
    registered = await svc.registry.remove(name)
    if registered:
        await _wait_stopped(svc, name)
    else:
        await _refuse_if_ingested_elsewhere(svc, name)
    deleted = False
    if not keep_memory:
        deleted = await svc.memory.delete(name, missing_ok=True)
    if not registered and not deleted and not keep_memory:
        raise UnknownStreamError(name)
    return StreamDeleted(name=name, unregistered=registered, memory_deleted=deleted)


def _check_url(url: str, allow_files: bool) -> None:
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ApiError(400, "invalid_request", f"not a URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme in PULLED_SCHEMES:
        if not parts.hostname:
            raise ApiError(400, "invalid_request", f"the URL {url.split('?')[0]!r} has no host")
        return
    if not scheme and allow_files:
        if not Path(url).is_file():
            raise ApiError(400, "invalid_request", f"no such file on the server: {url!r}")
        return
    allowed = ", ".join(f"{s}://" for s in PULLED_SCHEMES)
    files = " or a file path" if allow_files else ""
    raise ApiError(400, "invalid_request", f"the stream URL must start with {allowed}{files}")


async def _wait_stopped(svc: Services, name: str) -> None:
    """Give the ingest process that ran the stream time to stop it (and store its last clip), so
    deleting the memory afterwards is not undone by a late append."""
    deadline = time.monotonic() + STOP_WAIT_S
    while time.monotonic() < deadline:
        if await svc.registry.owner(name) is None:
            return
        try:
            status = await svc.memory.status(name)
        except UnknownStreamError:
            return
        if status.state == StreamState.STOPPED:
            return
        await asyncio.sleep(0.1)


async def _refuse_if_ingested_elsewhere(svc: Services, name: str) -> None:
    try:
        status = await svc.memory.status(name)
    except UnknownStreamError:
        return
    if status.state != StreamState.STOPPED and time.time() - status.reported < STALE_AFTER_S:
        raise ApiError(
            409,
            "stream_in_config",
            f"stream {name!r} is ingested from the config file of a running ingest process; "
            "remove it there (or stop that process) to delete it",
        )
