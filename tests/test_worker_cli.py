"""Acceptance of the query worker as users run it: real `flashlive worker --model tiny` processes, the
`flashlive ask|watch|events` commands, a real redis-server.

- ask: pieces stream in, then the final record with every field (evidence included); concurrent asks
  on one window share one prefix and prefill;
- Ctrl-C of `flashlive ask` cancels the job and frees the worker, and so does a deadline;
- a watch added with the CLI, with a threshold between the scores of two kinds of clips, starts an
  event and ends it after the cooldown; `flashlive events` lists, follows and resumes them;
- failover: of two workers, the one holding a job is frozen (SIGSTOP), killed (SIGKILL) or stopped
  (SIGTERM: it exits within 2 s and hands the job back); the other finishes it and the viewer gets
  exactly one final record;
- Redis restarted (and killed) under a running worker: it serves the next job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import redis
from helpers import unique_prefix

from flashlive.memory.jobs import JobQueue
from flashlive.memory.keys import worker_key
from flashlive.memory.messages import AskJob, ErrorCode, ErrorRecord, FinalRecord, Generation, Piece
from flashlive.memory.results import AnswerText, Record, collect, read_results
from flashlive.memory.server import RedisServer
from flashlive.memory.store import VideoMemory
from flashlive.memory.types import Clip
from flashlive.memory.watches import TickScheduler
from flashlive.model.config import PRESETS

pytestmark = pytest.mark.slow

TINY = PRESETS["tiny"]
START_S = 180.0  # loading torch and the tiny model on a busy 2-core machine can take a while
# the tiny model's P(yes) for one clip of all-zero tokens is ~0.32, for tokens of 3.0 ~0.87 (seeded)
QUIET, BUSY, THRESHOLD = 0.0, 3.0, 0.6


def tiny_clip(stream: str, t: float, value: float | None = None, seed: int = 0) -> Clip:
    if value is None:
        tokens = np.random.default_rng(seed).standard_normal((64, TINY.vision.width)).astype(np.float16)
    else:
        tokens = np.full((64, TINY.vision.width), value, np.float16)
    return Clip(stream, t, t + 4.0, 4, tokens, TINY.encoder_id)


@dataclass
class WorkerProc:
    url: str
    prefix: str
    name: str
    log: Path
    options: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProc:
        command = [
            sys.executable, "-m", "flashlive", "worker", "--redis", self.url, "--prefix", self.prefix,
            "--model", "tiny", "--device", "cpu", "--name", self.name, *self.options,
        ]  # fmt: skip
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self) -> None:
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + START_S
        try:
            while not client.exists(worker_key(self.prefix, self.name)):
                assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
                assert time.monotonic() < deadline, f"worker {self.name} not ready:\n{self.log.read_text()}"
                time.sleep(0.1)
        finally:
            client.close()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def workers(url: str, prefix: str, tmp: Path, *names: str, options: list[str]) -> Iterator[list[WorkerProc]]:
    procs = [WorkerProc(url, prefix, n, tmp / f"{n}.log", options).start() for n in names]
    try:
        for p in procs:  # they load at the same time
            p.wait_ready()
        yield procs
    finally:
        for p in procs:
            p.stop()


@dataclass
class Cli:
    url: str
    prefix: str

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "flashlive", *args, "--redis", self.url, "--prefix", self.prefix]

    async def run(self, *args: str, timeout: float = 120.0) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            *self.argv(*args), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async def start(self, *args: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *self.argv(*args), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )


@dataclass
class Service:
    url: str
    prefix: str
    worker: WorkerProc
    cli: Cli


@pytest.fixture(scope="module")
def service(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One worker (4 slots; each model step slowed by 20 ms so answers take a moment) for the ask,
    cancel, deadline and watch tests; each test uses streams of its own."""
    prefix = unique_prefix("cli")
    tmp = tmp_path_factory.mktemp("worker-cli")
    options = ["--concurrency", "4", "--heartbeat", "0.3", "--lease", "3", "--test-step-delay", "0.02"]
    with workers(redis_server.url, prefix, tmp, "w-main", options=options) as (w,):
        yield Service(redis_server.url, prefix, w, Cli(redis_server.url, prefix))


