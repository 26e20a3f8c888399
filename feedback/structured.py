"""Structured output: greedy or sampled decoding that can only write JSON matching a schema.

This is what OpenAI's ``response_format`` asks for (``{"type": "json_schema",
"json_schema": {"schema": ...}}``, or ``{"type": "json_object"}`` for any object).
outlines-core turns the schema into a regular expression and the expression into
an index: for each state of its automaton, which of the tokenizer's tokens may come
next. :class:`JsonConstraint` is a logits processor that follows each constrained
row through that index and masks every other token, so the answer is valid JSON of
the schema's shape as soon as the automaton is in a final state (where only the
end-of-sequence token is left). A row can still be cut short by ``max_tokens``.
Compiling runs in a child process with a time limit (:mod:`feedback.schema_index`).

Serving (:mod:`serve.engine`) and evaluation (:meth:`retrain.evaluate.Scorer.generate`)
use the same processor, so a benchmark with a schema measures what a client that
sends the schema is served. It lives in ``feedback``, the layer both may import, and
so imports neither torch nor transformers: the processor works on whatever tensors
``generate`` hands it, through their own methods.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import threading
from collections import OrderedDict
from functools import cache
from typing import Any

from outlines_core import Index, Vocabulary

ANY_OBJECT: dict[str, Any] = {"type": "object"}
MAX_SCHEMA_CHARS = 16_384
COMPILE_SECONDS = 30.0  # the generic json_object schema takes about 7 s here
_CACHED_INDEXES = 32


class SchemaError(ValueError):
    """The schema cannot be turned into a constraint (unsupported or malformed)."""


@cache
def _unicode_to_byte() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: each printable stand-in to its byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    stand_ins, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            stand_ins[chr(byte)] = byte
        else:
            stand_ins[chr(256 + extra)] = byte
            extra += 1
    return stand_ins


def token_bytes(tokenizer: Any) -> dict[bytes, list[int]]:
    """Every ordinary token's text as raw bytes (special tokens left out).

    Byte-level BPE (GPT-2, Llama 3, SmolLM2) spells bytes with stand-in characters;
    SentencePiece spells a space as "▁" and raw bytes as ``<0xNN>``.
    """
    special = set(tokenizer.all_special_ids)
    vocab = tokenizer.get_vocab()
    stand_ins = _unicode_to_byte()
    byte_level = all(ch in stand_ins for tok in vocab for ch in tok if tok not in special)
    out: dict[bytes, list[int]] = {}
    for token, token_id in vocab.items():
        if token_id in special:
            continue
        if byte_level and all(ch in stand_ins for ch in token):
            raw = bytes(stand_ins[ch] for ch in token)
        elif len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            raw = bytes([int(token[3:5], 16)])
        else:
            raw = token.replace("▁", " ").encode()
        out.setdefault(raw, []).append(token_id)
    return out


class Grammars:
    """Compiled JSON schemas for one tokenizer, the most recent few kept.

    A schema is compiled in a child process (:mod:`feedback.schema_index`) killed
    after ``timeout`` seconds, one schema at a time; a schema that failed is
    remembered, so asking again fails at once. Cached schemas are served while
    another one compiles.
    """

    def __init__(self, tokenizer: Any, eos_ids: set[int], timeout: float = COMPILE_SECONDS) -> None:
        self.eos_ids = frozenset(eos_ids)
        self.timeout = timeout
        self._eos = min(self.eos_ids)
        self._tokenizer = tokenizer
        self._vocabulary: Vocabulary | None = None
        self._indexes: OrderedDict[str, Index | SchemaError] = OrderedDict()
        self._lock = threading.Lock()  # the cache
        self._compiling = threading.Lock()  # one child at a time

    def index(self, schema: dict[str, Any]) -> Index:
        """The index of ``schema``; raise :class:`SchemaError` if it cannot be compiled."""
        # Property order is the order the answer is written in: keep it in the key.
        key = json.dumps(schema)
        if len(key) > MAX_SCHEMA_CHARS:
            raise SchemaError(f"the schema is over {MAX_SCHEMA_CHARS} characters of JSON")
        with self._compiling:
            found = self._cached(key)
            if found is None:
                found = self._compile(key)
                with self._lock:
                    self._indexes[key] = found
                    if len(self._indexes) > _CACHED_INDEXES:
                        self._indexes.popitem(last=False)
        if isinstance(found, SchemaError):
            raise found
        return found

    def _cached(self, key: str) -> Index | SchemaError | None:
        with self._lock:
            if key in self._indexes:
                self._indexes.move_to_end(key)
            return self._indexes.get(key)

    def _compile(self, key: str) -> Index | SchemaError:
        if self._vocabulary is None:
            self._vocabulary = Vocabulary(self._eos, token_bytes(self._tokenizer))
        payload = pickle.dumps((self._vocabulary, key))
        try:
            done = subprocess.run(
                [sys.executable, "-m", "feedback.schema_index"],
                input=payload,
                capture_output=True,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return SchemaError(
                f"the schema took over {self.timeout:g} s to compile; long string bounds "
                "(maxLength) and large pattern counts are the usual cause"
            )
        if done.returncode != 0:
            return SchemaError("the schema could not be compiled")
        status, value = pickle.loads(done.stdout)
        if status != "ok":
            return SchemaError(f"the schema is not supported: {value}")
        return value

    def processor(self, indexes: list[Index | None]) -> JsonConstraint | None:
        """A processor for a batch whose row ``i`` follows ``indexes[i]`` (None: free)."""
        if all(index is None for index in indexes):
            return None
        return JsonConstraint(indexes, self.eos_ids, self._eos)


class JsonConstraint:
    """Masks, row by row, every token its index does not allow next.

    A logits processor for ``generate`` (``LogitsProcessorList`` calls any
    ``(input_ids, scores) -> scores`` callable), called before each new token; the
    row's last token (from the second call on) advances its state. A row that ended
    (end-of-sequence, then padding) may only write end-of-sequence tokens.

    The tensors are torch's, typed ``Any`` because this module may not import torch.
    """

    def __init__(self, indexes: list[Index | None], eos_ids: frozenset[int], eos: int) -> None:
        self.indexes, self.eos_ids, self.eos = indexes, sorted(eos_ids), eos
        self.states: list[int | None] = [
            None if index is None else index.get_initial_state() for index in indexes
        ]
        self.started = False

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        last = input_ids[:, -1].tolist() if self.started else [None] * len(self.indexes)
        self.started = True
        # 0 where a token is allowed, -inf elsewhere, in the scores' dtype and device
        mask = scores.new_full(scores.shape, float("-inf"))
        for row, index in enumerate(self.indexes):
            if index is None:
                mask[row] = 0
                continue
            state = self.states[row]
            if state is not None and last[row] is not None:
                state = index.get_next_state(state, last[row])
                self.states[row] = state
            allowed = self.eos_ids if state is None else index.get_allowed_tokens(state)
            if self.eos in allowed:
                allowed = sorted({*allowed, *self.eos_ids})
            mask[row, list(allowed)] = 0
        return scores + mask
