"""Bearer tokens, the per-client rate limit, the access log (which never holds a token or a query
string), and JSON errors for mounted ASGI apps (WHIP)."""

from __future__ import annotations

import hmac
import json
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flashlive.web.errors import ApiError, code_for_status, error_body

log = logging.getLogger(__name__)
access_log = logging.getLogger("flashlive.web.access")

WS_TOKEN_PROTOCOL = "bearer."  # a browser's WebSocket sends the token as the subprotocol "bearer.<token>"
LIMITED_PREFIXES = ("/api", "/v1", "/whip", "/ws")
# a timeline loads a thumbnail per clip at once; they are cheap and immutable (the browser caches them)
UNLIMITED_SUFFIXES = ("/thumbnail.jpg",)


def token_ok(expected: str | None, given: str | None) -> bool:
    if expected is None:
        return True
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def bearer(headers: Mapping[str, str]) -> str | None:
    scheme, _, value = headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def ws_credentials(headers: Mapping[str, str], query: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(token, subprotocol to accept with) of a WebSocket handshake: `Authorization: Bearer`, the query
    parameter `token`, or the subprotocol `bearer.<token>` (browsers can set no headers)."""
    protocols = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    for proto in protocols:
        if proto.startswith(WS_TOKEN_PROTOCOL):
            return proto[len(WS_TOKEN_PROTOCOL) :], proto
    return bearer(headers) or query.get("token"), None


async def require_token(request: Request) -> None:
    """FastAPI dependency for every protected route."""
    expected = request.app.state.services.settings.token_value
    if not token_ok(expected, bearer(request.headers)):
        given = "missing" if bearer(request.headers) is None else "wrong"
        raise ApiError(
            401,
            "unauthorized",
            f"a valid 'Authorization: Bearer <token>' header is required (the token is {given})",
            headers={"WWW-Authenticate": 'Bearer realm="flashlive"'},
        )


class RateLimiter:
    """A token bucket per client: `per_s` per second on average, `burst` at once. `per_s == 0`: off."""

    MAX_CLIENTS = 10_000  # buckets kept; full buckets are forgotten first

    def __init__(self, per_s: float, burst: int) -> None:
        self.per_s = per_s
        self.burst = burst
        self.buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, when)
        self.refused = 0

    def take(self, client: str, now: float | None = None) -> float:
        """0 when the request may go on, else the seconds until one token is there."""
        if self.per_s <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        tokens, when = self.buckets.get(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - when) * self.per_s)
        if tokens >= 1.0:
            self.buckets[client] = (tokens - 1.0, now)
            if len(self.buckets) > self.MAX_CLIENTS:
                self._forget(now)
            return 0.0
        self.buckets[client] = (tokens, now)
        self.refused += 1
        return (1.0 - tokens) / self.per_s

    def _forget(self, now: float) -> None:
        full = [c for c, (t, w) in self.buckets.items() if t + (now - w) * self.per_s >= self.burst]
        for c in full or list(self.buckets)[: len(self.buckets) // 2]:
            del self.buckets[c]


def client_address(scope: Scope, trust_proxy: bool) -> str:
    if trust_proxy:
        for key, value in scope.get("headers", []):
            if key == b"x-forwarded-for":
                return value.decode("latin-1").split(",")[0].strip()
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, limiter: RateLimiter, trust_proxy: bool) -> None:
        self.app = app
        self.limiter = limiter
        self.trust_proxy = trust_proxy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] not in ("http", "websocket")
            or not path.startswith(LIMITED_PREFIXES)
            or path.endswith(UNLIMITED_SUFFIXES)
        ):
            await self.app(scope, receive, send)
            return
        wait = self.limiter.take(client_address(scope, self.trust_proxy))
        if wait <= 0:
            await self.app(scope, receive, send)
            return
        retry = str(max(1, math.ceil(wait)))
        if scope["type"] == "websocket":
            await send(
                {"type": "websocket.close", "code": 1013, "reason": f"rate limited; retry in {retry} s"}
            )
            return
        message = f"too many requests from this client; retry in {retry} s"
        await _send_json(
            send, 429, error_body(429, "rate_limited", message), [(b"retry-after", retry.encode())]
        )


class AccessLogMiddleware:
    """One INFO line per request: method, path (never the query string: it may hold a token), status,
    milliseconds. Uvicorn's own access log is off for that reason."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 0}

        async def send_logged(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            elif message["type"] == "websocket.accept":
                status["code"] = 101
            elif message["type"] == "websocket.close" and not status["code"]:
                status["code"] = 403
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        finally:
            method = scope.get("method", "WS")
            ms = (time.perf_counter() - started) * 1000
            access_log.info("%s %s %s %.1fms", method, scope["path"], status["code"] or "-", ms)


class JsonErrors:
    """Wrap a mounted ASGI app (the WHIP app answers errors in text/plain): its 4xx/5xx bodies become
    the API's JSON error shape, with the same message."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: dict[str, Any] = {}

        async def send_json(message: Message) -> None:
            if message["type"] == "http.response.start" and int(message["status"]) >= 400:
                held["start"] = message
                held["body"] = b""
                return
            if message["type"] == "http.response.body" and "start" in held:
                held["body"] += message.get("body", b"")
                if message.get("more_body"):
                    return
                start = held["start"]
                status = int(start["status"])
                text = held["body"].decode("utf-8", "replace").strip() or f"HTTP {status}"
                keep = [
                    (k, v)
                    for k, v in start.get("headers", [])
                    if k.lower() in (b"allow", b"www-authenticate")
                ]
                await _send_json(send, status, error_body(status, code_for_status(status), text), keep)
                return
            await send(message)

        await self.app(scope, receive, send_json)


async def _send_json(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]]
) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


class BodyLimitMiddleware:
    """413 (JSON) for a request body over `limit` bytes: at once by Content-Length, else as soon as the
    streamed body passes the limit (the app then sees the client go away, and its reply is dropped)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"the request body is larger than {self.limit} bytes"
        for key, value in scope.get("headers", []):
            if key == b"content-length" and value.isdigit() and int(value) > self.limit:
                await _send_json(send, 413, error_body(413, "body_too_large", message), [])
                return
        seen = 0
        state = {"started": False, "refused": False}

        async def limited_receive() -> Message:
            nonlocal seen
            if state["refused"]:
                return {"type": "http.disconnect"}
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit and not state["started"]:
                    state["refused"] = True
                    await _send_json(send, 413, error_body(413, "body_too_large", message), [])
                    return {"type": "http.disconnect"}
            return msg

        async def tracked_send(msg: Message) -> None:
            if state["refused"]:
                return
            state["started"] = state["started"] or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except Exception:
            if not state["refused"]:
                raise


class HideQueryStrings(logging.Filter):
    """Uvicorn logs WebSocket handshakes with their query string ("WebSocket /ws?token=..."): keep
    only the path, so a token given as a query parameter never reaches a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args and isinstance(record.args, tuple):
            record.args = tuple(
                a.split("?", 1)[0] if isinstance(a, str) and "?" in a else a for a in record.args
            )
        return True


def hide_query_strings_in_server_logs() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, HideQueryStrings) for f in logger.filters):
        logger.addFilter(HideQueryStrings())
