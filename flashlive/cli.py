"""The `flashlive` command. Each module of `flashlive.commands` adds its subcommands through
`register(subparsers, parents)`.

Those modules are imported when the parser is built, so they keep heavy imports (torch, av, aiortc)
inside the command handlers: `flashlive memory ls` should not load torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from flashlive import __version__
from flashlive.errors import CommandError
from flashlive.memory.settings import REDIS_URL_ENV

# each defines register(subparsers, parents), which adds its subcommands
COMMAND_MODULES = (
    "flashlive.commands.ask_file",
    "flashlive.commands.memory",
    "flashlive.commands.ingest",
    "flashlive.commands.check_config",
    "flashlive.commands.demo",
    "flashlive.commands.serve",
    "flashlive.commands.worker",
    "flashlive.commands.ask",
    "flashlive.commands.watch",
)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--redis",
        metavar="URL",
        default=None,
        help=f"Redis server URL (default: ${REDIS_URL_ENV}, else an embedded server)",
    )
    common.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING or ERROR")
    parser = argparse.ArgumentParser(
        prog="flashlive", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--version", action="version", version=f"flashlive {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub, [common])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        result = args.handler(args)
    except CommandError as exc:
        print(f"flashlive {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(result or 0)
