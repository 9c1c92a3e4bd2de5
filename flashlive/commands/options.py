"""Command-line options shared by several commands, and how they become settings objects."""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from flashlive.errors import CommandError
from flashlive.memory.settings import REDIS_URL_ENV, RedisSettings


def redis_settings(args: argparse.Namespace, base: RedisSettings | None = None) -> RedisSettings:
    """`base` (the config's `memory.redis`, else the defaults) with --redis / $FLASHLIVE_REDIS_URL,
    --data-dir and --prefix applied, where the command has them."""
    base = base or RedisSettings()
    try:
        prefix = getattr(args, "prefix", None)
        if prefix:
            base = RedisSettings.model_validate({**base.model_dump(), "prefix": prefix})
        return base.resolve(args.redis, data_dir=getattr(args, "data_dir", None))
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error["loc"])
        origin = {"url": f"--redis / ${REDIS_URL_ENV}", "prefix": "--prefix"}.get(field, field)
        raise CommandError(f"{origin}: {error['msg'].removeprefix('Value error, ')}") from None
