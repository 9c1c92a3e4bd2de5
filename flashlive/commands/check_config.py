"""`flashlive check-config`: validate a config file and explain every error with its line."""

from __future__ import annotations

import argparse
from typing import Any

from flashlive.config import ConfigError, FlashliveConfig, load_config
from flashlive.errors import CommandError


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    c = subparsers.add_parser(
        "check-config",
        parents=parents,
        help="validate a flashlive YAML config and explain every error with its line",
    )
    c.add_argument("file", help="the YAML config file")
    c.set_defaults(handler=check_config_command)


def load_config_or_fail(path: str) -> FlashliveConfig:
    """The config at `path`; every problem with its line as a CommandError (one line for one problem)."""
    try:
        return load_config(path)
    except ConfigError as exc:
        raise CommandError(config_problems(exc)) from None


def config_problems(exc: ConfigError) -> str:
    if len(exc.problems) == 1:
        return str(exc)
    return f"{len(exc.problems)} problems in the config:\n{exc}"


def check_config_command(args: argparse.Namespace) -> int:
    cfg = load_config_or_fail(args.file)
    streams = (
        ", ".join(f"{n} ({'whip' if s.whip else _scheme(s.url)})" for n, s in cfg.streams.items()) or "none"
    )
    print(f"{args.file}: ok. streams: {streams}; model {cfg.model.name} on {cfg.model.device}")
    return 0


def _scheme(url: str | None) -> str:
    if not url:
        return "?"
    return url.split("://", 1)[0] if "://" in url else "file"
