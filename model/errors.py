"""Errors the model raises: one family, so a caller (the web layer, a worker) can map each to a status.

Each keeps the built-in class its callers caught before (ValueError for bad input, RuntimeError for a
broken install), so `except ValueError` still works where it did.
"""

from __future__ import annotations


class ModelError(Exception):
    """Base class for every error of the model library."""


class CheckpointError(ModelError, ValueError):
    """A checkpoint cannot be found or does not fit the model; the message names the file or key."""


class UnknownPresetError(ModelError, ValueError):
    """No model preset has that name."""


class DeviceError(ModelError, ValueError):
    """A device that is not cpu, cuda, cuda:N or auto, or CUDA asked for where there is none."""


class DropoutError(ModelError, ValueError):
    """A dropout setting this model or this call cannot use."""


class PromptError(ModelError, ValueError):
    """A question or prompt the model cannot take."""


class PromptTooLongError(PromptError):
    """The prompt does not fit the model's context."""


class SamplingError(ModelError, ValueError):
    """Sampling settings that cannot produce whole clips."""


class GenerationError(ModelError, ValueError):
    """Generation settings (max_new_tokens, temperature, top-p, ...) that make no sense."""


class WindowError(ModelError, ValueError):
    """Clips that cannot be read as one window (empty, mixed streams or encoders, out of order)."""


class VideoError(ModelError, ValueError):
    """The file cannot be used as a video (unreadable, empty, no video stream)."""


class TokenizerLoadError(ModelError, RuntimeError):
    """The tokenizer cannot be built or loaded (a packaging or checkpoint problem)."""