@pytest.fixture
async def memory(service: Service) -> AsyncIterator[VideoMemory]:
    mem = VideoMemory.from_url(service.url, prefix=service.prefix)
    yield mem
    await mem.close()


@pytest.fixture
async def queue(service: Service) -> AsyncIterator[JobQueue]:
    q = JobQueue.from_url(service.url, prefix=service.prefix)
    yield q
    await q.close()


async def jobs_of(queue: JobQueue) -> set[str]:
    """Ids of every job with a result stream (the CLI does not print the id it made)."""
    keys = [k async for k in queue.client.scan_iter(match=f"{queue.prefix}:job:*:out")]
    return {k.decode().split("{", 1)[1].split("}", 1)[0] for k in keys}


async def running(queue: JobQueue, name: str) -> list[str]:
    infos = {w.name: w for w in await queue.workers()}
    return infos[name].running if name in infos else []


async def wait_until(cond: object, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await cond():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} not reached in {timeout} s")


# -- ask ---------------------------------------------------------------------------------------------


async def test_ask_streams_the_answer_then_prints_the_final_record(
    service: Service, memory: VideoMemory, queue: JobQueue
) -> None:
    for i in range(8):
        await memory.append(tiny_clip("lobby", 100.0 + 4 * i, seed=i))
    before = await jobs_of(queue)
    code, out, err = await service.cli.run(
        "ask", "lobby", "What happens?", "--last", "24", "--dropout", "uniform0_attention",
        "--dropout-layers", "1,3", "--max-new-tokens", "12", "--json",
    )  # fmt: skip
    assert code == 0, err
    final = FinalRecord.model_validate_json(out.strip().splitlines()[-1])
    assert err.strip() == final.answer and final.new_tokens == 12 and final.finish_reason == "length"
    # the last 24 s before the newest clip's end (132 s): clips starting at 108 .. 128
    assert [c.start for c in final.clips] == [108.0, 112.0, 116.0, 120.0, 124.0, 128.0]
    assert (final.used_start, final.used_end, final.frames) == (108.0, 132.0, 24)
    assert final.visual_tokens == [384, 288, 96]  # 6 x 64, then the recipe's ratios 0.75 and 0.25
    assert final.dropout is not None and final.dropout.layers == [1, 3]
    assert final.evidence and {e.clip_id for e in final.evidence} <= {c.id for c in final.clips}
    assert all(0 < e.score <= 1 for e in final.evidence)
    t = final.timings
    assert 0 <= t.queue_wait < t.first_token <= t.total and t.memory_read > 0 and t.projector > 0
    assert t.prefill > 0 and t.decode > 0 and t.tokens_per_s > 0
    assert (final.worker, final.model, final.stream, final.question) == (
        "w-main",
        "tiny",
        "lobby",
        "What happens?",
    )
    assert final.prompt_tokens > 384 and final.sampling == "uniform"
    # in the job's result stream: pieces first, in order, then the one final record
    [job] = await jobs_of(queue) - before
    records, last = await collect(queue.client, job, prefix=queue.prefix)
    pieces = [r for r in records if isinstance(r, Piece)]
    assert len(pieces) >= 2 and records[-1] == last == final and len(records) == len(pieces) + 1
    assert [p.seq for p in pieces] == list(range(len(pieces))) and "".join(
        p.text for p in pieces
    ) == final.answer

    code, out, err = await service.cli.run("ask", "lobby", "And now?", "--max-new-tokens", "5")
    assert code == 0 and err == "" and len(out.strip()) > 0  # plain: the text alone, on stdout


async def test_concurrent_asks_on_one_window_share_the_prefix(
    service: Service, memory: VideoMemory, queue: JobQueue
) -> None:
    for i in range(12):
        await memory.append(tiny_clip("hall", 100.0 + 4 * i, seed=20 + i))
    generation = Generation(max_new_tokens=24)
    jobs = [AskJob(stream="hall", question=f"What is thing {i}?", generation=generation) for i in range(4)]
    await asyncio.gather(*(queue.submit(job) for job in jobs))  # at once, as viewers would
    finals = []
    for job in jobs:
        _, final = await collect(queue.client, job.id, prefix=queue.prefix, timeout=120)
        assert isinstance(final, FinalRecord), final
        finals.append(final)
    batching = [f.batching for f in finals]
    assert sorted(b.prefix_reused for b in batching) == [False, True, True, True]  # computed once
    assert max(b.prefill_batch for b in batching) >= 2  # questions prefilled together
    assert all(b.decode_batch == 4 for b in batching)  # and decoded in the same steps


