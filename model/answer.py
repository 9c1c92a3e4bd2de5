"""Answering one question and blocking until it is done: `Engine.answer(window, question)`.

The stream drives the engine's steps itself and yields text pieces; the final `AnswerResult` is in
`.result` once iteration ends. Stopping the iteration early (break, close) cancels the sequence.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from flashlive.model.result import AnswerResult

if TYPE_CHECKING:
    from flashlive.model.engine import Engine


class AnswerStream:
    def __init__(self, engine: Engine, seq_id: int) -> None:
        self.engine = engine
        self.seq_id = seq_id
        self.result: AnswerResult | None = None

    def __iter__(self) -> Iterator[str]:
        try:
            while self.result is None:
                outputs = self.engine.step()
                if not outputs and not self.engine.has_unfinished():
                    raise RuntimeError(f"sequence {self.seq_id} left the engine without a result")
                for out in outputs:
                    if out.seq_id != self.seq_id:
                        continue
                    if out.error is not None:
                        self.result = out.result
                        raise out.error
                    if out.text:
                        yield out.text
                    if out.finished:
                        self.result = out.result
        finally:
            if self.result is None:
                self.cancel()

    def cancel(self) -> AnswerResult | None:
        """Stop generating; `.result` then holds what was generated so far."""
        if self.result is None:
            self.result = self.engine.abort(self.seq_id)
        return self.result
