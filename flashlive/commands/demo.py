"""`flashlive demo-video`: write a generated demo video (no camera or download needed)."""

from __future__ import annotations

import argparse
from typing import Any

from flashlive.commands.validate import DEMO_FLAGS, DemoVideoOptions, check_options
from flashlive.errors import CommandError


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    d = subparsers.add_parser(
        "demo-video", parents=parents, help="write a generated demo video (no camera or download needed)"
    )
    d.add_argument("out", metavar="OUT", help="output file (.mp4 or .mkv)")
    d.add_argument("--seconds", type=float, default=60.0)
    d.add_argument("--fps", type=int, default=10)
    d.set_defaults(handler=demo_video_command)


def demo_video_command(args: argparse.Namespace) -> int:
    from flashlive.stream.demo import write_demo_video

    opts = check_options(DemoVideoOptions, {"seconds": args.seconds, "fps": args.fps, "out": args.out},
                         DEMO_FLAGS)  # fmt: skip
    try:
        frames = write_demo_video(opts.out, seconds=opts.seconds, fps=opts.fps)
    except (OSError, ValueError) as exc:  # av's errors are both
        raise CommandError(f"cannot write {args.out}: {exc}") from None
    print(f"{args.out}: {frames} frames, {args.seconds:g} s at {args.fps} fps")
    return 0
