"""`flashlive train STAGE`: the short-to-long training recipe on the generated world (docs/training.md).

    flashlive train all                       # every stage, then the fp16 weights and provenance
    flashlive train 2 --steps 50 --out runs/t # one stage (0 runs both of its parts)
    flashlive train all --config train.yaml --device cuda --time-limit 540

Each stage resumes from its last checkpoint in --out: stop it (Ctrl-C, a time limit) and run the same
command again. Exit status 3 means "stopped early, saved: run again to continue".

`python -m flashlive.commands.train STAGE ...` is the same command on its own: it imports none of the
other commands (Redis, PyAV, the web stack), for a training machine with only torch and its kin.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from flashlive.commands.check_config import load_config_or_fail
from flashlive.commands.validate import TRAIN_FLAGS, TrainOptions, check_options
from flashlive.errors import CommandError

STOPPED_EARLY = 3  # exit status: saved before the end, run again to continue
STAGE_CHOICES = ("all", "export", "0", "1", "2", "3", "4", "tower", "text", "align", "short", "long", "hires")
DEFAULT_OUT = "runs/train"


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    t = subparsers.add_parser(
        "train",
        parents=parents,
        help="train the model on the generated world (the paper's recipe in miniature)",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    t.add_argument(
        "stage",
        metavar="STAGE",
        choices=STAGE_CHOICES,
        help="all, a stage (0-4 or tower, text, align, short, long, hires), or export",
    )
    t.add_argument("--config", metavar="FILE", help="YAML file whose `train` section sets the recipe")
    t.add_argument("--steps", type=int, help="steps of each stage run (overrides the config)")
    t.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: the config's, cpu)")
    t.add_argument(
        "--out", default=DEFAULT_OUT, help=f"folder of checkpoints and logs (default {DEFAULT_OUT})"
    )
    t.add_argument(
        "--weights",
        help="where `all` and `export` write the final weights (default: the preset's shipped folder, "
        "model/weights/mini for mini; else --out/weights)",
    )
    t.add_argument("--seed", type=int, help="seed of weights and data (default: the config's, 0)")
    t.add_argument("--workers", type=int, help="data worker processes (default: one per CPU core)")
    t.add_argument("--model", help="preset whose shape is trained (default: the config's)")
    t.add_argument("--time-limit", type=float, metavar="SECONDS", help="save and stop after this long")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.set_defaults(handler=train_command)


def train_settings(args: argparse.Namespace) -> Any:
    """The `train` section of --config (or the defaults) with the command line's values on top."""
    from flashlive.model.train.recipe import stages_for
    from flashlive.model.train.settings import TrainSettings

    data: dict[str, Any] = {}
    if args.config:  # problems in the file are named with its line
        data = load_config_or_fail(args.config).train.model_dump(mode="json")
    for key in ("seed", "device", "workers", "model"):
        value = getattr(args, key)
        if value is not None:
            data[key] = value
    flags = dict(TRAIN_FLAGS)
    if args.steps is not None:
        flags["steps"] = "--steps"
        names = stages_for("all" if args.stage == "export" else args.stage)
        for name in names:
            data[name] = {**data.get(name, {}), "steps": args.steps}
    return check_options(TrainSettings, data, flags)


def train_command(args: argparse.Namespace) -> int:
    from flashlive.model.errors import ModelError
    from flashlive.model.train.errors import StoppedEarly
    from flashlive.model.train.recipe import default_weights, export, run

    opts = check_options(
        TrainOptions, {"time_limit": args.time_limit, "out": args.out, "weights": args.weights}, TRAIN_FLAGS
    )
    settings = train_settings(args)
    out = Path(opts.out)
    try:
        weights = Path(opts.weights) if opts.weights else default_weights(settings) or out / "weights"
        if args.stage != "export":
            results = run(
                args.stage, settings, out, time_limit=opts.time_limit, progress=not args.no_progress
            )
            for r in results:
                print(_summary(r))
        if args.stage in ("all", "export"):
            path = export(out, settings, weights, device=settings.device)
            print(f"weights: {path}")
    except StoppedEarly as exc:
        print(f"{exc}; saved: run the same command again to continue", file=sys.stderr)
        return STOPPED_EARLY
    except (ModelError, OSError) as exc:
        raise CommandError(str(exc)) from None
    return 0


def _summary(r: Any) -> str:
    loss = "-" if r.loss is None else f"{r.loss:.4f}"
    line = f"stage {r.name}: {r.steps} steps, loss {loss}, {r.seconds:.0f} s"
    acc = r.eval.get("accuracy")
    if isinstance(acc, float):
        line += f", held-out exact {acc:.3f}"
    elif isinstance(acc, dict):
        line += ", held-out " + " ".join(f"{k} {v:.2f}" for k, v in acc.items())
    return line


if __name__ == "__main__":
    from flashlive.cli import main

    sys.exit(main(["train", *sys.argv[1:]], modules=("flashlive.commands.train",)))
