"""Nonsense on the command line: every bad value gives exit status 2 and one line on stderr naming
what is wrong, never a traceback, and nothing starts (no model loads, no Redis is contacted: the
`--redis` given points at a port nobody listens on)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flashlive.cli import main

NOWHERE = "redis://127.0.0.1:1/0"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad")
    made = {
        "bomb": "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcdef", "bcdefg", strict=True)
        ),
        "deep": "a: " + "[" * 200 + "]" * 200 + "\n",
        "cycle": "a: &a [*a]\n",
        "nan": "streams:\n  a:\n    url: x.mp4\n    fps: .nan\n",
        "dup": "streams:\n  a: {url: x.mp4}\n  a: {url: y.mp4}\n",
        "aliases": "x: &x 1\n" + "".join(f"k{i}: *x\n" for i in range(100)),
        "threads": "worker:\n  threads: 0\n",
        "train_lr": "train:\n  seed: 3\n  short:\n    lr: -1\n",
        "train_tower": "train:\n  long:\n    train: [tower, llm]\n",
        "train_key": "train:\n  short:\n    learning_rate: 0.1\n",
        "train_repeat": "train:\n  tower:\n    repeat: 0\n",
        "train_repeat_word": "train:\n  tower:\n    repeat: twice\n",
        "train_spacing": "train:\n  short:\n    repeat: 4\n    spacing: -64\n",
    }
    out = {}
    for name, text in made.items():
        (root / f"{name}.yaml").write_text(text)
        out[name] = str(root / f"{name}.yaml")
    (root / "nul.yaml").write_bytes(b"streams:\x00\n")
    (root / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    (root / "big.yaml").write_text("# padding\n" * 120_000)
    out |= {n: str(root / f"{n}.yaml") for n in ("nul", "latin1", "big")}
    out["dir"] = str(root)
    return out


CASES: list[tuple[list[str], str]] = [
    # ingest: settings of the config file, validated by the config's models
    (["ingest", "a.mp4", "--fps", "0"], "--fps: Input should be greater than 0"),
    (["ingest", "a.mp4", "--fps", "-1"], "--fps: Input should be greater than 0"),
    (["ingest", "a.mp4", "--fps", "nan"], "--fps: Input should be a finite number"),
    (["ingest", "a.mp4", "--fps", "inf"], "--fps: Input should be a finite number"),
    (["ingest", "a.mp4", "--fps", "31"], "--fps: Input should be less than or equal to 30"),
    (["ingest", "a.mp4", "--fps", "abc"], "argument --fps: invalid float value: 'abc'"),
    (["ingest", "a.mp4", "--max-batch", "-3"], "--max-batch: Input should be greater than or equal to 1"),
    (["ingest", "a.mp4", "--max-batch", "0"], "--max-batch: Input should be greater than or equal to 1"),
    (["ingest", "a.mp4", "--max-batch", "100000"], "--max-batch: Input should be less than or equal to 256"),
    (["ingest", "a.mp4", "--max-batch", "1.5"], "argument --max-batch: invalid int value"),
    (["ingest", "a.mp4", "--policy", "drop"], "argument --policy: invalid choice: 'drop'"),
    (["ingest", "rtsp://h/c", "--transport", "sctp"], "argument --transport: invalid choice"),
    (["ingest", "a.mp4", "--name", "bad name!"], "--name: bad name 'bad name!'"),
    (["ingest", "a.mp4", "--name", ""], "--name: bad name ''"),
    (["ingest", "a.mp4", "--name", "x" * 200], "--name: bad name"),
    (["ingest"], "give a URL to ingest"),
    (["ingest", "a.mp4", "--config", "c.yaml"], "either a URL or --config"),
    (["ingest", "--config", "/nonexistent/c.yaml"], "/nonexistent/c.yaml: no such file"),
    (["ingest", "a.mp4", "--redis", "http://cache:6379"], "--redis / $FLASHLIVE_REDIS_URL"),
    (
        ["ingest", "a.mp4", "--password-env", "FLASHLIVE_TEST_UNSET_VAR"],
        "FLASHLIVE_TEST_UNSET_VAR is not set",
    ),
    (["ingest", "a.mp4", "--device", "tpu"], "--device:"),
    (["ingest", "a.mp4", "--log-level", "loud"], "argument --log-level: invalid choice"),
    (["ingest", "a.mp4", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["ingest", "ftp://host/cam.mp4"], "URL: unsupported source URL scheme 'ftp'"),
    (["ingest", "   "], "URL: the URL is empty"),
    # memory: windows and export numbers through the same kind of model
    (["memory", "show", "cam", "--last", "nan"], "--last: Input should be a finite number"),
    (["memory", "show", "cam", "--last", "-5"], "--last: Input should be greater than 0"),
    (["memory", "show", "cam", "--last", "abc"], "argument --last: invalid float value"),
    (["memory", "show", "cam", "--start", "yesterday"], "neither seconds nor an ISO-8601 datetime"),
    (["memory", "show", "cam", "--start", "inf"], "is not a finite time"),
    (["memory", "show", "cam", "--start", "9", "--end", "3"], "--start (9) is after --end (3)"),
    (["memory", "show", "cam", "--start", "1", "--last", "3"], "either --last or --start/--end"),
    (["memory", "show", "cam", "--start", "-4"], "--start: Input should be greater than or equal to 0"),
    (["memory", "export", "cam", "--out", "x.mp4", "--fps", "nan"], "--fps: Input should be a finite number"),
    (["memory", "export", "cam", "--out", "x.mp4", "--fps", "inf"], "--fps: Input should be a finite number"),
    (["memory", "export", "cam", "--out", "x.mp4", "--fps", "0"], "--fps: Input should be greater than 0"),
    (["memory", "export", "cam", "--out", "x.mp4", "--columns", "0"], "--columns: Input should be greater"),
    (["memory", "export", "cam", "--out", "x.mp4", "--columns", "1000"], "--columns: Input should be less"),
    (["memory", "export", "cam"], "the following arguments are required: --out"),
    (["memory", "ls", "--prefix", "bad prefix"], "--prefix: String should match pattern"),
    (["memory", "ls", "--redis", "ftp://h/x"], "--redis / $FLASHLIVE_REDIS_URL"),
    (["memory", "show"], "the following arguments are required: name"),
    (["memory", "frobnicate"], "argument ACTION: invalid choice: 'frobnicate'"),
    # ask-file: checked before any model loads
    (["ask-file", "v.mp4", "q", "--temperature", "nan"], "--temperature: Input should be a finite number"),
    (
        ["ask-file", "v.mp4", "q", "--temperature", "-1"],
        "--temperature: Input should be greater than or equal",
    ),
    (["ask-file", "v.mp4", "q", "--max-new-tokens", "-1"], "--max-new-tokens: Input should be greater"),
    (["ask-file", "v.mp4", "q", "--max-new-tokens", "0"], "--max-new-tokens: Input should be greater"),
    (["ask-file", "v.mp4", "q", "--top-p", "0"], "--top-p: Input should be greater than 0"),
    (["ask-file", "v.mp4", "q", "--top-p", "1.5"], "--top-p: Input should be less than or equal to 1"),
    (["ask-file", "v.mp4", "q", "--top-p", "nan"], "--top-p: Input should be a finite number"),
    (["ask-file", "v.mp4", "q", "--seed", "-1"], "--seed: Input should be greater than or equal to 0"),
    (["ask-file", "v.mp4", "q", "--max-frames", "0"], "--max-frames: Input should be greater"),
    (["ask-file", "v.mp4", "q", "--frame-step", "0"], "--frame-step: Input should be greater"),
    (
        ["ask-file", "v.mp4", "q", "--dropout-layers", "abc"],
        "--dropout-layers and --dropout-ratios need --dropout",
    ),
    (["ask-file", "v.mp4"], "the following arguments are required: QUESTION"),
    # demo-video
    (["demo-video", "d.mp4", "--seconds", "nan"], "--seconds: Input should be a finite number"),
    (["demo-video", "d.mp4", "--seconds", "inf"], "--seconds: Input should be a finite number"),
    (["demo-video", "d.mp4", "--seconds", "0"], "--seconds: Input should be greater than 0"),
    (["demo-video", "d.mp4", "--seconds", "-5"], "--seconds: Input should be greater than 0"),
    (["demo-video", "d.mp4", "--seconds", "1e9"], "--seconds: Input should be less than or equal to 86400"),
    (["demo-video", "d.mp4", "--fps", "0"], "--fps: Input should be greater than or equal to 1"),
    (["demo-video", "d.mp4", "--fps", "1000"], "--fps: Input should be less than or equal to 120"),
    (["demo-video", "d.txt"], "OUT: the demo video is written as .mp4 or .mkv"),
    (["demo-video", "d.mp4", "--seconds", "abc"], "argument --seconds: invalid float value"),
    # eval: the harness's settings, a list item named by its option and place; lengths checked against the
    # model's context from its config alone (no weights load)
    (["eval", "world", "--items", "0"], "--items: Input should be greater than or equal to 1"),
    (["eval", "world", "--items", "x"], "argument --items: invalid int value: 'x'"),
    (["eval", "world", "--frames", "30"], "--frames: must be a multiple of 4"),
    (["eval", "world", "--frames", "8"], "--frames: Input should be greater than or equal to 16"),
    (["eval", "niah", "--lengths", "250,abc"], "--lengths (item 2): Input should be a valid integer"),
    (
        ["eval", "niah", "--lengths", "250,4"],
        "--lengths (item 2): Input should be greater than or equal to 8",
    ),
    (["eval", "niah", "--lengths", "250,10"], "--lengths: each length must be a multiple of 4"),
    (["eval", "niah", "--lengths", "16,16"], "--lengths: each length may appear once"),
    (["eval", "niah", "--lengths", "4000"], "haystacks of 4,000 frames do not fit tiny's context"),
    (["eval", "niah", "--depths", "0,1.5"], "--depths (item 2): Input should be less than or equal to 1"),
    (["eval", "niah", "--depths", "nan"], "--depths (item 1): Input should be a finite number"),
    (["eval", "mhniah", "--hops", "1"], "--hops (item 1): Input should be greater than or equal to 2"),
    (["eval", "mhniah", "--lengths", "16", "--hops", "3"], "3-hop chains need haystacks of at least 24"),
    (["eval", "world", "--out", "{big}"], "--out: {big} is a file; results go to a folder"),
    (["eval", "niah-video"], "niah-video needs --data DIR"),
    (["eval", "niah-video", "--data", "/nonexistent"], "--data: /nonexistent is not a folder"),
    (["eval", "world", "--device", "tpu"], "--device: unknown device 'tpu'"),
    (["eval", "nope"], "argument PART: invalid choice: 'nope'"),
    # check-config: the file is a command-line value too
    (["check-config", "/nonexistent.yaml"], "/nonexistent.yaml: no such file"),
    (["check-config", "{dir}"], "is a directory, not a config file"),
    (["check-config", "/dev/zero"], "/dev/zero: too large: a config file has at most 1024 KiB"),
    (["check-config", "{big}"], "too large: a config file has at most 1024 KiB"),
    (["check-config", "{bomb}"], "too large: more than 100000 values once its aliases are expanded"),
    (["check-config", "{aliases}"], "too large: more than 64 aliases"),
    (["check-config", "{deep}"], "too large: nested more than 64 levels deep"),
    (["check-config", "{cycle}"], "an alias refers to a value that contains it"),
    (["check-config", "{nul}"], "not a text file"),
    (["check-config", "{latin1}"], "not UTF-8 text"),
    (["check-config", "{nan}"], ":4: streams.a.fps: Input should be a finite number"),
    (["check-config", "{dup}"], ":3: streams.a: duplicate key (first given on line 2)"),
    (["check-config"], "the following arguments are required: file"),
    (["check-config", "{threads}"], ":2: worker.threads: Input should be greater than or equal to 1"),
    # worker and serve: checked before a model loads or a process starts
    (["worker", "--threads", "0"], "--threads: 1 to 1024, not 0"),
    (["worker", "--threads", "5000"], "--threads: 1 to 1024, not 5000"),
    (["worker", "--threads", "two"], "argument --threads: invalid int value: 'two'"),
    (["worker", "--concurrency", "0"], "--concurrency: Input should be greater than or equal to 1"),
    (["worker", "--heartbeat", "2", "--lease", "3"], "--lease (3 s) must be at least twice --heartbeat"),
    (["serve", "--prefix", "bad prefix"], "--prefix: String should match pattern"),
    (["serve", "--workers", "-1"], "--workers: Input should be greater than or equal to 0"),
    (["serve", "--port", "70000"], "--port: Input should be less than or equal to 65535"),
    (["web", "--port", "0"], "--port: Input should be greater than or equal to 1"),
    # train: settings of the config file's `train` section, and its own options; nothing trains
    (["train", "2", "--steps", "-1"], "--steps: Input should be greater than or equal to 0"),
    (["train", "all", "--steps", "abc"], "argument --steps: invalid int value: 'abc'"),
    (["train", "2", "--time-limit", "0"], "--time-limit: Input should be greater than 0"),
    (["train", "2", "--time-limit", "nan"], "--time-limit: Input should be a finite number"),
    (["train", "2", "--workers", "-1"], "--workers: Input should be greater than or equal to 0"),
    (["train", "2", "--workers", "1000"], "--workers: Input should be less than or equal to 64"),
    (["train", "2", "--seed", "-1"], "--seed: Input should be greater than or equal to 0"),
    (["train", "2", "--device", "tpu"], "--device: unknown device 'tpu'"),
    (["train", "2", "--model", "nope"], "--model: unknown model preset 'nope'"),
    (["train", "2", "--out", ""], "--out: String should have at least 1 character"),
    (["train", "9"], "argument STAGE: invalid choice: '9'"),
    (["train", "2", "--config", "/nonexistent.yaml"], "/nonexistent.yaml: no such file"),
    (["train", "2", "--config", "{train_lr}"], ":4: train.short.lr: Input should be greater than 0"),
    (["train", "3", "--config", "{train_tower}"], "keeps the tower frozen"),
    (["train", "2", "--config", "{train_key}"], ":3: train.short.learning_rate: unknown setting"),
    (
        ["train", "0", "--config", "{train_repeat}"],
        ":3: train.tower.repeat: Input should be greater",
    ),
    (
        ["train", "0", "--config", "{train_repeat_word}"],
        ":3: train.tower.repeat: Input should be a valid int",
    ),
    (
        ["train", "2", "--config", "{train_spacing}"],
        ":4: train.short.spacing: Input should be greater",
    ),
]


def test_there_are_enough_cases_for_every_command() -> None:
    commands = {argv[0] for argv, _ in CASES}
    assert len(CASES) >= 40 and commands == {
        "ingest", "memory", "ask-file", "demo-video", "check-config", "eval", "worker", "serve", "web",
        "train",
    }  # fmt: skip


@pytest.mark.parametrize(("argv", "message"), CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_a_bad_value_is_one_line_and_exit_2(
    argv: list[str], message: str, files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.format(**files) for a in argv]
    if (
        argv[0] in ("ingest", "memory", "worker", "serve", "web")
        and "--redis" not in argv
        and argv[1:2] != ["frobnicate"]
    ):
        argv += ["--redis", NOWHERE]
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code  # type: ignore[assignment]
    out = capsys.readouterr()
    assert rc == 2, (argv, out.err)
    assert out.err.count("\n") == 1 and out.err.endswith("\n"), out.err
    assert message.format(**files) in out.err, out.err
    assert "Traceback" not in out.err and "pydantic" not in out.err and "errors.pydantic.dev" not in out.err


def test_the_real_process_says_the_same_in_one_line() -> None:
    """The same, through the installed entry point (no test harness around it)."""
    for argv, message in [
        (["ingest", "a.mp4", "--fps", "nan", "--redis", NOWHERE], "--fps: Input should be a finite number"),
        (["demo-video", "d.mp4", "--seconds", "nan"], "--seconds: Input should be a finite number"),
    ]:
        proc = subprocess.run(
            [sys.executable, "-m", "flashlive", *argv], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
        assert Path("d.mp4").exists() is False
