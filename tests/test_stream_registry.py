"""Streams registered through the API reach an ingest process through Redis (memory/registry.py and
`flashlive.app.ingest.follow_registry`): real Redis, real HTTP, a real file source and ingest."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from helpers import ColourEncoder, unique_prefix
from media import write_video
from web_helpers import web_app

from flashlive.app.ingest import follow_registry
from flashlive.memory.registry import StreamRegistration, StreamRegistry
from flashlive.memory.server import RedisServer
from flashlive.memory.store import VideoMemory
from flashlive.stream.ingest import Ingest
from flashlive.stream.settings import IngestSettings


async def test_registry_entries_and_leases(memory: VideoMemory) -> None:
    registry = StreamRegistry(memory.client, prefix=memory.prefix)
    reg = StreamRegistration(name="cam", url="rtsp://h/1", fps=0.5)
    assert await registry.add(reg) and not await registry.add(reg)
    assert (await registry.get("cam")) == reg and list(await registry.all()) == ["cam"]
    assert await registry.claim("cam", "ingest-a", lease=0.3)
    assert await registry.claim("cam", "ingest-a", lease=0.3)  # renewed
    assert not await registry.claim("cam", "ingest-b", lease=0.3)
    await asyncio.sleep(0.4)  # ingest-a died: its lease ran out
    assert await registry.claim("cam", "ingest-b", lease=5)
    await registry.release("cam", "ingest-a")  # not its lease any more: nothing happens
    assert await registry.owner("cam") == "ingest-b"
    await memory.client.hset(registry.key, "junk", b"{not json")
    assert list(await registry.all()) == ["cam"]  # an unreadable entry is skipped (and logged)
    assert await registry.remove("cam") and not await registry.remove("cam")


async def test_a_stream_posted_to_the_api_is_ingested_then_removed(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    video = tmp_path / "cam.mp4"
    write_video(video, seconds=3.0, fps=10)
    prefix = unique_prefix("g")
    memory = VideoMemory.from_url(redis_server.url, prefix=prefix)
    settings = IngestSettings(backoff_initial_s=0.1)
    async with Ingest(ColourEncoder(), memory, settings) as ingest:
        registry = StreamRegistry(memory.client, prefix=prefix)
        follower = asyncio.create_task(follow_registry(ingest, registry, settings, lease=3.0))
        with web_app(redis_server.url, prefix, allow_file_sources=True) as web:
            async with httpx.AsyncClient(base_url=web.url, timeout=30) as c:
                body = {"name": "filecam", "url": str(video), "loop": True}
                assert (await c.post("/api/streams", json=body)).status_code == 201
                row: dict[str, object] = {}
                for _ in range(200):
                    row = (await c.get("/api/streams/filecam")).json()
                    clips = row.get("clips")
                    if isinstance(clips, int) and clips >= 1:
                        break
                    await asyncio.sleep(0.05)
                assert row["state"] == "live" and row["registered"] and ingest.running("filecam")
                assert await registry.owner("filecam")
                gone = await c.delete("/api/streams/filecam")
                assert gone.json() == {"name": "filecam", "unregistered": True, "memory_deleted": True}
                for _ in range(100):
                    if not ingest.running("filecam"):
                        break
                    await asyncio.sleep(0.05)
                assert not ingest.running("filecam") and await registry.owner("filecam") is None
                assert (await c.get("/api/streams/filecam")).status_code == 404
                missing = await c.post(
                    "/api/streams", json={"name": "nofile", "url": str(tmp_path / "no.mp4")}
                )
                assert missing.status_code == 400 and "no such file" in missing.json()["error"]["message"]
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
    await memory.close()
