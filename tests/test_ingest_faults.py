"""The fault matrix: `flashlive ingest` as a user runs it (a subprocess), against real redis-servers that
go away, fill up, are read-only replicas, hold a key of the wrong type, or are SIGKILLed mid-append.
Each case checks the exit status, the ids stored against the ids the file must give, and what
`flashlive memory ls` shows. Also: two ingests racing for one stream, and Ctrl-C.

Files are sampled at 4 fps from 8 fps video, so clip k holds the frames at k + 0, .25, .5, .75 s and its
id is `<k * 1000>-1`: the expected ids follow from the file's length alone.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import av
import media
import numpy as np
import pytest
import redis

from flashlive.memory.server import RedisServer, server_version

pytestmark = pytest.mark.slow  # each case runs one or two CLI processes (~3 s each to load the model)

Factory = Callable[..., RedisServer]
FPS = 4  # sample rate: one 4-frame clip a second


def video(tmp_path: Path, name: str, seconds: int, colour: tuple[int, int, int] | None = None) -> Path:
    path = tmp_path / f"{name}.mp4"
    media.write_video(path, seconds=seconds, fps=8, colour=colour)
    return path


def expected_ids(seconds: int) -> list[str]:
    return [f"{k * 1000}-1" for k in range(seconds)]


def write_config(
    tmp_path: Path,
    name: str,
    url: Path,
    *,
    prefix: str,
    realtime: bool = False,
    policy: str | None = None,
    wait_s: float = 2.0,
    buffer: int = 512,
    loop: bool = False,
) -> Path:
    stream: dict[str, Any] = {"url": str(url), "realtime": realtime, "fps": FPS, "loop": loop}
    if policy:
        stream["policy"] = policy
    config = {
        "streams": {name: stream},
        "ingest": {"memory_wait_s": wait_s, "lease_ttl_s": 3, "meta_interval_s": 0.5},
        "memory": {"redis": {"prefix": prefix}, "buffer_clips": buffer},
        "model": {"name": "tiny", "device": "cpu"},
    }
    path = tmp_path / f"{name}-{uuid.uuid4().hex[:4]}.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


class Run:
    """A `flashlive` subprocess whose stderr is read as it comes (to act on what it says)."""

    def __init__(self, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "FLASHLIVE_REDIS_URL"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flashlive", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        self.lines: list[str] = []
        self._new = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._new:
                self.lines.append(line)
                self._new.notify_all()

    def wait_for(self, pattern: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        with self._new:
            while True:
                for line in self.lines:
                    if re.search(pattern, line):
                        return line
                left = deadline - time.monotonic()
                assert (left > 0 and self.proc.poll() is None) or any(
                    re.search(pattern, x) for x in self.lines
                ), f"no {pattern!r} in:\n{''.join(self.lines)}"
                self._new.wait(min(left, 0.2))

    def finish(self, timeout: float = 60) -> tuple[int, Any, str]:
        """Exit status, the `--json` report (None without one), stderr."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()  # a few hundred bytes of JSON, written at the end
        self._reader.join(5)
        report = json.loads(out.strip().splitlines()[-1]) if out.strip() else None
        return self.proc.returncode, report, "".join(self.lines)


def ingest(config: Path, redis_url: str, *extra: str) -> Run:
    return Run("ingest", "--config", str(config), "--redis", redis_url, "--no-progress", "--json", *extra)


def memory_ls(url: str, prefix: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "flashlive", "memory", "ls", "--json", "--redis", url, "--prefix", prefix],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return {row["stream"]: row for row in json.loads(proc.stdout)}


def stored_ids(url: str, prefix: str, name: str) -> list[str]:
    with redis.Redis.from_url(url) as client:
        return [i.decode() for i, _ in client.xrange(f"{prefix}:{{{name}}}:clips")]


