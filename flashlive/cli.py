"""The `flashlive` command. Each module of `flashlive.commands` adds its subcommands through
`register(subparsers, parents)`.

Those modules are imported when the parser is built, so they keep heavy imports (torch, av, aiortc)
inside the command handlers: `flashlive memory ls` should not load torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

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
    "flashlive.commands.eval",
    "flashlive.commands.train",
)


class Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line (`flashlive ingest: error: argument --fps: ...`) and exit
    status 2: the usage block it prints by default buries the one thing that is wrong."""

    def error(self, message: str) -> NoReturn:
        text = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {text} (see {self.prog} --help)\n")


def build_parser(modules: Sequence[str] = COMMAND_MODULES) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--redis",
        metavar="URL",
        default=None,
        help=f"Redis server URL (default: ${REDIS_URL_ENV}, else an embedded server)",
    )
    common.add_argument(
        "--log-level",
        default="WARNING",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="DEBUG, INFO, WARNING or ERROR",
    )
    parser = Parser(prog="flashlive", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"flashlive {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in modules:
        importlib.import_module(name).register(sub, [common])
    return parser


_leave_at_once = False  # set by main() for commands that opt in (`fast_exit`), read by run()


def main(argv: Sequence[str] | None = None, *, modules: Sequence[str] = COMMAND_MODULES) -> int:
    """Run one command. `modules`: the command modules to offer (a standalone entry point such as
    `python -m flashlive.commands.train` offers its own alone, and imports nothing of the others)."""
    global _leave_at_once
    parser = build_parser(modules)
    args = parser.parse_args(argv)
    _leave_at_once = bool(getattr(args, "fast_exit", False))
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


def run() -> NoReturn:
    """The `flashlive` entry point: `main()`, then exit. Commands that load torch and have closed all
    they opened by the time they return (ingest: Redis, leases, servers) set `fast_exit`: they leave
    with os._exit, skipping the interpreter's teardown, which spends about a second freeing torch and
    would make a Ctrl-C take longer than the 2 s it may take."""
    code = main()
    if not _leave_at_once:
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)
