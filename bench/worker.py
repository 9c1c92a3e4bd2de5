"""The query worker: time to first token and decode speed against memory length, watch scoring with
and without the shared visual prefix (the model side); alert latency and the throughput of 1 vs 2
worker processes (the service side, with real `flashlive worker --model tiny` processes).

python bench/worker.py [--clips 15,150] [--depth 3] [--watches 1,4,16]  ->  JSON on stdout.
python bench/worker.py --skip ttft,watches   ->  the service side only (a few minutes)
python bench/worker.py --skip alerts,throughput   ->  the model side only

Service side (a redis-server of its own in a temporary directory, `flashlive worker` processes with
the tiny preset on the CPU):

- alerts: one watch (threshold 0, so every evaluation writes an event) on a stream that gets a clip
  every `--alert-interval` s; latency = from the clip's append (before the call) to its event read back
  from the stream's events stream (XREAD BLOCK), p50/p95/max over `--alert-clips` clips; also the
  worker-side part (the event's own write time minus the append time);
- throughput: `--jobs` asks (each `--job-tokens` new tokens over a 16-clip window, greedy) submitted at
  once, answered by 1 worker (concurrency 1; torch's default threads, one per core), by the same with 1
  thread, by 2 workers (concurrency 1, 1 thread each) on the same Redis, and by 1 worker with
  concurrency 2 (one process batching decode steps); jobs/s, tokens/s and the ratios,
  measured in the same run, `--rounds` times with the configurations alternating. The machine's load
  average is reported before and after. $BENCH_WORKER_LOG (e.g. INFO) sets the workers' log level.

Model: Qwen2-7B's widths (hidden 3584, 28 query / 4 KV heads of 128, MLP 18944, rope 1e6), the real
Qwen2 vocabulary and tokenizer (embedding tied to the head to save 2.2 GB; the compute is the same),
a projector 1024 -> 3584, random fp32 weights, and only `--depth` layers (default 3) so a 2-core CPU
runs it in minutes. Everything goes through `Engine` (prefix, add, step), as a worker calls it.

Memory length: 1 min, 10 min, 1 h at 1 fps = 15, 150, 900 clips of 64 tokens. Measured lengths use
every clip (no frame budget). With the worker's default budget of 512 frames a window of 10 min or
1 h is read as 128 clips, so the 150-clip row bounds both at that budget.

The model card's recipe (uniform0_attention, layers [4, 18] of 28, ratios [1, 0.75, 0.25]) is scaled
to 3 layers as [1, 2]: one layer each at 100 %, 75 % and 25 % of the visual tokens.

Clocks: wall seconds, and process CPU seconds (both threads; steadier on a shared machine, so the
ratios use them). Extrapolation to 28 layers: every decoder layer call is timed (forward hooks);
layer 0 stands for the 4 layers before the first drop, layer 1 for the 14 between the drops, layer 2
for the 10 after (dropout off: all layers cost the same). 28-layer figure = measured - measured layer
time + per-layer times multiplied out; the rest (projector, embeddings, head, sampling) as measured.

The 900-clip row (57,600 visual tokens; an hour of CPU per layer-pass at this width) is computed, not
run: one layer's cost is measured at that scale where cheap - a decode step over 57,600 / 43,200 /
14,400 cached tokens, a question's tokens over a prefix of those lengths - and, for prefilling, a
2,048-token chunk against caches of 0 and 32,768 tokens (cost linear in the cache length), summed
over the chunks of the window. 57,600 positions exceed Qwen2-7B's 32,768: only the 1M-context
checkpoint takes that window whole.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flashlive.memory.events import EventLog
from flashlive.memory.jobs import JobQueue
from flashlive.memory.keys import entry_id, worker_key
from flashlive.memory.messages import AskJob, FinalRecord, Generation, Watch
from flashlive.memory.results import collect
from flashlive.memory.server import RedisServer
from flashlive.memory.store import VideoMemory
from flashlive.memory.types import Clip
from flashlive.memory.watches import TickScheduler, WatchStore
from flashlive.model.config import PRESETS, DropoutConfig, FlashConfig, LLMConfig, VisionConfig
from flashlive.model.decoding import SamplingParams
from flashlive.model.engine import Engine
from flashlive.model.kv_cache import BatchKVCache, KVCache
from flashlive.model.llm import Qwen2LM, random_init_
from flashlive.model.projector import Projector
from flashlive.model.prompt import question_text, video_prefix_text
from flashlive.model.runner import PREFILL_CHUNK
from flashlive.model.tokenizer import load_tokenizer
from flashlive.model.window import VideoWindow

WIDTHS: dict[str, Any] = dict(
    hidden_size=3584, intermediate_size=18944, num_attention_heads=28, num_key_value_heads=4
)
QUESTION = "What is the person in the red jacket doing near the door, and when did they arrive?"
WATCH_QUESTIONS = [
    "Is anyone standing at the front door?",
    "Is a car parked in the driveway?",
    "Is there smoke or fire anywhere in view?",
    "Is a package lying on the doorstep?",
]
FULL_LAYERS = (4, 14, 10)  # the 28-layer recipe: layers before, between and after the drops


def clocks() -> np.ndarray:
    return np.array([time.perf_counter(), time.process_time()])


class LayerClock:
    """[wall, cpu] seconds of every decoder layer call, by phase and layer."""

    def __init__(self, lm: Qwen2LM) -> None:
        self.phase = "other"
        self.records: list[tuple[str, int, np.ndarray]] = []
        self._start: dict[int, np.ndarray] = {}
        for i, layer in enumerate(lm.model.layers):
            layer.register_forward_pre_hook(self._pre(i))
            layer.register_forward_hook(self._post(i))

    def _pre(self, i: int) -> Any:
        def hook(_m: Any, _args: Any) -> None:
            self._start[i] = clocks()

        return hook

    def _post(self, i: int) -> Any:
        def hook(_m: Any, _args: Any, _out: Any) -> None:
            self.records.append((self.phase, i, clocks() - self._start[i]))

        return hook

    def take(self) -> dict[str, np.ndarray]:
        """[layer, (wall, cpu)] seconds per phase since the last take (decode: mean per step)."""
        depth = 1 + max((i for _, i, _ in self.records), default=0)
        per: dict[str, np.ndarray] = defaultdict(lambda: np.zeros((depth, 2)))
        steps: dict[str, int] = defaultdict(int)
        for phase, i, s in self.records:
            per[phase][i] += s
            steps[phase] += i == 0
        self.records.clear()
        return {k: v / max(steps[k], 1) if k == "decode" else v for k, v in per.items()}


def build_engine(depth: int, max_positions: int) -> tuple[Engine, LayerClock]:
    llm_cfg = LLMConfig(
        vocab_size=151936,
        num_hidden_layers=depth,
        rope_theta=1_000_000.0,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        **WIDTHS,
    )
    cfg = FlashConfig(name="bench-7b-width", vision=VisionConfig(), llm=llm_cfg, seed=0)
    llm = random_init_(Qwen2LM(llm_cfg), seed=0, std=0.02).eval()
    projector = Projector(cfg.vision.width, llm_cfg.hidden_size).init_random(1).eval()
    engine = Engine(cfg, projector, llm, load_tokenizer(), evidence_layer=min(depth - 1, 2))
    return engine, LayerClock(llm)


def make_window(engine: Engine, n: int, seed: int = 0) -> VideoWindow:
    rng = np.random.default_rng(seed)
    tokens = (rng.standard_normal((n, 64, engine.cfg.vision.width)) * 0.5).astype(np.float16)
    clips = [Clip("bench", 4.0 * i, 4.0 * i + 4, 4, tokens[i], engine.encoder_id) for i in range(n)]
    return VideoWindow.from_clips(clips)


def ask(
    engine: Engine, clock: LayerClock, n: int, dropout: DropoutConfig | None, decode: int
) -> dict[str, Any]:
    window = make_window(engine, n)
    params = SamplingParams(max_new_tokens=decode + 1, stop_ids=())
    c0 = clocks()
    t0 = time.perf_counter()
    clock.phase = "prefix"
    prefix = engine.prefix(window, dropout)
    clock.phase = "prefill"
    seq = engine.add(prefix, QUESTION, params, arrival=t0)
    first = engine.step()
    c1 = clocks()
    clock.phase = "decode"
    result = None
    while result is None:
        for out in engine.step():
            if out.seq_id == seq and out.finished:
                result = out.result
    c2 = clocks()
    clock.phase = "other"
    assert result is not None and first[0].seq_id == seq
    layers = clock.take()
    steps = result.new_tokens - 1
    ttft, step = c1 - c0, (c2 - c1) / steps
    t = result.timings
    return {
        "visual_tokens": window.visual_tokens,
        "visual_kept": result.visual_kept,
        "ttft_s": round(float(ttft[0]), 2),
        "ttft_cpu_s": round(float(ttft[1]), 2),
        "projector_s": round(t.projector, 3),
        "prefix_s": round(t.prefix, 2),
        "prefill_s": round(t.prefill, 2),
        "decode_tokens": steps,
        "tokens_per_s": round(1 / float(step[0]), 3),
        "decode_cpu_s_per_token": round(float(step[1]), 3),
        "prefix_kv_bytes": prefix.nbytes(),
        "layers_cpu_s": {k: [round(float(x), 3) for x in v[:, 1]] for k, v in layers.items()},
        "_raw": {"ttft": ttft, "step": step, "layers": layers},
    }


def to_28_layers(run: dict[str, Any]) -> dict[str, float]:
    """[wall, cpu] TTFT and decode step of the 28-layer model from the 3-layer run."""
    raw, m = run["_raw"], np.array(FULL_LAYERS, dtype=float)[:, None]
    layers = raw["layers"]
    zeros = np.zeros((3, 2))
    prefill = layers["prefix"] + layers.get("prefill", zeros)
    ttft = raw["ttft"] - prefill.sum(0) + (m * prefill).sum(0)
    dec = layers.get("decode", zeros)
    step = raw["step"] - dec.sum(0) + (m * dec).sum(0)
    return {
        "ttft_s": round(float(ttft[0]), 1),
        "ttft_cpu_s": round(float(ttft[1]), 1),
        "tokens_per_s": round(1 / float(step[0]), 3),
        "decode_cpu_s_per_token": round(float(step[1]), 3),
    }


def timed(fn: Any, repeat: int = 1) -> np.ndarray:
    """Smallest [wall, cpu] of `repeat` calls."""
    best = None
    for _ in range(repeat):
        c0 = clocks()
        fn()
        d = clocks() - c0
        best = d if best is None or d[1] < best[1] else best
    assert best is not None
    return best


def random_cache(n_kv: int, head_dim: int, length: int, gen: torch.Generator) -> KVCache:
    cache = KVCache(1)
    if length:
        k = torch.randn(1, n_kv, length, head_dim, generator=gen) * 0.1
        cache.append(0, k, k.clone())
    return cache


def layer_costs(engine: Engine, lengths: dict[str, int], suffix: int) -> dict[str, Any]:
    """One decoder layer at 7B width, measured at long-window scale: [wall, cpu] seconds."""
    llm = engine.llm
    cfg = llm.config
    layer = llm.model.layers[0]
    gen = torch.Generator().manual_seed(0)
    c = cfg.hidden_size

    def run(x: torch.Tensor, cache: KVCache | BatchKVCache, start: torch.Tensor) -> None:
        with torch.inference_mode():
            layer(x, *llm.rope(start), cache, 0)

    out: dict[str, Any] = {"chunk": {}, "decode": {}, "question": {}}
    chunk = torch.randn(1, PREFILL_CHUNK, c, generator=gen)
    for length in (0, 32768):
        cache = random_cache(cfg.num_key_value_heads, cfg.head_dim, length, gen)

        def chunk_step(cache: KVCache = cache, length: int = length) -> None:
            run(chunk, cache, torch.arange(length, length + PREFILL_CHUNK))
            cache.truncate(length)

        out["chunk"][length] = timed(chunk_step)
    token = torch.randn(1, 1, c, generator=gen)
    question = torch.randn(1, suffix, c, generator=gen)
    for name, length in lengths.items():
        cache = random_cache(cfg.num_key_value_heads, cfg.head_dim, length, gen)

        def decode_step(cache: KVCache = cache, length: int = length) -> None:
            run(token, cache, torch.tensor([length]))
            cache.truncate(length)

        out["decode"][name] = timed(decode_step, repeat=3)
        cache.freeze()

        def question_step(cache: KVCache = cache, length: int = length) -> None:
            batch = BatchKVCache(1, [cache])
            batch.set_valid([suffix])
            run(question, batch, batch.positions(0, suffix))

        out["question"][name] = timed(question_step)
    return out


def prefill_layer(costs: dict[str, Any], tokens: int) -> np.ndarray:
    """One layer's chunked prefill of `tokens`: sum of chunk costs, linear in each chunk's offset."""
    base, far = costs["chunk"][0], costs["chunk"][32768]
    per_key = (far - base) / 32768
    total = np.zeros(2)
    for start in range(0, tokens, PREFILL_CHUNK):
        size = min(PREFILL_CHUNK, tokens - start)
        total += base * size / PREFILL_CHUNK + per_key * start * size / PREFILL_CHUNK
    return total


def estimate_900(
    engine: Engine, runs: dict[int, dict[str, dict[str, Any]]], text: int, suffix: int
) -> dict[str, Any]:
    """The 28-layer model on 900 clips from one layer's costs measured at that scale."""
    v = 900 * 64
    kept = {"full": v, "three_quarters": int(v * 0.75), "quarter": int(v * 0.25)}
    costs = layer_costs(engine, {k: text + n + suffix for k, n in kept.items()}, suffix)
    largest = runs[max(runs)]
    off_run = largest["off"]
    proj = off_run["projector_s"] / off_run["visual_tokens"] * v
    # what is not a decoder layer (embeddings, head, sampling, projector), from the largest measured run
    layers = off_run["_raw"]["layers"]
    other_ttft = off_run["_raw"]["ttft"] - layers["prefix"].sum(0) - layers["prefill"].sum(0)
    other_step = off_run["_raw"]["step"] - layers["decode"].sum(0)
    m = FULL_LAYERS
    full, tq, quarter = text + v, text + kept["three_quarters"], text + kept["quarter"] + suffix
    q, d = costs["question"], costs["decode"]
    ttft_off = other_ttft + 28 * prefill_layer(costs, full) + 28 * q["full"]
    step_off = other_step + 28 * d["full"]
    ttft_on = other_ttft + m[0] * prefill_layer(costs, full) + m[1] * prefill_layer(costs, tq)
    ttft_on = ttft_on + m[0] * q["full"] + m[1] * q["three_quarters"] + m[2] * prefill_layer(costs, quarter)
    step_on = other_step + m[0] * d["full"] + m[1] * d["three_quarters"] + m[2] * d["quarter"]

    def row(ttft: np.ndarray, step: np.ndarray) -> dict[str, float]:
        return {
            "ttft_s": round(float(ttft[0]), 0),
            "ttft_cpu_s": round(float(ttft[1]), 0),
            "tokens_per_s": round(1 / float(step[0]), 3),
            "decode_cpu_s_per_token": round(float(step[1]), 3),
        }

    return {
        "estimated": True,
        "visual_tokens": v,
        "projector_s": round(proj, 1),
        "off": {"estimate_28_layers": row(ttft_off, step_off)},
        "recipe": {"estimate_28_layers": row(ttft_on, step_on)},
        "ratio_ttft_28_layers": round(float(ttft_on[1] / ttft_off[1]), 3),
        "ratio_tokens_per_s_28_layers": round(float(step_off[1] / step_on[1]), 3),
        "layer_cpu_s": {
            "chunk_2048_at_0": round(float(costs["chunk"][0][1]), 2),
            "chunk_2048_at_32768": round(float(costs["chunk"][32768][1]), 2),
            "prefill_57614": round(float(prefill_layer(costs, full)[1]), 1),
            "question_over": {k: round(float(x[1]), 3) for k, x in q.items()},
            "decode_over": {k: round(float(x[1]), 4) for k, x in d.items()},
        },
    }


