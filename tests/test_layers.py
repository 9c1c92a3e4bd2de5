"""Imports run one way (docs/architecture.md): the libraries never import the app layer, and each
library imports only the libraries below it. Checked on the source of every module file, so a lazy
import inside a function or under TYPE_CHECKING counts as well."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIBRARIES = ("model", "memory", "stream", "web")
# what each library must not import (besides the app layer, which none may import)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "memory": ("flashlive.model", "flashlive.stream", "flashlive.web"),
    "model": ("flashlive.stream", "flashlive.web"),
    "stream": ("flashlive.web",),
    "web": ("flashlive.model", "torch"),  # the web process runs without torch or a GPU
}


def module_name(path: Path) -> str:
    """ROOT/stream/sources/av_source.py -> flashlive.stream.sources.av_source (the installed name)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["flashlive", *parts])


def imported_modules(source: str, module: str, *, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in `source`, wherever it sits in the file."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:  # `from flashlive import config` imports flashlive.config
                yield node.lineno, f"{target}.{alias.name}"


def is_under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(library: str) -> list[str]:
    """One line per import statement that breaks a rule (`from a import b` is checked as a and a.b)."""
    allowed = tuple(f"flashlive.{lib}" for lib in LIBRARIES)
    found: dict[tuple[Path, int, str], str] = {}
    for path in sorted((ROOT / library).rglob("*.py")):
        module = module_name(path)
        for line, name in imported_modules(path.read_text(), module, is_package=path.name == "__init__.py"):
            if is_under(name, "flashlive") and not any(is_under(name, lib) for lib in allowed):
                rule = "the app layer: libraries know nothing of it"
            elif any(is_under(name, banned) for banned in FORBIDDEN[library]):
                rule = "imports run the other way"
            else:
                continue
            found.setdefault((path, line, rule), f"{path.relative_to(ROOT)}:{line} imports {name} ({rule})")
    return list(found.values())


@pytest.mark.parametrize("library", LIBRARIES)
def test_libraries_import_only_downwards(library: str) -> None:
    assert (ROOT / library).is_dir()
    assert violations(library) == []


def test_the_walker_sees_lazy_relative_and_from_imports() -> None:
    source = """
import os
from typing import TYPE_CHECKING
from ..memory.keys import STREAM_NAME
from . import settings
if TYPE_CHECKING:
    from flashlive.config import FlashliveConfig

def handler() -> None:
    from flashlive import cli
    import torch
"""
    names = {name for _, name in imported_modules(source, "flashlive.stream.ingest")}
    assert {
        "os",
        "flashlive.memory.keys",
        "flashlive.stream.settings",
        "flashlive.config",
        "flashlive.cli",
        "torch",
    } <= names
    pkg = {
        name
        for _, name in imported_modules(
            "from .base import Source", "flashlive.stream.sources", is_package=True
        )
    }
    assert "flashlive.stream.sources.base" in pkg


def test_a_library_importing_the_app_layer_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_root = tmp_path / "repo"
    (fake_root / "memory").mkdir(parents=True)
    (fake_root / "memory" / "store.py").write_text(
        "def run() -> None:\n    from flashlive.cli import CommandError\n    from ..model import llm\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake_root)
    found = violations("memory")
    assert len(found) == 2
    assert "memory/store.py:2 imports flashlive.cli" in found[0] and "app layer" in found[0]
    assert "flashlive.model" in found[1] and "other way" in found[1]
