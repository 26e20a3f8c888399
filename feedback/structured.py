"""Structured output: greedy or sampled decoding that can only write JSON matching a schema.

This is what OpenAI's ``response_format`` asks for (``{"type": "json_schema",
"json_schema": {"schema": ...}}``, or ``{"type": "json_object"}`` for any object).
outlines-core turns the schema into a regular expression and the expression into
an index: for each state of its automaton, which of the tokenizer's tokens may come
next. :class:`JsonConstraint` is a logits processor that follows each constrained
row through that index and masks every other token, so the answer is valid JSON of
the schema's shape as soon as the automaton is in a final state (where only the
end-of-sequence token is left). A row can still be cut short by ``max_tokens``.
Compiling runs in a child process with limits on its time, its memory and the size of
what it returns (:mod:`feedback.schema_index`, :class:`CompileLimits`), and the cache of
compiled schemas is bounded in bytes, so a small schema costs bounded memory here.

Serving (:mod:`serve.engine`) and evaluation (:meth:`retrain.evaluate.Scorer.generate`)
use the same processor, so a benchmark with a schema measures what a client that
sends the schema is served. It lives in ``feedback``, the layer both may import, and
so imports neither torch nor transformers: the processor works on whatever tensors
``generate`` hands it, through their own methods.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import cache
from typing import IO, Any

from outlines_core import Index, Vocabulary

from feedback.schema_index import OUT_OF_MEMORY

log = logging.getLogger(__name__)
ANY_OBJECT: dict[str, Any] = {"type": "object"}
MAX_SCHEMA_CHARS = 16_384
COMPILE_SECONDS = 30.0
MIB = 2**20
_CACHED_INDEXES = 32


class SchemaError(ValueError):
    """The schema cannot be turned into a constraint (unsupported, malformed, too costly)."""


class CompileBusyError(RuntimeError):
    """Another schema is compiling; ``retry_after`` seconds is a fair time to try again."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class CompileLimits:
    """What one schema may cost; a schema past a limit is refused (a :class:`SchemaError`).

    Figures with SmolLM2's 49,152 tokens: the generic ``json_object`` schema compiles in
    7 to 20 s, its child peaks at 360 MB of address space, and its index pickles to
    25 MiB; the extraction scenario's schema takes 0.1 s and 10 KB. An array of 40
    strings of ``maxLength`` 40 (71 bytes of compact JSON) wants 2.2 GB and 537 MiB.
    Indexes grow with the vocabulary: a larger one may need larger limits.
    """

    seconds: float = COMPILE_SECONDS
    memory_bytes: int = 1024 * MIB  # the compile child's address space
    index_bytes: int = 64 * MIB  # one compiled index, pickled
    cache_bytes: int = 256 * MIB  # every cached index together, pickled

    def __post_init__(self) -> None:
        if min(self.seconds, self.memory_bytes, self.index_bytes) <= 0:
            raise ValueError("compile limits must be positive")
        if self.cache_bytes < self.index_bytes:
            raise ValueError("the schema cache must hold at least one index of the largest size")


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

    A schema is compiled in a child process (:mod:`feedback.schema_index`) within
    :class:`CompileLimits`, one schema at a time; a schema that failed is remembered,
    so asking again fails at once. The cache is looked up without waiting for a
    compile, so cached schemas are served while another one compiles; it keeps at
    most 32 schemas and ``limits.cache_bytes`` of indexes (their pickled size).
    """

    def __init__(
        self, tokenizer: Any, eos_ids: set[int], limits: CompileLimits | None = None
    ) -> None:
        self.eos_ids = frozenset(eos_ids)
        self.limits = limits or CompileLimits()
        self._eos = min(self.eos_ids)
        self._tokenizer = tokenizer
        self._vocabulary: Vocabulary | None = None
        self._indexes: OrderedDict[str, tuple[Index | SchemaError, int]] = OrderedDict()
        self.cached_bytes = 0
        self._lock = threading.Lock()  # the cache
        self._compiling = threading.Lock()  # one child at a time
        self._compile_started = 0.0

    def index(self, schema: dict[str, Any], *, wait: bool = True) -> Index:
        """The index of ``schema``; raise :class:`SchemaError` if it cannot be compiled.

        ``wait=False`` (serving) raises :class:`CompileBusyError` instead of waiting
        when the schema is not cached and another one is compiling.
        """
        # Property order is the order the answer is written in: keep it in the key.
        key = json.dumps(schema)
        if len(key) > MAX_SCHEMA_CHARS:
            raise SchemaError(f"the schema is over {MAX_SCHEMA_CHARS} characters of JSON")
        found = self._cached(key)
        if found is None:
            found = self._compile_once(key, wait=wait)
        if isinstance(found, SchemaError):
            raise found
        return found

    @property
    def compiling(self) -> bool:
        """Whether a schema is being compiled now."""
        return self._compiling.locked()

    def _cached(self, key: str) -> Index | SchemaError | None:
        with self._lock:
            if key not in self._indexes:
                return None
            self._indexes.move_to_end(key)
            return self._indexes[key][0]

    def _compile_once(self, key: str, *, wait: bool) -> Index | SchemaError:
        if not self._compiling.acquire(blocking=wait):
            raise CompileBusyError(
                "another response_format schema is being compiled; retry shortly",
                retry_after=self._retry_after(),
            )
        try:
            found = self._cached(key)  # compiled by the request we waited for
            if found is None:
                self._compile_started = time.monotonic()
                found, size = self._compile(key)
                self._store(key, found, size)
            return found
        finally:
            self._compiling.release()

    def _retry_after(self) -> int:
        """As long again as the running compile has taken, within its time limit."""
        ran = time.monotonic() - self._compile_started
        return max(1, math.ceil(min(ran, self.limits.seconds - ran)))

    def _store(self, key: str, found: Index | SchemaError, size: int) -> None:
        with self._lock:
            self._indexes[key] = (found, size)
            self.cached_bytes += size
            while self.cached_bytes > self.limits.cache_bytes or (
                len(self._indexes) > _CACHED_INDEXES
            ):
                _, (_, dropped) = self._indexes.popitem(last=False)
                self.cached_bytes -= dropped

    def _compile(self, key: str) -> tuple[Index | SchemaError, int]:
        """The index (or why not) and its pickled size in bytes."""
        if self._vocabulary is None:
            self._vocabulary = Vocabulary(self._eos, token_bytes(self._tokenizer))
        limits = self.limits
        outcome, value = _run_child(pickle.dumps((self._vocabulary, key)), limits)
        if outcome == "ok":
            status, result = pickle.loads(value)
            if status == "ok":
                return result, len(value)
            outcome, value = status, result
        mib = f"{limits.index_bytes / MIB:g} MiB"
        cause = "long string bounds (maxLength) and large item counts are the usual cause"
        refusals = {
            "timeout": f"the schema took over {limits.seconds:g} s to compile; {cause}",
            "memory": f"the schema needs over {limits.memory_bytes / MIB:g} MiB of memory to "
            f"compile, the server's limit; {cause}",
            "too_large": f"the schema's compiled index is over {mib}, the server's limit; {cause}",
            "error": f"the schema is not supported: {value}",
        }
        return SchemaError(refusals.get(outcome, "the schema could not be compiled")), 0

    def processor(self, indexes: list[Index | None]) -> JsonConstraint | None:
        """A processor for a batch whose row ``i`` follows ``indexes[i]`` (None: free)."""
        if all(index is None for index in indexes):
            return None
        return JsonConstraint(indexes, self.eos_ids, self._eos)


def _run_child(payload: bytes, limits: CompileLimits) -> tuple[str, Any]:
    """Run :mod:`feedback.schema_index` on ``payload`` within ``limits``.

    Returns ``("ok", pickled answer)``, or ``("timeout" | "memory" | "too_large" |
    "failed", None)``. Its output is read up to the index limit and no further, so
    an index too large never reaches this process's memory whole.
    """
    command = [sys.executable, "-m", "feedback.schema_index", str(limits.memory_bytes)]
    command += [str(math.ceil(limits.seconds) + 1), str(limits.index_bytes)]
    timed_out = threading.Event()
    with (
        tempfile.TemporaryFile() as stderr_file,
        subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr_file
        ) as child,
    ):

        def time_out() -> None:
            timed_out.set()
            child.kill()

        timer = threading.Timer(limits.seconds, time_out)
        timer.start()
        try:
            _feed(child.stdin, payload)
            out = _read_at_most(child.stdout, limits.index_bytes)
            if out is None:
                child.kill()
            returncode = child.wait()
        finally:
            timer.cancel()
        stderr_file.seek(0)
        stderr = stderr_file.read(4096)
    if timed_out.is_set():
        return "timeout", None
    if out is None:
        return "too_large", None
    if returncode == OUT_OF_MEMORY or (
        returncode == -signal.SIGABRT and b"memory allocation" in stderr
    ):
        return "memory", None
    if returncode != 0:
        log.warning(
            "compiling a schema failed (%s): %s", returncode, stderr.decode(errors="replace")
        )
        return "failed", None
    return "ok", out


def _feed(stdin: IO[bytes], payload: bytes) -> None:
    try:
        stdin.write(payload)
        stdin.close()
    except BrokenPipeError:  # the child died (or was killed) first: its status says why
        pass


def _read_at_most(stream: IO[bytes], limit: int) -> bytearray | None:
    """The stream's bytes to its end, or None as soon as there are more than ``limit``."""
    data = bytearray()
    while chunk := stream.read1(MIB):  # type: ignore[attr-defined]
        data += chunk
        if len(data) > limit:
            return None
    return data


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