def bench_ttft(
    engine: Engine, clock: LayerClock, clips: list[int], decode: int, long: bool
) -> dict[str, Any]:
    depth = engine.cfg.llm.num_hidden_layers
    recipe = DropoutConfig("uniform0_attention", (1, 2), (1.0, 0.75, 0.25)) if depth == 3 else None
    ask(engine, clock, 2, None, 1)  # warm up kernels and the allocator
    runs: dict[int, dict[str, dict[str, Any]]] = {}
    for n in clips:
        runs[n] = {"off": ask(engine, clock, n, None, decode)}
        if recipe is not None:
            runs[n]["recipe"] = ask(engine, clock, n, recipe, decode)
    out: dict[str, Any] = {}
    for n, modes in runs.items():
        row: dict[str, Any] = {}
        for mode, run in modes.items():
            est = to_28_layers(run) if depth == 3 else {}
            row[mode] = {k: v for k, v in run.items() if k != "_raw"} | {"estimate_28_layers": est}
        if "recipe" in modes:
            off, on = row["off"], row["recipe"]
            row["ratio_ttft_cpu"] = round(on["ttft_cpu_s"] / off["ttft_cpu_s"], 3)
            row["ratio_decode_cpu_per_token"] = round(
                on["decode_cpu_s_per_token"] / off["decode_cpu_s_per_token"], 3
            )
            e_off, e_on = off["estimate_28_layers"], on["estimate_28_layers"]
            row["ratio_ttft_cpu_28_layers"] = round(e_on["ttft_cpu_s"] / e_off["ttft_cpu_s"], 3)
        out[f"{n}_clips"] = row
    if long and recipe is not None and 900 not in clips:
        text = len(engine.tokenizer.encode(video_prefix_text()))
        suffix = len(engine.tokenizer.encode(question_text(QUESTION, 3600.0, 3600)))
        out["900_clips"] = estimate_900(engine, runs, text, suffix)
    return out


