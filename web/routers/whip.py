"""WHIP (RFC 9725) at /whip/{name}: proxied to the ingest service (docker-compose), where the
WebRTC session ends in the process that has the clip compressor. (`flashlive serve` mounts the
in-process ingest's WHIP app instead: see web/app.py.)"""

from __future__ import annotations

import logging

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import Response

from flashlive.web.errors import ApiError, error_response
from flashlive.web.security import require_token

log = logging.getLogger(__name__)

router = APIRouter(tags=["whip"])
FORWARD_REQUEST = ("content-type", "authorization", "if-match")
FORWARD_RESPONSE = ("content-type", "location", "etag", "allow", "accept-post", "link", "www-authenticate")


@router.api_route("/whip/{path:path}", methods=["POST", "PATCH", "DELETE", "OPTIONS"])
async def whip_proxy(path: str, request: Request) -> Response:
    if request.method != "OPTIONS":
        await require_token(request)
    client: httpx.AsyncClient = request.app.state.whip_client
    body = await request.body()
    headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARD_REQUEST}
    try:
        upstream = await client.request(request.method, f"/whip/{path}", content=body, headers=headers)
    except httpx.HTTPError as exc:
        log.warning("WHIP proxy: %s", exc)
        raise ApiError(
            502, "ingest_unreachable", f"the ingest service that serves WHIP cannot be reached ({exc})"
        ) from None
    out = {k: v for k, v in upstream.headers.items() if k.lower() in FORWARD_RESPONSE}
    if upstream.status_code >= 400:
        out.pop("content-type", None)
        message = upstream.text.strip() or f"HTTP {upstream.status_code} from the ingest service"
        response = error_response(upstream.status_code, "whip_error", message, out)
        return response
    return Response(upstream.content, status_code=upstream.status_code, headers=out)
