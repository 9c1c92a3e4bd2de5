"""The model side of a query worker: time to first token and decode speed against memory length, and
watch scoring with and without the shared visual prefix.

python bench/worker.py [--clips 15,150] [--depth 3] [--watches 1,4,16]  ->  JSON on stdout.

Model: Qwen2-7B's widths (hidden 3584, 28 query / 4 KV heads of 128, MLP 18944, rope 1e6), the real
Qwen2 vocabulary and tokenizer (embedding tied to the head to save 2.2 GB; the compute is the same),
a projector 1024 -> 3584, random fp32 weights, and only `--depth` layers (default 3) so a 2-core CPU
runs it in minutes. Everything goes through `Engine` (prefix, add, step), as a worker calls it.

Memory length: 1 min, 10 min, 1 h at 1 fps = 15, 150, 900 clips of 64 tokens. Measured lengths use
every clip (no frame budget). With the worker's default budget of 512 frames a window of 10 min or
1 h is read as 128 clips, so the 150-clip row is an upper bound for both at that budget.

The model card's recipe (uniform0_attention, layers [4, 18] of 28, ratios [1, 0.75, 0.25]) is scaled
to 3 layers as [1, 2]: one layer each at 100 %, 75 % and 25 % of the visual tokens.

Extrapolation to 28 layers: every decoder layer call is timed (forward hooks). Layer 0 stands for the
4 layers before the first drop, layer 1 for the 14 between the drops, layer 2 for the 10 after (with
dropout off all layers cost the same, so this is 28 x the mean). The 28-layer figure = measured time
- measured layer time + the per-layer times multiplied out; the rest (projector, embeddings, head,
sampling) is measured once. The 900-clip row is not run by default (an hour of CPU at this width):
its figures come from per-layer cost models fitted to the measured layers - a*T + b*T^2 for a
layer's prefill over T tokens, c + d*L for a question's tokens over an L-token prefix, e + f*L for
a decode step over L cached tokens - and are marked "estimated". 900 clips = 57,600 visual tokens
exceed Qwen2-7B's 32,768 positions: only the 1M-context checkpoint takes them whole.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from flashlive.memory.types import Clip
from flashlive.model.config import DropoutConfig, FlashConfig, LLMConfig, VisionConfig
from flashlive.model.engine import Engine
from flashlive.model.llm import Qwen2LM, random_init_
from flashlive.model.projector import Projector
from flashlive.model.prompt import question_text, video_prefix_text
from flashlive.model.sampling import SamplingParams
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


class LayerClock:
    """Wall seconds of every decoder layer call, by phase and layer."""

    def __init__(self, lm: Qwen2LM) -> None:
        self.phase = "other"
        self.records: list[tuple[str, int, float]] = []
        self._start: dict[int, float] = {}
        for i, layer in enumerate(lm.model.layers):
            layer.register_forward_pre_hook(self._pre(i))
            layer.register_forward_hook(self._post(i))

    def _pre(self, i: int) -> Any:
        def hook(_m: Any, _args: Any) -> None:
            self._start[i] = time.perf_counter()

        return hook

    def _post(self, i: int) -> Any:
        def hook(_m: Any, _args: Any, _out: Any) -> None:
            self.records.append((self.phase, i, time.perf_counter() - self._start[i]))

        return hook

    def take(self) -> dict[str, list[float]]:
        """Seconds per layer for each phase since the last take (decode: mean per step)."""
        per: dict[str, list[float]] = defaultdict(lambda: [0.0] * 64)
        steps: dict[str, int] = defaultdict(int)
        depth = 0
        for phase, i, s in self.records:
            per[phase][i] += s
            depth = max(depth, i + 1)
            if i == 0:
                steps[phase] += 1
        self.records.clear()
        out = {}
        for phase, values in per.items():
            div = steps[phase] if phase == "decode" else 1
            out[phase] = [v / max(div, 1) for v in values[:depth]]
        return out


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
    t0 = time.perf_counter()
    clock.phase = "prefix"
    prefix = engine.prefix(window, dropout)
    clock.phase = "prefill"
    seq = engine.add(prefix, QUESTION, params, arrival=t0)
    first = engine.step()
    clock.phase = "decode"
    result = None
    while result is None:
        for out in engine.step():
            if out.seq_id == seq and out.finished:
                result = out.result
    clock.phase = "other"
    assert result is not None and first[0].seq_id == seq
    layers = clock.take()
    t = result.timings
    return {
        "visual_tokens": window.visual_tokens,
        "visual_kept": result.visual_kept,
        "ttft_s": round(t.first_token, 3),
        "projector_s": round(t.projector, 3),
        "prefix_s": round(t.prefix, 3),
        "prefill_s": round(t.prefill, 3),
        "decode_tokens": result.new_tokens - 1,
        "tokens_per_s": round(t.tokens_per_s, 3),
        "prefix_kv_bytes": prefix.nbytes(),
        "layers_s": {k: [round(x, 3) for x in v] for k, v in layers.items()},
        "_raw": {
            "ttft": t.first_token,
            "step": 1 / t.tokens_per_s if t.tokens_per_s else 0.0,
            "layers": layers,
        },
    }


def to_28_layers(run: dict[str, Any]) -> dict[str, float]:
    raw = run["_raw"]
    layers = raw["layers"]
    if len(layers["prefix"]) != 3:
        return {}
    prefill = [a + b for a, b in zip(layers["prefix"], layers.get("prefill", [0.0] * 3), strict=True)]
    ttft = raw["ttft"] - sum(prefill) + sum(m * s for m, s in zip(FULL_LAYERS, prefill, strict=True))
    dec = layers.get("decode", [0.0] * 3)
    step = raw["step"] - sum(dec) + sum(m * s for m, s in zip(FULL_LAYERS, dec, strict=True))
    return {"ttft_s": round(ttft, 1), "tokens_per_s": round(1 / step, 3) if step > 0 else 0.0}


def fit(xs: Sequence[float], ys: Sequence[float], powers: tuple[int, ...]) -> np.ndarray:
    a = np.array([[x**p for p in powers] for x in xs], dtype=np.float64)
    coef, *_ = np.linalg.lstsq(a, np.array(ys, dtype=np.float64), rcond=None)
    return coef


def estimate_900(runs: dict[int, dict[str, dict[str, Any]]], text: int, suffix: int) -> dict[str, Any]:
    """28-layer TTFT and decode speed at 900 clips from per-layer cost models fitted to the runs."""
    full_x, full_y, q_x, q_y, d_x, d_y = [], [], [], [], [], []
    proj_per_token = []
    for n, modes in runs.items():
        v = n * 64
        for mode, run in modes.items():
            layers = run["_raw"]["layers"]
            proj_per_token.append(run["projector_s"] / v)
            kept = [v, *run["visual_kept"]] if mode == "recipe" else [v, v, v]
            for i, s in enumerate(layers["prefix"]):
                if s > 0:
                    full_x.append(text + kept[i])
                    full_y.append(s)
            for i, s in enumerate(layers.get("prefill", [])):
                if mode == "recipe" and i == 2:  # the question's own layer over prefix text + kept + question
                    full_x.append(text + kept[i] + suffix)
                    full_y.append(s)
                else:
                    q_x.append(text + kept[i])
                    q_y.append(s)
            for i, s in enumerate(layers.get("decode", [])):
                d_x.append(text + kept[i] + suffix)
                d_y.append(s)
    f_full, f_q, f_d = fit(full_x, full_y, (1, 2)), fit(q_x, q_y, (0, 1)), fit(d_x, d_y, (0, 1))
    full = lambda t: float(f_full @ [t, t * t])  # noqa: E731
    q = lambda t: float(f_q @ [1, t])  # noqa: E731
    d = lambda t: float(f_d @ [1, t])  # noqa: E731
    v = 900 * 64
    proj = float(np.mean(proj_per_token)) * v
    out: dict[str, Any] = {"estimated": True, "visual_tokens": v}
    for mode, kept in (("off", [v, v, v]), ("recipe", [v, int(v * 0.75), int(v * 0.25)])):
        m = FULL_LAYERS
        if mode == "off":
            ttft = proj + 28 * full(text + v) + 28 * q(text + v)
            step = 28 * d(text + v + suffix)
        else:
            ttft = proj + m[0] * full(text + v) + m[1] * full(text + kept[1])
            ttft += m[0] * q(text + v) + m[1] * q(text + kept[1]) + m[2] * full(text + kept[2] + suffix)
            step = sum(k * d(text + kv + suffix) for k, kv in zip(m, kept, strict=True))
        out[mode] = {"ttft_s_28_layers": round(ttft, 1), "tokens_per_s_28_layers": round(1 / step, 3)}
    out["ratio_ttft"] = round(out["recipe"]["ttft_s_28_layers"] / out["off"]["ttft_s_28_layers"], 3)
    out["model"] = {
        "prefill_layer_s": f"{f_full[0]:.3g}*T + {f_full[1]:.3g}*T^2",
        "question_layer_s": f"{f_q[0]:.3g} + {f_q[1]:.3g}*L",
        "decode_layer_s": f"{f_d[0]:.3g} + {f_d[1]:.3g}*L",
    }
    return out


def bench_ttft(engine: Engine, clock: LayerClock, clips: list[int], decode: int) -> dict[str, Any]:
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
            row[mode] = {k: v for k, v in run.items() if k != "_raw"} | {
                "estimate_28_layers": to_28_layers(run)
            }
        if "recipe" in modes:
            off, on = row["off"], row["recipe"]
            row["ratio_ttft"] = round(on["ttft_s"] / off["ttft_s"], 3)
            row["ratio_tokens_per_s"] = round(on["tokens_per_s"] / off["tokens_per_s"], 3)
            e_off, e_on = off["estimate_28_layers"], on["estimate_28_layers"]
            row["ratio_ttft_28_layers"] = round(e_on["ttft_s"] / e_off["ttft_s"], 3)
        out[f"{n}_clips"] = row
    if recipe is not None and 900 not in clips and len(clips) >= 2:
        text = len(engine.tokenizer.encode(video_prefix_text()))
        suffix = len(engine.tokenizer.encode(question_text(QUESTION, 3600.0, 3600)))
        out["900_clips"] = estimate_900(runs, text, suffix)
    return out


def bench_watches(engine: Engine, clips: int, counts: list[int], clock: LayerClock) -> dict[str, Any]:
    """One tick of W watches on one stream: shared prefix + one batch, vs a full prefill per watch."""
    window = make_window(engine, clips, seed=1)
    questions = [
        WATCH_QUESTIONS[i % len(WATCH_QUESTIONS)] + ("" if i < 4 else f" (zone {i})")
        for i in range(max(counts))
    ]
    engine.score_yes_no(engine.prefix(make_window(engine, 1)), questions[:1])  # warm up
    out: dict[str, Any] = {"window_clips": clips, "visual_tokens": window.visual_tokens, "dropout": "off"}
    for w in counts:
        t0 = time.perf_counter()
        shared = engine.score_yes_no(engine.prefix(window), questions[:w])
        t_shared = time.perf_counter() - t0
        t0 = time.perf_counter()
        alone = [engine.score_yes_no(engine.prefix(window), [q])[0] for q in questions[:w]]
        t_alone = time.perf_counter() - t0
        assert np.allclose(shared, alone, atol=1e-4), (shared, alone)
        out[str(w)] = {
            "shared_prefix_watches_per_s": round(w / t_shared, 4),
            "per_watch_prefill_watches_per_s": round(w / t_alone, 4),
            "ratio": round(t_alone / t_shared, 2),
            "shared_tick_s": round(t_shared, 2),
            "unshared_tick_s": round(t_alone, 2),
        }
    clock.take()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", default="15,150", help="memory lengths in clips (900 = 1 h: slow)")
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--decode-tokens", type=int, default=8)
    parser.add_argument("--watches", default="1,4,16")
    parser.add_argument("--watch-clips", type=int, default=8, help="a watch's window (8 clips = 32 s)")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: ttft, watches")
    args = parser.parse_args()
    clips = [int(c) for c in args.clips.split(",") if c]
    skip = set(args.skip.split(","))
    wall0 = time.perf_counter()
    engine, clock = build_engine(args.depth, max(32768, max(clips) * 64 + 4096))
    init_s = time.perf_counter() - wall0
    report: dict[str, Any] = {
        "benchmark": "worker_model",
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
        report["ttft"] = bench_ttft(engine, clock, clips, args.decode_tokens)
    if "watches" not in skip:
        counts = [int(c) for c in args.watches.split(",") if c]
        report["watches"] = bench_watches(engine, args.watch_clips, counts, clock)
    report["total_wall_s"] = round(time.perf_counter() - wall0, 1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
