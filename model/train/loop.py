"""The training loop every stage shares: data workers, AdamW with warm-up and cosine decay,
checkpoints to resume from, a JSON-lines log, a progress bar, held-out checks, a time limit.

Step s always trains on batch s (built from (seed, stage, s) by any worker), or with `repeat` on
rendered batch rendered_index(s), so a run killed and started again continues from its last
checkpoint with the same data, the same optimiser state and so the same losses as a run never
stopped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .errors import StoppedEarly, TrainError
from .settings import StageSettings

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
FINAL = "final.pt"
LOG = "log.jsonl"


class StageTask(Protocol):
    """What a stage tells the loop: its model, what it trains, its data and its loss."""

    name: str
    settings: StageSettings

    @property
    def data(self) -> Callable[[int, bool], Any]:
        """Batch (step, held_out): picklable, runs in data workers."""
        ...

    def prepare(self, stage_dir: Path, opts: RunOptions) -> None:
        """Work before the first step (e.g. caching tokens)."""
        ...

    def modules(self) -> dict[str, nn.Module]:
        """Everything saved in a checkpoint (the trained parts, heads, and the frozen parts)."""
        ...

    def trainable(self) -> list[nn.Parameter]: ...

    def loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]: ...

    def evaluate(self, batches: list[Any]) -> dict[str, Any]: ...

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must agree on to be resumed (seed, model, data settings)."""
        ...

    def final_state(self) -> dict[str, torch.Tensor]:
        """What the next stage starts from (the parts, without any heads)."""
        ...


class _Steps(Dataset[Any]):
    """Map-style dataset over step numbers: item s is batch s."""

    def __init__(self, make: Callable[[int, bool], Any], held_out: bool = False) -> None:
        self.make = make
        self.held_out = held_out

    def __getitem__(self, step: int) -> Any:
        return self.make(step, self.held_out)

    def __len__(self) -> int:  # pragma: no cover - the sampler gives the steps
        return 0


@dataclass
class RunOptions:
    device: torch.device
    workers: int
    deadline: float | None = None  # time.monotonic(); the stage stops (saved) after a step past it
    progress: bool = True
    autocast: bool = False  # bf16 autocast (CUDA)


@dataclass
class StageResult:
    name: str
    steps: int
    loss: float | None  # mean loss of the last logged steps
    seconds: float  # training time over all runs of this stage
    eval: dict[str, Any] = field(default_factory=dict)
    done: bool = True


