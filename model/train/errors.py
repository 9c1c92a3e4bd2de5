"""Errors of training: one family under the model library's ModelError."""

from __future__ import annotations

from flashlive.model.errors import ModelError


class TrainError(ModelError, RuntimeError):
    """A stage cannot run: missing or mismatched checkpoints, settings the model cannot take, a loss
    that is no longer a number. The message says what to do."""


class StoppedEarly(TrainError):
    """A stage stopped before its last step (time limit or a stop signal), after saving: run the same
    command again to continue."""