def bench_watches(engine: Engine, clips: int, counts: list[int], clock: LayerClock) -> dict[str, Any]:
    """One tick of W watches on one stream: shared prefix + one batch, vs a full prefill per watch."""
    window = make_window(engine, clips, seed=1)
    questions = [
        WATCH_QUESTIONS[i % len(WATCH_QUESTIONS)] + ("" if i < len(WATCH_QUESTIONS) else f" (zone {i})")
        for i in range(max(counts))
    ]
    engine.score_yes_no(engine.prefix(make_window(engine, 1)), questions[:1])  # warm up
    out: dict[str, Any] = {"window_clips": clips, "visual_tokens": window.visual_tokens, "dropout": "off"}
    for w in counts:
        scores: list[float] = []
        alone: list[float] = []

        def shared_tick(w: int = w, scores: list[float] = scores) -> None:
            scores[:] = engine.score_yes_no(engine.prefix(window), questions[:w])

        def unshared_tick(w: int = w, alone: list[float] = alone) -> None:
            alone[:] = [engine.score_yes_no(engine.prefix(window), [q])[0] for q in questions[:w]]

        repeat = 2 if w <= 4 else 1  # the cheap ticks twice (best of two), to see past the noise
        shared, unshared = timed(shared_tick, repeat), timed(unshared_tick, repeat)
        assert np.allclose(scores, alone, atol=1e-4), (scores, alone)
        out[str(w)] = {
            "shared_prefix_watches_per_s": round(w / float(shared[0]), 4),
            "per_watch_prefill_watches_per_s": round(w / float(unshared[0]), 4),
            "shared_tick_s": round(float(shared[0]), 2),
            "unshared_tick_s": round(float(unshared[0]), 2),
            "shared_tick_cpu_s": round(float(shared[1]), 2),
            "unshared_tick_cpu_s": round(float(unshared[1]), 2),
            "ratio_cpu": round(float(unshared[1] / shared[1]), 2),
        }
    clock.take()
    return out


