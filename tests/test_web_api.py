"""The HTTP API over real HTTP (uvicorn on a loopback port), a real Redis and a real worker process
(the worker loop with the fake engine): streams, memory, ask over SSE, watches and events, ops."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import av
import httpx
import pytest
from helpers import unique_prefix
from prometheus_client.parser import text_string_to_metric_families
from web_helpers import Web, fill, web_app, worker_process

from flashlive.memory.server import RedisServer
from flashlive.memory.types import IngestCounters, StreamState


@pytest.fixture(scope="module")
def web(redis_server: RedisServer) -> Iterator[Web]:
    prefix = unique_prefix("w")
    with (
        worker_process(redis_server.url, prefix, "w-api", step_s=0.05, length=30, random=True),
        web_app(redis_server.url, prefix) as service,
    ):
        yield service


@pytest.fixture
async def client(web: Web) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=web.url, timeout=30) as c:
        yield c


async def wait_worker(client: httpx.AsyncClient) -> None:
    for _ in range(100):
        if (await client.get("/api/info")).json()["workers"]:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the worker never sent a heartbeat")


def sse_events(text: str) -> list[dict[str, Any]]:
    """Parse a complete text/event-stream body: [{event, id, data}]."""
    out = []
    for block in text.split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            if line.startswith(":") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key] = value.removeprefix(" ")
        if "data" in fields:
            fields["data"] = json.loads(fields["data"])
            out.append(fields)
    return out


# -- streams -----------------------------------------------------------------------------------


async def test_streams_list_state_clips_and_metrics(web: Web, client: httpx.AsyncClient) -> None:
    async with web.memory() as memory:
        await fill(memory, "lobby", 5)
        counters = IngestCounters(clips=5, lag_s=0.5, sample_fps=1.0, input_fps=25.0, dropped_clips=1)
        await memory.set_state("lobby", StreamState.LIVE, source="rtsp://u:pw@cam/1", metrics=counters)
        await memory.record_loss("lobby", 2, "buffer_full")  # what any writer lost, as memory records it
    reply = await client.get("/api/streams")
    assert reply.status_code == 200
    lobby = next(s for s in reply.json()["streams"] if s["name"] == "lobby")
    assert lobby["state"] == "live" and not lobby["stale"]
    assert lobby["clips"] == 5 and lobby["first_start"] == 1000.0 and lobby["last_end"] == 1020.0
    assert lobby["span_s"] == 20.0 and lobby["lag_s"] == 0.5 and lobby["fps"] == 1.0
    assert lobby["input_fps"] == 25.0 and lobby["dropped_clips"] == 1
    assert lobby["lost_clips"] == 2 and lobby["duplicates"] == 0
    metrics = (await client.get("/metrics")).text
    assert 'flashlive_stream_lost_clips_total{stream="lobby"} 2.0' in metrics
    assert "pw" not in lobby["source"] and lobby["source"].startswith("rtsp://")
    assert (await client.get("/api/streams/lobby")).json()["clips"] == 5
    missing = await client.get("/api/streams/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_stream"


async def test_register_and_delete_a_pulled_stream(web: Web, client: httpx.AsyncClient) -> None:
    reply = await client.post("/api/streams", json={"name": "cam7", "url": "rtsp://10.0.0.7/live"})
    assert reply.status_code == 201, reply.text
    assert reply.json()["state"] == "pending" and reply.json()["registered"]
    names = [s["name"] for s in (await client.get("/api/streams")).json()["streams"]]
    assert "cam7" in names
    again = await client.post("/api/streams", json={"name": "cam7", "url": "rtsp://10.0.0.7/live"})
    assert again.status_code == 409 and "registered already" in again.json()["error"]["message"]
    gone = await client.delete("/api/streams/cam7")
    assert gone.status_code == 200 and gone.json()["unregistered"]
    assert (await client.delete("/api/streams/cam7")).status_code == 404


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"name": "x1", "url": "/etc/passwd"}, "must start with rtsp://"),
        ({"name": "x1", "url": "ftp://host/a"}, "must start with rtsp://"),
        ({"name": "x1", "url": "rtsp:///nohost"}, "has no host"),
        ({"name": "../x", "url": "rtsp://h/a"}, "name"),
        ({"name": "x1"}, "url: Field required"),
        ({"name": "x1", "url": "rtsp://h/a", "extra": 1}, "extra: Extra inputs are not permitted"),
    ],
)
async def test_register_refuses_bad_streams(
    client: httpx.AsyncClient, body: dict[str, Any], needle: str
) -> None:
    reply = await client.post("/api/streams", json=body)
    assert reply.status_code == 400, reply.text
    assert needle in reply.json()["error"]["message"]


async def test_delete_refuses_a_stream_a_running_ingest_owns(web: Web, client: httpx.AsyncClient) -> None:
    async with web.memory() as memory:
        await fill(memory, "configured", 1)
        await memory.set_state("configured", StreamState.LIVE)
        reply = await client.delete("/api/streams/configured")
        assert reply.status_code == 409 and "config file" in reply.json()["error"]["message"]
        await memory.set_state("configured", StreamState.STOPPED)
    reply = await client.delete("/api/streams/configured")
    assert reply.status_code == 200 and reply.json()["memory_deleted"]
    assert (await client.get("/api/streams/configured")).status_code == 404


# -- memory --------------------------------------------------------------------------------------


async def test_segments_page_with_thumbnails(web: Web, client: httpx.AsyncClient) -> None:
    async with web.memory() as memory:
        clips = await fill(memory, "seg", 12)
    reply = await client.get("/api/streams/seg/segments", params={"start": 1004, "end": 1040, "limit": 4})
    body = reply.json()
    assert reply.status_code == 200
    assert [s["start"] for s in body["segments"]] == [1004.0, 1008.0, 1012.0, 1016.0]
    assert body["truncated"] and body["next_start"] == 1020.0
    thumb = await client.get(body["segments"][0]["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert thumb.content == clips[1].thumbnail
    last = (await client.get("/api/streams/seg/segments", params={"last": 8})).json()
    assert [s["start"] for s in last["segments"]] == [1040.0, 1044.0] and not last["truncated"]


@pytest.mark.parametrize(
    ("path", "params", "status", "needle"),
    [
        ("/api/streams/seg2/segments", {"start": 50, "end": 10}, 400, "after end"),
        ("/api/streams/seg2/segments", {"start": 5000}, 404, "no clip"),
        ("/api/streams/seg2/segments", {"last": 5, "start": 1}, 400, "either last"),
        ("/api/streams/seg2/segments", {"start": "soon"}, 400, "start"),
        ("/api/streams/nostream/segments", {}, 404, "unknown stream"),
        ("/api/streams/seg2/clips/1002000-1/thumbnail.jpg", {}, 404, "no clip 1002000-1"),
        ("/api/streams/seg2/clips/5000-1/thumbnail.jpg", {}, 404, "no clip of stream"),
        ("/api/streams/seg2/clips/abc/thumbnail.jpg", {}, 400, "bad clip id"),
        ("/api/streams/seg2/replay", {"start": 1, "end": 2, "format": "gif"}, 400, "format"),
    ],
)
async def test_memory_routes_refuse_bad_ranges(
    web: Web, client: httpx.AsyncClient, path: str, params: dict[str, Any], status: int, needle: str
) -> None:
    async with web.memory() as memory:
        if "seg2" not in await memory.streams():
            await fill(memory, "seg2", 3)
    reply = await client.get(path, params=params)
    assert reply.status_code == status, reply.text
    assert needle in reply.json()["error"]["message"]


async def test_replay_as_mp4_and_mjpeg(web: Web, client: httpx.AsyncClient) -> None:
    async with web.memory() as memory:
        clips = await fill(memory, "rep", 6)
    reply = await client.get("/api/streams/rep/replay", params={"start": 1004, "end": 1020})
    assert reply.status_code == 200 and reply.headers["content-type"] == "video/mp4"
    with av.open(io.BytesIO(reply.content), mode="r") as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 4
    mjpeg = await client.get("/api/streams/rep/replay", params={"last": 12, "format": "mjpeg", "fps": 30})
    assert mjpeg.headers["content-type"].startswith("multipart/x-mixed-replace")
    parts = [p for p in mjpeg.content.split(b"--flashliveframe") if p.strip()]
    assert len(parts) == 3 and parts[-1].rstrip().endswith(clips[-1].thumbnail)


# -- ask -----------------------------------------------------------------------------------------


async def test_ask_streams_pieces_then_the_final_record(web: Web, client: httpx.AsyncClient) -> None:
    await wait_worker(client)
    async with web.memory() as memory:
        await fill(memory, "askme", 8)
    body = {"stream": "askme", "question": "What happens?", "window": {"last": 16}, "max_new_tokens": 6}
    reply = await client.post("/api/ask", json=body)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
    events = sse_events(reply.text)
    assert events[0]["event"] == "job"
    pieces = [e for e in events if e["event"] == "piece"]
    final = events[-1]
    assert final["event"] == "final" and len(pieces) >= 1
    record = final["data"]
    assert "".join(p["data"]["text"] for p in pieces) == record["answer"]
    assert record["answer"].startswith("4 clips from 1016 to 1032.")
    assert record["window"]["last"] == 16 and record["used_start"] == 1016.0 and record["used_end"] == 1032.0
    assert record["evidence"] and record["evidence"][0]["clip_id"].endswith("-1")
    assert set(record["timings"]) >= {"queue_wait", "first_token", "total", "tokens_per_s"}
    assert all(e.get("id") for e in events[1:])  # every record carries its id (Last-Event-ID)


async def test_ask_as_json_and_detached(web: Web, client: httpx.AsyncClient) -> None:
    await wait_worker(client)
    async with web.memory() as memory:
        await fill(memory, "askjson", 3)
    body: dict[str, Any] = {"stream": "askjson", "question": "Anything?", "max_new_tokens": 3}
    reply = await client.post("/api/ask", json=body, headers={"Accept": "application/json"})
    assert reply.status_code == 200 and reply.json()["answer"].startswith("3 clips")
    detached = await client.post("/api/ask", json={**body, "detach": True})
    assert detached.status_code == 202
    job = detached.json()["job"]
    events = sse_events((await client.get(f"/api/ask/{job}/events")).text)
    assert events[-1]["event"] == "final"
    resumed = sse_events(
        (await client.get(f"/api/ask/{job}/events", headers={"Last-Event-ID": events[0]["id"]})).text
    )
    assert [e["id"] for e in resumed] == [e["id"] for e in events[1:]]
    status = (await client.get(f"/api/ask/{job}")).json()
    assert status["status"] == "done" and status["result"]["type"] == "final"


async def test_cancel_and_disconnect_stop_the_job(web: Web, client: httpx.AsyncClient) -> None:
    await wait_worker(client)
    async with web.memory() as memory:
        await fill(memory, "longans", 2)
    body = {"stream": "longans", "question": "Talk for a while", "detach": True}
    job = (await client.post("/api/ask", json=body)).json()["job"]
    await asyncio.sleep(0.3)
    cancelled = await client.delete(f"/api/ask/{job}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] in ("signalled", "cancelled")
    events = sse_events((await client.get(f"/api/ask/{job}/events")).text)
    assert events[-1]["event"] == "error" and events[-1]["data"]["code"] == "cancelled"
    # a viewer that goes away mid-answer cancels its job
    async with client.stream("POST", "/api/ask", json={**body, "detach": False}) as stream:
        async for line in stream.aiter_lines():
            if line.startswith("data:") and '"job"' in line:
                job = json.loads(line[5:])["job"]
                break
    for _ in range(50):
        status = (await client.get(f"/api/ask/{job}")).json()
        if status["status"] == "failed":
            break
        await asyncio.sleep(0.1)
    assert status["status"] == "failed" and status["result"]["code"] == "cancelled"
    assert (await client.delete("/api/ask/never-submitted")).status_code == 404


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"stream": "askbad", "question": "q", "window": {"start": 9, "end": 3}}, 400, "before its end"),
        ({"stream": "askbad", "question": "q", "window": {"last": -5}}, 400, "greater than 0"),
        ({"stream": "askbad", "question": "q", "window": {"start": 99999}}, 404, "no clip"),
        ({"stream": "nostream", "question": "q"}, 404, "unknown stream"),
        ({"stream": "askbad", "question": "x" * 5000}, 413, "limit is 4000"),
        ({"stream": "askbad", "question": "   "}, 400, "blank"),
        ({"stream": "askbad", "question": "q", "budget": 10**9}, 400, "budget"),
        ({"stream": "askbad"}, 400, "question: Field required"),
    ],
)
async def test_bad_questions_get_a_clear_4xx(
    web: Web, client: httpx.AsyncClient, body: dict[str, Any], status: int, needle: str
) -> None:
    async with web.memory() as memory:
        if "askbad" not in await memory.streams():
            await fill(memory, "askbad", 2)
    reply = await client.post("/api/ask", json=body)
    assert reply.status_code == status, reply.text
    assert needle in reply.json()["error"]["message"]
    assert (await client.get("/healthz")).status_code == 200


async def test_malformed_json_and_huge_body(client: httpx.AsyncClient) -> None:
    reply = await client.post(
        "/api/ask", content=b'{"stream": "a", "question": ', headers={"Content-Type": "application/json"}
    )
    assert reply.status_code == 400 and "malformed JSON" in reply.json()["error"]["message"]
    huge = await client.post(
        "/api/ask", content=b"{" + b" " * (2 << 20) + b"}", headers={"Content-Type": "application/json"}
    )
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "body_too_large"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit counts what arrives
        yield b'{"stream": "a", "question": "'
        for _ in range(40):
            yield b"x" * 65536

    chunked = await client.post("/api/ask", content=chunks(), headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413 and "larger than 1048576 bytes" in chunked.json()["error"]["message"]
    unknown = await client.get("/api/nothing-here")
    assert unknown.status_code == 404 and "no such endpoint" in unknown.json()["error"]["message"]
    assert (await client.get("/healthz")).status_code == 200


# -- watches and events --------------------------------------------------------------------------


async def test_watches_and_event_history_pages(web: Web, client: httpx.AsyncClient) -> None:
    await wait_worker(client)
    async with web.memory() as memory:
        await fill(memory, "door", 2, score=0.9)
        watch = {"stream": "door", "condition": "a person at the door", "threshold": 0.5, "cooldown": 0}
        created = await client.post("/api/watches", json=watch)
        assert created.status_code == 201, created.text
        wid = created.json()["id"]
        listed = (await client.get("/api/watches", params={"stream": "door"})).json()["watches"]
        assert [w["id"] for w in listed] == [wid]
        await fill(memory, "door", 3, start=1008.0, score=0.9)
        events: list[dict[str, Any]] = []
        for _ in range(100):
            page = (await client.get("/api/events", params={"stream": "door"})).json()
            events = page["events"]
            if len(events) >= 3:
                break
            await asyncio.sleep(0.1)
    assert [e["event"]["kind"] for e in events[:2]] == ["start", "update"]
    assert events[0]["thumbnail_url"].startswith("/api/streams/door/clips/")
    second = (
        await client.get("/api/events", params={"stream": "door", "after": events[0]["id"], "limit": 1})
    ).json()
    assert [e["id"] for e in second["events"]] == [events[1]["id"]] and second["next_after"] == events[1][
        "id"
    ]
    assert (await client.get(f"/api/watches/{wid}")).json()["state"]["evaluations"] >= 3
    assert (await client.delete(f"/api/watches/{wid}")).status_code == 200
    assert (await client.get(f"/api/watches/{wid}")).status_code == 404
    bad = await client.get("/api/events", params={"stream": "door", "after": "yesterday"})
    assert bad.status_code == 400 and "bad event id" in bad.json()["error"]["message"]
    blank = await client.post("/api/watches", json={"stream": "door", "condition": "  "})
    assert blank.status_code == 400


# -- ops -----------------------------------------------------------------------------------------


async def test_healthz_info_and_metrics(web: Web, client: httpx.AsyncClient) -> None:
    await wait_worker(client)
    async with web.memory() as memory:
        await fill(memory, "metered", 2)
        await memory.set_state("metered", StreamState.LIVE, metrics=IngestCounters(lag_s=1.5, sample_fps=0.5))
    health = (await client.get("/healthz")).json()
    assert health["redis"]["ok"] and health["workers"]["alive"] == 1
    assert health["ingest"]["metered"]["state"] == "live"
    info = (await client.get("/api/info")).json()
    assert info["random_weights"] is True and info["models"] == ["fake"] and not info["auth"]
    asked = await client.post(
        "/api/ask",
        json={"stream": "metered", "question": "q", "max_new_tokens": 2},
        headers={"Accept": "application/json"},
    )
    assert asked.status_code == 200
    text = (await client.get("/metrics")).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(s.name, s.labels.get("stream")): s.value for f in families.values() for s in f.samples}
    assert samples[("flashlive_stream_clips", "metered")] == 2
    assert samples[("flashlive_stream_lag_seconds", "metered")] == 1.5
    assert samples[("flashlive_workers", None)] == 1
    assert ("flashlive_queue_jobs", None) in samples
    by_api = {s.labels["api"]: s.value for s in families["flashlive_asks"].samples}
    assert by_api["ask"] >= 1 and by_api["openai"] == 0


async def test_a_redis_out_of_memory_is_a_named_503_and_the_service_stays_up(
    redis_factory: Callable[..., RedisServer],
) -> None:
    server = redis_factory()
    with web_app(server.url, "oom") as full:
        async with httpx.AsyncClient(base_url=full.url, timeout=30) as c:
            async with full.memory() as memory:
                await fill(memory, "door", 3)
                used = int((await memory.client.info("memory"))["used_memory"])
                await memory.client.config_set("maxmemory-policy", "noeviction")
                # below what is used: every write is refused whatever the allocator's slack (6.2 and 7)
                await memory.client.config_set("maxmemory", str(used // 2))
            watch = {"stream": "door", "condition": "someone is at the door"}
            refused = await c.post("/api/watches", json=watch)
            assert refused.status_code == 503, refused.text
            error = refused.json()["error"]
            assert error["code"] == "memory_unavailable" and "out of memory" in error["message"]
            assert refused.headers["retry-after"] == "5"
            assert (await c.get("/api/streams/door/segments")).status_code == 200  # reads still work
            async with full.memory() as memory:
                await memory.client.config_set("maxmemory", "0")
            assert (await c.post("/api/watches", json=watch)).status_code == 201


async def test_redis_away_is_503_and_healthz_says_down() -> None:
    from helpers import free_port

    with web_app(f"redis://127.0.0.1:{free_port()}/0", "down") as dead:
        async with httpx.AsyncClient(base_url=dead.url, timeout=30) as c:
            health = await c.get("/healthz")
            assert health.status_code == 503 and health.json()["status"] == "down"
            reply = await c.get("/api/streams")
            assert reply.status_code == 503 and reply.json()["error"]["code"] == "redis_unavailable"
            started = time.monotonic()
            assert (await c.get("/healthz")).status_code == 503 and time.monotonic() - started < 10
