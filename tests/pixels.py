"""Pixel analysis for tests: connected components of a mask (no scipy here)."""

from __future__ import annotations

import numpy as np


def components(mask: np.ndarray) -> np.ndarray:
    """4-connected labels of a boolean mask (0 = background), by min-label propagation."""
    h, w = mask.shape
    big = h * w + 1
    labels = np.where(mask, np.arange(1, h * w + 1).reshape(h, w), big)
    while True:
        p = np.pad(labels, 1, constant_values=big)
        m = np.minimum.reduce([p[1:-1, 1:-1], p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]])
        m = np.where(mask, m, big)
        if np.array_equal(m, labels):
            break
        labels = m
    return np.where(mask, labels, 0)
