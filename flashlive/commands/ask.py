"""`flashlive ask STREAM QUESTION`: ask the query workers about a stream's memory; the answer streams in.

The job goes through Redis like the web app's (docs/workers.md): submitted to the job queue, answered
by whichever worker takes it, read from its result stream. Ctrl-C cancels the job (the worker stops
within one decode step).

Output: the answer's text on stdout as it is generated. With `--json` the text streams to stderr
instead and stdout gets one JSON object at the end: the final record (every field: clips, timings,
evidence, ...) or the error record. Exit status: 0 answered; 2 the request cannot be served
(unknown stream, window outside the memory, bad numbers, ...: one line on stderr); 1 the service
failed it (deadline passed, no worker answered, a model failure); 130 cancelled with Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from pydantic import ValidationError

from flashlive.commands.memory import parse_time
from flashlive.commands.options import redis_settings
from flashlive.errors import CommandError
from flashlive.memory.jobs import JobQueue
from flashlive.memory.messages import (
    DEFAULT_DEADLINE_S,
    DEFAULT_FRAME_BUDGET,
    DROPOUT_MODES,
    MAX_DEADLINE_S,
    AskJob,
    DropoutSettings,
    ErrorCode,
    ErrorRecord,
    FinalRecord,
    Generation,
)
from flashlive.memory.settings import REDIS_URL_ENV, RedisSettings

_DROPOUT, _GENERATION = DropoutSettings(), Generation()  # the defaults shown in --help
RECORD_GRACE_S = 15.0  # s past the deadline to wait for the worker's deadline record before giving up
CANCEL_WAIT_S = 5.0  # s Ctrl-C waits for the worker to confirm the cancel

# message field -> the option that sets it
FLAGS: Mapping[str, str] = {
    "stream": "STREAM",
    "question": "QUESTION",
    "window": "--last/--start/--end",
    "window.last": "--last",
    "window.start": "--start",
    "window.end": "--end",
    "budget": "--budget",
    "recent": "--recent",
    "dropout": "--dropout",
    "dropout.layers": "--dropout-layers",
    "dropout.ratios": "--dropout-ratios",
    "generation.max_new_tokens": "--max-new-tokens",
    "generation.temperature": "--temperature",
    "generation.top_p": "--top-p",
    "generation.seed": "--seed",
    "deadline": "--timeout",
}

# error codes the asker can fix (exit 2), and what to try
REQUEST_ERRORS: Mapping[ErrorCode, str] = {
    ErrorCode.INVALID_MESSAGE: "",
    ErrorCode.UNSUPPORTED_VERSION: " (the workers are older than this command: upgrade them)",
    ErrorCode.UNKNOWN_STREAM: " (flashlive memory ls lists the streams)",
    ErrorCode.EMPTY_MEMORY: " (is its ingest running? flashlive memory ls)",
    ErrorCode.WINDOW_OUTSIDE_MEMORY: " (flashlive memory show STREAM lists what it holds)",
    ErrorCode.WINDOW_EMPTY: " (flashlive memory show STREAM lists what it holds)",
    ErrorCode.ENCODER_MISMATCH: " (run the workers with the model the stream was ingested with)",
    ErrorCode.CONTEXT_LIMIT: " (ask about less: a shorter --last or a smaller --budget)",
    ErrorCode.INVALID_REQUEST: "",
}
SERVICE_ERRORS: Mapping[ErrorCode, str] = {
    ErrorCode.DEADLINE_EXCEEDED: " (raise --timeout, or start more workers: flashlive worker)",
    ErrorCode.INTERNAL: " (the worker's log has the details)",
    ErrorCode.CANCELLED: "",
}


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "ask",
        parents=parents,
        help="ask a question about a stream's memory (answered by the query workers)",
        description="Submit QUESTION about STREAM's memory to the query workers and print the answer as it "
        "is generated. The window is the whole memory unless --last or --start/--end say otherwise; "
        "Ctrl-C cancels the question.",
    )
    p.add_argument("stream", metavar="STREAM")
    p.add_argument("question", metavar="QUESTION")
    window = p.add_argument_group("window")
    window.add_argument("--last", type=float, metavar="S", help="the last S seconds before the newest clip")
    window.add_argument("--start", type=parse_time, metavar="T", help="seconds or ISO-8601 (inclusive)")
    window.add_argument("--end", type=parse_time, metavar="T", help="seconds or ISO-8601 (exclusive)")
    window.add_argument(
        "--budget", type=int, default=DEFAULT_FRAME_BUDGET, metavar="N", help="frames (default %(default)s)"
    )
    window.add_argument(
        "--recent", type=int, default=0, metavar="K", help="always keep the newest K clips (default 0)"
    )
    window.add_argument(
        "--release-sampling",
        action="store_true",
        help="pick the window's clips with the release chat()'s frame-count rule (at least 64 frames when "
        "the window has them) instead of spreading --budget uniformly; see docs/model.md, 'Live windows'",
    )
    model = p.add_argument_group("model")
    model.add_argument(
        "--dropout",
        default="off",
        choices=("off", "recipe", *DROPOUT_MODES),
        help="progressive visual dropout: off (the release's default), recipe (the model card's: "
        "uniform0_attention, layers 4,18 of 28 at the same depths of the worker's model, ratios "
        "1,0.75,0.25), or a mode with --dropout-layers/-ratios",
    )
    model.add_argument(
        "--dropout-layers", default=None, metavar="L,L", help="(default: the recipe's, scaled to the model)"
    )
    model.add_argument(
        "--dropout-ratios", default=",".join(f"{r:g}" for r in _DROPOUT.ratios), metavar="R,R,R"
    )
    model.add_argument(
        "--max-new-tokens",
        type=int,
        default=_GENERATION.max_new_tokens,
        metavar="N",
        help="(default %(default)s)",
    )
    model.add_argument(
        "--temperature", type=float, default=_GENERATION.temperature, help="0 = greedy (default)"
    )
    model.add_argument("--top-p", type=float, default=_GENERATION.top_p, help="(default %(default)s: off)")
    model.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_DEADLINE_S,
        metavar="S",
        help="the job's deadline: answered within S seconds or given up (default %(default)g)",
    )
    p.add_argument("--json", action="store_true", help="text to stderr; the final record as JSON to stdout")
    p.add_argument("--prefix", default=None, help="Redis key prefix (default fl)")
    p.add_argument("--data-dir", default=None, help="embedded server data directory (when no Redis URL)")
    p.set_defaults(handler=ask_command)


def build_job(args: argparse.Namespace, now: float | None = None) -> AskJob:
    """The AskJob the options describe; one line naming the option when something is off."""
    now = time.time() if now is None else now
    if not (0 < args.timeout <= MAX_DEADLINE_S):  # also refuses nan
        raise CommandError(f"--timeout: must be more than 0 and at most {MAX_DEADLINE_S:g} seconds")
    data: dict[str, Any] = {
        "stream": args.stream,
        "question": args.question,
        "window": {k: v for k, v in (("last", args.last), ("start", args.start), ("end", args.end)) if v},
        "budget": args.budget,
        "recent": args.recent,
        "dropout": _dropout(args),
        "generation": {
            "max_new_tokens": args.max_new_tokens,
            "temperature": args.temperature,
            "top_p": args.top_p,
            "seed": args.seed,
        },
        "sampling": "release" if args.release_sampling else "uniform",
        "submitted": now,
        "deadline": now + args.timeout,
    }
    try:
        return AskJob.model_validate(data)
    except ValidationError as exc:
        raise options_error(exc, FLAGS) from None


def options_error(exc: ValidationError, flags: Mapping[str, str]) -> CommandError:
    """A message's validation errors as one line naming the options (items of a list count as the list:
    `dropout.ratios.1` is --dropout-ratios)."""
    from flashlive.commands.validate import options_error as one_line
    from flashlive.config import problems_of

    problems = problems_of(exc, {})
    for p in problems:
        p.path = ".".join(part for part in p.path.split(".") if not part.isdigit())
    return one_line(problems, flags)


def _dropout(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.dropout == "off":
        return None
    if args.dropout == "recipe":
        return {}
    try:
        layers = (
            None
            if args.dropout_layers is None
            else [int(v) for v in args.dropout_layers.split(",") if v.strip()]
        )
        ratios = [float(v) for v in args.dropout_ratios.split(",") if v.strip()]
    except ValueError as exc:
        raise CommandError(
            f"--dropout-layers/--dropout-ratios: not comma-separated numbers ({exc})"
        ) from None
    return {"mode": args.dropout, "layers": layers, "ratios": ratios}


def ask_command(args: argparse.Namespace) -> int:
    job = build_job(args)
    settings = redis_settings(args)
    if settings.embedded:
        from flashlive.memory.server import running_server_url

        url = running_server_url(settings.data_path)
        if url is None:
            raise CommandError(
                f"no Redis to send the question to: give --redis URL (or ${REDIS_URL_ENV}), or start "
                f"flashlive serve, whose embedded server keeps its data in {settings.data_path}"
            )
        settings = settings.model_copy(update={"url": url})
    return asyncio.run(_ask(job, settings, as_json=args.json))


async def _ask(job: AskJob, settings: RedisSettings, *, as_json: bool) -> int:
    from flashlive.memory.store import CONNECTION_ERRORS

    queue = JobQueue.from_settings(settings)
    try:
        try:
            workers = await queue.workers()
            await queue.submit(job)
        except CONNECTION_ERRORS as exc:
            raise CommandError(f"cannot reach Redis at {settings.where()}: {exc}") from None
        if not workers:
            print(
                "flashlive ask: no query worker is running (start one: flashlive worker); the question "
                f"waits in the queue for up to {job.deadline - job.submitted:g} s",
                file=sys.stderr,
            )
        return await _stream(queue, job, as_json=as_json)
    finally:
        await queue.close()


class TextOut:
    """The answer's text as it streams; ends it with exactly one newline."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.last = "\n"

    def write(self, text: str) -> None:
        if text:
            self.out.write(text)
            self.out.flush()
            self.last = text[-1]

    def end_line(self) -> None:
        if self.last != "\n":
            self.write("\n")


