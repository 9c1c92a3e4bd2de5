"""WebSocket /ws over a real connection: status, events with catch-up and resume, a job's answers,
garbage that gets an error and leaves the connection up."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from helpers import unique_prefix
from web_helpers import Web, fill, web_app, worker_process
from websockets.asyncio.client import ClientConnection, connect

from flashlive.memory.events import EventLog
from flashlive.memory.messages import Event
from flashlive.memory.server import RedisServer
from flashlive.memory.settings import RedisSettings
from flashlive.memory.store import make_client


@pytest.fixture(scope="module")
def web(redis_server: RedisServer) -> Iterator[Web]:
    prefix = unique_prefix("s")
    with (
        worker_process(redis_server.url, prefix, "w-ws", step_s=0.01, length=6),
        web_app(redis_server.url, prefix) as service,
    ):
        yield service


@pytest.fixture
async def log(web: Web) -> AsyncIterator[EventLog]:
    client = make_client(RedisSettings.from_dsn(web.redis_url))
    yield EventLog(client, prefix=web.prefix)
    await client.aclose()


def event(stream: str, n: int) -> Event:
    return Event(
        id=f"occ{n}", watch="w1", stream=stream, condition="c", kind="start" if n == 0 else "update",
        score=0.9, peak=0.9, threshold=0.5, clip_id=f"{1000 + n}000-1", clip_start=1000.0 + n,
        clip_end=1001.0 + n, started=1000.0, thumbnail=f"{1000 + n}000-1",
    )  # fmt: skip


async def recv(ws: ClientConnection, topic: str, timeout: float = 10) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            message = json.loads(await ws.recv())
            if message["topic"] == topic:
                return dict(message["payload"])


async def send(ws: ClientConnection, topic: str, payload: dict[str, Any]) -> None:
    await ws.send(json.dumps({"topic": topic, "payload": payload}))


async def test_events_catch_up_then_live_then_resume(web: Web, log: EventLog) -> None:
    ids = [await log.append(event("gate", n)) for n in range(3)]
    async with connect(web.ws_url) as ws:
        assert (await recv(ws, "hello"))["channels"] == ["status", "events", "answers"]
        await send(ws, "subscribe", {"channel": "events", "streams": ["gate"], "after": {"gate": ids[0]}})
        await recv(ws, "subscribed")
        got = [await recv(ws, "event") for _ in range(2)]
        assert [g["id"] for g in got] == ids[1:]
        assert got[0]["thumbnail_url"] == "/api/streams/gate/clips/1001000-1/thumbnail.jpg"
        live = await log.append(event("gate", 3))
        other = await log.append(event("elsewhere", 0))
        pushed = await recv(ws, "event")
        assert pushed["id"] == live and pushed["event"]["clip_start"] == 1003.0 and other
    # gone for a while: two events happen; back with the last id seen, nothing missed or repeated
    missed = [await log.append(event("gate", n)) for n in (4, 5)]
    async with connect(web.ws_url) as ws:
        await send(ws, "subscribe", {"channel": "events", "streams": ["gate"], "after": {"gate": live}})
        got = [await recv(ws, "event") for _ in range(2)]
        assert [g["id"] for g in got] == missed
        await send(ws, "ping", {"n": 1})
        assert await recv(ws, "pong") == {"n": 1}


async def test_answers_of_a_detached_job(web: Web) -> None:
    async with web.memory() as memory:
        await fill(memory, "wsask", 3)
    async with httpx.AsyncClient(base_url=web.url, timeout=30) as http:
        for _ in range(100):
            if (await http.get("/api/info")).json()["workers"]:
                break
            await asyncio.sleep(0.1)
        reply = await http.post("/api/ask", json={"stream": "wsask", "question": "q", "detach": True})
    job = reply.json()["job"]
    async with connect(web.ws_url) as ws:
        await send(ws, "subscribe", {"channel": "answers", "job": job})
        records: list[dict[str, Any]] = []
        while not records or records[-1]["record"]["type"] not in ("final", "error"):
            records.append(await recv(ws, "answer"))
    assert records[-1]["record"]["type"] == "final"
    assert "".join(r["record"]["text"] for r in records[:-1]) == records[-1]["record"]["answer"]
    assert all(r["job"] == job and r["id"] for r in records)


async def test_status_channel(web: Web) -> None:
    async with web.memory() as memory:
        await fill(memory, "wsstatus", 2)
    async with connect(web.ws_url) as ws:
        await send(ws, "subscribe", {"channel": "status"})
        status = await recv(ws, "status")
    assert "wsstatus" in [s["name"] for s in status["streams"]]
    assert set(status) == {"streams", "queue", "workers", "random_weights"}


@pytest.mark.parametrize(
    ("frame", "needle"),
    [
        ("not json at all", "Invalid JSON"),
        ('{"topic": "dance"}', "topic"),
        ('{"topic": "subscribe", "payload": {"channel": "gossip"}}', "channel"),
        ('{"topic": "subscribe", "payload": {"channel": "events", "after": {"a b": "1-0"}}}', "after"),
        ('{"topic": "subscribe", "payload": {"channel": "answers", "job": "{evil}"}}', "job"),
        (b"\x00\x01binary", "JSON text frames"),
    ],
)
async def test_garbage_gets_an_error_and_the_connection_stays(
    web: Web, frame: str | bytes, needle: str
) -> None:
    async with connect(web.ws_url) as ws:
        await recv(ws, "hello")
        await ws.send(frame)
        error = await recv(ws, "error")
        assert needle in error["message"] and error["code"] == "bad_message"
        await send(ws, "ping", {})
        await recv(ws, "pong")


async def test_oversized_message_closes_with_1009(web: Web) -> None:
    async with connect(web.ws_url, max_size=None) as ws:
        await recv(ws, "hello")
        await ws.send("x" * (200 * 1024))
        with pytest.raises(Exception):  # noqa: B017 - the server closes the connection (1009)
            await recv(ws, "pong", timeout=5)
        assert ws.close_code in (1009, 1006)
    async with httpx.AsyncClient(base_url=web.url) as http:
        assert (await http.get("/healthz")).status_code == 200


async def test_live_events_survive_a_redis_restart(
    web: Web, log: EventLog, redis_server: RedisServer
) -> None:
    first = await log.append(event("restarts", 0))
    async with connect(web.ws_url) as ws:
        after = {"restarts": "0-0"}
        await send(ws, "subscribe", {"channel": "events", "streams": ["restarts"], "after": after})
        assert (await recv(ws, "event"))["id"] == first
        redis_server.restart()  # the hub's pub/sub connection breaks; events written meanwhile are not pushed
        written = []
        for n in (1, 2):
            for _ in range(100):
                try:
                    written.append(await log.append(event("restarts", n)))
                    break
                except Exception:  # the test's own client reconnecting
                    await asyncio.sleep(0.05)
        got = [(await recv(ws, "event", timeout=20))["id"] for _ in written]
        assert got == written  # caught up from the last id the connection delivered: none lost or repeated
