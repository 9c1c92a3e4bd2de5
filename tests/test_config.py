"""The YAML config: schema, ${ENV} substitution, and errors that name their line."""

from __future__ import annotations

from pathlib import Path

import pytest

from flashlive.app.ingest import specs_from_config
from flashlive.cli import main
from flashlive.config import ConfigError, FlashliveConfig, load_config, parse_config

EXAMPLE = """\
streams:
  lobby:
    url: rtsp://10.0.0.7/stream1
    credentials:
      user: viewer
      password: "${LOBBY_PASSWORD}"
    transport: udp
    fps: 0.5
  phone:
    whip: true
  archive:
    url: /videos/monday.mp4
    realtime: false
  demo:
    url: ${DEMO_URL:-/videos/demo.mp4}
    loop: true
    policy: skip
    enabled: false
ingest:
  backoff_max_s: 30
model: {name: tiny, device: cpu}
memory:
  redis:
    url: "${REDIS_URL:-}"
  retention:
    seconds: 86400
web:
  port: 8080
  token: "$${not-substituted}"
"""


def test_example_parses_with_env_and_defaults() -> None:
    cfg = parse_config(EXAMPLE, env={"LOBBY_PASSWORD": "hunter2"})
    lobby = cfg.streams["lobby"]
    assert lobby.url == "rtsp://10.0.0.7/stream1" and lobby.transport == "udp" and lobby.fps == 0.5
    assert lobby.credentials is not None and lobby.credentials.password is not None
    assert lobby.credentials.password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(cfg) and "hunter2" not in str(cfg.model_dump())
    assert cfg.streams["phone"].whip and cfg.streams["phone"].url is None
    assert cfg.streams["demo"].url == "/videos/demo.mp4"  # ${VAR:-default}
    assert cfg.memory.redis.url is None and cfg.memory.redis.embedded  # empty means the embedded server
    assert cfg.memory.retention.seconds == 86400 and cfg.memory.retention.max_bytes is None
    assert cfg.web.token is not None and cfg.web.token.get_secret_value() == "${not-substituted}"
    assert cfg.ingest.backoff_max_s == 30 and cfg.ingest.fps == 1.0 and cfg.ingest.max_batch == 8
    assert cfg.worker.concurrency == 1


def test_specs_follow_the_config() -> None:
    cfg = parse_config(EXAMPLE, env={"LOBBY_PASSWORD": "hunter2", "DEMO_URL": "/tmp/x.mp4"})
    pulled = specs_from_config(cfg)
    assert sorted(pulled) == ["archive", "lobby"]  # demo is disabled, phone is WHIP
    lobby, archive = pulled["lobby"], pulled["archive"]
    assert lobby.sample_fps == 0.5 and lobby.backpressure == "lower_fps" and lobby.retry
    credentials = lobby.source.credentials
    assert credentials is not None and credentials.password is not None
    assert credentials.password.get_secret_value() == "hunter2" and lobby.source.transport == "udp"
    assert lobby.min_fps <= lobby.sample_fps and lobby.settings.backoff_max_s == 30
    assert archive.backpressure == "wait" and archive.source.realtime is False  # backfill loses nothing
    whip = specs_from_config(cfg, whip=True)
    assert list(whip) == ["phone"] and whip["phone"].url is None and not whip["phone"].retry


def test_empty_file_is_all_defaults() -> None:
    assert parse_config("") == FlashliveConfig()
    assert parse_config("# nothing\n").streams == {}


def problems(text: str, env: dict[str, str] | None = None) -> list[tuple[int | None, str, str]]:
    with pytest.raises(ConfigError) as err:
        parse_config(text, source="t.yaml", env=env or {})
    return [(p.line, p.path, p.message) for p in err.value.problems]


def test_every_error_names_its_line() -> None:
    text = """\
streams:
  lobby:
    url: rtsp://x/y
    fps: -1
  phone:
    whip: true
    url: rtsp://z
  nothing: {}
  bad name!:
    url: a.mp4
model:
  nmae: tiny
web:
  port: eighty
"""
    found = problems(text)
    by_path = {path: (line, msg) for line, path, msg in found}
    assert by_path["streams.lobby.fps"] == (4, "Input should be greater than 0")
    assert by_path["streams.phone"][0] == 5 and "not both" in by_path["streams.phone"][1]
    assert by_path["streams.nothing"][0] == 8 and "needs a source" in by_path["streams.nothing"][1]
    assert by_path["streams.bad name!"][0] == 9 and "bad name" in by_path["streams.bad name!"][1]
    assert by_path["model.nmae"][0] == 12 and "unknown setting" in by_path["model.nmae"][1]
    assert by_path["web.port"][0] == 14
    assert len(found) == 6


def test_duplicate_keys_missing_env_and_syntax_errors() -> None:
    assert problems("streams:\n  a: {url: x.mp4}\n  a: {url: y.mp4}\n") == [
        (3, "streams.a", "duplicate key (first given on line 2)")
    ]
    assert problems("streams:\n  a:\n    url: rtsp://h/s\n    credentials: {password: '${CAM_PW}'}\n") == [
        (4, "streams.a.credentials.password", "environment variable CAM_PW is not set")
    ]
    ((line, path, message),) = problems("streams:\n  a: {url: [\n")
    assert line == 3 and path == "" and message.startswith("YAML syntax")
    ((line, _, message),) = problems("- just\n- a list\n")
    assert line == 1 and "mapping" in message