async def _stream(queue: JobQueue, job: AskJob, *, as_json: bool) -> int:
    """Print the answer as it comes. Ctrl-C cancels the job in Redis and waits (briefly) for the
    worker's cancelled record, so the command ends knowing the worker let it go. Returns the status."""
    out = TextOut(sys.stderr if as_json else sys.stdout)
    reading = asyncio.create_task(_read(queue, job, out))
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, interrupted.set)
    waiting = asyncio.create_task(interrupted.wait())
    try:
        await asyncio.wait({reading, waiting}, return_when=asyncio.FIRST_COMPLETED)
        if interrupted.is_set():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(queue.cancel(job.id), CANCEL_WAIT_S)
            await asyncio.wait({reading}, timeout=CANCEL_WAIT_S)
            reading.cancel()
            with contextlib.suppress(BaseException):
                await reading
            out.end_line()
            print("flashlive ask: cancelled", file=sys.stderr)
            return 130
        terminal = reading.result()
    finally:
        waiting.cancel()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)
    out.end_line()
    if as_json:
        print(terminal.dumps(), flush=True)
    return _report(terminal)


async def _read(queue: JobQueue, job: AskJob, out: TextOut) -> FinalRecord | ErrorRecord:
    from flashlive.memory.messages import Piece
    from flashlive.memory.results import AnswerText, ResultTimeoutError, read_results

    text = AnswerText()
    last = "0-0"
    while True:
        wait = max(1.0, job.deadline + RECORD_GRACE_S - time.time())
        try:
            async for rid, record in read_results(
                queue.client, job.id, prefix=queue.prefix, after=last, timeout=wait
            ):
                last = rid
                if not isinstance(record, Piece):
                    return record
                shown = text.add(record)
                if text.reset:
                    out.end_line()
                    print(
                        f"flashlive ask: its worker failed; attempt {record.attempt} answers again:",
                        file=sys.stderr,
                    )
                out.write(shown)
        except ResultTimeoutError:
            if time.time() < job.deadline + RECORD_GRACE_S:
                continue  # still within the deadline: wait on
            return await _no_answer(queue, job)


