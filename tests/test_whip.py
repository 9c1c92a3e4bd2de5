"""WHIP ingest: a real aiortc publisher posts its offer over real HTTP to the ASGI app under uvicorn."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from http_helpers import PatternTrack, Reply, http, serve

from flashlive.stream.sources import open_source
from flashlive.stream.sources.whip import WhipApp, WhipRejected, WhipSource, WhipStreamSource
from flashlive.stream.types import SourceFrame, SourceUnavailable

TOKEN = "t0ps3cret-token"


@dataclass
class Server:
    base: str
    app: WhipApp
    sessions: asyncio.Queue[tuple[str, WhipSource]] = field(default_factory=asyncio.Queue)


@pytest.fixture
async def whip() -> AsyncIterator[Server]:
    """The WHIP app with a token, mounted at /whip, handing sessions to a queue."""
    queue: asyncio.Queue[tuple[str, WhipSource]] = asyncio.Queue()

    async def on_session(stream: str, source: WhipSource) -> None:
        if stream == "forbidden":
            raise WhipRejected(403, "publishing to 'forbidden' is not allowed")
        queue.put_nowait((stream, source))

    app = WhipApp(on_session, token=TOKEN, prefix="/whip")
    async for base in serve(app):
        yield Server(base=base + "/whip", app=app, sessions=queue)


async def make_offer(
    video: bool = True, audio: bool = False
) -> tuple[RTCPeerConnection, PatternTrack | None]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # no STUN: host candidates on this machine
    track = None
    if video:
        track = PatternTrack()
        pc.addTransceiver(track, direction="sendonly")
    if audio:
        pc.addTransceiver("audio", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, track


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"}


async def publish(
    base: str, stream: str, token: str = TOKEN, audio: bool = False
) -> tuple[RTCPeerConnection, Reply]:
    pc, _ = await make_offer(audio=audio)
    reply = await http("POST", f"{base}/{stream}", pc.localDescription.sdp.encode(), auth(token))
    if reply.status == 201:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=reply.body, type="answer"))
    return pc, reply


async def take(frames: AsyncIterator[SourceFrame], n: int, timeout: float = 20) -> list[SourceFrame]:
    got: list[SourceFrame] = []
    async with asyncio.timeout(timeout):
        async for frame in frames:
            got.append(frame)
            if len(got) >= n:
                break
    return got


@pytest.mark.parametrize("audio", [False, True])
async def test_publish_receive_and_delete(whip: Server, audio: bool) -> None:
    pc, reply = await publish(whip.base, "lobby", audio=audio)
    try:
        assert reply.status == 201, reply.body
        assert reply.headers["content-type"] == "application/sdp"
        assert reply.body.startswith("v=0") and "a=candidate" in reply.body  # complete, non-trickle
        location = reply.headers["location"]
        assert location.startswith("/whip/lobby/")
        if audio:  # the answer declines the audio it would not use
            assert "a=inactive" in reply.body.split("m=audio", 1)[1]
        stream, source = await asyncio.wait_for(whip.sessions.get(), 5)
        assert stream == "lobby" and source.live
        assert location.endswith("/" + source.session_id)
        assert list(whip.app.sessions) == [source.session_id]

        frames = await take(source.frames(), 10)
        assert len(frames) == 10
        assert (frames[0].frame.width, frames[0].frame.height) == (96, 64)
        pts = [f.pts for f in frames]
        assert all(b > a for a, b in itertools.pairwise(pts))
        assert pts[-1] - pts[0] == pytest.approx(9 / 30, abs=0.2)  # the sender's 30 fps clock

        # DELETE ends the session: the iterator finishes, the peer connection is closed, nothing is left.
        iterator = source.frames()
        gone = await http("DELETE", whip.base.removesuffix("/whip") + location, headers=auth())
        assert gone.status == 200
        async with asyncio.timeout(5):
            async for _ in iterator:
                pass
        assert source.ended and source.pc.connectionState == "closed"
        assert whip.app.sessions == {}
        again = await http("DELETE", whip.base.removesuffix("/whip") + location, headers=auth())
        assert again.status == 404
    finally:
        await pc.close()


async def test_token_is_required(whip: Server) -> None:
    pc, _ = await make_offer()
    offer = pc.localDescription.sdp.encode()
    missing = await http("POST", f"{whip.base}/lobby", offer, {"Content-Type": "application/sdp"})
    wrong = await http("POST", f"{whip.base}/lobby", offer, auth("not-the-token"))
    await pc.close()
    for reply in (missing, wrong):
        assert reply.status == 401
        assert reply.headers["www-authenticate"].startswith("Bearer")
        assert "Authorization: Bearer" in reply.body
    assert whip.app.sessions == {}
    assert whip.sessions.empty()
    no_auth_delete = await http("DELETE", f"{whip.base}/lobby/abc")
    assert no_auth_delete.status == 401


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"hello, I am not SDP", "not an SDP offer"),
        (b"v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", "no media sections"),
        (
            b"v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n",
            "cannot accept the SDP offer",
        ),
        (b"\xff\xfe\x00garbage", "not UTF-8"),
    ],
)
async def test_garbage_sdp_is_400(whip: Server, body: bytes, message: str) -> None:
    reply = await http("POST", f"{whip.base}/lobby", body, auth())
    assert reply.status == 400
    assert message in reply.body
    assert whip.app.sessions == {}


async def test_offer_without_video_is_400(whip: Server) -> None:
    pc, _ = await make_offer(video=False, audio=True)
    reply = await http("POST", f"{whip.base}/lobby", pc.localDescription.sdp.encode(), auth())
    await pc.close()
    assert reply.status == 400
    assert "no video" in reply.body


async def test_wrong_content_type_and_routes(whip: Server) -> None:
    reply = await http(
        "POST", f"{whip.base}/lobby", b'{"sdp": "v=0"}', {**auth(), "Content-Type": "application/json"}
    )
    assert reply.status == 415 and "application/sdp" in reply.body
    assert (await http("GET", f"{whip.base}/lobby", headers=auth())).status == 405
    assert (await http("PATCH", f"{whip.base}/lobby/x", b"a=", auth())).status == 405
    assert (await http("POST", f"{whip.base}/bad%20name!", b"v=0", auth())).status == 404
    assert (
        await http("POST", whip.base.removesuffix("/whip") + "/other/lobby", b"v=0", auth())
    ).status == 404
    options = await http("OPTIONS", f"{whip.base}/lobby")
    assert options.status == 204 and options.headers["accept-post"] == "application/sdp"


async def test_on_session_can_reject(whip: Server) -> None:
    pc, reply = await publish(whip.base, "forbidden")
    await pc.close()
    assert reply.status == 403 and "not allowed" in reply.body
    assert whip.app.sessions == {}


async def test_stream_source_spans_sessions() -> None:
    """Without on_session: open_source("whip://NAME") waits for publishers, one at a time."""
    app = WhipApp()
    source = open_source("whip://yard", whip_app=app)
    assert isinstance(source, WhipStreamSource) and source.live
    async for base in serve(app):
        unknown = await http("POST", f"{base}/nobody", b"v=0\r\n", {"Content-Type": "application/sdp"})
        assert unknown.status == 404 and "nobody" in unknown.body

        waiting = asyncio.create_task(take(source.frames(), 5))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # no publisher yet
        pc, reply = await publish(base, "yard")
        assert reply.status == 201, reply.body
        assert len(await waiting) == 5

        second, busy = await publish(base, "yard")
        await second.close()
        assert busy.status == 409

        # The publisher leaves: frames() raises a retryable error; the next frames() waits for a new one.
        frames = source.frames()
        await anext(frames)
        deleted = await http("DELETE", base + reply.headers["location"])
        assert deleted.status == 200
        with pytest.raises(SourceUnavailable, match="publisher ended"):
            async with asyncio.timeout(5):
                async for _ in frames:
                    pass
        await pc.close()
        pc, reply = await publish(base, "yard")
        assert reply.status == 201
        assert len(await take(source.frames(), 3)) == 3
        await source.close()
        assert app.sessions == {}
        await pc.close()


def test_open_source_whip_needs_an_app() -> None:
    from flashlive.stream.types import SourceInvalid

    with pytest.raises(SourceInvalid, match="no WHIP endpoint"):
        open_source("whip://lobby")
    with pytest.raises(SourceInvalid, match="stream name"):
        open_source("whip", whip_app=WhipApp())