# -- the service side: real worker processes ------------------------------------------------------------

TINY = PRESETS["tiny"]


def tiny_clip(stream: str, t: float, seed: int) -> Clip:
    tokens = np.random.default_rng(seed).standard_normal((64, TINY.vision.width)).astype(np.float16)
    return Clip(stream, t, t + 4.0, 4, tokens, TINY.encoder_id)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def spread(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(1000 * pct(values, 0.5), 1),
        "p95_ms": round(1000 * pct(values, 0.95), 1),
        "max_ms": round(1000 * max(values), 1),
        "n": len(values),
    }


@contextlib.contextmanager
def worker_procs(
    url: str, prefix: str, log_dir: Path, names: list[str], concurrency: int, threads: int | None = None
) -> Iterator[None]:
    """`flashlive worker --model tiny` processes, ready (heartbeat seen) when the block starts."""
    import redis

    procs = []
    for name in names:
        command = [
            sys.executable, "-m", "flashlive", "worker", "--redis", url, "--prefix", prefix,
            "--model", "tiny", "--device", "cpu", "--name", name, "--concurrency", str(concurrency),
            "--log-level", os.environ.get("BENCH_WORKER_LOG", "ERROR"),
            *(["--threads", str(threads)] if threads else []),
        ]  # fmt: skip
        with (log_dir / f"{name}.log").open("ab") as log:
            procs.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + 300
        for name, proc in zip(names, procs, strict=True):
            while not client.exists(worker_key(prefix, name)):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((log_dir / f"{name}.log").read_text())
                time.sleep(0.1)
        yield
    finally:
        client.close()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)


