"""Sources: files (mp4/mkv/webm, VFR, broken), a real RTSP server, HTTP and HLS over loopback, redaction."""

from __future__ import annotations

import asyncio
import functools
import http.server
import itertools
import logging
import socket
import threading
import time
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any, cast

import media
import pytest
from helpers import free_port, require
from rtsp_fixture import RtspServer, gst_missing

from flashlive.memory.redact import RedactFilter, redact, redact_text, url_secrets, with_credentials
from flashlive.stream.sources import AVSource, Source, open_source
from flashlive.stream.types import SourceError, SourceFrame, SourceInvalid, SourceUnavailable

FPS = 10
SECONDS = 2.0


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("media")
    out: dict[str, Path] = {}
    for ext in (".mp4", ".mkv", ".webm"):
        out[ext] = folder / f"pattern{ext}"
        media.write_video(out[ext], seconds=SECONDS, fps=FPS)
    out["vfr"] = folder / "vfr.mkv"
    media.write_video(out["vfr"], pts_ms=VFR_PTS_MS, fps=FPS)
    out["audio"] = folder / "audio.mp4"
    media.write_audio_only(out["audio"])
    out["corrupt"] = folder / "corrupt.mp4"
    media.write_corrupt(out["corrupt"], out[".mp4"])
    out["garbage"] = folder / "garbage.mkv"
    media.write_garbage(out["garbage"])
    out["empty"] = folder / "empty.mp4"
    out["empty"].write_bytes(b"")
    return out


VFR_PTS_MS = [0, 40, 80, 300, 340, 1000, 1033, 1066, 1500, 2000]


async def collect(source: Source, limit: int | None = None) -> list[SourceFrame]:
    got: list[SourceFrame] = []
    async for frame in source.frames():
        got.append(frame)
        if limit is not None and len(got) >= limit:
            break
    return got


def assert_monotonic(frames: list[SourceFrame]) -> None:
    pts = [f.pts for f in frames]
    assert all(b > a for a, b in itertools.pairwise(pts)), pts
    walls = [f.wall for f in frames]
    assert all(b >= a for a, b in itertools.pairwise(walls))


# ---- files --------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".mp4", ".mkv", ".webm"])
async def test_file_yields_every_frame_with_monotonic_pts(videos: dict[str, Path], ext: str) -> None:
    source = open_source(str(videos[ext]), realtime=False)
    assert isinstance(source, AVSource) and not source.live
    frames = await collect(source)
    await source.close()
    assert len(frames) == round(SECONDS * FPS)
    assert_monotonic(frames)
    assert frames[0].pts == pytest.approx(0.0, abs=1e-6)
    assert frames[-1].pts == pytest.approx(SECONDS - 1 / FPS, abs=1e-3)
    assert source.duration == pytest.approx(SECONDS, abs=0.11)
    assert source.progress.frames == len(frames)
    assert source.progress.fraction == pytest.approx(1.0, abs=0.06)
    assert (frames[0].frame.width, frames[0].frame.height) == (64, 48)
    # The moving square: consecutive frames differ.
    a, b = (f.frame.to_ndarray(format="rgb24") for f in frames[:2])
    assert (a != b).any()


async def test_file_url_scheme(videos: dict[str, Path]) -> None:
    source = open_source(videos[".mkv"].as_uri(), realtime=False)
    frames = await collect(source)
    assert len(frames) == round(SECONDS * FPS)
    assert source.name == "pattern"


async def test_variable_frame_rate_keeps_the_file_timestamps(videos: dict[str, Path]) -> None:
    source = open_source(str(videos["vfr"]), realtime=False)
    frames = await collect(source)
    assert [round(f.pts, 3) for f in frames] == [ms / 1000 for ms in VFR_PTS_MS]


async def test_realtime_paces_by_pts_and_backfill_does_not(videos: dict[str, Path]) -> None:
    start = time.monotonic()
    frames = await collect(open_source(str(videos[".mp4"]), realtime=True))
    paced = time.monotonic() - start
    start = time.monotonic()
    fast = await collect(open_source(str(videos[".mp4"]), realtime=False))
    backfill = time.monotonic() - start
    assert len(frames) == len(fast) == round(SECONDS * FPS)
    # The last frame is due at pts 1.9 s: loose bounds, machines are busy.
    assert paced >= 1.7
    assert backfill < paced / 2
    # Wall-clock stamps follow pts in real time.
    assert frames[-1].wall - frames[0].wall == pytest.approx(frames[-1].pts - frames[0].pts, abs=0.4)


