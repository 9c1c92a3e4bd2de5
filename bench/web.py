"""Web benchmark against `flashlive serve` with the tiny model: viewers asking over SSE, and the
WebSocket fan-out of live events.

    python bench/web.py [--viewers 20] [--rounds 3] [--subscribers 100] [--events 200] [--quick]
                        [--threads serve,2] [--repeat 2]

Prints one JSON object. It starts `flashlive serve --config` (embedded Redis, the demo video looped
in real time, ingest with the tiny encoder, one worker process, the web app) in a temporary directory.
The worker (`--worker`): `model` is serve's own worker command (`flashlive worker`, the tiny model
on the CPU); `fake` runs the worker loop on the fake engine (tests/worker_proc.py: fixed decode steps,
reading the tiny model's tokens), which keeps the model's time out of what is measured: the web path
(submit, Redis, SSE) and the queue.

- asks: `viewers` concurrent viewers, `rounds` questions each, over SSE (POST /api/ask): time to the
  first piece (p50/p95, from the request), time to the final record, errors (must be 0);
- CPU: the serve process's CPU seconds per wall second (1.0 = one core) while idle (ingest of the demo
  stream only) and while the viewers ask; the difference is what serving them cost;
- fan-out: `subscribers` WebSocket clients subscribed to one stream's events; `events` events written
  to Redis as a worker writes them; events delivered per second to all clients together, and the
  delay from an event's write to its arrival (p50/p95).
- threads (`--threads`, a list): the worker's torch threads, one `flashlive serve` per entry: `serve`
  is serve's own choice (`serve_threads`: the cores shared between serve and its workers), a number
  pins `worker.threads`; `--repeat` runs the list again (alternating, so a change in the machine's
  load hits them alike). The asks are measured for each; the fan-out with the first only. Ratios are
  against the first entry, per repeat.
The rate limit is off in the benchmark's config (every viewer comes from 127.0.0.1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from websockets.asyncio.client import connect

from flashlive.memory.events import EventLog
from flashlive.memory.messages import Event
from flashlive.memory.settings import RedisSettings
from flashlive.memory.store import make_client

ROOT = Path(__file__).resolve().parent.parent
HZ = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ  # utime + stime


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def write_config(tmp: Path, port: int, concurrency: int, threads: int | None) -> Path:
    from flashlive.stream.demo import write_demo_video

    demo = tmp / "demo-world.mp4"
    if not demo.exists():
        write_demo_video(demo, seconds=60)
    worker: dict[str, Any] = {"device": "cpu", "processes": 1, "concurrency": concurrency}
    if threads is not None:
        worker["threads"] = threads
    cfg = {
        "streams": {"demo": {"url": str(demo), "realtime": True, "loop": True}},
        "model": {"name": "tiny", "device": "cpu"},
        "memory": {"redis": {"data_dir": str(tmp / "redis")}},
        "worker": worker,
        "web": {"port": port, "rate_limit": {"per_s": 0}},
    }
    path = tmp / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


async def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 180) -> float:
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=base, timeout=5) as c:
        while time.monotonic() - started < timeout:
            if proc.poll() is not None:
                raise SystemExit(f"flashlive serve exited with {proc.returncode}")
            try:
                health = (await c.get("/healthz")).json()
                if health["workers"]["alive"] and health["ingest"].get("demo", {}).get("clips", 0) >= 2:
                    return time.monotonic() - started
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            await asyncio.sleep(0.25)
    raise SystemExit("flashlive serve did not get ready")


async def ask_once(
    c: httpx.AsyncClient, question: str, max_new: int
) -> tuple[float | None, float, str | None]:
    """(time to first piece, time to the end, error)."""
    body = {"stream": "demo", "question": question, "window": {"last": 30}, "max_new_tokens": max_new}
    t0 = time.perf_counter()
    first: float | None = None
    event = ""
    try:
        async with c.stream("POST", "/api/ask", json=body) as reply:
            if reply.status_code != 200:
                return (
                    None,
                    time.perf_counter() - t0,
                    f"HTTP {reply.status_code}: {(await reply.aread())[:200]!r}",
                )
            async for line in reply.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    if event == "piece" and first is None:
                        first = time.perf_counter() - t0
                    elif event == "error":
                        return first, time.perf_counter() - t0, json.loads(line[5:])["code"]
                    elif event == "final":
                        return first, time.perf_counter() - t0, None
    except httpx.HTTPError as exc:
        return first, time.perf_counter() - t0, f"{type(exc).__name__}: {exc}"
    return first, time.perf_counter() - t0, "the stream ended without a final record"


async def viewers(base: str, n: int, rounds: int, max_new: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=n + 4)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as c:

        async def viewer(i: int) -> list[tuple[float | None, float, str | None]]:
            return [
                await ask_once(c, f"What happens now? (viewer {i}, round {r})", max_new)
                for r in range(rounds)
            ]

        t0 = time.perf_counter()
        results = [x for xs in await asyncio.gather(*(viewer(i) for i in range(n))) for x in xs]
        wall = time.perf_counter() - t0
    firsts = [f for f, _, e in results if f is not None and e is None]
    totals = [t for _, t, e in results if e is None]
    errors = [e for _, _, e in results if e is not None]
    first = {"p50": pct(firsts, 0.5), "p95": pct(firsts, 0.95), "max": max(firsts, default=float("nan"))}
    return {
        "viewers": n, "rounds": rounds, "asks": len(results), "errors": len(errors),
        "error_kinds": sorted(set(errors)), "first_piece_s": {k: round(v, 4) for k, v in first.items()},
        "final_s": {"p50": round(pct(totals, 0.5), 4), "p95": round(pct(totals, 0.95), 4)},
        "asks_per_s": round(len(results) / wall, 2), "wall_s": round(wall, 2),
    }  # fmt: skip


def bench_event(stream: str, n: int) -> Event:
    return Event(
        id=f"bench{n}", watch="bench", stream=stream, condition="benchmark", kind="update", score=0.9,
        peak=0.9, threshold=0.5, clip_id=f"{n + 1}000-1", clip_start=float(n), clip_end=n + 1.0, started=0.0,
        thumbnail=f"{n + 1}000-1",
    )  # fmt: skip


async def fanout(base: str, redis_url: str, subscribers: int, events: int) -> dict[str, Any]:
    ws_url = "ws" + base.removeprefix("http") + "/ws"
    stream = "bench-fanout"
    counts = [0] * subscribers
    delays: list[float] = []
    done = asyncio.Event()
    ready = 0

    async def subscriber(i: int) -> None:
        nonlocal ready
        async with connect(ws_url, max_queue=None) as ws:
            await ws.send(
                json.dumps({"topic": "subscribe", "payload": {"channel": "events", "streams": [stream]}})
            )
            async for raw in ws:
                message = json.loads(raw)
                if message["topic"] == "subscribed":
                    ready += 1
                elif message["topic"] == "event":
                    counts[i] += 1
                    if i == 0:
                        delays.append(time.time() - message["payload"]["event"]["time"])
                    if counts[i] == events:
                        if all(c == events for c in counts):
                            done.set()
                        return

    tasks = [asyncio.create_task(subscriber(i)) for i in range(subscribers)]
    while ready < subscribers:
        await asyncio.sleep(0.05)
    client = make_client(RedisSettings.from_dsn(redis_url))
    log = EventLog(client)
    t0 = time.perf_counter()
    for n in range(events):
        await log.append(bench_event(stream, n))
    written = time.perf_counter() - t0
    await asyncio.wait_for(done.wait(), 300)
    wall = time.perf_counter() - t0
    await asyncio.gather(*tasks, return_exceptions=True)
    await client.aclose()
    return {
        "subscribers": subscribers, "events": events, "delivered": sum(counts),
        "delivered_per_s": round(sum(counts) / wall, 1), "events_written_per_s": round(events / written, 1),
        "delay_s": {"p50": round(pct(delays, 0.5), 4), "p95": round(pct(delays, 0.95), 4)},
        "wall_s": round(wall, 2),
    }  # fmt: skip


async def measure_cpu(pid: int, seconds: float) -> float:
    c0, t0 = cpu_seconds(pid), time.perf_counter()
    await asyncio.sleep(seconds)
    return round((cpu_seconds(pid) - c0) / (time.perf_counter() - t0), 3)


async def serve_once(args: argparse.Namespace, tmp: Path, threads: int | None, fan: bool) -> dict[str, Any]:
    """One `flashlive serve`: ready time, the viewers' asks, the serve process's CPU, the fan-out."""
    from helpers import free_port  # tests/helpers.py

    port = free_port()
    config = write_config(tmp, port, args.concurrency, threads)
    shutil.rmtree(tmp / "redis", ignore_errors=True)  # a fresh memory each time
    command = [sys.executable, "-m", "flashlive", "serve", "--config", str(config)]
    if args.worker == "fake":
        from flashlive.model.config import get_preset

        enc = get_preset("tiny").encoder_id
        script = ROOT / "tests" / "worker_proc.py"
        fake = f"bench-w {args.step_s} {args.length} --random --encoder-id {enc}"
        fake += " --concurrency {concurrency}"
        command += ["--worker-command", f"{{python}} {script} {{redis}} {{prefix}} {fake}"]
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    out: dict[str, Any] = {}
    try:
        out["serve_ready_s"] = round(await wait_ready(base, proc), 1)
        redis_url = json.loads((tmp / "redis" / "server.json").read_text())["url"]
        idle = await measure_cpu(proc.pid, args.idle_s)
        c0, t0 = cpu_seconds(proc.pid), time.perf_counter()
        out["asks"] = await viewers(base, args.viewers, args.rounds, args.max_new_tokens)
        asking = round((cpu_seconds(proc.pid) - c0) / (time.perf_counter() - t0), 3)
        out["serve_cpu_cores"] = {
            "idle_ingest_only": idle, "while_asking": asking, "asking_minus_idle": round(asking - idle, 3),
        }  # fmt: skip
        if fan:
            c0, t0 = cpu_seconds(proc.pid), time.perf_counter()
            out["fanout"] = await fanout(base, redis_url, args.subscribers, args.events)
            out["serve_cpu_cores"]["during_fanout"] = round(
                (cpu_seconds(proc.pid) - c0) / (time.perf_counter() - t0), 3
            )
    finally:
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(60)
    return out


def thread_variants(text: str) -> list[int | None]:
    """`serve,2,1` -> [None (serve's choice), 2, 1]."""
    return [None if t.strip() == "serve" else int(t) for t in text.split(",") if t.strip()]


async def main(args: argparse.Namespace) -> dict[str, Any]:
    from flashlive.app.serve import serve_threads

    variants = thread_variants(args.threads)
    label = {v: f"serve's choice ({serve_threads(1)})" if v is None else str(v) for v in variants}
    runs: dict[str, list[dict[str, Any]]] = {label[v]: [] for v in variants}
    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="flashlive-bench-web-") as tmp_name:
        for r in range(args.repeat):
            for k, v in enumerate(variants):
                runs[label[v]].append(await serve_once(args, Path(tmp_name), v, fan=r == 0 and k == 0))
    base = label[variants[0]]
    ratios: dict[str, Any] = {}
    for v in variants[1:]:
        pairs = list(zip(runs[label[v]], runs[base], strict=True))
        ratios[f"{label[v]} vs {base}"] = {
            "asks_per_s": [round(a["asks"]["asks_per_s"] / b["asks"]["asks_per_s"], 2) for a, b in pairs],
            "first_piece_p50": [
                round(a["asks"]["first_piece_s"]["p50"] / b["asks"]["first_piece_s"]["p50"], 2)
                for a, b in pairs
            ],
        }
    return {
        "benchmark": "web",
        "worker": (
            f"flashlive worker, tiny model, {args.concurrency} jobs at once"
            if args.worker == "model"
            else f"fake engine: {args.step_s * 1000:.0f} ms/step, {args.length} words, "
            f"{args.concurrency} jobs at once"
        ),
        "worker_threads": runs,
        "ratios": ratios,
        "cpus": os.cpu_count(),
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }  # fmt: skip


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "tests"))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--viewers", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--subscribers", type=int, default=100)
    p.add_argument("--events", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=4, help="jobs at once in the worker")
    p.add_argument(
        "--worker", choices=("model", "fake"), default="model", help="tiny model, or the fake engine"
    )
    p.add_argument("--step-s", type=float, default=0.02, help="fake engine: seconds per decode step")
    p.add_argument("--length", type=int, default=16, help="fake engine: words per answer")
    p.add_argument("--idle-s", type=float, default=5.0)
    p.add_argument(
        "--threads", default="serve", help="worker threads per run: serve (its choice) or N, comma-separated"
    )
    p.add_argument("--repeat", type=int, default=1, help="runs of the --threads list (alternating)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 4 viewers, 10 subscribers")
    a = p.parse_args()
    if a.quick:
        a.viewers, a.rounds, a.subscribers, a.events, a.idle_s = 4, 1, 10, 20, 1.0
    print(json.dumps(asyncio.run(main(a)), indent=2))