async def _no_answer(queue: JobQueue, job: AskJob) -> ErrorRecord:
    """Nobody answered by the deadline (no worker, or all of them stuck): cancel it and say why."""
    with contextlib.suppress(Exception):
        await queue.cancel(job.id)
    workers = len(await queue.workers())
    depth = await queue.depth()
    return ErrorRecord(
        job=job.id,
        code=ErrorCode.DEADLINE_EXCEEDED,
        message=f"no answer within {job.deadline - job.submitted:g} s: {workers} query worker(s) alive, "
        f"{depth.waiting} job(s) waiting, {depth.running} running",
    )


def _report(record: FinalRecord | ErrorRecord) -> int:
    if isinstance(record, FinalRecord):
        if record.file_frames and record.file_frames > record.frames:
            print(
                f"flashlive ask: release sampling used {record.frames} frames from the memory (1 fps); "
                f"chat() would take {record.file_frames} from a file this long (the memory never kept them)",
                file=sys.stderr,
            )
        return 0
    code = ErrorCode(record.code)
    if code in REQUEST_ERRORS:
        raise CommandError(f"{code}: {record.message}{REQUEST_ERRORS[code]}")
    print(f"flashlive ask: failed: {code}: {record.message}{SERVICE_ERRORS.get(code, '')}", file=sys.stderr)
    return 1