async def test_loop_continues_pts_past_the_end(videos: dict[str, Path]) -> None:
    source = open_source(str(videos[".mp4"]), realtime=False, loop=True)
    n = round(SECONDS * FPS)
    frames = await collect(source, limit=2 * n + 5)
    await source.close()
    assert_monotonic(frames)
    assert frames[n].pts == pytest.approx(SECONDS, abs=1e-3)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("corrupt", "not a playable video"),
        ("garbage", "not a playable video"),
        ("empty", "file is empty"),
        ("audio", "no video stream"),
    ],
)
async def test_bad_files_are_invalid_with_a_clear_message(
    videos: dict[str, Path], key: str, message: str
) -> None:
    source = open_source(str(videos[key]), realtime=False)
    with pytest.raises(SourceInvalid, match=message) as err:
        await collect(source)
    assert not err.value.retryable
    assert videos[key].name in str(err.value)


async def test_missing_file_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(SourceInvalid, match="file not found"):
        await collect(open_source(str(tmp_path / "nope.mp4")))


async def test_close_stops_the_decoder_thread_promptly(videos: dict[str, Path]) -> None:
    source = open_source(str(videos[".mp4"]), realtime=True)
    assert isinstance(source, AVSource)
    frames = source.frames()
    await anext(frames)  # the thread now waits on pacing / a full queue
    start = time.monotonic()
    await source.close()
    assert time.monotonic() - start < 1.0
    assert source._thread is not None and not source._thread.is_alive()
    with pytest.raises(StopAsyncIteration):
        await anext(frames)


def test_factory_rejects_unknown_schemes_and_options() -> None:
    with pytest.raises(SourceInvalid, match="unsupported source URL scheme 'gopher'"):
        open_source("gopher://example/cam")
    with pytest.raises(SourceInvalid, match="bad source option"):
        open_source("/tmp/x.mp4", colour="blue")
    with pytest.raises(SourceInvalid, match="source URL is required"):
        open_source("  ")
    with pytest.raises(SourceInvalid, match="rtsp_transport"):
        open_source("rtsp://127.0.0.1/cam", rtsp_transport="carrier-pigeon")


# ---- network failures without a server ----------------------------------------------------------


async def test_unreachable_rtsp_is_unavailable_quickly() -> None:
    url = f"rtsp://127.0.0.1:{free_port()}/cam"  # nothing listens there
    start = time.monotonic()
    with pytest.raises(SourceUnavailable, match="refused") as err:
        await collect(open_source(url, open_timeout=5))
    assert time.monotonic() - start < 2.0
    assert err.value.retryable


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Accepts TCP connections and never answers: a camera that hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


async def test_open_timeout_on_a_hung_server(silent_server: int) -> None:
    start = time.monotonic()
    with pytest.raises(SourceUnavailable, match="timed out"):
        await collect(open_source(f"rtsp://127.0.0.1:{silent_server}/cam", open_timeout=1.0))
    assert time.monotonic() - start < 4.0


async def test_close_interrupts_a_blocked_open(silent_server: int) -> None:
    source = open_source(f"rtsp://127.0.0.1:{silent_server}/cam", open_timeout=30.0)
    assert isinstance(source, AVSource)
    task = asyncio.create_task(collect(source))
    await asyncio.sleep(0.5)
    start = time.monotonic()
    await source.close()
    assert time.monotonic() - start < 1.0
    assert source._thread is not None and not source._thread.is_alive()
    assert await asyncio.wait_for(task, 1.0) == []


async def test_pyav_clock_is_patched_only_while_a_decoder_runs(videos: dict[str, Path]) -> None:
    import subprocess
    import sys

    import av.container.core

    # importing the module changes nothing in PyAV (a fresh interpreter: nothing ran before it)
    probe = (
        "import time, av.container.core; import flashlive.stream.sources.av_source; "
        "assert av.container.core.time is time, av.container.core.time"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=60)
    core: Any = av.container.core
    assert core.time is time
    a = open_source(str(videos[".mp4"]), realtime=True)
    b = open_source(str(videos[".mkv"]), realtime=False)
    frames_a, frames_b = a.frames(), b.frames()
    await anext(frames_a)
    await anext(frames_b)
    assert core.time is not time  # the interrupt clock, while decoders run
    await a.close()
    await cast(AsyncGenerator[SourceFrame, None], frames_a).aclose()
    assert core.time is not time  # b still decodes
    assert len(await collect(b)) > 0
    await b.close()
    assert core.time is time  # the last one put the real clock back


