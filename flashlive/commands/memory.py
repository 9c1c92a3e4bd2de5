"""`flashlive memory ls|show|export`: look into what the memory holds.

Times are seconds on the stream timeline (float), or ISO-8601 datetimes (a naive one is local time)
for live streams, whose timeline is unix time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any

from flashlive.commands.options import redis_settings
from flashlive.commands.validate import MEMORY_FLAGS, ExportOptions, WindowOptions, check_options
from flashlive.errors import CommandError
from flashlive.memory.errors import MemoryStoreError
from flashlive.memory.settings import RedisSettings


def parse_time(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        try:
            value = datetime.fromisoformat(text).timestamp()
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is neither seconds nor an ISO-8601 datetime (2025-01-31T12:00:00)"
            ) from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite time")
    return value


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    memory = subparsers.add_parser("memory", help="list, show and export what the video memory holds")
    sub = memory.add_subparsers(dest="memory_command", metavar="ACTION", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument(
        "--data-dir", default=None, help="embedded server data directory (when no Redis URL is given)"
    )
    common.add_argument("--prefix", default=None, help="Redis key prefix (default fl)")

    ls = sub.add_parser("ls", parents=[*parents, common], help="streams with clips, bytes and time span")
    ls.set_defaults(handler=_run, action=_ls)

    window = argparse.ArgumentParser(add_help=False)
    window.add_argument("name", help="stream name")
    window.add_argument("--start", type=parse_time, default=None, help="seconds or ISO-8601 (inclusive)")
    window.add_argument("--end", type=parse_time, default=None, help="seconds or ISO-8601 (exclusive)")
    window.add_argument("--last", type=float, default=None, help="the last SECONDS before the newest clip")

    show = sub.add_parser(
        "show", parents=[*parents, common, window], help="clips of a range with their times"
    )
    show.set_defaults(handler=_run, action=_show)

    export = sub.add_parser(
        "export", parents=[*parents, common, window], help="thumbnails of a range as MP4 or contact sheet"
    )
    export.add_argument(
        "--out", required=True, type=Path, help="FILE.mp4, or FILE.jpg/.png for a contact sheet"
    )
    export.add_argument("--fps", type=float, default=4.0, help="frames per second of the MP4 (default 4)")
    export.add_argument("--columns", type=int, default=8, help="contact sheet columns (default 8)")
    export.set_defaults(handler=_run, action=_export)


def _run(args: argparse.Namespace) -> int:
    window = {k: getattr(args, k, None) for k in ("start", "end", "last")}
    if args.action is _export:
        check_options(ExportOptions, {**window, "fps": args.fps, "columns": args.columns}, MEMORY_FLAGS)
    elif args.action is _show:
        check_options(WindowOptions, window, MEMORY_FLAGS)
    return asyncio.run(_with_memory(args, redis_settings(args)))


async def _with_memory(args: argparse.Namespace, settings: RedisSettings) -> int:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from flashlive.memory.connect import open_memory
    from flashlive.memory.redact import redact
    from flashlive.memory.server import RedisServerError

    where = redact(settings.where())
    try:
        async with open_memory(settings) as memory:
            result: int = await args.action(memory, args)
            return result
    except (MemoryStoreError, RedisServerError) as exc:
        raise CommandError(str(exc)) from None
    except (OSError, RedisConnectionError, RedisTimeoutError) as exc:
        raise CommandError(f"cannot reach Redis at {where}: {exc}") from None
    except RedisError as exc:
        raise CommandError(f"Redis at {where} refused: {exc}") from None


def _fmt_time(t: float | None) -> str:
    if t is None:
        return "-"
    if t > 1e9:  # a live stream: unix time
        return datetime.fromtimestamp(t).isoformat(timespec="seconds")
    return f"{t:.3f}"


def _fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


async def _ls(memory: Any, args: argparse.Namespace) -> int:
    from flashlive.memory.errors import MemoryUnavailableError, UnknownStreamError

    rows: list[dict[str, Any]] = []
    for name in await memory.streams():
        try:
            stats = await memory.stats(name)
        except UnknownStreamError:
            continue  # deleted meanwhile
        except MemoryUnavailableError:
            raise
        except MemoryStoreError as exc:  # one broken stream (a key of another type): say so, list the rest
            rows.append({"stream": name, "state": "unreadable", "error": str(exc)})
            continue
        rows.append({**vars(stats), "span": stats.span, "shown_state": _shown_state(stats)})
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "shown_state"} for r in rows], indent=2))
        return 0
    if not rows:
        print("no streams in memory")
        return 0
    table = [["STREAM", "CLIPS", "BYTES", "FROM", "TO", "SPAN", "STATE", "LOST", "TRIMMED", "NOTE"]]
    for r in rows:
        if r["state"] == "unreadable":
            table.append([r["stream"], "-", "-", "-", "-", "-", "unreadable", "-", "-", _short(r["error"])])
            continue
        table.append(
            [r["stream"], str(r["clips"]), _fmt_bytes(r["bytes"]), _fmt_time(r["first_start"]),
             _fmt_time(r["last_end"]), f"{r['span']:.0f} s", r["shown_state"], str(r["lost"]),
             str(r["trimmed_clips"]), _short(_note(r))]
        )  # fmt: skip
    _print_table(table)
    return 0


def _shown_state(stats: Any) -> str:
    """The state as reported; a stream that says it is being written while nobody holds its write
    lease was left so by an ingest that could not report its end (killed, or Redis was away)."""
    from flashlive.memory.types import StreamState

    state = stats.state or "-"
    if state in {s.value for s in StreamState} and StreamState(state).active and not stats.writer:
        return f"{state} (no writer)"
    return str(state)


def _note(row: dict[str, Any]) -> str:
    parts = []
    if row.get("error"):
        parts.append(str(row["error"]))
    if row.get("losses"):
        parts.append("lost " + ", ".join(f"{n} {r}" for r, n in row["losses"].items()))
    if row.get("writer"):
        parts.append(f"written by {row['writer']}")
    return "; ".join(parts)


def _short(text: str, width: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


async def _show(memory: Any, args: argparse.Namespace) -> int:
    clips = await memory.list_clips(args.name, start=args.start, end=args.end, last=args.last)
    if args.json:
        out = [
            {"id": c.id, "start": c.start, "end": c.end, "frames": c.frames, "bytes": c.nbytes,
             "tokens": list(c.token_shape), "encoder_id": c.encoder_id, "wall_start": c.wall_start}
            for c in clips
        ]  # fmt: skip
        print(json.dumps({"stream": args.name, "clips": out}, indent=2))
        return 0
    rows = [["ID", "START", "END", "FRAMES", "TOKENS", "BYTES"]]
    for c in clips:
        rows.append(
            [c.id, _fmt_time(c.start), _fmt_time(c.end), str(c.frames), "x".join(map(str, c.token_shape)),
             _fmt_bytes(c.nbytes)]
        )  # fmt: skip
    _print_table(rows)
    print(f"{len(clips)} clips")
    return 0


async def _export(memory: Any, args: argparse.Namespace) -> int:
    from flashlive.memory.export import ExportError, export_thumbnails

    if args.last is not None:
        if args.start is not None or args.end is not None:
            raise CommandError("give either --last or --start/--end, not both")
        infos = await memory.list_clips(args.name, last=args.last)
        args.start, args.end = infos[0].start, None
    thumbs: list[bytes] = []
    missing = 0
    async for info in memory.replay_info(args.name, args.start, args.end, thumbnails=True):
        if info.thumbnail:
            thumbs.append(info.thumbnail)
        else:
            missing += 1
    try:
        result = export_thumbnails(thumbs, args.out, fps=args.fps, columns=args.columns)
    except ExportError as exc:
        raise CommandError(str(exc)) from None
    result["without_thumbnail"] = missing
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"wrote {result['out']}: {result['frames']} thumbnails ({missing} clips had none)")
    return 0
