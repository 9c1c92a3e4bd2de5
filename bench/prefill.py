"""LLM prefill seconds with and without progressive visual dropout, at 2k and 8k visual tokens.

python bench/prefill.py  ->  JSON on stdout.

The model has Qwen2-7B's widths (hidden 3584, 28 query / 4 KV heads of 128, MLP 18944, rope 1e6) and
random fp32 weights, but only 3 layers and a 4,096-token vocabulary so that the run fits a 2-core CPU in a
few minutes (the vocabulary only sizes the last position's logits). The model-card recipe (layers
[4, 18] of 28, ratios [1, 0.75, 0.25]) is scaled to 3 layers as [1, 2]: one layer each at full length,
75 % and 25 %. Per-layer times measured at those three lengths are combined into an estimate for the real
28-layer recipe (4 layers at full length, 14 at 75 %, 10 at 25 %).

Both wall seconds and process CPU seconds are reported: on a shared machine the CPU seconds are the
steadier measure of the work done, and the ratios use them.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from typing import Any

import torch

from flashlive.model.config import DropoutConfig, LLMConfig
from flashlive.model.llm import Qwen2LM, random_init_

WIDTHS: dict[str, Any] = dict(
    hidden_size=3584, intermediate_size=18944, num_attention_heads=28, num_key_value_heads=4
)
CFG = LLMConfig(vocab_size=4096, num_hidden_layers=3, rope_theta=1_000_000.0, **WIDTHS)
RECIPE = DropoutConfig("uniform0_attention", (1, 2), (1.0, 0.75, 0.25))
N_PREFIX, N_SUFFIX = 14, 40  # ChatML system + "user\n" before the video; time message + question after


def clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def layer_timer(lm: Qwen2LM) -> tuple[list[tuple[int, float, float]], Callable[[], None]]:
    """Record (sequence length, wall s, cpu s) of every decoder layer call."""
    records: list[tuple[int, float, float]] = []
    start: dict[int, tuple[float, float]] = {}
    handles = []
    for i, layer in enumerate(lm.model.layers):

        def pre(_m: Any, args: Any, i: int = i) -> None:
            start[i] = clocks()

        def post(_m: Any, args: Any, out: Any, i: int = i) -> None:
            wall, cpu = clocks()
            records.append((int(args[0].shape[1]), wall - start[i][0], cpu - start[i][1]))

        handles.append(layer.register_forward_pre_hook(pre))
        handles.append(layer.register_forward_hook(post))

    def remove() -> None:
        for h in handles:
            h.remove()

    return records, remove


def run(lm: Qwen2LM, n_visual: int, dropout: DropoutConfig | None) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(n_visual)
    ids = torch.randint(0, CFG.vocab_size, (1, N_PREFIX + N_SUFFIX), generator=gen)
    with torch.no_grad():
        text = lm.embed(ids)
    vis = torch.randn(1, n_visual, CFG.hidden_size, generator=gen)
    embeds = torch.cat([text[:, :N_PREFIX], vis, text[:, N_PREFIX:]], dim=1)
    records, remove = layer_timer(lm)
    wall0, cpu0 = clocks()
    out = lm.prefill(embeds, visual=(N_PREFIX, n_visual), dropout=dropout)
    wall1, cpu1 = clocks()
    remove()
    return {
        "wall_s": wall1 - wall0,
        "cpu_s": cpu1 - cpu0,
        "visual_kept": out.visual_kept,
        "kv_lengths": out.cache.lengths,
        "layers": [{"tokens": n, "wall_s": round(w, 2), "cpu_s": round(c, 2)} for n, w, c in records],
        "other_cpu_s": (cpu1 - cpu0) - sum(c for _, _, c in records),
    }


def estimate_28_layers(full: dict[str, Any], drop: dict[str, Any]) -> dict[str, float]:
    """The real recipe from per-layer CPU seconds: 28 full layers vs 4 full + 14 at 75 % + 10 at 25 %."""
    t_full = sum(r["cpu_s"] for r in full["layers"]) / len(full["layers"])
    t = [r["cpu_s"] for r in drop["layers"]]  # one layer each at 100 %, 75 %, 25 %
    without = 28 * t_full + full["other_cpu_s"]
    with_ = 4 * t[0] + 14 * t[1] + 10 * t[2] + drop["other_cpu_s"]
    return {
        "without_cpu_s": round(without, 1),
        "with_cpu_s": round(with_, 1),
        "ratio": round(with_ / without, 3),
    }


def main() -> None:
    wall0 = time.perf_counter()
    lm = random_init_(Qwen2LM(CFG), seed=0, std=0.02).eval()
    init_s = time.perf_counter() - wall0
    run(lm, 64, None)  # warm up kernels and allocator
    results: dict[str, Any] = {}
    for n_visual in (2048, 8192):
        without = run(lm, n_visual, None)
        with_ = run(lm, n_visual, RECIPE)
        results[f"{n_visual}_visual"] = {
            "without_dropout": {"wall_s": round(without["wall_s"], 2), "cpu_s": round(without["cpu_s"], 2)},
            "with_dropout": {"wall_s": round(with_["wall_s"], 2), "cpu_s": round(with_["cpu_s"], 2)},
            "ratio_cpu": round(with_["cpu_s"] / without["cpu_s"], 3),
            "ratio_wall": round(with_["wall_s"] / without["wall_s"], 3),
            "visual_kept": with_["visual_kept"],
            "kv_lengths_with_dropout": with_["kv_lengths"],
            "estimate_28_layers": estimate_28_layers(without, with_),
            "layers_without": without["layers"],
            "layers_with": with_["layers"],
        }
    report = {
        "benchmark": "llm_prefill",
        "model": (
            "Qwen2-7B widths (hidden 3584, heads 28/4, head_dim 128, MLP 18944, rope 1e6), 3 layers, "
            "vocab 4096, random fp32 weights"
        ),
        "recipe": {"mode": RECIPE.mode, "layers": list(RECIPE.layers), "ratios": list(RECIPE.ratios)},
        "recipe_note": "the model card's layers [4, 18] of 28 scaled to [1, 2] of 3",
        "text_tokens": N_PREFIX + N_SUFFIX,
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "init_s": round(init_s, 1),
        "total_wall_s": round(time.perf_counter() - wall0, 1),
        "results": results,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
