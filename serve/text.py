"""Turning a growing list of generated tokens into streamed text, honouring stop sequences.

Pure and torch-free, so its edge cases are tested on their own: a stop sequence
split across tokens, a multi-byte character split across tokens (decoded as
U+FFFD until complete), text that could still become a stop sequence.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

REPLACEMENT = "\ufffd"


@dataclass
class TextStream:
    """The text of one answer as tokens arrive; :meth:`push` says what may be shown now.

    Text that might turn out to be the start of a stop sequence, or half a
    character, is held back until the next token settles it. The answer never
    includes the stop sequence (as OpenAI's API behaves).
    """

    decode: Callable[[Sequence[int]], str]
    stops: tuple[str, ...] = ()
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    stopped: bool = False

    def push(self, token: int) -> str:
        """Add a token; return the newly safe text (possibly empty)."""
        self.tokens.append(token)
        self.text = self.decode(self.tokens)
        cut = _first_stop(self.text, self.stops)
        if cut is not None:
            self.stopped = True
            self.text = self.text[:cut]
            return self._emit(len(self.text))
        return self._emit(_safe_end(self.text, self.stops))

    def flush(self) -> str:
        """The answer is over: whatever was held back is final now."""
        return self._emit(len(self.text))

    def _emit(self, end: int) -> str:
        if end <= self.emitted:
            return ""
        delta, self.emitted = self.text[self.emitted : end], end
        return delta


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    found = [i for i in (text.find(stop) for stop in stops) if i >= 0]
    return min(found) if found else None


def _safe_end(text: str, stops: tuple[str, ...]) -> int:
    """Where the text stops being certain: before a trailing half character or stop prefix."""
    end = len(text.rstrip(REPLACEMENT))
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, end), hold, -1):
            if text.endswith(stop[:k], 0, end):
                hold = k
                break
    return end - hold