# ---- a real RTSP server -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_rtsp_live_frames(rtsp_server: RtspServer, transport: str) -> None:
    # At connect FFmpeg hands over the ~1.5 s of video it buffered while probing the stream in one
    # burst. A live source drops frames rather than stall its network read when the consumer falls
    # behind (queue_size); on a loaded machine this loop can fall behind such a burst, and the frames
    # below would have a hole. The queue here holds the burst, so every frame is checked.
    source = open_source(rtsp_server.url, rtsp_transport=transport, queue_size=64)
    assert source.live and source.name == "cam"
    frames = await asyncio.wait_for(collect(source, limit=20), 15)
    await source.close()
    assert len(frames) == 20 and source.progress.dropped == 0
    assert_monotonic(frames)
    assert (frames[0].frame.width, frames[0].frame.height) == (160, 120)
    # ~15 fps from a live source: 20 frames span about 1.3 s of stream time.
    assert frames[-1].pts - frames[0].pts == pytest.approx(19 / rtsp_server.fps, abs=0.2)


async def test_rtsp_unknown_path_is_unavailable(rtsp_server: RtspServer) -> None:
    with pytest.raises(SourceUnavailable, match="404"):
        await collect(open_source(rtsp_server.url + "-nope"))


@pytest.mark.slow
async def test_rtsp_server_stop_then_restart(rtsp_server: RtspServer) -> None:
    source = open_source(rtsp_server.url, read_timeout=2.0)
    got = 0
    stopped_at = 0.0
    with pytest.raises(SourceUnavailable) as err:
        async with asyncio.timeout(20):
            async for _ in source.frames():
                got += 1
                if got == 5:
                    rtsp_server.stop()
                    stopped_at = time.monotonic()
    assert time.monotonic() - stopped_at < 5.0
    assert err.value.retryable
    # Same source object, server back on the same port: frames() reconnects.
    rtsp_server.start()
    again = await asyncio.wait_for(collect(source, limit=3), 10)
    assert len(again) == 3
    await source.close()


@pytest.mark.slow
async def test_rtsp_hung_server_times_out_instead_of_hanging(rtsp_server: RtspServer) -> None:
    source = open_source(rtsp_server.url, read_timeout=1.5)
    frames = source.frames()
    await asyncio.wait_for(anext(frames), 10)
    rtsp_server.freeze()
    start = time.monotonic()
    try:
        with pytest.raises(SourceUnavailable, match="timed out"):
            async with asyncio.timeout(10):
                async for _ in frames:
                    pass
    finally:
        rtsp_server.thaw()
    assert time.monotonic() - start < 6.0
    await source.close()


@pytest.mark.slow
async def test_close_interrupts_a_blocked_read(rtsp_server: RtspServer) -> None:
    source = open_source(rtsp_server.url, read_timeout=30.0)
    assert isinstance(source, AVSource)
    frames = source.frames()
    await asyncio.wait_for(anext(frames), 10)
    rtsp_server.freeze()
    try:
        await asyncio.sleep(0.5)  # the decoder thread is now blocked reading the socket
        assert source._thread is not None and source._thread.is_alive()
        start = time.monotonic()
        await source.close()
        assert time.monotonic() - start < 1.0
        assert not source._thread.is_alive()
    finally:
        rtsp_server.thaw()


