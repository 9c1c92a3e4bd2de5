"""docker-compose.yml validates with docker-compose; its config file validates with ours; the web image
really runs without torch, the model or the WebRTC stack."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from helpers import require_binary

from flashlive.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def compose_config(env_file: Path, **env: str) -> dict[str, object]:
    binary = require_binary("docker-compose")
    reply = subprocess.run(
        [binary, "--env-file", str(env_file), "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True, text=True, cwd=ROOT, env={"PATH": "/usr/bin:/bin:/usr/local/bin", **env},
        timeout=60,
    )  # fmt: skip
    assert reply.returncode == 0, reply.stderr
    data: dict[str, object] = yaml.safe_load(reply.stdout)
    return data


def test_compose_file_validates(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text((ROOT / ".env.example").read_text().replace("WORKERS=1", "WORKERS=3"))
    data = compose_config(env)
    services = data["services"]
    assert isinstance(services, dict)
    assert set(services) == {"redis", "web", "ingest", "workers"}
    assert "--appendonly" in services["redis"]["command"] and services["redis"]["volumes"]
    assert services["web"]["build"]["target"] == "web" and services["ingest"]["build"]["target"] == "full"
    workers = services["workers"]["deploy"]
    assert int(workers["replicas"]) == 3
    assert workers["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "--follow-registry" in services["ingest"]["command"]


def test_compose_config_file_validates() -> None:
    cfg = load_config(ROOT / "docker" / "flashlive.yaml", env={"FLASHLIVE_TOKEN": "t"})
    assert cfg.web.whip_upstream == "http://ingest:8090" and cfg.web.token is not None
    assert cfg.memory.redis.url == "redis://redis:6379/0" and cfg.ingest.whip_listen == "0.0.0.0:8090"
    assert cfg.streams["camera"].whip


def test_web_requirements_are_project_dependencies() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~\[ ]", d)[0].lower() for d in deps}
    wanted = [
        line.split("#")[0].strip()
        for line in (ROOT / "docker" / "requirements-web.txt").read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    assert wanted and "torch" not in " ".join(wanted)
    for spec in wanted:
        assert spec in deps or re.split(r"[<>=!~\[ ]", spec)[0].lower() in names, spec


BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "aiortc", "tokenizers", "safetensors"):
            raise ImportError(f"{name} is not in the web image")
        return None
sys.meta_path.insert(0, Block())
"""


def test_the_web_app_runs_without_torch(tmp_path: Path) -> None:
    code = (
        BLOCK
        + """
from flashlive.cli import build_parser
from flashlive.config import load_config
from flashlive.web.app import create_app
from flashlive.memory.settings import RedisSettings
build_parser()
cfg = load_config(sys.argv[1], env={})
app = create_app(cfg.web, RedisSettings.from_dsn("redis://127.0.0.1:1/0"))
assert "/v1/chat/completions" in app.openapi()["paths"]
print("ok", sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "aiortc")))
"""
    )
    reply = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "docker" / "flashlive.yaml")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert reply.returncode == 0, reply.stderr
    assert reply.stdout.strip() == "ok []"
