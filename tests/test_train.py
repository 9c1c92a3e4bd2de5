"""`flashlive train` (model/train): each stage learns, trains only its parts, resumes exactly, and the
recipe ends in weights the normal loader reads. Runs the tiny shape for a few steps."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from flashlive.cli import main
from flashlive.model.config import get_preset
from flashlive.model.llm import random_init_
from flashlive.model.train import data as D
from flashlive.model.train import targets as T
from flashlive.model.train.errors import StoppedEarly, TrainError
from flashlive.model.train.loop import (
    RunOptions,
    _replayed,
    _train_step,
    param_groups,
    rendered_index,
    run_stage,
)
from flashlive.model.train.parts import Parts
from flashlive.model.train.recipe import STARTS_FROM, make_task, stage_dir
from flashlive.model.train.settings import HELD_OUT_SEEDS, TrainSettings
from flashlive.model.train.stages import LongTask, Stage, VideoTask, video_embeddings
from flashlive.model.train.tokens import prompter

CPU = RunOptions(torch.device("cpu"), workers=0, progress=False)
SMALL = {"save_every": 1, "eval_every": 0, "eval_items": 0, "log_every": 1, "warmup": 0}


@pytest.fixture(scope="module")
def cfg() -> Any:
    """The tiny shape with the world's restricted vocabulary (as mini has)."""
    tiny = get_preset("tiny")
    return replace(tiny, llm=replace(tiny.llm, vocab_ids="world"))


def settings(**stages: dict[str, Any]) -> TrainSettings:
    """Tiny batches, every step saved and logged, no held-out checks (unless a stage asks)."""
    base: dict[str, dict[str, Any]] = {
        "tower": {"batch": 2, "lr": 3e-3},
        "text": {"batch": 4, "lr": 3e-3},
        "align": {"batch": 2, "lr": 1e-2},
        # the CPU recipe freezes the tower here; the GPU recipe tunes it: the test covers the wider case
        "short": {"batch": 2, "clips": [1, 2], "lr": 3e-3, "train": ["tower", "projector", "llm"]},
        "long": {"batch": 2, "clips": [1, 2], "worlds": 2, "long_clips": [3, 6], "lr": 3e-3},
        "hires": {"batch": 1, "clips": [1, 1], "image_size": 224, "lr": 3e-3},
    }
    data: dict[str, Any] = {"workers": 0, "low_res": 128, "model": "tiny"}
    for name, values in base.items():
        data[name] = {**SMALL, "steps": 4, **values, **stages.get(name, {})}
    return TrainSettings.model_validate(data)


def build(name: str, train: TrainSettings, cfg: Any, tmp: Path) -> Stage:
    """Stage `name`, starting from fresh weights where it would start from earlier stages."""
    if STARTS_FROM[name]:
        start = started_parts(cfg).state_dict()
        start = {k: v for k, v in start.items() if not k.startswith("projector.")}
        task: Stage = (LongTask if name == "long" else VideoTask)(name, train, cfg, start, "test")
    else:
        task = make_task(name, train, cfg, tmp)
    task.prepare(tmp / name, CPU)
    return task


def started_parts(cfg: Any) -> Parts:
    """Stand-ins for earlier stages' weights: the tiny preset's seeded random ones (an LLM whose
    outputs depend on its input, unlike a fresh one that starts near uniform)."""
    parts = Parts(cfg, 128)
    parts.tower.init_random(1)
    random_init_(parts.llm, 2)
    return parts


def snapshot(task: Stage) -> dict[str, torch.Tensor]:
    """Every tensor of the model (tower, projector, llm) and of any heads, copied."""
    modules = {"parts": task.parts, **task.modules()}
    return {
        f"{m}.{k}": v.detach().clone()
        for m, module in modules.items()
        for k, v in module.state_dict().items()
    }


