"""The whole recipe: stages in order, each starting from the one before, and the export of the
final weights (fp16, the release's key layout) with a provenance record.

    out/0-tower  out/0-text  out/1-align  out/2-short  out/3-long  out/4-hires
        checkpoint.pt  (resume point: every part, heads, optimiser, step)
        final.pt       (the stage's end state, what the next stage starts from)
        log.jsonl      (loss lines and held-out checks)
"""

from __future__ import annotations

import logging
import platform
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from flashlive.model.checkpoint import save_checkpoint
from flashlive.model.config import FlashConfig, get_preset
from flashlive.model.device import resolve_device
from flashlive.model.shipped import shipped_dir

from .errors import TrainError
from .loop import RunOptions, StageResult, read_final, run_stage
from .parts import Parts
from .settings import STAGES, TrainSettings
from .stages import LongTask, Stage, TextTask, TowerTask, VideoTask, digest

log = logging.getLogger(__name__)

NUMBER = dict((name, number) for number, name in STAGES)
# Which finished stages each stage starts from.
STARTS_FROM: dict[str, tuple[str, ...]] = {
    "tower": (),
    "text": (),
    "align": ("tower", "text"),
    "short": ("align",),
    "long": ("short",),
    "hires": ("long",),
}


def stage_dir(out: Path, name: str) -> Path:
    return out / f"{NUMBER[name]}-{name}"


def stages_for(which: str) -> list[str]:
    """'all', a stage number (0 runs both parts of stage 0) or a stage name -> stage names in order."""
    if which == "all":
        return [name for _, name in STAGES]
    named = [name for number, name in STAGES if which in (number, name)]
    if not named:
        choices = ", ".join(sorted({n for n, _ in STAGES} | {name for _, name in STAGES}))
        raise TrainError(f"unknown stage {which!r}; give all, {choices}")
    return named


def model_config(train: TrainSettings) -> FlashConfig:
    cfg = get_preset(train.model)
    if cfg.vision.clip_frames != 4 or cfg.merge.tokens_per_clip != 64:
        raise TrainError(f"model {train.model}: training expects clips of 4 frames merged to 64 tokens")
    return cfg


def make_task(name: str, train: TrainSettings, cfg: FlashConfig, out: Path) -> Stage:
    if name == "tower":
        return TowerTask(train, cfg)
    if name == "text":
        return TextTask(train, cfg)
    start: dict[str, torch.Tensor] = {}
    prints = []
    for prev in STARTS_FROM[name]:
        final = read_final(stage_dir(out, prev))
        start.update(final["state"])
        prints.append([final.get("fingerprint"), final.get("steps")])
    after = digest(prints)
    if name == "long":
        return LongTask(name, train, cfg, start, after)
    return VideoTask(name, train, cfg, start, after)


def run_options(train: TrainSettings, *, deadline: float | None, progress: bool) -> RunOptions:
    import os

    device = torch.device(resolve_device(train.device))
    workers = train.workers if train.workers is not None else max(1, min(16, (os.cpu_count() or 2) - 1))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return RunOptions(device, workers, deadline, progress, autocast=device.type == "cuda")


def run(
    which: str,
    train: TrainSettings,
    out: Path,
    *,
    time_limit: float | None = None,
    progress: bool = True,
    cfg: FlashConfig | None = None,
) -> list[StageResult]:
    """Run the stages `which` names, in order; each resumes where it stopped.

    Raises StoppedEarly when `time_limit` (seconds) passes: run again to continue.
    """
    cfg = cfg or model_config(train)
    deadline = time.monotonic() + time_limit if time_limit is not None else None
    opts = run_options(train, deadline=deadline, progress=progress)
    results = []
    for name in stages_for(which):
        task = make_task(name, train, cfg, out)
        task.to(opts.device)
        log.info("stage %s %s on %s, %d data workers", NUMBER[name], name, opts.device, opts.workers)
        results.append(run_stage(task, stage_dir(out, name), opts))
    return results


# ----------------------------------------------------------------------------------------- export


def export(
    out: Path, train: TrainSettings, dest: Path, *, cfg: FlashConfig | None = None, device: str = "cpu"
) -> Path:
    """Write the finished recipe's weights to `dest` (`checkpoint.save_checkpoint`): config.json and
    model.safetensors in fp16 with the release's keys, generation_config.json and provenance.json."""
    cfg = cfg or model_config(train)
    final = read_final(stage_dir(out, "hires"))
    parts = Parts(cfg, train.hires.image_size)
    parts.load_state_dict(final["state"])
    shipped = replace(parts.cfg, seed=None)
    record = provenance(out, train, device)
    save_checkpoint(dest, shipped, parts.tower, parts.projector, parts.llm, provenance=record)
    log.info("wrote %s", dest)
    return dest


def default_weights(train: TrainSettings) -> Path | None:
    """Where `all` writes the weights by default: the preset's shipped folder (model/weights/mini)."""
    cfg = model_config(train)
    return shipped_dir(cfg.shipped) if cfg.shipped else None


def provenance(out: Path, train: TrainSettings, device: str) -> dict[str, Any]:
    """Where the weights came from: commit, seed, settings, and each stage's steps, loss and time."""
    stages: dict[str, Any] = {}
    for _, name in STAGES:
        final = read_final(stage_dir(out, name))
        stages[name] = {
            "steps": final.get("steps"),
            "final_loss": final.get("loss"),
            "seconds": round(float(final.get("seconds", 0.0)), 1),
            "cpu_seconds": round(float(final.get("cpu_seconds", 0.0)), 1),
            "held_out": final.get("eval", {}),
        }
    return {
        "commit": _git("rev-parse", "HEAD"),
        "uncommitted_changes": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "seed": train.seed,
        "model": train.model,
        "device": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "stages": stages,
        "settings": train.model_dump(mode="json"),
    }


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device}: {torch.cuda.get_device_name(torch.device(device))}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None