def wait_for_clips(url: str, prefix: str, name: str, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    with redis.Redis.from_url(url) as client:
        while client.xlen(f"{prefix}:{{{name}}}:clips") < n:
            assert time.monotonic() < deadline, f"fewer than {n} clips of {name} after {timeout} s"
            time.sleep(0.05)


def accounted(report: dict[str, Any]) -> bool:
    """Every clip cut is stored, already stored, dropped or lost: none unaccounted for."""
    return bool(
        report["clips_cut"] == report["stored"] + report["duplicates"] + report["dropped"] + report["lost"]
    )


@pytest.fixture
def prefix() -> str:
    return f"m{uuid.uuid4().hex[:6]}"


# ---- the fault matrix ------------------------------------------------------------------------------


def test_backfill_outlasting_its_wait_fails_loudly_and_keeps_what_it_stored(
    tmp_path: Path, redis_factory: Factory, prefix: str
) -> None:
    server = redis_factory()
    # paced, so the outage lands mid-file; `wait` is what a backfill does: it never drops a clip
    config = write_config(tmp_path, "back", video(tmp_path, "back", 12), prefix=prefix, realtime=True,
                          policy="wait", wait_s=1.5)  # fmt: skip
    run = ingest(config, server.url)
    wait_for_clips(server.url, prefix, "back", 3)
    server.kill()
    run.wait_for(r"memory refuses the stream's clips")  # gave up after 1.5 s; now reporting
    server.start()  # back in time for the final report
    rc, report, err = run.finish()
    assert rc == 1, err
    ids = stored_ids(server.url, prefix, "back")
    assert 3 <= len(ids) < 12 and ids == expected_ids(12)[: len(ids)]  # a prefix, nothing skipped
    stream = report["streams"]["back"]
    assert stream["state"] == "error" and stream["stored"] == len(ids) and stream["dropped"] == 0
    assert accounted(stream)
    shown = memory_ls(server.url, prefix)["back"]
    assert (
        shown["state"] == "error"
        and "cannot reach Redis" in shown["error"]
        and "waited 1.5 s" in shown["error"]
    )


def test_live_outage_longer_than_the_buffer_counts_every_lost_clip(
    tmp_path: Path, redis_factory: Factory, prefix: str
) -> None:
    server = redis_factory()
    config = write_config(tmp_path, "cam", video(tmp_path, "cam", 12), prefix=prefix, realtime=True, buffer=2)
    run = ingest(config, server.url)
    wait_for_clips(server.url, prefix, "cam", 2)
    server.kill()
    time.sleep(5)  # ~5 clips made while Redis is away: the buffer keeps the newest 2
    server.start()
    rc, report, err = run.finish()
    assert rc == 1, err
    ids = stored_ids(server.url, prefix, "cam")
    expected = expected_ids(12)
    missing = [i for i in expected if i not in ids]
    assert set(ids) <= set(expected) and len(missing) >= 2
    first = expected.index(missing[0])
    assert missing == expected[first : first + len(missing)]  # the oldest buffered clips, in one run
    stream = report["streams"]["cam"]
    assert stream["lost"] == len(missing) == stream["losses"]["buffer_full"] and accounted(stream)
    shown = memory_ls(server.url, prefix)["cam"]
    assert shown["state"] == "error" and shown["lost"] == len(missing)
    assert f"lost {len(missing)} clips ({len(missing)} buffer_full)" in shown["error"]


def test_maxmemory_refusal_is_named_and_the_state_still_recorded(
    tmp_path: Path, redis_factory: Factory, prefix: str
) -> None:
    server = redis_factory()
    with redis.Redis.from_url(server.url) as client:
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", str(used + 400_000))  # ~25 tiny clips, the file makes 60
    config = write_config(tmp_path, "full", video(tmp_path, "full", 60), prefix=prefix, wait_s=1)
    rc, report, err = ingest(config, server.url).finish()
    assert rc == 1, err
    ids = stored_ids(server.url, prefix, "full")
    assert 1 <= len(ids) < 60 and ids == expected_ids(60)[: len(ids)]
    assert accounted(report["streams"]["full"])
    shown = memory_ls(server.url, prefix)["full"]
    if server_version(server.binary) >= (7, 0, 0):  # a script may write the final state past maxmemory
        assert shown["state"] == "error" and "out of memory" in shown["error"]
    else:  # Redis 6.2 may take no write at all: then the state says nobody writes the stream any more
        assert ("out of memory" in shown["error"] and shown["state"] == "error") or (
            shown["state"] in ("connecting", "live") and shown["writer"] == ""
        )
    assert "maxmemory" in err and "clips must be appended in time order" not in err


def test_a_read_only_replica_refuses_at_once_and_changes_nothing(
    tmp_path: Path, redis_factory: Factory, prefix: str
) -> None:
    primary = redis_factory()
    replica = redis_factory(extra_args=("--replicaof", "127.0.0.1", str(primary.port)))
    first = write_config(tmp_path, "cam", video(tmp_path, "first", 3), prefix=prefix)
    rc, _, err = ingest(first, primary.url).finish()
    assert rc == 0, err
    deadline = time.monotonic() + 10
    while stored_ids(replica.url, prefix, "cam") != expected_ids(3):
        assert time.monotonic() < deadline, "the replica did not sync"
        time.sleep(0.05)
    second = write_config(tmp_path, "cam", video(tmp_path, "second", 5), prefix=prefix)
    rc, report, err = ingest(second, replica.url, "--new-source").finish()
    assert rc == 1
    assert "read-only replica" in err and "at the primary" in err and "Traceback" not in err
    assert report["streams"]["cam"]["refused"] and report["streams"]["cam"]["stored"] == 0
    assert stored_ids(replica.url, prefix, "cam") == expected_ids(3)
    assert memory_ls(replica.url, prefix)["cam"]["state"] == "stopped"  # the first ingest's, untouched


def test_a_meta_key_of_the_wrong_type_is_named_and_shown(
    tmp_path: Path, redis_factory: Factory, prefix: str
) -> None:
    server = redis_factory()
    path = video(tmp_path, "cam", 3)
    config = write_config(tmp_path, "cam", path, prefix=prefix)
    assert ingest(config, server.url).finish()[0] == 0
    meta = f"{prefix}:{{cam}}:meta"
    with redis.Redis.from_url(server.url) as client:
        client.delete(meta)
        client.set(meta, "another program's value")
    rc, _, err = ingest(config, server.url).finish()
    assert rc == 1 and f"{meta} is a string, not a hash" in err and "Traceback" not in err
    assert stored_ids(server.url, prefix, "cam") == expected_ids(3)
    shown = memory_ls(server.url, prefix)["cam"]
    assert shown["state"] == "unreadable" and f"{meta} is a string" in shown["error"]


def test_redis_sigkilled_mid_append_loses_and_repeats_nothing(
    tmp_path: Path, redis_factory: Factory, prefix: str
) -> None:
    server = redis_factory(appendfsync="everysec")  # the default: acknowledged writes survive a SIGKILL
    config = write_config(tmp_path, "long", video(tmp_path, "long", 120), prefix=prefix, wait_s=20)
    run = ingest(config, server.url)
    wait_for_clips(server.url, prefix, "long", 5)
    server.kill()  # while clips are being appended as fast as the encoder makes them
    time.sleep(0.5)
    server.start()
    rc, report, err = run.finish()
    assert rc == 0, err
    assert stored_ids(server.url, prefix, "long") == expected_ids(120)
    stream = report["streams"]["long"]
    assert stream["stored"] == 120 and stream["lost"] == 0 and accounted(stream)
    assert memory_ls(server.url, prefix)["long"]["state"] == "stopped"


# ---- one writer per stream ------------------------------------------------------------------------


def thumbnail_colour(jpeg: bytes) -> np.ndarray:
    with av.open(__import__("io").BytesIO(jpeg)) as container:
        frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
    return np.asarray(frame.reshape(-1, 3).mean(axis=0))


def test_two_ingests_of_different_videos_into_one_name(
    tmp_path: Path, redis_server: RedisServer, prefix: str
) -> None:
    red = write_config(
        tmp_path, "shared", video(tmp_path, "red", 6, (220, 20, 20)), prefix=prefix, realtime=True
    )
    blue = write_config(
        tmp_path, "shared", video(tmp_path, "blue", 6, (20, 20, 220)), prefix=prefix, realtime=True
    )
    runs = {"red": ingest(red, redis_server.url), "blue": ingest(blue, redis_server.url)}
    results = {colour: run.finish() for colour, run in runs.items()}
    assert sorted(rc for rc, _, _ in results.values()) == [0, 1]
    winner = next(c for c, (rc, _, _) in results.items() if rc == 0)
    loser = "blue" if winner == "red" else "red"
    _, report, err = results[loser]
    assert report["streams"]["shared"]["refused"] and report["streams"]["shared"]["stored"] == 0
    holder = f"pid {runs[winner].proc.pid}"
    # refused at once while the winner writes; if the winner was done first, refused as another source
    assert (holder in err and "being written by" in err) or "holds clips of" in err, err
    with redis.Redis.from_url(redis_server.url) as client:
        entries = client.xrange(f"{prefix}:{{shared}}:clips")
        thumbs = client.hmget(f"{prefix}:{{shared}}:thumbs", [eid for eid, _ in entries])
    assert [e.decode() for e, _ in entries] == expected_ids(6)
    want = 0 if winner == "red" else 2  # the channel that must dominate every thumbnail
    for jpeg in thumbs:
        colour = thumbnail_colour(jpeg)
        assert colour[want] > 150 and colour[2 - want] < 80, (winner, colour)


# ---- Ctrl-C ---------------------------------------------------------------------------------------


def test_ctrl_c_stops_ingest_within_two_seconds(
    tmp_path: Path, redis_server: RedisServer, prefix: str
) -> None:
    camera = write_config(tmp_path, "cam", video(tmp_path, "cam", 4), prefix=prefix, realtime=True, loop=True)
    run = ingest(camera, redis_server.url)
    wait_for_clips(redis_server.url, prefix, "cam", 2)
    t0 = time.monotonic()
    run.proc.send_signal(signal.SIGINT)
    rc, report, err = run.finish()
    assert time.monotonic() - t0 < 2.0, err
    assert rc == 0 and report["streams"]["cam"]["ok"] and accounted(report["streams"]["cam"])
    assert memory_ls(redis_server.url, prefix)["cam"]["state"] == "stopped"

    # a backfill stopped before the end of its file: every clip cut is stored, but the file is not done
    backfill = write_config(tmp_path, "file", video(tmp_path, "file", 30), prefix=prefix, realtime=True)
    run = ingest(backfill, redis_server.url)
    wait_for_clips(redis_server.url, prefix, "file", 2)
    t0 = time.monotonic()
    run.proc.send_signal(signal.SIGTERM)
    rc, report, err = run.finish()
    assert time.monotonic() - t0 < 2.0 and rc == 1, err
    shown = memory_ls(redis_server.url, prefix)["file"]
    assert shown["state"] == "stopped" and "before the end of the file" in shown["error"]
    assert (
        stored_ids(redis_server.url, prefix, "file")
        == expected_ids(30)[: report["streams"]["file"]["stored"]]
    )


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a hung Redis, a hung camera)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def test_ctrl_c_stops_a_memory_command_waiting_on_a_hung_redis(silent_port: int) -> None:
    run = Run("memory", "ls", "--redis", f"redis://127.0.0.1:{silent_port}/0")
    time.sleep(2.5)  # started, connected, waiting for a reply that never comes
    assert run.proc.poll() is None
    t0 = time.monotonic()
    run.proc.send_signal(signal.SIGINT)
    rc, _, err = run.finish(timeout=10)
    assert time.monotonic() - t0 < 2.0 and rc == 130 and "Traceback" not in err


def test_ctrl_c_stops_demo_video_within_two_seconds(tmp_path: Path) -> None:
    run = Run("demo-video", str(tmp_path / "long.mp4"), "--seconds", "3600")
    deadline = time.monotonic() + 30
    while not (tmp_path / "long.mp4").exists():  # writing has begun
        assert time.monotonic() < deadline and run.proc.poll() is None, "".join(run.lines)
        time.sleep(0.05)
    t0 = time.monotonic()
    run.proc.send_signal(signal.SIGINT)
    rc, _, err = run.finish(timeout=10)
    assert time.monotonic() - t0 < 2.0 and rc == 130 and "Traceback" not in err, err
