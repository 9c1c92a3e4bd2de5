"""The clip encoder used by ingest: pre-processing, vision tower and HiCo merging (no projector).

Memory stores the merged tower features ([64, width] per clip); the projector runs with the LLM in
the query worker, so one memory can serve any worker that has the same tower.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from flashlive.model.settings import ModelSettings


class ClipEncoder(Protocol):
    encoder_id: str
    clip_frames: int  # frames per clip (4)
    tokens_per_clip: int  # 64
    width: int  # token width (1024 for UMT-L)
    device: str

    def encode(self, clips: np.ndarray) -> np.ndarray:
        """clips: uint8 RGB [N, clip_frames, H, W, 3] -> float16 [N, tokens_per_clip, width].

        Blocking and compute-heavy: call it from a worker thread, never on the event loop.
        """
        ...


def load_clip_encoder(settings: ModelSettings | None = None) -> ClipEncoder:
    """Build the encoder for the model the settings name (a preset, a checkpoint directory or a repo
    id) on their device. Raises a ModelError (unknown preset, bad checkpoint, no CUDA) or OSError."""
    from flashlive.model.pipeline import load_tower_encoder

    settings = settings or ModelSettings()
    return load_tower_encoder(settings.name, device=settings.device)
