"""`flashlive watch add|ls|rm` (standing questions) and `flashlive events STREAM` (their alerts).

A watch is evaluated by the query workers at every new clip of its stream (or every `--cadence`
seconds of stream time): P(yes) of its condition over the last `--window` seconds. An event starts when
that score reaches `--threshold`, is updated at every evaluation above it, and ends once it stayed
below for `--cooldown` seconds (docs/workers.md, "Watches"). Events are kept per stream in Redis:
`flashlive events STREAM` lists them, `--follow` waits for new ones, `--after ID` resumes after the
last entry id seen.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from flashlive.commands.ask import options_error
from flashlive.commands.options import redis_settings
from flashlive.errors import CommandError
from flashlive.memory.messages import Event, Watch
from flashlive.memory.settings import RedisSettings

_WATCH = Watch(stream="x", condition="x")  # the defaults shown in --help
ENTRY_ID = re.compile(r"^\d+(-\d+)?$")

FLAGS: Mapping[str, str] = {
    "stream": "STREAM",
    "condition": "CONDITION",
    "window": "--window",
    "cadence": "--cadence",
    "threshold": "--threshold",
    "cooldown": "--cooldown",
    "budget": "--budget",
    "id": "--id",
}


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--prefix", default=None, help="Redis key prefix (default fl)")
    common.add_argument("--data-dir", default=None, help="embedded server data directory (when no Redis URL)")

    watch = subparsers.add_parser("watch", help="standing questions that raise events (add, ls, rm)")
    sub = watch.add_subparsers(dest="watch_command", metavar="ACTION", required=True)

    add = sub.add_parser(
        "add",
        parents=[*parents, common],
        help="watch a stream for a condition",
        description="Register a standing question: the workers score CONDITION on STREAM at every new clip "
        "and raise an event when the score reaches --threshold.",
    )
    add.add_argument("stream", metavar="STREAM")
    add.add_argument("condition", metavar="CONDITION", help='in plain words, e.g. "a person is at the door"')
    add.add_argument(
        "--window", type=float, default=_WATCH.window, help="seconds of video scored (default %(default)g)"
    )
    add.add_argument(
        "--cadence", default="clip", help="clip (every new clip, the default) or SECONDS of stream time"
    )
    add.add_argument(
        "--threshold",
        type=float,
        default=_WATCH.threshold,
        help="P(yes) that starts an event (default %(default)g)",
    )
    add.add_argument(
        "--cooldown",
        type=float,
        default=_WATCH.cooldown,
        help="seconds below the threshold before the event ends (default %(default)g)",
    )
    add.add_argument(
        "--budget", type=int, default=_WATCH.budget, help="frames read per evaluation (default %(default)s)"
    )
    add.add_argument(
        "--id", default=None, help="the watch's id (default: a random one); an existing id is replaced"
    )
    add.add_argument("--json", action="store_true", help="print the watch as JSON")
    add.set_defaults(handler=_run, action=_add)

    ls = sub.add_parser("ls", parents=[*parents, common], help="list watches with their state and lag")
    ls.add_argument("stream", metavar="STREAM", nargs="?", help="only this stream's")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=_run, action=_ls)

    rm = sub.add_parser("rm", parents=[*parents, common], help="remove a watch (ends its open event)")
    rm.add_argument("id", metavar="ID")
    rm.set_defaults(handler=_run, action=_rm)

    events = subparsers.add_parser(
        "events",
        parents=[*parents, common],
        help="list a stream's watch events (start, update, end); --follow for new ones",
        description="Print STREAM's events oldest first. Each line starts with its entry id: pass the last "
        "one to --after to resume without repeats.",
    )
    events.add_argument("stream", metavar="STREAM")
    events.add_argument("--follow", "-f", action="store_true", help="then wait for new events (Ctrl-C ends)")
    events.add_argument("--after", metavar="ID", default=None, help="only events after this entry id")
    events.add_argument("--last", type=int, metavar="N", default=None, help="only the newest N events")
    events.add_argument("--json", action="store_true", help='one {"id": ..., "event": {...}} per line')
    events.set_defaults(handler=_run, action=_events)


def _run(args: argparse.Namespace) -> int:
    return asyncio.run(_with_redis(args, redis_settings(args)))


async def _with_redis(args: argparse.Namespace, settings: RedisSettings) -> int:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from flashlive.memory.connect import open_memory
    from flashlive.memory.errors import MemoryStoreError
    from flashlive.memory.server import RedisServerError

    try:
        async with open_memory(settings) as memory:
            result: int = await args.action(memory, args)
            return result
    except (MemoryStoreError, RedisServerError) as exc:
        raise CommandError(str(exc)) from None
    except (OSError, RedisConnectionError, RedisTimeoutError) as exc:
        raise CommandError(f"cannot reach Redis at {settings.where()}: {exc}") from None
    except RedisError as exc:
        raise CommandError(f"Redis refused: {exc}") from None


# -- watch -------------------------------------------------------------------------------------------


def _cadence(text: str) -> str | float:
    if text == "clip":
        return text
    try:
        return float(text)
    except ValueError:
        raise CommandError(f"--cadence: 'clip' or a number of seconds, not {text!r}") from None


async def _add(memory: Any, args: argparse.Namespace) -> int:
    from flashlive.memory.jobs import JobQueue
    from flashlive.memory.watches import WatchLimitError, WatchStore

    fields: dict[str, Any] = dict(
        stream=args.stream, condition=args.condition, window=args.window, cadence=_cadence(args.cadence),
        threshold=args.threshold, cooldown=args.cooldown, budget=args.budget,
    )  # fmt: skip
    if args.id is not None:
        fields["id"] = args.id
    try:
        watch = Watch.model_validate(fields)
    except ValidationError as exc:
        raise options_error(exc, FLAGS) from None
    try:
        await WatchStore(memory.client, prefix=memory.prefix).add(watch)
    except (WatchLimitError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        print(watch.dumps())
    else:
        print(watch.id)
    if args.stream not in await memory.streams():
        print(f"flashlive watch: stream {args.stream!r} has no memory yet: it is watched from its first clip",
              file=sys.stderr)  # fmt: skip
    if not await JobQueue(memory.client, prefix=memory.prefix).workers():
        print("flashlive watch: no query worker is running: the watch is evaluated once one starts "
              "(flashlive worker)", file=sys.stderr)  # fmt: skip
    return 0


async def _ls(memory: Any, args: argparse.Namespace) -> int:
    from flashlive.memory.watches import TickScheduler, WatchStore

    store = WatchStore(memory.client, prefix=memory.prefix)
    watches = await store.all(args.stream)
    streams = sorted({w.stream for w in watches})
    states = {s: await store.states(s) for s in streams}
    lags = {s: await TickScheduler(memory.client, prefix=memory.prefix).lag(s) for s in streams}
    if args.json:
        out = []
        for w in watches:
            st = states[w.stream].get(w.id)
            out.append(
                {**w.model_dump(), "state": st.model_dump() if st else None, "lag": lags[w.stream].lag}
            )
        print(json.dumps(out, indent=2))
        return 0
    if not watches:
        print("no watches" + (f" on {args.stream}" if args.stream else ""))
        return 0
    rows = [
        ["ID", "STREAM", "WINDOW", "CADENCE", "THRESHOLD", "COOLDOWN", "SCORE", "STATE", "LAG", "CONDITION"]
    ]
    for w in watches:
        st = states[w.stream].get(w.id)
        score = "-" if st is None or st.score is None else f"{st.score:.3f}"
        state = "-" if st is None else ("active" if st.active else "idle")
        cadence = "clip" if w.cadence == "clip" else f"{float(w.cadence):g} s"
        lag = f"{lags[w.stream].lag:.0f} s"
        rows.append(
            [w.id, w.stream, f"{w.window:g} s", cadence, f"{w.threshold:g}", f"{w.cooldown:g} s", score,
             state, lag, w.condition]
        )  # fmt: skip
    _print_table(rows)
    return 0


async def _rm(memory: Any, args: argparse.Namespace) -> int:
    from flashlive.memory.watches import WatchStore

    removed = await WatchStore(memory.client, prefix=memory.prefix).delete(args.id)
    if removed is None:
        raise CommandError(f"no watch {args.id!r} (flashlive watch ls lists them)")
    print(f"removed watch {removed.id} on {removed.stream}")
    return 0


def _print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


# -- events ------------------------------------------------------------------------------------------


async def _events(memory: Any, args: argparse.Namespace) -> int:
    from flashlive.memory.events import EventLog
    from flashlive.memory.keys import check_stream_name

    try:
        check_stream_name(args.stream)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if args.after is not None and not ENTRY_ID.match(args.after):
        raise CommandError(f"--after: an event entry id (like 1767000000000-0), not {args.after!r}")
    if args.last is not None and not 1 <= args.last <= 100_000:
        raise CommandError(f"--last: 1 to 100000 events, not {args.last}")
    log = EventLog(memory.client, prefix=memory.prefix)
    cursor = args.after or "0-0"
    if args.last is not None and args.after is None:
        history = await log.latest(args.stream, args.last)
    else:
        history = await _history(log, args.stream, cursor)
        if args.last is not None:
            history = history[-args.last :]
    for eid, event in history:
        _print_event(eid, event, as_json=args.json)
        cursor = eid
    if not args.follow:
        if not history and not args.json:
            print(
                f"no events on {args.stream}" + (f" after {args.after}" if args.after else ""),
                file=sys.stderr,
            )
        return 0
    if history:
        cursor = history[-1][0]
    elif args.last is not None and args.after is None:
        cursor = "$"
    async for eid, event in _follow(log, args.stream, cursor):
        _print_event(eid, event, as_json=args.json)
    return 0


async def _history(log: Any, stream: str, after: str) -> list[tuple[str, Event]]:
    out: list[tuple[str, Event]] = []
    while True:
        page = await log.read(stream, after=after, count=500)
        out += page
        if len(page) < 500:
            return out
        after = page[-1][0]


async def _follow(log: Any, stream: str, cursor: str) -> AsyncIterator[tuple[str, Event]]:
    """New events until Ctrl-C (or SIGTERM), which end the command normally. XREAD BLOCK is the
    wake-up, the event log's `read` the reader; a stop is seen within one block (0.5 s)."""
    from flashlive.memory.store import CONNECTION_ERRORS

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    key = log.key(stream)
    if cursor == "$":  # only what comes after now
        newest = await log.client.xrevrange(key, "+", "-", count=1)
        cursor = newest[0][0].decode() if newest else "0-0"
    while not stop.is_set():
        try:
            await log.client.xread({key: cursor}, count=1, block=500)
            page = await log.read(stream, after=cursor, count=500)
        except CONNECTION_ERRORS:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)  # Redis away: wait for it
            continue
        for eid, event in page:
            cursor = eid
            yield eid, event


def _print_event(eid: str, event: Event, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"id": eid, "event": event.model_dump(mode="json")}), flush=True)
        return
    when = datetime.fromtimestamp(event.time).isoformat(timespec="seconds")
    clip = f"{_t(event.clip_start)}-{_t(event.clip_end)}"
    print(
        f"{eid}  {when}  {event.kind:<6}  score {event.score:.3f} (peak {event.peak:.3f}, threshold "
        f"{event.threshold:g})  clip {clip}  watch {event.watch}: {event.condition}",
        flush=True,
    )


def _t(t: float) -> str:
    """A clip time: unix times of live streams as clock times, file times as seconds."""
    return datetime.fromtimestamp(t).strftime("%H:%M:%S") if t > 1e9 else f"{t:g}"