async def test_bad_asks_are_one_line_errors(service: Service, memory: VideoMemory) -> None:
    await memory.append(tiny_clip("porch", 100.0))
    cases = [
        (("ask", "nowhere", "q"), "unknown_stream: unknown stream 'nowhere'"),
        (("ask", "porch", "q", "--start", "5000", "--end", "6000"), "window_outside_memory"),
        (("ask", "porch", "q", "--budget", "0"), "--budget: Input should be greater than or equal to 1"),
        (("ask", "porch", "q", "--last", "5", "--start", "3"), "--last/--start/--end: give either"),
        (
            ("ask", "porch", "q", "--dropout", "uniform", "--dropout-layers", "4,18"),
            "invalid_request: dropout layer 18 does not exist",
        ),
        (("ask", "porch", "q", "--release-sampling", "--budget", "30"), "multiple of 4 frames"),
        (("ask", "porch", "q", "--timeout", "nan"), "--timeout"),
        (("ask", "porch", "q", "--dropout", "uniform", "--dropout-ratios", "1,x"), "--dropout-ratios"),
        (("ask", "porch", "q", "--release-sampling", "--recent", "2"), "recent"),
    ]
    for args, words in cases:
        code, out, err = await service.cli.run(*args)
        assert code == 2 and out == "", (args, code, out, err)
        assert len(err.strip().splitlines()) == 1 and words in err and "Traceback" not in err, (args, err)


# -- cancel and deadline -------------------------------------------------------------------------------


async def test_ctrl_c_cancels_the_job_and_frees_the_worker(
    service: Service, memory: VideoMemory, queue: JobQueue
) -> None:
    await memory.append(tiny_clip("yard", 100.0))
    before = await jobs_of(queue)
    ask = await service.cli.start("ask", "yard", "Tell me everything.", "--max-new-tokens", "4000")
    assert ask.stdout is not None
    first = await asyncio.wait_for(ask.stdout.read(5), 60)  # the answer is coming
    assert first
    [job] = await jobs_of(queue) - before

    async def busy() -> bool:
        return job in await running(queue, "w-main")

    async def freed() -> bool:
        return not await busy()

    await wait_until(busy, 10, "the heartbeat naming the job")
    t0 = time.monotonic()
    ask.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(ask.communicate(), 30)
    assert ask.returncode == 130 and "cancelled" in err.decode()
    _, last = await collect(queue.client, job, prefix=queue.prefix, timeout=30)
    assert isinstance(last, ErrorRecord) and last.code == ErrorCode.CANCELLED
    await wait_until(freed, 10, "the worker letting the job go")
    assert time.monotonic() - t0 < 5  # a decode step and a heartbeat, not the 4,000 tokens
    status = await queue.status(job)
    assert status is not None and status.status == "failed"


async def test_a_deadline_frees_the_worker(service: Service, memory: VideoMemory, queue: JobQueue) -> None:
    await memory.append(tiny_clip("gate", 100.0))
    before = await jobs_of(queue)
    t0 = time.monotonic()
    code, out, err = await service.cli.run(
        "ask", "gate", "Tell me everything.", "--max-new-tokens", "4000", "--timeout", "3"
    )
    assert code == 1 and "deadline_exceeded" in err and "raise --timeout" in err, (code, err)
    assert time.monotonic() - t0 < 20 and out.strip()  # some text came before the deadline
    [job] = await jobs_of(queue) - before

    async def freed() -> bool:
        return job not in await running(queue, "w-main")

    await wait_until(freed, 10, "the worker letting the job go")
    code, out, _ = await service.cli.run("ask", "gate", "Short?", "--max-new-tokens", "3")
    assert code == 0 and out.strip()


