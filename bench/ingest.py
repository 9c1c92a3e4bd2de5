"""Ingest benchmark: real-time factor, decode+sample overhead, and how many 1 fps streams one process
keeps up with. Prints JSON.

    python bench/ingest.py [--quick] [--no-umt] [--streams 2,4,8,16] [--seconds 20]

- `rtf`: seconds of video ingested per wall second for one stream read as fast as possible (file
  backfill: decode -> 1 fps sample -> 4-frame clips -> encode -> Redis). > 1 is faster than real time.
  Tiny preset, and UMT-L@224 at real width (random weights; the cost does not depend on the values).
- `decode_sample_overhead`: decode + sample time per clip as a fraction of encode time per clip.
- `capacity`: N simulated cameras (files paced in real time, looping) at 1 fps with the tiny preset
  for `--seconds`; a stream keeps up when no clip was dropped, its rate was never lowered, and its clip
  count is within one of the expected count. The largest N where every stream keeps up is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import os
import platform
import signal
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flashlive.memory.server import RedisServer
from flashlive.memory.settings import RedisSettings
from flashlive.memory.store import VideoMemory
from flashlive.memory.types import StreamState
from flashlive.model.config import get_preset
from flashlive.model.encoder import ClipEncoder, load_clip_encoder
from flashlive.model.pipeline import TowerEncoder
from flashlive.model.settings import ModelSettings
from flashlive.model.vision import VisionTower
from flashlive.stream.clips import ClipAssembler
from flashlive.stream.ingest import Ingest
from flashlive.stream.lifecycle import StreamSpec
from flashlive.stream.sampler import Sampler
from flashlive.stream.settings import IngestSettings, SourceOptions
from flashlive.stream.sources import open_source


def write_video(path: Path, seconds: float, fps: int, width: int, height: int) -> None:
    """A camera-like H.264 file: a gradient with a moving block (compresses like real video, roughly)."""
    import av

    yy, xx = np.mgrid[0:height, 0:width]
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.options = {"preset": "veryfast", "g": str(2 * fps)}
        for i in range(round(seconds * fps)):
            img = np.empty((height, width, 3), np.uint8)  # [H, W, 3]
            img[..., 0] = (xx + 3 * i) % 256
            img[..., 1] = (yy + 2 * i) % 256
            img[..., 2] = (xx + yy) // 4 % 256
            x, y = (7 * i) % (width - 64), (5 * i) % (height - 64)
            img[y : y + 64, x : x + 64] = 255
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def umt_l_224() -> ClipEncoder:
    """UMT-L@224 at real width with random weights (no checkpoint is downloaded)."""
    cfg = get_preset("VideoChat-Flash-Qwen2-7B_res224")
    tower = VisionTower(cfg.vision).init_random(0).to("cpu", torch.float32).eval()
    return TowerEncoder(cfg, tower, device="cpu", batch_size=1)


async def decode_and_sample(path: Path, clip_frames: int) -> tuple[float, int]:
    """Seconds spent decoding + sampling + cutting clips (no encoding), and the clip count."""
    t0 = time.perf_counter()
    source = open_source(str(path), realtime=False)
    sampler, assembler = (
        Sampler(1.0, live=False, max_side=IngestSettings().max_side),
        ClipAssembler("bench", clip_frames),
    )
    clips = 0
    async for frame in source.frames():
        kept = sampler.push(frame)
        if kept is not None:
            clips += len(assembler.push(kept, sampler.step))
    clips += len(assembler.flush(sampler.step))
    return time.perf_counter() - t0, clips


def encode_seconds_per_clip(encoder: ClipEncoder, size: tuple[int, int], repeats: int) -> float:
    rng = np.random.default_rng(0)
    clip = rng.integers(0, 256, (1, encoder.clip_frames, size[1], size[0], 3), dtype=np.uint8)
    encoder.encode(clip)  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        encoder.encode(clip)
    return (time.perf_counter() - t0) / repeats


async def backfill_rtf(
    encoder: ClipEncoder, memory: VideoMemory, path: Path, duration: float, tag: str
) -> float:
    async with Ingest(encoder, memory) as ingest:
        t0 = time.perf_counter()
        spec = StreamSpec(f"rtf-{tag}", str(path), SourceOptions(realtime=False), policy="wait")
        runner = ingest.start_stream(spec)
        await ingest.wait()
        wall = time.perf_counter() - t0
    if runner.error:
        raise RuntimeError(runner.error)
    return duration / wall


async def capacity(
    encoder: ClipEncoder, memory: VideoMemory, path: Path, counts: list[int], seconds: float
) -> dict[str, Any]:
    results = []
    best = 0
    for n in counts:
        print(f"capacity: {n} streams", file=sys.stderr)
        async with Ingest(encoder, memory) as ingest:
            runners = [
                ingest.start_stream(
                    StreamSpec(
                        f"cap{n}-{i}", str(path), SourceOptions(realtime=True, loop=True), policy="lower_fps"
                    )
                )
                for i in range(n)
            ]
            await asyncio.gather(*(r.wait_state(StreamState.LIVE, timeout=30) for r in runners))
            t0 = time.monotonic()
            max_lag = 0.0
            min_fps = 1.0
            while time.monotonic() - t0 < seconds:
                await asyncio.sleep(0.5)
                max_lag = max([max_lag, *(r.metrics.lag_s for r in runners)])
                min_fps = min([min_fps, *(r.sampler.fps for r in runners)])
            elapsed = time.monotonic() - t0
            clips = [r.metrics.clips for r in runners]
            dropped = sum(r.metrics.dropped_clips for r in runners)
            input_fps = float(np.mean([r.metrics.input_fps for r in runners]))
        expected = elapsed / encoder.clip_frames  # 1 fps, 4-frame clips
        ok = dropped == 0 and min_fps >= 1.0 and min(clips) >= expected - 1
        results.append(
            {
                "streams": n,
                "seconds": round(elapsed, 1),
                "expected_clips_per_stream": round(expected, 1),
                "min_clips": min(clips),
                "max_clips": max(clips),
                "dropped": dropped,
                "max_lag_s": round(max_lag, 3),
                "lowest_sample_fps": min_fps,
                "mean_decoded_fps_per_stream": round(input_fps, 1),
                "keeps_up": ok,
            }
        )
        if not ok:
            break
        best = n
    return {"max_streams_kept_up": best, "runs": results}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test of the script)")
    parser.add_argument("--no-umt", action="store_true", help="skip the real-width UMT-L tower")
    parser.add_argument("--streams", default="8,16,32,48,64", help="stream counts to try for capacity")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds per capacity run")
    args = parser.parse_args()
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints where a run is stuck
    width, height, fps = 640, 360, 15
    seconds = 8.0 if args.quick else 20.0
    counts = [int(n) for n in args.streams.split(",")]
    cap_seconds = 6.0 if args.quick else args.seconds

    out: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
        },
        "video": {"width": width, "height": height, "fps": fps, "codec": "h264", "sample_fps": 1.0},
    }
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "camera.mp4"
        write_video(video, seconds, fps, width, height)
        server = await RedisServer(Path(tmp) / "redis").astart()
        memory = VideoMemory.from_settings(RedisSettings.from_dsn(server.url))
        try:
            tiny = load_clip_encoder(ModelSettings(name="tiny"))
            ds_seconds, clips = await decode_and_sample(video, tiny.clip_frames)
            ds_per_clip = ds_seconds / clips
            models: dict[str, Any] = {}
            encoders: list[tuple[str, ClipEncoder, int]] = [("tiny", tiny, 20)]
            if not args.no_umt:
                encoders.append(("umt-l-224", umt_l_224(), 1 if args.quick else 2))
            for tag, encoder, repeats in encoders:
                print(f"model {tag}", file=sys.stderr)
                enc = encode_seconds_per_clip(encoder, (width, height), repeats)
                rtf_video = video
                duration = seconds
                if tag != "tiny":  # a 12 s file (3 clips) keeps the real-width run short
                    rtf_video = Path(tmp) / "short.mp4"
                    duration = 4.0 if args.quick else 12.0
                    write_video(rtf_video, duration, fps, width, height)
                models[tag] = {
                    "encoder_id": encoder.encoder_id,
                    "encode_s_per_clip": round(enc, 4),
                    "decode_sample_s_per_clip": round(ds_per_clip, 4),
                    "decode_sample_overhead": round(ds_per_clip / enc, 4),
                    "rtf_backfill": round(await backfill_rtf(encoder, memory, rtf_video, duration, tag), 2),
                    # encode alone: 4 s of 1 fps video per clip
                    "rtf_encode_only": round(4.0 / enc, 2),
                }
            out["models"] = models
            out["capacity_tiny_1fps"] = await capacity(tiny, memory, video, counts, cap_seconds)
        finally:
            await memory.close()
            await server.astop()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
