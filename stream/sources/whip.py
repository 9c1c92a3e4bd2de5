"""WebRTC ingest through WHIP (RFC 9725), as a plain ASGI app, with aiortc as the receiving peer.

    POST   {prefix}/{stream}             Content-Type: application/sdp, body = offer
           -> 201, body = answer (application/sdp), Location: {prefix}/{stream}/{session}
    DELETE {prefix}/{stream}/{session}   -> 200; ends the session and closes its RTCPeerConnection
    PATCH  (trickle ICE)                 -> 405: the answer already carries every candidate

Each session becomes a `WhipSource`. Sessions go either to an `on_session(stream, source)` callback, or,
without one, to the `WhipStreamSource` of that stream (`app.stream_source(name)`, also reached through
`open_source("whip://NAME", whip_app=app)`), which outlives sessions: a publisher leaving raises
`SourceUnavailable`, and the next `frames()` waits for the next publisher.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc import sdp as aiortc_sdp
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from flashlive.memory.keys import NAME_RULE, STREAM_NAME

from ..types import SourceError, SourceFrame, SourceInvalid, SourceUnavailable
from .base import Source

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
OnSession = Callable[[str, "WhipSource"], Awaitable[None]]

MAX_OFFER_BYTES = 64 * 1024
RTP_CLOCK = 90_000  # video RTP timestamps tick at 90 kHz
_END = object()


class WhipRejected(Exception):
    """Raise from `on_session` to refuse a publisher with an HTTP status and a message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class WhipSource(Source):
    """One WHIP publishing session: the frames of its video track.

    `frames()` ends normally when the session is deleted or closed, and raises `SourceUnavailable` when
    the WebRTC connection fails. Frames are buffered up to `queue_size`; when the consumer falls behind,
    the oldest are dropped (`progress.dropped`), so a slow consumer never grows memory.
    """

    def __init__(
        self, stream: str, session_id: str, pc: RTCPeerConnection, track: MediaStreamTrack, queue_size: int
    ) -> None:
        super().__init__(name=stream, url_redacted=f"whip://{stream}/{session_id}", live=True)
        self.stream = stream
        self.session_id = session_id
        self.pc = pc
        self._track = track
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._queue_size = max(1, queue_size)
        self._ended = asyncio.Event()
        self._on_end: list[Callable[[WhipSource], object]] = []
        self._pump = asyncio.create_task(self._pump_frames(), name=f"whip-{stream}-{session_id}")

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    async def frames(self) -> AsyncIterator[SourceFrame]:
        while True:
            item = await self._queue.get()
            if item is _END:
                self._queue.put_nowait(_END)  # a later frames() call ends at once too
                return
            if isinstance(item, SourceError):
                self._queue.put_nowait(_END)
                raise item
            assert isinstance(item, SourceFrame)
            self.progress.frames += 1
            self.progress.pts = item.pts
            yield item

    async def close(self) -> None:
        await self.end(None)

    async def wait_ended(self) -> None:
        await self._ended.wait()

    async def end(self, error: SourceError | None) -> None:
        """Stop the session: close the peer connection and end `frames()` (with `error` if given)."""
        if self._ended.is_set():
            return
        self._ended.set()
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump
        await self.pc.close()
        self._queue.put_nowait(error if error is not None else _END)
        for callback in self._on_end:
            callback(self)
        if error is None:
            log.info("%s: session ended", self.url_redacted)
        else:
            log.warning("%s: session failed: %s", self.url_redacted, error)

    async def _pump_frames(self) -> None:
        # Pull frames from aiortc continuously so its own (unbounded) queue stays empty.
        first: int | None = None
        prev = 0
        ticks = 0  # RTP timestamps unwrapped across the 32-bit wrap (~13 h at 90 kHz)
        try:
            while True:
                frame = await self._track.recv()
                raw = int(frame.pts or 0)
                if first is None:
                    first = prev = raw
                step = (raw - prev) % 2**32
                ticks += step - 2**32 if step >= 2**31 else step
                prev = raw
                item = SourceFrame(frame=frame, pts=ticks / RTP_CLOCK, wall=time.time())  # type: ignore[arg-type]
                if self._queue.qsize() >= self._queue_size:
                    self._queue.get_nowait()
                    self.progress.dropped += 1
                self._queue.put_nowait(item)
        except MediaStreamError:
            # The track ended without a DELETE: the publisher went away.
            asyncio.get_running_loop().create_task(
                self.end(SourceUnavailable(f"{self.url_redacted}: the publisher stopped sending"))
            )


