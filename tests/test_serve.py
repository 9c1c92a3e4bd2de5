"""`flashlive serve` from a fresh data directory, as a user runs it: /healthz within 60 s, the demo
stream's clips, an answer, WHIP served in-process; Ctrl-C (or a SIGKILL) leaves no process behind.

One test runs serve's own worker command (`flashlive worker` with the tiny model, under a key prefix
of its own); the others run the worker loop with the fake engine (reading the tiny model's tokens)
through --worker-command, which starts in a second instead of loading a model."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import free_port

from flashlive.app.serve import WORKER_COMMAND, serve_threads, worker_command
from flashlive.cli import build_parser
from flashlive.commands.options import redis_settings
from flashlive.config import config_from_data
from flashlive.memory.settings import RedisSettings
from flashlive.model.config import get_preset

TESTS = Path(__file__).parent
pytestmark = pytest.mark.slow


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (by parent id, whatever session it runs in)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@contextlib.contextmanager
def run_serve(tmp_path: Path, *options: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`flashlive serve` (the quick start on a fresh data directory, the tiny model) with `options`."""
    port = free_port()
    env = {**os.environ, "FLASHLIVE_DATA_DIR": str(tmp_path / "unused")}
    env.pop("FLASHLIVE_REDIS_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "flashlive", "serve", "--data-dir", str(tmp_path / "data"),
         "--port", str(port), "--model", "tiny", *options],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """serve with the fake engine's worker loop."""
    encoder = get_preset("tiny").encoder_id
    script = TESTS / "worker_proc.py"
    worker = f"{{python}} {script} {{redis}} {{prefix}} serve-w 0.01 6 --random --encoder-id {encoder}"
    with run_serve(tmp_path, "--worker-command", worker) as running:
        yield running


def wait_healthy(base: str, proc: subprocess.Popen[str], limit: float = 60.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < limit:
        assert proc.poll() is None, f"serve exited with {proc.returncode}"
        try:
            if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"/healthz did not answer within {limit:.0f} s")


def test_serve_quick_start_then_ctrl_c_leaves_nothing(serve: tuple[subprocess.Popen[str], str]) -> None:
    proc, base = serve
    took = wait_healthy(base, proc)
    assert took < 60
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith(f"FlashLive is up: {base}/")
    with httpx.Client(base_url=base, timeout=30) as c:
        demo: dict[str, object] = {}
        for _ in range(300):  # the tiny model loads, then a clip every 4 s of the looped demo video
            streams = c.get("/api/streams").json()["streams"]
            demo = next((s for s in streams if s["name"] == "demo"), {})
            if demo.get("clips", 0) and c.get("/api/info").json()["workers"]:
                break
            time.sleep(0.2)
        assert demo["state"] == "live" and demo["clips"]
        assert c.get("/api/info").json()["random_weights"] is True  # the banner's flag
        reply = c.post("/api/ask", json={"stream": "demo", "question": "What colour is the ball?"})
        final = [json.loads(line[5:]) for line in reply.text.splitlines() if line.startswith("data:")][-1]
        assert final["type"] == "final" and final["stream"] == "demo", final
        whip = c.post("/whip/cam", content=b"not sdp", headers={"Content-Type": "application/sdp"})
        assert whip.status_code == 400 and "v=0" in whip.json()["error"]["message"]
    tree = descendants(proc.pid)
    assert len(tree) >= 2  # redis-server and the worker
    os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
    assert proc.wait(60) == 0
    deadline = time.monotonic() + 10
    while any(alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in tree if alive(p)], "processes outlived flashlive serve"


def sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event, data) of each record of a server-sent event stream."""
    out, event = [], "message"
    for line in text.splitlines():
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            out.append((event, json.loads(line[5:])))
    return out


def test_serve_with_its_own_worker_answers_over_http(tmp_path: Path) -> None:
    """No --worker-command: the real `flashlive worker` (tiny model, CPU) that serve starts, under a key
    prefix given on the command line, answers a question asked over HTTP."""
    with run_serve(tmp_path, "--prefix", "tenant-b") as (proc, base):
        wait_healthy(base, proc)
        with httpx.Client(base_url=base, timeout=60) as c:
            deadline = time.monotonic() + 180  # the worker loads the tiny model; the demo makes a clip
            ready = False
            while not ready and time.monotonic() < deadline:
                assert proc.poll() is None, f"serve exited with {proc.returncode}"
                health = c.get("/healthz").json()
                ready = bool(health["workers"]["alive"] and health["ingest"].get("demo", {}).get("clips"))
                time.sleep(0.25)
            assert ready, f"no worker or no clip within 180 s: {health}"
            body = {"stream": "demo", "question": "What colour is the ball?", "max_new_tokens": 12}
            reply = c.post("/api/ask", json=body)
        assert reply.status_code == 200, reply.text
        records = sse(reply.text)
        kinds = [kind for kind, _ in records]
        assert kinds[0] == "job" and kinds.count("final") == 1 and kinds[-1] == "final", kinds
        assert "error" not in kinds
        pieces = [data for kind, data in records if kind == "piece"]
        final = records[-1][1]
        assert pieces and "".join(p["text"] for p in pieces) == final["answer"]
        assert final["stream"] == "demo" and final["job"] == records[0][1]["job"]
        clips = {c["id"]: c for c in final["clips"]}
        assert final["evidence"], "the final record cites no clip"
        for ev in final["evidence"]:  # each evidence range is a clip the answer used
            assert ev["clip_id"] in clips
            assert (ev["start"], ev["end"]) == (clips[ev["clip_id"]]["start"], clips[ev["clip_id"]]["end"])
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(60) == 0


def test_serve_killed_takes_its_children_along(serve: tuple[subprocess.Popen[str], str]) -> None:
    proc, base = serve
    wait_healthy(base, proc)
    deadline = time.monotonic() + 30
    while len(tree := descendants(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(tree) >= 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 15
    while any(alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in tree if alive(p)], "children outlived a killed flashlive serve"


def test_the_worker_command_uses_the_redis_and_prefix_of_the_web_app() -> None:
    """What serve starts, read back by `flashlive worker`'s own parser: the same Redis and key prefix
    as the web app, also when the prefix comes from the command line rather than a config file."""
    cfg = config_from_data({})
    redis = RedisSettings.from_dsn("redis://127.0.0.1:6390/0", prefix="tenant-a")
    command = worker_command(WORKER_COMMAND, cfg, redis, None)
    assert command[:4] == [sys.executable, "-m", "flashlive", "worker"]
    args = build_parser().parse_args(command[3:])
    got = redis_settings(args, cfg.memory.redis)
    assert (got.url, got.prefix) == (redis.url, "tenant-a")
    # torch threads: the cores shared between serve (ingest) and its workers, unless the config says
    assert args.threads == serve_threads(cfg.worker.processes)
    pinned = config_from_data({"worker": {"threads": 3, "processes": 2}})
    assert build_parser().parse_args(worker_command(WORKER_COMMAND, pinned, redis, None)[3:]).threads == 3


def test_serve_shares_the_cores_between_ingest_and_its_workers() -> None:
    assert [serve_threads(1, cores) for cores in (1, 2, 4, 16)] == [1, 1, 2, 8]
    assert [serve_threads(3, cores) for cores in (2, 8, 16)] == [1, 2, 4]


def test_serve_on_a_busy_port_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        reply = subprocess.run(
            [sys.executable, "-m", "flashlive", "serve", "--data-dir", str(tmp_path), "--port", str(port),
             "--workers", "0"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert reply.returncode == 2
    last = reply.stderr.strip().splitlines()[-1]
    assert last.startswith(f"flashlive serve: error: cannot serve on 127.0.0.1:{port} (the port is in use")
    assert "Traceback" not in reply.stderr