def changed_parts(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    """Parts (tower, projector, llm, heads) with any tensor that is not bit-identical."""
    out = set()
    for key, old in before.items():
        if not torch.equal(old, after[key]):
            parts = key.split(".")
            out.add(parts[1] if parts[0] == "parts" else parts[0])
    return out


TRAINS = {
    "tower": {"tower", "heads", "patch_heads"},
    "text": {"llm"},
    "align": {"projector"},
    "short": {"tower", "projector", "llm"},
    "long": {"projector", "llm"},
    "hires": {"tower"},
}


@pytest.mark.parametrize("name", list(TRAINS))
def test_a_few_steps_lower_the_loss_and_change_only_the_trained_parts(
    name: str, cfg: Any, tmp_path: Path
) -> None:
    train = settings()
    task = build(name, train, cfg, tmp_path)
    batch = task.data(0, False)
    before = snapshot(task)
    params = task.trainable()
    optimizer = torch.optim.AdamW(param_groups(params, 0.0), lr=3e-3)
    losses = [_train_step(task, batch, optimizer, params, 0, CPU)[0] for _ in range(8)]
    with torch.no_grad():
        final = float(task.loss(batch)[0])
    assert final < 0.9 * losses[0], (name, losses, final)
    assert changed_parts(before, snapshot(task)) == TRAINS[name]


def test_frozen_parts_get_no_gradients(cfg: Any, tmp_path: Path) -> None:
    task = build("align", settings(), cfg, tmp_path)
    assert isinstance(task, VideoTask)
    loss, _ = task.loss(task.data(0, False))
    loss.backward()
    for name in ("tower", "llm"):
        assert all(p.grad is None and not p.requires_grad for p in task.parts.part(name).parameters())
    assert all(p.grad is not None for p in task.parts.projector.parameters())


def losses_of(log: Path) -> list[tuple[int, float]]:
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in lines if "loss" in r and "eval" not in r]