class WhipStreamSource(Source):
    """The frames of whichever WHIP session publishes to `stream`, across sessions.

    `frames()` waits for a publisher, yields its frames, and raises `SourceUnavailable` when it leaves;
    call `frames()` again to wait for the next one. `close()` ends any session and unregisters.
    """

    def __init__(self, app: WhipApp, stream: str) -> None:
        super().__init__(name=stream, url_redacted=f"whip://{stream}", live=True)
        self._app = app
        self.session: WhipSource | None = None
        self._changed = asyncio.Event()
        self._closed = False

    def attach(self, session: WhipSource) -> None:
        if self._closed:
            raise WhipRejected(404, f"stream {self.name!r} is closed")
        if self.session is not None and not self.session.ended:
            raise WhipRejected(409, f"stream {self.name!r} already has a publisher")
        self.session = session
        self._changed.set()

    async def frames(self) -> AsyncIterator[SourceFrame]:
        while not self._closed and (self.session is None or self.session.ended):
            self._changed.clear()
            await self._changed.wait()
        session = self.session
        if self._closed or session is None:
            return
        async for frame in session.frames():
            self.progress.frames += 1
            self.progress.pts = frame.pts
            yield frame
        if not self._closed:
            raise SourceUnavailable(f"{self.url_redacted}: the publisher ended the session")

    async def close(self) -> None:
        self._closed = True
        self._changed.set()
        self._app._unregister(self)
        if self.session is not None:
            await self.session.end(None)


