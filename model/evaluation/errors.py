"""Errors of the evaluation harness: one family, under the model library's."""

from __future__ import annotations

from flashlive.model.errors import ModelError


class EvalError(ModelError, ValueError):
    """An evaluation that cannot run as asked (a haystack longer than the model's context, a grid with
    no cell, ...); the message says what to change."""


class DatasetError(EvalError):
    """A NIAH-Video folder that does not hold what the layout needs; the message names the file."""