@pytest.mark.parametrize(
    ("name", "overrides"),
    [("tower", {}), ("short", {}), ("tower", {"repeat": 2, "spacing": 1})],
    ids=["tower", "short", "tower-replayed"],
)
def test_a_stopped_stage_resumes_with_the_losses_of_an_uninterrupted_run(
    name: str, overrides: dict[str, Any], cfg: Any, tmp_path: Path
) -> None:
    train = settings(**{name: overrides})
    whole = tmp_path / "whole"
    run_stage(build(name, train, cfg, whole), whole, CPU)
    cut = tmp_path / "cut"
    soon = replace(CPU, deadline=time.monotonic())  # already past: stop after the first step
    with pytest.raises(StoppedEarly, match="step 1 of 4"):
        run_stage(build(name, train, cfg, cut), cut, soon)
    assert [s for s, _ in losses_of(cut / "log.jsonl")] == [1]
    run_stage(build(name, train, cfg, cut), cut, CPU)  # a fresh process would do the same
    assert losses_of(cut / "log.jsonl") == losses_of(whole / "log.jsonl")
    a = torch.load(whole / "final.pt", weights_only=False)["state"]
    b = torch.load(cut / "final.pt", weights_only=False)["state"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _Recorder:
    """A stage's data as the loop sees it, noting every batch it is asked to render."""

    def __init__(self, repeat: int, spacing: int) -> None:
        self.settings = TrainSettings().tower.model_copy(update={"repeat": repeat, "spacing": spacing})
        self.rendered: list[int] = []

    def data(self, step: int, held_out: bool) -> int:
        self.rendered.append(step)
        return step


@pytest.mark.parametrize(("repeat", "spacing"), [(1, 64), (3, 2), (4, 5)])
def test_replayed_batches_are_rendered_once_each_and_a_resumed_run_sees_the_same(
    repeat: int, spacing: int
) -> None:
    steps = 400
    whole = _Recorder(repeat, spacing)
    seen = list(_replayed(whole, range(steps), CPU))  # type: ignore[arg-type]
    assert seen == [rendered_index(s, repeat, spacing) for s in range(steps)]
    assert whole.rendered == list(range(-(-steps // repeat)))  # in order, each once
    tail = seen[steps // 2 :]
    if repeat > 1:  # past the start, each batch is trained on `repeat` times, `spacing` batches apart
        middle = range(repeat * spacing, steps // repeat - repeat * spacing)
        assert all(seen.count(n) == repeat for n in middle)
        uses = [s for s, n in enumerate(seen) if n == middle[0]]
        assert [b - a for a, b in itertools.pairwise(uses)] == [spacing * repeat + 1] * (repeat - 1)
    resumed = _Recorder(repeat, spacing)
    assert list(_replayed(resumed, range(steps // 2, steps), CPU)) == tail  # type: ignore[arg-type]
    held = (repeat - 1) * spacing + 1  # what a resumed run must render again
    assert len(resumed.rendered) <= len(set(tail)) + held


def test_a_checkpoint_of_other_settings_is_refused(cfg: Any, tmp_path: Path) -> None:
    soon = replace(CPU, deadline=time.monotonic())
    with pytest.raises(StoppedEarly):
        run_stage(build("text", settings(), cfg, tmp_path), tmp_path, soon)
    other = settings(text={"lr": 1e-4})
    with pytest.raises(TrainError, match="other settings"):
        run_stage(build("text", other, cfg, tmp_path), tmp_path, CPU)
    run_stage(build("text", settings(), cfg, tmp_path), tmp_path, CPU)  # finished: final.pt
    with pytest.raises(TrainError, match="made with other settings"):
        run_stage(build("text", other, cfg, tmp_path), tmp_path, CPU)


def test_data_workers_build_the_same_batches(cfg: Any, tmp_path: Path) -> None:
    """Batches come from (seed, stage, step) alone: two worker processes give the losses of none."""
    train = settings()
    run_stage(build("text", train, cfg, tmp_path / "a"), tmp_path / "a", CPU)
    two = replace(CPU, workers=2)
    run_stage(build("text", train, cfg, tmp_path / "b"), tmp_path / "b", two)
    assert losses_of(tmp_path / "a" / "log.jsonl") == losses_of(tmp_path / "b" / "log.jsonl")


def test_held_out_items_use_worlds_training_never_draws() -> None:
    for step in range(20):
        train = D.world_seed(D.step_rng(0, "short", step), held_out=False)
        held = D.world_seed(D.step_rng(0, "short", step, held_out=True), held_out=True)
        assert train < HELD_OUT_SEEDS <= held < 2**32
    assert all(D.pool_seed(0, k) < HELD_OUT_SEEDS for k in range(20))


def test_a_long_stream_from_the_cache_equals_encoding_every_clip(cfg: Any, tmp_path: Path) -> None:
    """Cached pool tokens with the needle clips spliced in are the tokens of the whole rendered video."""
    train = settings(long={"long_share": 1.0, "temporal_share": 0.0})
    task = build("long", train, cfg, tmp_path)
    assert isinstance(task, LongTask)
    s = train.long
    batch = D.long_batch(prompter(), s, np.random.default_rng(3), seed=train.seed, size=128, h264=False)
    video = batch.videos[0]
    assert video.pool is not None and video.at  # needles drawn over some clips
    world, clips = video.pool
    # the same world with the same needles, every clip rendered: rebuild it from the same random stream
    s_world = D.pool_seed(train.seed, world)
    rng = np.random.default_rng(3)
    rng.choice(s.long_clips)
    rng.integers(s.worlds)
    _, world_with_needles = D.long_question(rng, s_world, clips, D.train_style(s_world, h264=False), s)
    full = D.Video(D.render_clips(world_with_needles, 0, clips, 128))
    with torch.no_grad():
        spliced = video_embeddings(task.parts, D.Batch([video], []), grad_tower=False, cache=task.cache)[0]
        direct = video_embeddings(task.parts, D.Batch([full], []), grad_tower=False)[0]
    torch.testing.assert_close(spliced, direct, rtol=1e-5, atol=1e-5)


def test_tower_targets_follow_the_pixels() -> None:
    """Patch labels name the object drawn there: the patch colour label of an object's patches is the
    palette colour nearest the pixels of that patch's centre."""
    from flashlive.model.world.palette import COLOUR_NAMES, nearest_colour

    batch = T.tower_batch(4, np.random.default_rng(1), size=224, h264=False, held_out=False, needle_share=0.0)
    checked = 0
    for b in range(4):
        labels = batch.patch_labels[b, :, 0].reshape(4, 14, 14)
        for f in range(4):
            for r, c in zip(*np.nonzero((labels[f] >= 0) & (labels[f] < T.BACKGROUND_COLOUR)), strict=True):
                centre = batch.clips[b, f, r * 16 + 6 : r * 16 + 10, c * 16 + 6 : c * 16 + 10]
                if nearest_colour(centre.reshape(-1, 3).mean(0)) == COLOUR_NAMES[labels[f, r, c]]:
                    checked += 1
    colour = batch.patch_labels[..., 0]
    owned = int(((colour >= 0) & (colour < T.BACKGROUND_COLOUR)).sum())
    assert owned > 20 and checked >= 0.8 * owned  # textures and edges make a few patch centres differ


@pytest.mark.slow
def test_the_recipe_runs_end_to_end_and_ships_loadable_weights(tmp_path: Path) -> None:
    """`flashlive train all` on the tiny preset for two steps a stage: fp16 weights in the release's
    layout, read by the normal loader, and a provenance record of every stage."""
    from flashlive.model.engine import Engine

    config = tmp_path / "train.yaml"
    stages: dict[str, dict[str, Any]] = {
        "tower": {"batch": 1},
        "text": {"batch": 2},
        "align": {"batch": 1, "clips": [1, 1]},
        "short": {"batch": 1, "clips": [1, 1]},
        "long": {"batch": 1, "clips": [1, 1], "worlds": 1, "long_clips": [3]},
        "hires": {"batch": 1, "clips": [1, 1], "image_size": 448},
    }
    lines = ["train:", "  workers: 0", "  low_res: 128"]
    for name, values in stages.items():
        lines.append(f"  {name}: {json.dumps({**values, 'eval_items': 1, 'eval_every': 0})}")
    config.write_text("\n".join(lines) + "\n")
    out, weights = tmp_path / "run", tmp_path / "weights"
    argv = ["train", "all", "--config", str(config), "--steps", "2", "--out", str(out)]
    assert main([*argv, "--weights", str(weights), "--model", "tiny", "--no-progress"]) == 0
    engine = Engine.load(str(weights))
    assert engine.cfg.vision.image_size == 448
    stored = json.loads((weights / "provenance.json").read_text())
    assert set(stored["stages"]) == set(TRAINS) and all(v["steps"] == 2 for v in stored["stages"].values())
    assert stored["seed"] == 0 and stored["device"].startswith("cpu")
    from safetensors import safe_open

    with safe_open(str(weights / "model.safetensors"), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}  # noqa: SIM118
    # finished stages are not run again
    logs = {n: (stage_dir(out, n) / "log.jsonl").read_text() for n in TRAINS}
    assert main([*argv, "--weights", str(weights), "--model", "tiny", "--no-progress"]) == 0
    assert logs == {n: (stage_dir(out, n) / "log.jsonl").read_text() for n in TRAINS}
    assert all(losses_of(stage_dir(out, n) / "log.jsonl")[-1][0] == 2 for n in TRAINS)


def test_parts_run_at_any_frame_size() -> None:
    cfg = get_preset("tiny")
    parts = Parts(cfg, 128)
    clips = torch.zeros(1, 4, 128, 128, 3, dtype=torch.uint8)
    assert parts.encode(clips).shape == (1, 64, cfg.vision.width)


def test_the_time_limit_stops_with_status_3_and_a_rerun_finishes(tmp_path: Path) -> None:
    config = tmp_path / "t.yaml"
    text = "{steps: 3, batch: 2, eval_items: 0, save_every: 1, log_every: 1}"
    config.write_text(f"train:\n  workers: 0\n  text: {text}\n")
    argv = [
        "train",
        "text",
        "--config",
        str(config),
        "--model",
        "tiny",
        "--out",
        str(tmp_path),
        "--no-progress",
    ]
    assert main([*argv, "--time-limit", "0.001"]) == 3
    assert [s for s, _ in losses_of(tmp_path / "0-text" / "log.jsonl")] == [1]
    assert main(argv) == 0
    assert [s for s, _ in losses_of(tmp_path / "0-text" / "log.jsonl")] == [1, 2, 3]


def test_the_standalone_entry_imports_no_redis_pyav_or_web_stack() -> None:
    """`python -m flashlive.commands.train` is what a bare GPU machine (torch, numpy, transformers,
    pydantic) runs: neither the command nor the training code may pull in the service's libraries."""
    code = (
        "import sys\n"
        "from flashlive.cli import build_parser\n"
        "build_parser(('flashlive.commands.train',))\n"
        "import flashlive.model.train.recipe, flashlive.model.train.stages, flashlive.model.train.targets\n"
        "bad = [m for m in ('redis', 'av', 'fastapi', 'uvicorn', 'aiortc') if m in sys.modules]\n"
        "print(bad)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr + done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "flashlive.commands.train", "2", "--steps", "-1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--steps:" in bad.stderr, bad.stderr