@pytest.mark.slow
async def test_rtsp_credentials_are_used_and_never_leak(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    reason = gst_missing()
    require(reason is None, f"GStreamer RTSP server unavailable: {reason}")
    password = "Pa55:w@rd/xyz"
    server = RtspServer(user="operator", password=password)
    server.start()
    caplog.set_level(logging.DEBUG)
    try:
        # From keyword options.
        source = open_source(server.url, user="operator", password=password)
        assert len(await asyncio.wait_for(collect(source, limit=2), 15)) == 2
        await source.close()
        # From environment variables named in the config.
        monkeypatch.setenv("CAM_USER", "operator")
        monkeypatch.setenv("CAM_PASS", password)
        source = open_source(server.url, user_env="CAM_USER", password_env="CAM_PASS")
        assert len(await asyncio.wait_for(collect(source, limit=2), 15)) == 2
        await source.close()
        # Embedded in the URL, but wrong: not retryable, and the message names the redacted URL.
        wrong = server.url.replace("rtsp://", "rtsp://operator:Wr0ngSecret@")
        source = open_source(wrong)
        with pytest.raises(SourceInvalid, match="access denied") as err:
            await collect(source)
        texts = [str(err.value), repr(err.value), repr(source), source.url_redacted]
        texts += [r.getMessage() for r in caplog.records]
        texts += [str(r.exc_info) for r in caplog.records if r.exc_info]
        assert any("***" in t for t in texts)
        assert err.value.__cause__ is None and err.value.__suppress_context__
        for text in texts:
            assert password not in text and "Wr0ngSecret" not in text
        assert caplog.records  # the source did log its opens
    finally:
        server.close()


def test_missing_credential_env_var_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_PASS", raising=False)
    with pytest.raises(SourceInvalid, match="NO_SUCH_PASS"):
        open_source("rtsp://127.0.0.1/cam", user="u", password_env="NO_SUCH_PASS")


# ---- HTTP and HLS -------------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A real HTTP server on loopback serving tmp_path: (folder, base URL)."""
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


async def test_hls_over_local_http(http_root: tuple[Path, str]) -> None:
    folder, base = http_root
    _, count = media.write_hls(folder / "hls", seconds=3.0, fps=FPS)
    source = open_source(f"{base}/hls/index.m3u8", realtime=False)
    frames = await asyncio.wait_for(collect(source), 30)
    assert len(frames) == count
    assert_monotonic(frames)
    assert not source.live
    assert source.duration == pytest.approx(3.0, abs=0.2)


async def test_progressive_http_file(http_root: tuple[Path, str]) -> None:
    folder, base = http_root
    count = media.write_video(folder / "clip.mp4", seconds=1.0, fps=FPS)
    frames = await asyncio.wait_for(collect(open_source(f"{base}/clip.mp4", realtime=False)), 30)
    assert len(frames) == count
    assert_monotonic(frames)


async def test_http_404_is_unavailable(http_root: tuple[Path, str]) -> None:
    _, base = http_root
    with pytest.raises(SourceUnavailable, match=r"not found|404"):
        await collect(open_source(f"{base}/missing.mp4"))


# ---- redaction ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("rtsp://admin:hunter2@10.0.0.5:554/stream1", "rtsp://***:***@10.0.0.5:554/stream1"),
        ("rtsp://admin@10.0.0.5/stream1", "rtsp://***@10.0.0.5/stream1"),
        ("rtsp://10.0.0.5/stream1", "rtsp://10.0.0.5/stream1"),
        ("https://cdn.example/live.m3u8?token=abc123&q=1", "https://cdn.example/live.m3u8?token=***&q=1"),
        ("rtsp://u:p%40ss%3Aw@host/cam", "rtsp://***:***@host/cam"),
        ("/videos/lobby.mp4", "/videos/lobby.mp4"),
    ],
)
def test_redact(url: str, expected: str) -> None:
    assert redact(url) == expected


def test_redact_text_and_credentials_round_trip() -> None:
    url = with_credentials("rtsp://cam.local/live", "ops", "p@ss:word")
    assert url == "rtsp://ops:p%40ss%3Aword@cam.local/live"
    assert redact(url) == "rtsp://***:***@cam.local/live"
    message = f"[Errno 111] Connection refused: '{url}' (password p@ss:word)"
    cleaned = redact_text(message, url_secrets(url))
    assert "p@ss:word" not in cleaned and "p%40ss" not in cleaned and "ops" not in cleaned
    assert "rtsp://***:***@cam.local/live" in cleaned


async def test_frames_iterator_type(videos: dict[str, Path]) -> None:
    frames = open_source(str(videos[".webm"]), realtime=False).frames()
    assert isinstance(frames, AsyncGenerator)
    first = await anext(frames)
    assert isinstance(first, SourceFrame) and first.frame.format.name == "yuv420p"
    await frames.aclose()
    assert isinstance(SourceInvalid("x"), SourceError)


def test_redact_filter_masks_credentials_in_library_logs(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("libav.hls")
    caplog.handler.addFilter(RedactFilter())
    with caplog.at_level(logging.INFO, logger="libav.hls"):
        logger.info("Opening '%s' for reading", "http://viewer:CamPass1@10.1.1.1/live.m3u8")
    assert caplog.records[0].getMessage() == "Opening 'http://***:***@10.1.1.1/live.m3u8' for reading"