class WhipApp:
    """ASGI app for WHIP ingest. Mount it at a path (e.g. "/whip") or give `prefix` when served alone.

    on_session: awaited with (stream, WhipSource) for each new session; must return promptly (start a
        task to consume frames). It may raise `WhipRejected(status, message)` to refuse. Without it,
        sessions go to `stream_source(name)` registrations, and unknown streams get 404.
    token: bearer token required on POST/DELETE when set (401 otherwise).
    ice_servers: STUN/TURN for aiortc; default none at all (host candidates only, no network needed).
    """

    def __init__(
        self,
        on_session: OnSession | None = None,
        *,
        token: str | None = None,
        prefix: str = "",
        ice_servers: list[RTCIceServer] | None = None,
        max_sessions: int = 16,
        queue_size: int = 8,
        connect_timeout: float = 30.0,
    ) -> None:
        self.on_session = on_session
        self.token = token
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.ice_servers = list(ice_servers or [])
        self.max_sessions = max_sessions
        self.queue_size = queue_size
        self.connect_timeout = connect_timeout
        self.sessions: dict[str, WhipSource] = {}
        self._streams: dict[str, WhipStreamSource] = {}

    # ---- registry ---------------------------------------------------------------------------------

    def stream_source(self, name: str) -> WhipStreamSource:
        """The long-lived source for stream `name` (created on first use)."""
        if not STREAM_NAME.match(name):
            raise SourceInvalid(f"invalid WHIP stream name {name!r}: {NAME_RULE}")
        source = self._streams.get(name)
        if source is None:
            source = self._streams[name] = WhipStreamSource(self, name)
        return source

    def _unregister(self, source: WhipStreamSource) -> None:
        if self._streams.get(source.name) is source:
            del self._streams[source.name]

    async def close(self) -> None:
        """End every session (call on shutdown)."""
        await asyncio.gather(*(s.end(None) for s in list(self.sessions.values())))

    # ---- ASGI -------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            status, headers, body = await self._handle(scope, receive)
        except Exception:
            log.exception("WHIP request failed")
            status, headers, body = _text(500, "internal error")
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _handle(self, scope: Scope, receive: Receive) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        root = scope.get("root_path", "") or ""
        path: str = scope.get("path", "")
        if root and path.startswith(root):
            path = path[len(root) :]  # Starlette's Mount leaves the full path in `path`
        if self.prefix:
            if not (path == self.prefix or path.startswith(self.prefix + "/")):
                return _text(404, "not a WHIP endpoint")
            path = path[len(self.prefix) :]
        parts = [p for p in path.split("/") if p]
        method = scope["method"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if method == "OPTIONS":
            return 204, [(b"accept-post", b"application/sdp"), (b"allow", b"OPTIONS, POST, DELETE")], b""
        if not parts or len(parts) > 2 or not STREAM_NAME.match(parts[0]):
            return _text(404, "WHIP endpoints are POST /<stream> and DELETE /<stream>/<session>")
        if not self._authorized(headers):
            status, hdrs, body = _text(401, "a valid 'Authorization: Bearer <token>' header is required")
            return status, [*hdrs, (b"www-authenticate", b'Bearer realm="whip"')], body
        if len(parts) == 1:
            if method != "POST":
                return _not_allowed("POST")
            return await self._post(scope, receive, headers, parts[0], root)
        if method == "DELETE":
            return await self._delete(parts[0], parts[1])
        if method == "PATCH":
            return _not_allowed("DELETE", "trickle ICE is not supported: send a complete offer")
        return _not_allowed("DELETE")

    def _authorized(self, headers: dict[str, str]) -> bool:
        if not self.token:
            return True
        scheme, _, value = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self.token.encode())

    async def _post(
        self, scope: Scope, receive: Receive, headers: dict[str, str], stream: str, root: str
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/sdp":
            return _text(415, f"Content-Type must be application/sdp, not {content_type or 'missing'!r}")
        body = await _read_body(receive, MAX_OFFER_BYTES)
        if body is None:
            return _text(413, f"SDP offer larger than {MAX_OFFER_BYTES} bytes")
        if self.on_session is None and stream not in self._streams:
            return _text(404, f"no stream named {stream!r} accepts WHIP publishers")
        if len(self.sessions) >= self.max_sessions:
            return _text(503, f"too many WHIP sessions (limit {self.max_sessions})")
        try:
            offer = _check_offer(body)
        except ValueError as exc:
            return _text(400, str(exc))

        session_id = secrets.token_urlsafe(12)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=self.ice_servers))
        tracks: list[MediaStreamTrack] = []
        pc.on("track", tracks.append)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            for transceiver in pc.getTransceivers():
                if transceiver.kind != "video":
                    transceiver.direction = "inactive"  # audio is not used: do not decode it
            video = [t for t in tracks if t.kind == "video"]
            if not video:
                raise ValueError("the offer has no video to receive")
            # aiortc gathers every ICE candidate inside setLocalDescription: a complete (non-trickle) answer.
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            await pc.close()
            reason = str(exc) or type(exc).__name__
            if "Failed to set remote video description" in reason:
                reason = "no video codec in common (this server receives VP8 or H.264)"
            return _text(400, f"cannot accept the SDP offer: {reason}")

        source = WhipSource(stream, session_id, pc, video[0], self.queue_size)
        self.sessions[session_id] = source
        source._on_end.append(lambda s: self.sessions.pop(s.session_id, None))
        self._watch(source)
        try:
            if self.on_session is not None:
                await self.on_session(stream, source)
            else:
                target = self._streams.get(stream)
                if target is None:
                    raise WhipRejected(404, f"no stream named {stream!r} accepts WHIP publishers")
                target.attach(source)
        except WhipRejected as exc:
            await source.end(None)
            return _text(exc.status, exc.message)
        except Exception:
            await source.end(None)
            raise
        location = f"{root}{self.prefix}/{stream}/{session_id}"
        log.info("whip://%s/%s: session started", stream, session_id)
        answer = pc.localDescription.sdp.encode()
        return (
            201,
            [
                (b"content-type", b"application/sdp"),
                (b"location", location.encode()),
                (b"access-control-expose-headers", b"Location"),
                (b"content-length", str(len(answer)).encode()),
            ],
            answer,
        )

    def _watch(self, source: WhipSource) -> None:
        """End the session when the connection fails or never connects."""
        pc = source.pc

        @pc.on("connectionstatechange")
        async def changed() -> None:
            if pc.connectionState == "failed":
                await source.end(SourceUnavailable(f"{source.url_redacted}: the WebRTC connection failed"))

        async def deadline() -> None:
            await asyncio.sleep(self.connect_timeout)
            if pc.connectionState != "connected" and not source.ended:
                await source.end(
                    SourceUnavailable(
                        f"{source.url_redacted}: not connected after {self.connect_timeout:.0f} s"
                    )
                )

        task = asyncio.create_task(deadline())
        source._on_end.append(lambda _: task.cancel())

    async def _delete(self, stream: str, session_id: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        source = self.sessions.get(session_id)
        if source is None or source.stream != stream:
            return _text(404, f"no WHIP session {stream}/{session_id}")
        await source.end(None)
        return _text(200, "session ended")


def _check_offer(body: bytes) -> str:
    """The offer as text, or ValueError with what is wrong with it."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the SDP offer is not UTF-8 text") from None
    if not text.lstrip().startswith("v=0"):
        raise ValueError("the body is not an SDP offer (it must start with 'v=0')")
    try:
        parsed = aiortc_sdp.SessionDescription.parse(text)
    except Exception as exc:
        raise ValueError(f"malformed SDP offer ({type(exc).__name__}: {exc})") from None
    if not parsed.media:
        raise ValueError("the SDP offer has no media sections")
    sending = [
        m
        for m in parsed.media
        if m.kind == "video" and m.port != 0 and m.direction in (None, "sendonly", "sendrecv")
    ]
    if not sending:
        raise ValueError("the offer has no video to receive (no sendonly/sendrecv video section)")
    return text


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _text(status: int, message: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    body = (message + "\n").encode()
    return (
        status,
        [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())],
        body,
    )


def _not_allowed(allow: str, message: str | None = None) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    status, headers, body = _text(405, message or f"method not allowed here (allowed: {allow})")
    return status, [*headers, (b"allow", allow.encode())], body


def open_whip_source(
    url: str, *, whip_app: WhipApp | None = None, name: str | None = None, **_: Any
) -> Source:
    """`open_source("whip://NAME", whip_app=app)` or `open_source("whip", name=NAME, whip_app=app)`."""
    stream = name
    if url.lower().startswith("whip://"):
        stream = url[len("whip://") :].strip("/") or name
    if not stream:
        raise SourceInvalid("a WHIP source needs a stream name: whip://NAME or name=NAME")
    if whip_app is None:
        raise SourceInvalid(f"WHIP stream {stream!r}: no WHIP endpoint (whip_app) is running in this process")
    return whip_app.stream_source(stream)