async def bench_alerts(
    url: str, log_dir: Path, clips: int, interval: float, threads: int | None = None
) -> dict[str, Any]:
    prefix = f"alerts{threads or 0}"
    memory = VideoMemory.from_url(url, prefix=prefix)
    log = EventLog(memory.client, prefix=prefix)
    try:
        t0 = 1_000_000.0
        for i in range(2):
            await memory.append(tiny_clip("cam", t0 + 4 * i, i))
        await WatchStore(memory.client, prefix=prefix).add(
            Watch(stream="cam", condition="a person is at the door", threshold=0.0, cooldown=0)
        )
        ticks = TickScheduler(memory.client, prefix=prefix)
        seen: list[tuple[float, float]] = []
        with worker_procs(url, prefix, log_dir, [f"{prefix}-w"], 1, threads):
            while (await ticks.lag("cam")).evaluated_end != t0 + 8:  # the first tick: warmed up
                await asyncio.sleep(0.05)
            events = await log.read("cam")
            cursor = events[-1][0] if events else "0-0"
            for i in range(2, 2 + clips):
                clip = tiny_clip("cam", t0 + 4 * i, i)
                sent_wall, sent = time.time(), time.perf_counter()
                await memory.append(clip)
                want = entry_id(clip.start)
                while True:
                    reply: Any = await memory.client.xread({log.key("cam"): cursor}, block=10_000)
                    assert reply, "no event within 10 s"
                    got = None
                    for eid, fields in reply[0][1]:
                        cursor = eid.decode()
                        event = json.loads(fields[b"m"])
                        if event["clip_id"] == want:
                            got = (time.perf_counter() - sent, event["time"] - sent_wall)
                    if got is not None:
                        seen.append(got)
                        break
                await asyncio.sleep(max(0.0, interval - (time.perf_counter() - sent)))
        return {
            "clips": clips,
            "interval_s": interval,
            "append_to_event_read": spread([a for a, _ in seen]),
            "append_to_event_written": spread([w for _, w in seen]),
            "threads": threads or "default",
            "note": "the worker looks for new ticks every watch_poll = 0.5 s when idle (WorkerSettings)",
        }
    finally:
        await memory.close()


