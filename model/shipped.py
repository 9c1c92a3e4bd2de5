"""Weights that ship inside the package (the `mini` presets): where they live and whether they are there.

A preset with `FlashConfig.shipped = "mini"` loads the checkpoint folder `model/weights/mini/` (the
released layout: config.json, generation_config.json, model.safetensors in fp16, provenance.json).
`flashlive train` writes it (`checkpoint.save_checkpoint`); until then the folder holds only its README
and the preset refuses to load, naming the command, rather than answer with random weights.

$FLASHLIVE_WEIGHTS_DIR points the lookup at another folder of the same shape (a fresh training run
before it is committed, or tests). No torch here: the web app and `flashlive serve` ask whether weights
are present without loading anything.
"""

from __future__ import annotations

import os
from pathlib import Path

from flashlive.model.errors import CheckpointError

WEIGHTS_ENV = "FLASHLIVE_WEIGHTS_DIR"
PACKAGE_WEIGHTS = Path(__file__).resolve().parent / "weights"
PROVENANCE_FILE = "provenance.json"


def weights_root() -> Path:
    """The folder holding one sub-folder of weights per shipped preset."""
    override = os.environ.get(WEIGHTS_ENV)
    return Path(override).expanduser() if override else PACKAGE_WEIGHTS


def shipped_dir(folder: str) -> Path:
    return weights_root() / folder


def weights_present(folder: str) -> bool:
    """config.json and safetensors files are there (the loader checks the rest, naming what is wrong)."""
    path = shipped_dir(folder)
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def require_shipped(preset: str, folder: str) -> Path:
    """The preset's weights folder, or a CheckpointError saying how to make the weights."""
    from flashlive.model.config import PRESETS

    path = shipped_dir(folder)
    if weights_present(folder):
        return path
    random = f"{folder}-random"
    instead = f", or ask for random weights of its shape with --model {random}" if random in PRESETS else ""
    raise CheckpointError(
        f"model {preset!r} has no trained weights yet: {path} holds no config.json with safetensors "
        f"weights. Make them with `flashlive train` (docs/model.md, 'The mini preset'){instead}"
    )