def test_error_text_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("streams:\n  a:\n    url: x.mp4\n    fsp: 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert (
        str(err.value)
        == f"{bad}:4: streams.a.fsp: unknown setting (check the spelling; see docs/ingest.md for the schema)"
    )
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml")


def test_check_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("streams:\n  cam: {url: rtsp://h/s}\n  phone: {whip: true}\n")
    assert main(["check-config", str(good)]) == 0
    out = capsys.readouterr().out
    assert "ok" in out and "cam (rtsp)" in out and "phone (whip)" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("streams:\n  cam:\n    url: rtsp://h/s\n    fps: zero\n")
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:4: streams.cam.fps" in err
    assert main(["ingest", "--config", str(bad)]) == 2
    assert f"{bad}:4" in capsys.readouterr().err


def test_device_and_stream_name_rules_agree_with_the_code_that_uses_them() -> None:
    import torch

    from flashlive.memory.keys import check_stream_name
    from flashlive.model.device import resolve_device
    from flashlive.stream.sources.whip import WhipApp

    cfg = parse_config("model: {device: auto}\nworker: {device: cuda:1}\n")
    assert resolve_device(cfg.model.device) == ("cuda" if torch.cuda.is_available() else "cpu")
    assert problems("model: {device: gpu}\n") == [
        (
            1,
            "model.device",
            "unknown device 'gpu'; use cpu, cuda, cuda:N or auto (cuda when there is one, else cpu)",
        )
    ]
    # a 100-character name passes the config, and so the memory and the WHIP app take it too
    long_name = "cam-" + "x" * 96
    cfg = parse_config(f"streams:\n  {long_name}: {{whip: true}}\n")
    assert check_stream_name(long_name) == long_name
    assert WhipApp().stream_source(long_name).name == long_name
    ((line, path, message),) = problems(f"streams:\n  {'y' * 129}: {{whip: true}}\n")
    assert (line, path) == (2, "streams." + "y" * 129) and "at most" not in message and "1-128" in message


def test_a_misspelt_source_option_or_a_moved_setting_fails_with_its_line() -> None:
    text = """\
streams:
  cam:
    url: rtsp://h/s
    open_timout_s: 3
memory:
  retention_s: 60
model:
  max_batch: 4
"""
    assert sorted(problems(text)) == [
        (
            4,
            "streams.cam.open_timout_s",
            "unknown setting (check the spelling; see docs/ingest.md for the schema)",
        ),
        (6, "memory.retention_s", "moved to memory.retention.seconds"),
        (8, "model.max_batch", "moved to ingest.max_batch"),
    ]


def test_ingest_command_line_errors_are_one_plain_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ingest", "/videos/a.mp4", "--fps", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "flashlive ingest: error: --fps: Input should be greater than 0\n"
    assert "pydantic" not in err and "validation error" not in err.lower() and "Traceback" not in err
    assert main(["ingest", "/videos/a.mp4", "--name", "bad name!"]) == 2
    assert "bad name 'bad name!'" in capsys.readouterr().err
    assert main(["ingest", "/videos/a.mp4", "--redis", "http://cache:6379"]) == 2
    err = capsys.readouterr().err
    assert "--redis / $FLASHLIVE_REDIS_URL" in err and "redis://" in err


def test_web_and_worker_sections_explain_errors_with_their_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "web.yaml"
    path.write_text(
        "worker:\n  processes: -1\n  job_timeout_s: 30\n"
        "web:\n  port: 99999\n  rate_limit: {per_s: -1}\n  whip_upstream: ftp://ingest\n  whip_token: x\n"
        "  max_question_chars: 1000000\n"
    )
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:2: worker.processes: Input should be greater than or equal to 0" in err
    assert f"{path}:3: worker.job_timeout_s: moved to web.job_timeout_s" in err
    assert f"{path}:5: web.port: Input should be less than or equal to 65535" in err
    assert f"{path}:6: web.rate_limit.per_s: Input should be greater than or equal to 0" in err
    assert f"{path}:7: web.whip_upstream: must be an http:// or https:// URL" in err
    assert f"{path}:8: web.whip_token: moved to web.token" in err
    assert f"{path}:9: web.max_question_chars: Input should be less than or equal to 32000" in err
    cfg = parse_config("web: {token: '${T}', cors_origins: ['*']}\n", env={"T": "abc"})
    assert cfg.web.token_value == "abc" and "abc" not in repr(cfg.web)


def test_a_stream_name_taken_from_a_file_name_follows_the_name_rule() -> None:
    from flashlive.memory.keys import STREAM_NAME
    from flashlive.stream.sources.av_source import default_name

    cases = {
        "/videos/vid eo ü.mkv": "vid-eo-u",
        "/videos/.hidden.mp4": "hidden",
        "/videos/___.mp4": "stream",
        "rtsp://cam.local/live/Front Door": "Front-Door",
        "/videos/" + "a" * 300 + ".mp4": "a" * 128,
    }
    for url, name in cases.items():
        assert default_name(url) == name and STREAM_NAME.match(name), url