async def run_jobs(queue: JobQueue, jobs: int, tokens: int, tag: str) -> dict[str, Any]:
    generation = Generation(max_new_tokens=tokens)
    batch = [
        AskJob(stream="cam", question=f"What happens ({tag} {i})?", generation=generation)
        for i in range(jobs)
    ]
    t0 = time.perf_counter()
    await asyncio.gather(*(queue.submit(job) for job in batch))
    finals = []
    for job in batch:
        _, final = await collect(queue.client, job.id, prefix=queue.prefix, timeout=600)
        assert isinstance(final, FinalRecord), final
        finals.append(final)
    wall = time.perf_counter() - t0
    new_tokens = sum(f.new_tokens for f in finals)
    return {
        "wall_s": round(wall, 2),
        "jobs_per_s": round(jobs / wall, 3),
        "tokens_per_s": round(new_tokens / wall, 1),
        "by_worker": {w: sum(f.worker == w for f in finals) for w in sorted({f.worker for f in finals})},
        "first_token_p50_s": round(pct([f.timings.first_token for f in finals], 0.5), 2),
    }


# name: (worker names, slots per worker, torch threads per worker; None = one per core)
CONFIGS: dict[str, tuple[list[str], int, int | None]] = {
    "1 worker": (["t1-a"], 1, None),
    "1 worker, 1 thread": (["t1t-a"], 1, 1),
    "2 workers, 1 thread each": (["t2-a", "t2-b"], 1, 1),
    "1 worker, 2 slots": (["t3-a"], 2, None),
}
RATIOS = (
    ("ratio_2_workers_vs_1", "2 workers, 1 thread each", "1 worker"),
    ("ratio_2_workers_vs_1_with_1_thread", "2 workers, 1 thread each", "1 worker, 1 thread"),
    ("ratio_1_worker_2_slots_vs_1", "1 worker, 2 slots", "1 worker"),
)


