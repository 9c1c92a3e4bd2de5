"""WebSocket /ws: `{"topic": ..., "payload": ...}` messages both ways (protocol in docs/web.md).

Client -> server:
    {"topic": "subscribe", "payload": {"channel": "status"}}
    {"topic": "subscribe", "payload": {"channel": "events", "streams": ["door"], "after": {"door": "<id>"}}}
    {"topic": "subscribe", "payload": {"channel": "answers", "job": "<job id>", "after": "0-0"}}
    {"topic": "unsubscribe", "payload": {"channel": "events"}}        (or status; answers with "job")
    {"topic": "ping", "payload": {...}}
Server -> client: hello, subscribed, unsubscribed, status, event, answer, error, pong.

Events resume from the last id a client saw: on subscribe it gets the history after `after` (per
stream) from the durable events streams, then live events, without gaps or repeats (the entry id is
the cursor). A client that cannot keep up is closed with 1013; it reconnects with its last ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, WebSocket
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from starlette.websockets import WebSocketDisconnect, WebSocketState

from flashlive.memory.messages import JOB_ID, Event, StreamName, explain
from flashlive.memory.results import UnknownJobError
from flashlive.web.answers import follow
from flashlive.web.routers.memory import thumbnail_url
from flashlive.web.security import token_ok, ws_credentials
from flashlive.web.services import Services
from flashlive.web.status import all_streams, queue_and_workers
from flashlive.web.version import VERSION as __version__

log = logging.getLogger(__name__)
router = APIRouter()

OUT_QUEUE = 2048  # messages waiting for one client; more: the client is too slow and is closed
STATUS_INTERVAL_S = 2.0
MAX_BAD_MESSAGES = 50
EntryId = Annotated[str, Field(pattern=r"^\d{1,20}-\d{1,20}$")]


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SubscribeStatus(_Msg):
    channel: Literal["status"]


class SubscribeEvents(_Msg):
    channel: Literal["events"]
    streams: list[StreamName] | None = None  # None: every stream
    after: dict[StreamName, EntryId] = Field(default_factory=dict)  # last id seen per stream


class SubscribeAnswers(_Msg):
    channel: Literal["answers"]
    job: Annotated[str, Field(pattern=JOB_ID)]
    after: EntryId = "0-0"


class Unsubscribe(_Msg):
    channel: Literal["status", "events", "answers"]
    job: str | None = None


class ClientMessage(_Msg):
    topic: Literal["subscribe", "unsubscribe", "ping"]
    payload: dict[str, Any] = Field(default_factory=dict)


SUBSCRIBE: TypeAdapter[SubscribeStatus | SubscribeEvents | SubscribeAnswers] = TypeAdapter(
    Annotated[SubscribeStatus | SubscribeEvents | SubscribeAnswers, Field(discriminator="channel")]
)


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class TooSlow(Exception):
    pass


class Connection:
    def __init__(self, websocket: WebSocket, svc: Services) -> None:
        self.ws = websocket
        self.svc = svc
        self.out: asyncio.Queue[dict[str, Any]] = asyncio.Queue(OUT_QUEUE)
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.events_on = False
        self.event_streams: set[str] | None = None
        self.cursors: dict[str, str] = {}
        self.catching_up = 0
        self.held: list[tuple[str, str, Event]] = []
        self.bad = 0
        self.closing: tuple[int, str] | None = None

    # -- sending ---------------------------------------------------------------------------------

    def send(self, topic: str, payload: Any) -> None:
        if self.closing is not None:
            return
        try:
            self.out.put_nowait({"topic": topic, "payload": payload})
        except asyncio.QueueFull:
            self.closing = (1013, "too slow: reconnect and resume from your last event id")

    def error(self, code: str, message: str) -> None:
        self.send("error", {"code": code, "message": message})

    async def _writer(self) -> None:
        while True:
            message = await self.out.get()
            await self.ws.send_text(json.dumps(message, separators=(",", ":")))
            if self.closing is not None and self.out.empty():
                return

    # -- events (the hub calls offer/resync) -------------------------------------------------------

    def offer(self, stream: str, entry_id: str, event: Event) -> None:
        if not self.events_on or (self.event_streams is not None and stream not in self.event_streams):
            return
        if self.catching_up:
            self.held.append((stream, entry_id, event))
            return
        self._deliver(stream, entry_id, event)

    def resync(self) -> None:
        if self.events_on and self.cursors:
            self._spawn("catch-up", self._catch_up(dict(self.cursors)))

    def _deliver(self, stream: str, entry_id: str, event: Event) -> None:
        seen = self.cursors.get(stream)
        if seen is not None and _id_key(entry_id) <= _id_key(seen):
            return
        self.cursors[stream] = entry_id
        payload = {
            "id": entry_id, "stream": stream, "event": event.model_dump(mode="json"),
            "thumbnail_url": thumbnail_url(stream, event.thumbnail),
        }  # fmt: skip
        self.send("event", payload)

    async def _catch_up(self, after: dict[str, str]) -> None:
        self.catching_up += 1
        try:
            for stream, cursor in after.items():
                if self.event_streams is not None and stream not in self.event_streams:
                    continue
                while True:
                    page = await self.svc.events.read(stream, after=cursor, count=500)
                    for entry_id, event in page:
                        self._deliver(stream, entry_id, event)
                    if len(page) < 500:
                        break
                    cursor = page[-1][0]
        finally:
            self.catching_up -= 1
            if not self.catching_up:
                held, self.held = self.held, []
                for stream, entry_id, event in held:
                    self._deliver(stream, entry_id, event)

    # -- subscriptions ---------------------------------------------------------------------------

    def _spawn(self, key: str, coro: Any) -> None:
        old = self.tasks.pop(key, None)
        if old is not None:
            old.cancel()
        self.tasks[key] = asyncio.get_running_loop().create_task(self._guard(key, coro), name=f"ws-{key}")

    async def _guard(self, key: str, coro: Any) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("ws %s: %s", key, exc)
            self.error("internal", f"{key} stopped: {type(exc).__name__}: {exc}")

    async def _status_loop(self) -> None:
        while True:
            depth, workers = await queue_and_workers(self.svc)
            streams = await all_streams(self.svc)
            self.send(
                "status",
                {
                    "streams": [s.model_dump(mode="json") for s in streams],
                    "queue": {"waiting": depth.waiting, "running": depth.running},
                    "workers": len(workers),
                    "random_weights": any(w.random_weights for w in workers),
                },
            )
            await asyncio.sleep(STATUS_INTERVAL_S)

    async def _answers(self, job: str, after: str) -> None:
        status = await self.svc.queue.status(job)
        if status is None:
            self.error("unknown_job", str(UnknownJobError(job)))
            return
        async for item in follow(self.svc, job, after=after, deadline=status.deadline):
            if item is None:
                continue
            rid, record = item
            self.send("answer", {"job": job, "id": rid, "record": record.model_dump(mode="json")})

    def subscribe(self, payload: dict[str, Any]) -> None:
        sub = SUBSCRIBE.validate_python(payload)
        if isinstance(sub, SubscribeStatus):
            self._spawn("status", self._status_loop())
        elif isinstance(sub, SubscribeEvents):
            self.event_streams = set(sub.streams) if sub.streams is not None else None
            self.events_on = True
            self.cursors.update(sub.after)  # what the client saw: deliver only what follows
            self._spawn("catch-up", self._catch_up(dict(sub.after)))
        else:
            self._spawn(f"answers:{sub.job}", self._answers(sub.job, sub.after))
        self.send("subscribed", sub.model_dump(mode="json"))

    def unsubscribe(self, payload: dict[str, Any]) -> None:
        sub = Unsubscribe.model_validate(payload)
        key = f"answers:{sub.job}" if sub.channel == "answers" else sub.channel
        if sub.channel == "events":
            self.events_on = False
            key = "catch-up"
        task = self.tasks.pop(key, None)
        if task is not None:
            task.cancel()
        self.send("unsubscribed", sub.model_dump(mode="json"))

    def handle(self, text: str) -> None:
        try:
            message = ClientMessage.model_validate_json(text)
            if message.topic == "subscribe":
                self.subscribe(message.payload)
            elif message.topic == "unsubscribe":
                self.unsubscribe(message.payload)
            else:
                self.send("pong", message.payload)
        except ValidationError as exc:
            self.bad += 1
            self.error("bad_message", explain(exc))
            if self.bad >= MAX_BAD_MESSAGES:
                self.closing = (1008, f"{MAX_BAD_MESSAGES} bad messages")

    # -- the connection --------------------------------------------------------------------------

    async def run(self) -> None:
        limit = self.svc.settings.max_ws_message_bytes
        self.send("hello", {"version": __version__, "channels": ["status", "events", "answers"]})
        self.svc.hub.add(self)
        writer = asyncio.get_running_loop().create_task(self._writer(), name="ws-writer")
        try:
            while self.closing is None and not writer.done():
                receive = asyncio.ensure_future(self.ws.receive())
                done, _ = await asyncio.wait({receive, writer}, return_when=asyncio.FIRST_COMPLETED)
                if receive not in done:
                    receive.cancel()
                    break
                message = receive.result()
                if message["type"] == "websocket.disconnect":
                    return
                text = message.get("text")
                if text is None:
                    self.bad += 1
                    self.error("bad_message", "send JSON text frames, not binary")
                elif len(text.encode()) > limit:
                    self.closing = (1009, f"message larger than {limit} bytes")
                else:
                    self.handle(text)
            if self.closing is not None:
                with contextlib.suppress(asyncio.TimeoutError, WebSocketDisconnect, RuntimeError):
                    await asyncio.wait_for(asyncio.shield(writer), 2.0)
                code, reason = self.closing
                if self.ws.client_state == WebSocketState.CONNECTED:
                    with contextlib.suppress(RuntimeError, WebSocketDisconnect):
                        await self.ws.close(code, reason)
        finally:
            self.svc.hub.remove(self)
            for task in [writer, *self.tasks.values()]:
                task.cancel()
            await asyncio.gather(writer, *self.tasks.values(), return_exceptions=True)


@router.websocket("/ws")
async def websocket_endpoint(websocket: WebSocket) -> None:
    svc: Services = websocket.app.state.services
    token, protocol = ws_credentials(websocket.headers, websocket.query_params)
    if not token_ok(svc.settings.token_value, token):
        await websocket.close(code=1008, reason="a valid token is required")  # before accept: HTTP 403
        return
    await websocket.accept(subprotocol=protocol)
    metrics = websocket.app.state.metrics
    metrics.ws_clients += 1
    try:
        await Connection(websocket, svc).run()
    except WebSocketDisconnect:
        pass
    finally:
        metrics.ws_clients -= 1