# -- watches and events ---------------------------------------------------------------------------------


async def test_a_watch_added_with_the_cli_starts_and_ends_an_event(
    service: Service, memory: VideoMemory
) -> None:
    cli, ticks = service.cli, TickScheduler(memory.client, prefix=memory.prefix)

    async def append(i: int, value: float) -> None:
        await memory.append(tiny_clip("door", 4.0 * i, value))
        await wait_until(lambda: evaluated(i), 60, f"the tick at clip {i}")

    async def evaluated(i: int) -> bool:
        return (await ticks.lag("door")).evaluated_end == 4.0 * i + 4.0

    await memory.append(tiny_clip("door", 0.0, QUIET))
    code, out, err = await cli.run(
        "watch", "add", "door", "a person is at the door", "--window", "4", "--threshold", str(THRESHOLD),
        "--cooldown", "8",
    )  # fmt: skip
    assert code == 0, err
    watch_id = out.strip()
    await wait_until(lambda: evaluated(0), 60, "the first tick")
    follow = await cli.start("events", "door", "--follow", "--json")
    await append(1, BUSY)  # above the threshold: start
    await append(2, QUIET)  # below, 4 s after the last clip above: within the cooldown
    await append(3, QUIET)  # 8 s after: end
    code, out, err = await cli.run("events", "door", "--json")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    kinds = [(x["event"]["kind"], x["event"]["clip_start"]) for x in lines]
    scores = [round(x["event"]["score"], 3) for x in lines]
    assert kinds == [("start", 4.0), ("end", 12.0)], (kinds, scores)
    start, end = lines
    assert start["event"]["score"] >= THRESHOLD > end["event"]["score"]
    assert start["event"]["id"] == end["event"]["id"] and start["event"]["watch"] == watch_id
    # the follower saw both as they came, and ends cleanly on Ctrl-C
    assert follow.stdout is not None
    seen = [json.loads(await asyncio.wait_for(follow.stdout.readline(), 30)) for _ in range(2)]
    assert seen == lines
    follow.send_signal(signal.SIGINT)
    await asyncio.wait_for(follow.wait(), 10)
    assert follow.returncode == 0
    # resume after the last id seen: nothing repeated
    code, out, _ = await cli.run("events", "door", "--after", start["id"])
    assert code == 0 and out.startswith(end["id"]) and len(out.splitlines()) == 1 and " end " in out
    code, out, _ = await cli.run("watch", "ls", "door", "--json")
    [listed] = json.loads(out)
    assert listed["id"] == watch_id and listed["state"]["active"] is False and listed["lag"] == 0
    code, out, _ = await cli.run("watch", "ls")
    assert code == 0 and watch_id in out and "a person is at the door" in out
    code, out, _ = await cli.run("watch", "rm", watch_id)
    assert code == 0 and watch_id in out
    code, _, err = await cli.run("watch", "rm", watch_id)
    assert code == 2 and f"no watch {watch_id!r}" in err
    code, _, err = await cli.run("events", "door", "--after", "yesterday")
    assert code == 2 and "--after" in err
    code, _, err = await cli.run("watch", "add", "door", "x", "--threshold", "1.5")
    assert code == 2 and "--threshold" in err and len(err.splitlines()) == 1


