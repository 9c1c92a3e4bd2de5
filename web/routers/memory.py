"""/api/streams/{name}/segments, thumbnails and replay: what the memory holds, for the timeline."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse

from flashlive.memory.errors import EmptyStreamError, UnknownStreamError
from flashlive.memory.export import ExportError, export_thumbnails
from flashlive.memory.keys import STREAM_NAME, id_ms
from flashlive.web.errors import ApiError
from flashlive.web.schemas import Segment, SegmentList
from flashlive.web.security import require_token
from flashlive.web.services import Services, services

router = APIRouter(prefix="/api/streams/{name}", tags=["memory"], dependencies=[Depends(require_token)])
Svc = Annotated[Services, Depends(services)]
CLIP_ID = r"^\d{1,16}-\d{1,6}$"
MJPEG_BOUNDARY = "flashliveframe"


def thumbnail_url(stream: str, clip_id: str) -> str:
    return f"/api/streams/{stream}/clips/{clip_id}/thumbnail.jpg"


@router.get("/segments", response_model=SegmentList)
async def segments(
    name: str,
    svc: Svc,
    start: Annotated[float | None, Query(description="seconds on the stream timeline (inclusive)")] = None,
    end: Annotated[float | None, Query(description="seconds (exclusive)")] = None,
    last: Annotated[
        float | None, Query(gt=0, description="the last S seconds before the newest clip")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> SegmentList:
    _check_stream(name)
    try:
        infos = await svc.memory.list_clips(name, start=start, end=end, last=last)
    except EmptyStreamError:
        infos = []
    page = infos[:limit]
    truncated = len(infos) > limit
    return SegmentList(
        stream=name,
        start=start,
        end=end,
        segments=[
            Segment(
                id=c.id, start=c.start, end=c.end, frames=c.frames, thumbnail_url=thumbnail_url(name, c.id)
            )
            for c in page
        ],
        truncated=truncated,
        next_start=infos[limit].start if truncated else None,
    )


@router.get("/clips/{clip_id}/thumbnail.jpg")
async def thumbnail(name: str, clip_id: str, svc: Svc) -> Response:
    _check_stream(name)
    if not _is_clip_id(clip_id):
        raise ApiError(400, "invalid_request", f"bad clip id {clip_id!r}: expected <start ms>-<seq>")
    t = id_ms(clip_id) / 1000
    async for info in svc.memory.replay_info(name, t, t + 0.001, thumbnails=True, batch=1):
        if info.id != clip_id:
            break
        if not info.thumbnail:
            raise ApiError(404, "no_thumbnail", f"clip {clip_id} of stream {name!r} has no thumbnail")
        return Response(
            info.thumbnail,
            media_type="image/jpeg",
            headers={"Cache-Control": "public, max-age=86400, immutable", "ETag": f'"{clip_id}"'},
        )
    raise ApiError(404, "unknown_clip", f"stream {name!r} holds no clip {clip_id} (trimmed, or never stored)")


@router.get("/replay")
async def replay(
    name: str,
    request: Request,
    svc: Svc,
    start: Annotated[float | None, Query()] = None,
    end: Annotated[float | None, Query()] = None,
    last: Annotated[float | None, Query(gt=0)] = None,
    format: Annotated[Literal["mp4", "mjpeg"], Query(description="mp4 file, or MJPEG for an <img>")] = "mp4",
    fps: Annotated[float, Query(gt=0, le=30)] = 4.0,
) -> Response:
    """The range's thumbnails, one frame per clip: an MP4 (memory/export.py) or an MJPEG stream paced
    at `fps` (a browser shows it in an <img>)."""
    _check_stream(name)
    infos = await svc.memory.list_clips(name, start=start, end=end, last=last)
    limit = svc.settings.max_replay_frames
    if len(infos) > limit:
        raise ApiError(
            400,
            "range_too_long",
            f"the range holds {len(infos)} clips; a replay shows at most {limit} (narrow the range)",
        )
    if not infos:
        raise ApiError(404, "window_empty", f"no clip of stream {name!r} starts in that range")
    thumbs = await _thumbnails(svc, name, infos[0].start, infos[-1].start + 0.001)
    if not thumbs:
        raise ApiError(404, "no_thumbnail", f"no clip of stream {name!r} in that range has a thumbnail")
    if format == "mjpeg":
        return StreamingResponse(
            _mjpeg(thumbs, fps, request),
            media_type=f"multipart/x-mixed-replace; boundary={MJPEG_BOUNDARY}",
            headers={"Cache-Control": "no-store"},
        )
    data = await asyncio.to_thread(_mp4, thumbs, fps)
    filename = f"{name}-{infos[0].start:.0f}-{infos[-1].end:.0f}.mp4"
    return Response(
        data, media_type="video/mp4", headers={"Content-Disposition": f'inline; filename="{filename}"'}
    )


def _check_stream(name: str) -> None:
    if not STREAM_NAME.match(name):
        raise UnknownStreamError(name)


def _is_clip_id(clip_id: str) -> bool:
    import re

    return re.match(CLIP_ID, clip_id) is not None


async def _thumbnails(svc: Services, name: str, start: float, end: float) -> list[bytes]:
    return [
        info.thumbnail
        async for info in svc.memory.replay_info(name, start, end, thumbnails=True)
        if info.thumbnail
    ]


def _mp4(thumbs: list[bytes], fps: float) -> bytes:
    with tempfile.TemporaryDirectory(prefix="flashlive-replay-") as tmp:
        out = Path(tmp) / "replay.mp4"
        try:
            export_thumbnails(thumbs, out, fps=fps)
        except ExportError as exc:
            raise ApiError(422, "export_failed", f"cannot make the replay: {exc}") from None
        return out.read_bytes()


async def _mjpeg(thumbs: list[bytes], fps: float, request: Request) -> AsyncIterator[bytes]:
    for i, jpeg in enumerate(thumbs):
        if i and await request.is_disconnected():
            return
        head = f"--{MJPEG_BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
        yield head.encode() + jpeg + b"\r\n"
        if i + 1 < len(thumbs):
            await asyncio.sleep(1.0 / fps)
