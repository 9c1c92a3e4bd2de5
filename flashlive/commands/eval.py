"""`flashlive eval`: measure a model on held-out worlds, NIAH grids, the dropout recipe and NIAH-Video.

A thin layer over `flashlive.model.evaluation` (docs/evaluation.md): options are checked before any
model loads, each part's results go to `--out` as JSON (plus a heatmap PNG for the grids), and a short
summary goes to stdout.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from typing import Any

from flashlive.commands.ask_file import add_model_args
from flashlive.errors import CommandError
from flashlive.model.evaluation.parts import ALL, DEFAULT_OUT, PARTS


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "eval",
        parents=parents,
        help="measure a model: held-out worlds, NIAH grids, dropout, NIAH-Video",
        description="Ask a model about generated worlds it was never trained on and score the answers: "
        "accuracy per question kind (world), needle in a haystack by length and depth (niah), multi-hop "
        "chains (mhniah), dropout off / model-card recipe / harsher on the same items (dropout), the "
        "paper's NIAH-Video data from a folder (niah-video). Defaults: docs/evaluation.md.",
    )
    p.add_argument("part", choices=(*PARTS, ALL), metavar="PART", help=f"{', '.join(PARTS)} or {ALL}")
    add_model_args(p)
    p.add_argument("--items", type=int, help="worlds (world, dropout) or items per grid cell (niah, mhniah)")
    p.add_argument("--offset", type=int, help="skip this many held-out seeds (default 0)")
    p.add_argument("--frames", type=int, help="frames of a held-out world video (default 32)")
    p.add_argument("--lengths", help="haystack lengths in frames, comma-separated (default: those that fit)")
    p.add_argument("--depths", help="needle depths in [0, 1], comma-separated (default 0,0.2,...,1)")
    p.add_argument("--hops", help="multi-hop chain lengths, comma-separated (default 2,3)")
    p.add_argument("--data", metavar="DIR", help="a NIAH-Video folder (niah-video; all runs it when given)")
    p.add_argument("--out", metavar="DIR", help=f"where results go (default {DEFAULT_OUT})")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=eval_command, fast_exit=True)


def _list(text: str | None) -> list[str] | None:
    return None if text is None else [v.strip() for v in text.split(",")]


def check_eval_options(args: argparse.Namespace) -> Any:
    """EvalSettings from the command line, through the one validation path (CommandError naming the
    option); nothing has loaded yet."""
    from flashlive.commands.validate import EVAL_FLAGS, check_options
    from flashlive.model.device import check_device
    from flashlive.model.errors import DeviceError
    from flashlive.model.evaluation.settings import EvalSettings

    try:
        check_device(args.device)
    except DeviceError as exc:
        raise CommandError(f"--device: {exc}") from None
    values = {
        "items": args.items,
        "offset": args.offset,
        "frames": args.frames,
        "lengths": _list(args.lengths),
        "depths": _list(args.depths),
        "hops": _list(args.hops),
        "data": args.data,
        "out": args.out,
    }
    settings = check_options(EvalSettings, {k: v for k, v in values.items() if v is not None}, EVAL_FLAGS)
    if args.part == "niah-video" and settings.data is None:
        raise CommandError("niah-video needs --data DIR: a folder in the OpenGVLab/NIAH-Video layout")
    return settings


def eval_command(args: argparse.Namespace) -> int:
    settings = check_eval_options(args)
    from flashlive import __version__
    from flashlive.model.errors import ModelError
    from flashlive.model.evaluation import harness, report
    from flashlive.model.evaluation.sources import ModelContext, ModelSource

    parts = list(PARTS) if args.part == ALL else [args.part]
    if args.part == ALL and settings.data is None:
        parts.remove("niah-video")
        print("skipping niah-video: no --data folder given", file=sys.stderr)
    meta: dict[str, Any] = {
        "model": args.model,
        "device": args.device,
        "dtype": args.dtype,
        "flashlive": __version__,
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    try:
        # every part planned from the model's config first: a haystack too long fails before weights load
        context = ModelContext.of(args.model, download=args.download)
        plans = [harness.plan(context, part, settings) for part in parts]
        source = ModelSource.load(args.model, device=args.device, dtype=args.dtype, download=args.download)
        meta["model_name"] = source.name
        for plan in plans:
            t0 = time.perf_counter()
            result = harness.run_plan(source, plan, progress=not args.quiet)
            meta["seconds"] = round(time.perf_counter() - t0, 1)
            written = report.write(settings.out, result, meta)
            print(report.summary(result))
            print("  results: " + ", ".join(str(p) for p in written))
    except ModelError as exc:  # EvalError, DatasetError, a checkpoint or prompt problem
        raise CommandError(str(exc)) from None
    return 0
