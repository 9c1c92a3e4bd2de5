"""`flashlive memory ls/show/export` as a user runs them: subprocesses against a real Redis."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from flashlive.memory.server import RedisServer
from flashlive.memory.store import VideoMemory
from flashlive.memory.types import Clip

ENC = "tiny@224/tome16_mlp_hd64"
W, H = 64, 48


def jpeg(i: int) -> bytes:
    img = np.zeros((H, W, 3), np.uint8)
    img[..., 0] = (i * 20) % 256  # each thumbnail its own colour
    frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuvj420p")
    enc = av.CodecContext.create("mjpeg", "w")
    enc.width, enc.height, enc.pix_fmt, enc.time_base = W, H, "yuvj420p", Fraction(1, 1)
    return b"".join(bytes(p) for p in enc.encode(frame) + enc.encode(None))


@pytest.fixture(scope="module")
def filled(redis_server: RedisServer) -> str:
    prefix = f"c{uuid.uuid4().hex[:8]}"

    async def fill() -> None:
        mem = VideoMemory.from_url(redis_server.url, prefix=prefix)
        for i in range(12):
            tokens = np.full((64, 8), i, np.float16)
            await mem.append(Clip("lobby", 4.0 * i, 4.0 * i + 4, 4, tokens, ENC, thumbnail=jpeg(i)))
        await mem.append(Clip("yard", 100.0, 104.0, 4, np.zeros((64, 8), np.float16), ENC))
        await mem.set_state("lobby", "live", source="rtsp://u:p@cam/1")
        await mem.close()

    asyncio.run(fill())
    return prefix


def flashlive(
    *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "flashlive", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_ls_json(redis_server: RedisServer, filled: str) -> None:
    # the URL from the environment this time
    out = flashlive(
        "memory", "ls", "--json", "--prefix", filled, env={"FLASHLIVE_REDIS_URL": redis_server.url}
    )
    streams = {s["stream"]: s for s in json.loads(out.stdout)}
    assert sorted(streams) == ["lobby", "yard"]
    lobby = streams["lobby"]
    assert (lobby["clips"], lobby["first_start"], lobby["last_end"], lobby["span"]) == (12, 0.0, 48.0, 48.0)
    assert lobby["bytes"] == 12 * 1024 + sum(len(jpeg(i)) for i in range(12))
    assert lobby["state"] == "live" and lobby["encoder_id"] == ENC
    table = flashlive("memory", "ls", "--redis", redis_server.url, "--prefix", filled).stdout
    assert "lobby" in table and "yard" in table and "STREAM" in table


@pytest.mark.slow
def test_show_json_and_errors(redis_server: RedisServer, filled: str) -> None:
    url = redis_server.url
    out = flashlive(
        "memory", "show", "lobby", "--start", "8", "--end", "20", "--json", "--redis", url, "--prefix", filled
    )
    clips = json.loads(out.stdout)["clips"]
    assert [(c["start"], c["end"], c["frames"]) for c in clips] == [
        (8.0, 12.0, 4),
        (12.0, 16.0, 4),
        (16.0, 20.0, 4),
    ]
    assert clips[0]["tokens"] == [64, 8] and clips[0]["encoder_id"] == ENC
    last = json.loads(
        flashlive(
            "memory", "show", "lobby", "--last", "8", "--json", "--redis", url, "--prefix", filled
        ).stdout
    )
    assert [c["start"] for c in last["clips"]] == [40.0, 44.0]

    bad = flashlive("memory", "show", "nope", "--redis", redis_server.url, "--prefix", filled, check=False)
    assert bad.returncode == 2 and "unknown stream 'nope'" in bad.stderr and "Traceback" not in bad.stderr
    bad = flashlive("memory", "show", "lobby", "--start", "30", "--end", "10", "--redis", redis_server.url,
                    "--prefix", filled, check=False)  # fmt: skip
    assert bad.returncode == 2 and "is after --end" in bad.stderr
    bad = flashlive(
        "memory", "show", "lobby", "--start", "yesterday", "--redis", redis_server.url, check=False
    )
    assert bad.returncode == 2 and "ISO-8601" in bad.stderr
    bad = flashlive("memory", "ls", "--redis", "redis://127.0.0.1:1/0", check=False)
    assert bad.returncode == 2 and "cannot reach Redis" in bad.stderr


def test_export_mp4_and_contact_sheet(redis_server: RedisServer, filled: str, tmp_path: Path) -> None:
    out = tmp_path / "lobby.mp4"
    res = flashlive("memory", "export", "lobby", "--start", "8", "--end", "40", "--out", str(out), "--json",
                    "--redis", redis_server.url, "--prefix", filled)  # fmt: skip
    report = json.loads(res.stdout)
    assert (report["frames"], report["format"], report["without_thumbnail"]) == (8, "video", 0)
    with av.open(str(out)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 8
    assert frames[0].shape == (H, W, 3)
    reds = [int(np.median(f[..., 0])) for f in frames]
    assert all(abs(r - (i * 20) % 256) <= 12 for r, i in zip(reds, range(2, 10), strict=True)), reds

    sheet = tmp_path / "lobby.png"
    res = flashlive("memory", "export", "lobby", "--out", str(sheet), "--columns", "5", "--json",
                    "--redis", redis_server.url, "--prefix", filled)  # fmt: skip
    report = json.loads(res.stdout)
    assert report["frames"] == 12 and (report["width"], report["height"]) == (5 * W + 8, 3 * H + 4)
    with av.open(str(sheet)) as container:
        image = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert image.shape == (3 * H + 4, 5 * W + 8, 3)

    url = redis_server.url
    none = flashlive(
        "memory",
        "export",
        "yard",
        "--out",
        str(tmp_path / "y.mp4"),
        "--redis",
        url,
        "--prefix",
        filled,
        check=False,
    )
    assert none.returncode == 2 and "no thumbnails" in none.stderr


def test_embedded_server_when_no_url(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "FLASHLIVE_REDIS_URL"}
    proc = subprocess.run(
        [sys.executable, "-m", "flashlive", "memory", "ls", "--json", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
    assert any(tmp_path.rglob("appendonly.aof*"))  # it ran a real server with AOF there
    assert not (tmp_path / "server.json").exists()  # and stopped it
    for pid_dir in Path("/proc").iterdir():
        if pid_dir.name.isdigit():
            try:
                cwd = os.readlink(pid_dir / "cwd")
            except OSError:
                continue
            assert cwd != str(tmp_path.resolve()), f"process {pid_dir.name} left running in the data dir"