async def bench_throughput(url: str, log_dir: Path, jobs: int, tokens: int, rounds: int) -> dict[str, Any]:
    """Every configuration's workers run at once (idle ones cost little: a heartbeat, a poll), each on
    a prefix of its own; the rounds alternate the configurations, so a change in the machine's load
    hits them alike."""
    out: dict[str, Any] = {"jobs": jobs, "new_tokens_per_job": tokens, "window_clips": 16, "rounds": {}}
    stack = contextlib.ExitStack()
    queues: dict[str, JobQueue] = {}
    try:
        for n, (config, (names, slots, threads)) in enumerate(CONFIGS.items()):
            prefix = f"thr{n}"
            memory = VideoMemory.from_url(url, prefix=prefix)
            for i in range(16):
                await memory.append(tiny_clip("cam", 4.0 * i, i))
            await memory.close()
            queues[config] = JobQueue.from_url(url, prefix=prefix)
            stack.enter_context(worker_procs(url, prefix, log_dir, names, slots, threads))
        for config, (names, slots, _) in CONFIGS.items():
            await run_jobs(queues[config], len(names) * slots, 4, "warm-up")
        for r in range(rounds):
            out["rounds"][r] = {c: await run_jobs(q, jobs, tokens, f"{c} {r}") for c, q in queues.items()}
    finally:
        stack.close()
        for q in queues.values():
            await q.close()
    rates = {c: [out["rounds"][r][c]["jobs_per_s"] for r in range(rounds)] for c in CONFIGS}
    out["jobs_per_s_median"] = {c: round(float(np.median(v)), 3) for c, v in rates.items()}
    for name, config, base in RATIOS:
        out[name] = [round(a / b, 2) for a, b in zip(rates[config], rates[base], strict=True)]
    return out


