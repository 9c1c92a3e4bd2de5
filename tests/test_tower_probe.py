"""bench/tower_probe.py: the labels it trains on agree with the pixels it draws."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "tower_probe.py"


@pytest.fixture(scope="module")
def probe() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tower_probe", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["tower_probe"] = module
    spec.loader.exec_module(module)
    return module


def _ink_share(image: np.ndarray, grid: int, patch: int) -> np.ndarray:
    """Share of dark pixels in each patch, in the tower's token order (row by row)."""
    dark = image.mean(-1) < 128
    return dark.reshape(grid, patch, grid, patch).mean((1, 3)).reshape(-1)


def test_labelled_patches_are_the_covered_ones(probe: ModuleType) -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        image, label, index = probe.draw(rng, "ink")
        share = _ink_share(image, probe.GRID, probe.PATCH)
        # anti-aliasing aside, a patch is labelled exactly when a shape covers a quarter of it
        assert np.all(share[label >= 0] >= probe.COVER - 0.02)
        assert np.all(share[label < 0] < probe.COVER + 0.02)
        assert np.array_equal(label >= 0, index >= 0)
        assert set(np.unique(label[label >= 0])) <= set(range(len(probe.SHAPES)))


def test_frames_are_the_same_for_the_same_seed_and_differ_otherwise(probe: ModuleType) -> None:
    a = probe.frames(np.random.default_rng(5), 3, "random")
    b = probe.frames(np.random.default_rng(5), 3, "random")
    c = probe.frames(np.random.default_rng(6), 3, "random")
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])


def test_both_models_give_a_token_per_patch(probe: ModuleType) -> None:
    images, _, _ = probe.frames(np.random.default_rng(0), 2, "palette")
    for kind in ("tower", "cnn"):
        model, width = probe.build(kind, seed=0)
        assert tuple(model(probe.pixels(images[:, None])).shape) == (2, probe.GRID * probe.GRID, width)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "0"], "argument --steps: must be at least 1, got 0"),
        (["--batch", "many"], "argument --batch: invalid positive value: 'many'"),
        (["--lr", "5"], "argument --lr: must be between 0 and 1, got 5.0"),
        (["--colours", "purple"], "argument --colours: invalid choice: 'purple'"),
        (["--model", "resnet"], "argument --model: invalid choice: 'resnet'"),
        (["--device", "gpu"], "argument --device: invalid choice: 'gpu'"),
        (["--warmup", "-5"], "argument --warmup: must be at least 1, got -5"),
        (["--every", "0"], "argument --every: must be at least 1, got 0"),
        (["--threads", "1.5"], "argument --threads: invalid positive value: '1.5'"),
        (["--seed", "-1"], "argument --seed: must be 0 or more, got -1"),
    ],
)
def test_nonsense_on_the_command_line_exits_2_naming_the_argument(args: list[str], message: str) -> None:
    done = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert message in done.stderr
    assert done.stdout == ""  # nothing trained, no JSON