# -- failover ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sig", [signal.SIGSTOP, signal.SIGKILL, signal.SIGTERM], ids=["stop", "kill", "term"]
)
async def test_the_other_worker_finishes_the_job(redis_server: RedisServer, tmp_path: Path, sig: int) -> None:
    prefix = unique_prefix("fo")
    lease = 4.0  # a killed or frozen worker's job waits this long; a stopped one's is handed back at once
    options = ["--heartbeat", "0.3", "--lease", str(lease), "--drain", "0.2", "--test-step-delay", "0.02",
               "--no-watches"]  # fmt: skip
    memory = VideoMemory.from_url(redis_server.url, prefix=prefix)
    queue = JobQueue.from_url(redis_server.url, prefix=prefix)
    try:
        for i in range(4):
            await memory.append(tiny_clip("cam", 100.0 + 4 * i, seed=i))
        with workers(redis_server.url, prefix, tmp_path, "w-a", "w-b", options=options) as procs:
            by_name = {p.name: p for p in procs}
            job = AskJob(
                stream="cam", question="Tell me everything.", generation=Generation(max_new_tokens=100)
            )
            await queue.submit(job)
            records: list[tuple[str, Record]] = []
            async for rid, rec in read_results(queue.client, job.id, prefix=prefix, timeout=60):
                records.append((rid, rec))
                if isinstance(rec, Piece) and rec.seq >= 5:
                    break  # mid-answer
            status = await queue.status(job.id)
            assert status is not None
            first = by_name[status.owner]
            other = "w-b" if first.name == "w-a" else "w-a"
            t0 = time.monotonic()
            first.signal(sig)
            if sig == signal.SIGTERM:
                assert first.proc is not None
                await asyncio.to_thread(first.proc.wait, 10)
                assert time.monotonic() - t0 < 2.0 and first.proc.returncode == 0
            takeover = None
            async for rid, rec in read_results(
                queue.client, job.id, prefix=prefix, after=records[-1][0], timeout=60
            ):
                records.append((rid, rec))
                if takeover is None and isinstance(rec, Piece) and rec.attempt == 2:
                    takeover = time.monotonic() - t0
            terminal = [r for _, r in records if isinstance(r, FinalRecord | ErrorRecord)]
            assert len(terminal) == 1 and isinstance(terminal[0], FinalRecord), terminal
            final = terminal[0]
            assert final.worker == other and final.attempt == 2 and final.new_tokens == 100
            assert takeover is not None
            if sig == signal.SIGTERM:  # handed back: taken at the other's next reclaim, not after the lease
                assert takeover < lease, takeover
            else:  # the silent worker's job waits for its lease
                assert takeover > lease - 1.0, takeover
            text = AnswerText()
            for _, rec in records:
                if isinstance(rec, Piece):
                    text.add(rec)
            assert text.attempt == 2 and text.text == final.answer  # the whole answer, from the restart
            if sig == signal.SIGSTOP:
                first.signal(signal.SIGCONT)  # wakes up mid-answer: its writes are refused
                await asyncio.sleep(1.5)
            everything = [r async for _, r in read_results(queue.client, job.id, prefix=prefix, timeout=10)]
            assert everything == [r for _, r in records]

            async def acked() -> bool:  # the worker acks right after its final record: give it a moment
                depth = await queue.depth()
                return (depth.waiting, depth.running) == (0, 0)

            await wait_until(acked, 10, "the job taken off the queue")
    finally:
        await memory.close()
        await queue.close()


# -- Redis restarted -------------------------------------------------------------------------------------


async def test_a_real_worker_serves_again_after_redis_restarts(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis", appendfsync="always") as server:
        prefix = unique_prefix("rr")
        memory = VideoMemory.from_url(server.url, prefix=prefix)
        try:
            await memory.append(tiny_clip("cam", 100.0))
            cli = Cli(server.url, prefix)
            with workers(server.url, prefix, tmp_path, "w-r", options=["--heartbeat", "0.3", "--lease", "2"]):
                code, out, err = await cli.run("ask", "cam", "What?", "--max-new-tokens", "3")
                assert code == 0 and out.strip(), err
                await asyncio.to_thread(server.restart)
                code, out, err = await cli.run(
                    "ask", "cam", "And now?", "--max-new-tokens", "3", "--timeout", "60"
                )
                assert code == 0 and out.strip(), err
                server.kill()  # a crash: the worker's connections break mid-block
                await asyncio.sleep(1.0)
                server.start()
                code, out, err = await cli.run(
                    "ask", "cam", "Still there?", "--max-new-tokens", "3", "--timeout", "60"
                )
                assert code == 0 and out.strip(), err
        finally:
            await memory.close()


def test_ask_without_a_redis_says_how_to_get_one(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "FLASHLIVE_REDIS_URL"}
    reply = subprocess.run(
        [sys.executable, "-m", "flashlive", "ask", "cam", "q", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert reply.returncode == 2 and reply.stdout == ""
    assert "no Redis to send the question to: give --redis URL" in reply.stderr
    assert len(reply.stderr.splitlines()) == 1