def bench_service(args: argparse.Namespace, skip: set[str]) -> dict[str, Any]:
    report: dict[str, Any] = {"cpus": os.cpu_count(), "load_before": [round(x, 2) for x in os.getloadavg()]}
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp) / "redis") as server:

        async def run() -> None:
            if "alerts" not in skip:
                report["alerts"] = await bench_alerts(
                    server.url, Path(tmp), args.alert_clips, args.alert_interval
                )
                report["alerts_1_thread"] = await bench_alerts(
                    server.url, Path(tmp), args.alert_clips, args.alert_interval, threads=1
                )
            if "throughput" not in skip:
                report["throughput"] = await bench_throughput(
                    server.url, Path(tmp), args.jobs, args.job_tokens, args.rounds
                )

        asyncio.run(run())
    report["load_after"] = [round(x, 2) for x in os.getloadavg()]
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", default="15,150", help="memory lengths in clips (900 = 1 h: slow)")
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--decode-tokens", type=int, default=8)
    parser.add_argument("--watches", default="1,4,16")
    parser.add_argument("--watch-clips", type=int, default=8, help="a watch's window (8 clips = 32 s)")
    parser.add_argument("--alert-clips", type=int, default=40)
    parser.add_argument("--alert-interval", type=float, default=1.0, help="s between appended clips")
    parser.add_argument("--jobs", type=int, default=12, help="asks per throughput run")
    parser.add_argument("--job-tokens", type=int, default=48, help="new tokens per ask")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds (configurations alternate)")
    parser.add_argument(
        "--skip", default="", help="comma-separated sections to skip: ttft, long, watches, alerts, throughput"
    )
    args = parser.parse_args()
    clips = [int(c) for c in args.clips.split(",") if c]
    skip = set(args.skip.split(","))
    wall0 = time.perf_counter()
    report: dict[str, Any] = {"benchmark": "worker"}
    if not {"alerts", "throughput"} <= skip:
        report["service"] = bench_service(args, skip)
    if {"ttft", "watches"} <= skip:
        report["total_wall_s"] = round(time.perf_counter() - wall0, 1)
        print(json.dumps(report, indent=1))
        return
    engine, clock = build_engine(args.depth, max(32768, max(clips) * 64 + 4096))
    init_s = time.perf_counter() - wall0
    report |= {
        "model": (
            f"Qwen2-7B widths (hidden 3584, heads 28/4, head_dim 128, MLP 18944, rope 1e6), {args.depth} "
            "layers, vocab 151936 (tied), projector 1024->3584, random fp32 weights"
        ),
        "recipe": (
            "uniform0_attention, layers [1, 2] of 3 (the model card's [4, 18] of 28), ratios [1, 0.75, 0.25]"
        ),
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "init_s": round(init_s, 1),
    }
    if "ttft" not in skip:
        report["ttft"] = bench_ttft(engine, clock, clips, args.decode_tokens, "long" not in skip)
    if "watches" not in skip:
        counts = [int(c) for c in args.watches.split(",") if c]
        report["watches"] = bench_watches(engine, args.watch_clips, counts, clock)
    report["total_wall_s"] = round(time.perf_counter() - wall0, 1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