def param_groups(params: list[nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only: norm gains and biases keep weight_decay 0."""
    decay = [p for p in params if p.dim() >= 2]
    plain = [p for p in params if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def lr_at(step: int, s: StageSettings) -> float:
    """Linear warm-up to the peak, then cosine down to min_lr x peak at the last step."""
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    span = max(1, s.steps - s.warmup)
    t = min(1.0, (step - s.warmup) / span)
    return s.lr * (s.min_lr + (1 - s.min_lr) * 0.5 * (1 + math.cos(math.pi * t)))


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _load(path: Path) -> dict[str, Any]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file: say which
        raise TrainError(f"{path}: unreadable checkpoint ({exc})") from exc
    if not isinstance(data, dict):
        raise TrainError(f"{path}: not a training checkpoint")
    return data


def read_final(stage_dir: Path) -> dict[str, Any]:
    """The end state of a finished stage: its parts' weights and its summary."""
    path = stage_dir / FINAL
    if not path.is_file():
        raise TrainError(f"{path} is missing: run stage {stage_dir.name} first")
    return _load(path)


class _Stop:
    """SIGTERM / SIGINT ask the loop to save and stop after the current step."""

    def __init__(self) -> None:
        self.asked = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Stop:
        if threading.current_thread() is not threading.main_thread():
            return self  # signals reach the main thread only: the time limit still works
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._ask)
        return self

    def _ask(self, signum: int, frame: FrameType | None) -> None:
        if self.asked:  # a second signal: leave now
            raise KeyboardInterrupt
        self.asked = True

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _loader(task: StageTask, steps: range, opts: RunOptions, *, held_out: bool = False) -> Iterator[Any]:
    """Batches `steps` in order, built by the data workers (or here, with none)."""
    if opts.workers == 0:
        return (task.data(s, held_out) for s in steps)
    loader = DataLoader(
        _Steps(task.data, held_out),
        batch_size=None,
        sampler=steps,
        num_workers=opts.workers,
        prefetch_factor=2,
        pin_memory=False,
        persistent_workers=False,
    )
    return iter(loader)


def rendered_index(step: int, repeat: int, spacing: int) -> int:
    """The rendered batch that step `step` trains on.

    Every `repeat` steps one new batch is rendered and trained on; the steps between train on older
    ones, `spacing`, 2 x `spacing`, ... rendered batches back (early on, while fewer have been
    rendered, closer), so each batch is trained on `repeat` times, far apart, and only the last
    (repeat - 1) x spacing + 1 are held in memory. With repeat 1 it is the step itself.
    """
    newest, turn = divmod(step, repeat)
    if repeat == 1:
        return newest
    return newest - turn * min(spacing, newest // (repeat - 1))


def _replayed(task: StageTask, steps: range, opts: RunOptions) -> Iterator[Any]:
    """The batch of every step in `steps`, rendering each batch once (see rendered_index)."""
    k, spacing = task.settings.repeat, task.settings.spacing
    if k == 1:
        yield from _loader(task, steps, opts)
        return
    if not steps:
        return
    span = (k - 1) * spacing  # how far back a step reaches
    first = max(0, steps.start // k - span)  # a resumed run renders again what its next steps reuse
    fresh = _loader(task, range(first, (steps.stop - 1) // k + 1), opts)
    kept: dict[int, Any] = {}
    for step in steps:
        newest = step // k
        while first <= newest:
            kept[first] = next(fresh)
            kept.pop(first - span - 1, None)  # no step from here on reaches that far back
            first += 1
        yield kept[rendered_index(step, k, spacing)]


def _write_log(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _trim_log(path: Path, step: int) -> None:
    """Keep the log lines up to `step` (a killed run may have logged past its last checkpoint)."""
    if not path.is_file():
        return
    kept = [
        line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step
    ]
    path.write_text("".join(line + "\n" for line in kept))


def run_stage(task: StageTask, stage_dir: Path, opts: RunOptions) -> StageResult:
    """Train `task` to its last step, resuming from `stage_dir`'s checkpoint; write `final.pt`.

    Raises StoppedEarly (after saving) when the time limit passes or a stop signal comes.
    """
    s = task.settings
    stage_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = stage_dir / CHECKPOINT, stage_dir / LOG
    if (stage_dir / FINAL).is_file():
        final = read_final(stage_dir)
        if final.get("fingerprint") != task.fingerprint():
            raise TrainError(
                f"{stage_dir / FINAL} was made with other settings or from other earlier stages; "
                "use another output folder, or delete it to train the stage again"
            )
        if final.get("steps") == s.steps:
            log.info("stage %s already finished (%d steps)", task.name, s.steps)
            return StageResult(
                task.name, s.steps, final.get("loss"), final.get("seconds", 0.0), final.get("eval", {})
            )
    modules = task.modules()
    params = task.trainable()
    optimizer = torch.optim.AdamW(param_groups(params, s.weight_decay), lr=s.lr, betas=(0.9, 0.95))
    start, seconds, cpu = 0, 0.0, 0.0
    if ckpt_path.is_file():
        start, seconds, cpu = _resume(ckpt_path, task, modules, optimizer)
        log.info("stage %s: resuming at step %d of %d", task.name, start, s.steps)
    _trim_log(log_path, start)
    task.prepare(stage_dir, opts)
    held_out = list(_loader(task, range(_eval_batches(task)), opts, held_out=True))
    recent: list[float] = []
    last_eval: dict[str, Any] = {}
    began, cpu_began = time.perf_counter(), time.process_time()

    def save(step: int) -> None:
        state = {
            "step": step,
            "seconds": seconds + time.perf_counter() - began,
            "cpu_seconds": cpu + time.process_time() - cpu_began,
            "fingerprint": task.fingerprint(),
            "modules": {k: m.state_dict() for k, m in modules.items()},
            "optimizer": optimizer.state_dict(),
        }
        _atomic_save(state, ckpt_path)

    bar = tqdm(
        total=s.steps, initial=start, desc=f"train {task.name}", unit="step", disable=not opts.progress
    )
    step = start
    with _Stop() as stop:
        steps = range(start, s.steps)
        for step, batch in zip(steps, _replayed(task, steps, opts), strict=False):
            t0 = time.perf_counter()
            loss, stats = _train_step(task, batch, optimizer, params, step, opts)
            recent = [*recent[-(s.log_every - 1) :], loss] if s.log_every > 1 else [loss]
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
            done = step + 1
            if done % s.log_every == 0 or done == s.steps:
                record = {"step": done, "loss": sum(recent) / len(recent), "lr": lr_at(step, s)}
                record.update(stats)
                record["step_s"] = round(time.perf_counter() - t0, 4)
                record["elapsed_s"] = round(seconds + time.perf_counter() - began, 1)
                record["cpu_s"] = round(cpu + time.process_time() - cpu_began, 1)
                _write_log(log_path, record)
            if held_out and ((s.eval_every and done % s.eval_every == 0) or done == s.steps):
                last_eval = _evaluate(task, held_out, opts)
                _write_log(log_path, {"step": done, "eval": last_eval})
                log.info("stage %s step %d: %s", task.name, done, last_eval)
            out_of_time = opts.deadline is not None and time.monotonic() > opts.deadline
            if done % s.save_every == 0 or done == s.steps or out_of_time or stop.asked:
                save(done)
            if done < s.steps and (out_of_time or stop.asked):
                bar.close()
                why = "time limit" if out_of_time else "stop signal"
                raise StoppedEarly(f"stage {task.name} stopped by the {why} at step {done} of {s.steps}")
    bar.close()
    total = seconds + time.perf_counter() - began
    final_loss = sum(recent) / len(recent) if recent else None
    final = {
        "steps": s.steps,
        "loss": final_loss,
        "seconds": total,
        # CPU time of this process (its threads), not of the data workers: on a shared machine the
        # wall time says more about the neighbours than about the recipe
        "cpu_seconds": cpu + time.process_time() - cpu_began,
        "eval": last_eval,
        "fingerprint": task.fingerprint(),
        "state": task.final_state(),
    }
    _atomic_save(final, stage_dir / FINAL)
    return StageResult(task.name, s.steps, final_loss, total, last_eval)


def _eval_batches(task: StageTask) -> int:
    s = task.settings
    return 0 if s.eval_items == 0 else math.ceil(s.eval_items / s.batch)


def _resume(
    path: Path, task: StageTask, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer
) -> tuple[int, float, float]:
    state = _load(path)
    if state.get("fingerprint") != task.fingerprint():
        raise TrainError(
            f"{path} was written with other settings ({state.get('fingerprint')}); "
            "use another output folder, or delete it to start the stage again"
        )
    for name, module in modules.items():
        module.load_state_dict(state["modules"][name])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"]), float(state.get("seconds", 0.0)), float(state.get("cpu_seconds", 0.0))


def _train_step(
    task: StageTask,
    batch: Any,
    optimizer: torch.optim.Optimizer,
    params: list[nn.Parameter],
    step: int,
    opts: RunOptions,
) -> tuple[float, dict[str, float]]:
    lr = lr_at(step, task.settings)
    for group in optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast(opts.device.type, dtype=torch.bfloat16, enabled=opts.autocast):
        loss, stats = task.loss(batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(params, task.settings.clip_grad)
    optimizer.step()
    value = float(loss.detach())
    if not math.isfinite(value):
        raise TrainError(f"stage {task.name}: the loss is {value} at step {step}; lower the learning rate")
    return value, {**stats, "grad_norm": round(float(norm), 4)}


def _evaluate(task: StageTask, batches: list[Any], opts: RunOptions) -> dict[str, Any]:
    with torch.no_grad(), torch.autocast(opts.device.type, dtype=torch.bfloat16, enabled=opts.autocast):
        return task.evaluate(batches)
