"""Fault injection for crash tests: die by SIGKILL at a named step.

A testing hook, not a setting: ``TUNEBACK_FAULT_AT=<step>`` or ``<step>:<n>``
makes the process that reaches ``step`` for the ``n``-th time (default 1)
SIGKILL itself there, exactly as a power cut or the out-of-memory killer would:
no ``finally``, no ``atexit``, no flushed buffers. Unset (always, in
production) :func:`checkpoint` is one dictionary lookup.

The steps of a retrain cycle, in order (see docs/hardening.md):

``dataset.written``
    the snapshot files are on disk, their rows not yet committed;
``train.step``
    a training step finished (in the training child; ``train.step:3`` is after step 3);
``train.saved``
    the adapter is saved, the training record not yet written;
``evaluate.scored``
    one model configuration was scored (in the evaluation child);
``registry.staged`` / ``registry.renamed`` / ``registry.inserted`` / ``registry.committed``
    adding the adapter: temp folder complete, renamed into place, row inserted but not
    committed, committed (``registry.committed:2`` is the promotion's commit);
``registry.promoted``
    the promotion is flushed, not yet committed;
``registry.pointer_staged``
    the new ``CURRENT`` pointer is written under a temp name (``:1`` in the recovery a
    cycle starts with, ``:2`` after the promotion).

A step reached in a child process (``parent=True``) kills the cycle that started
it too, so the test sees the whole cycle die, not a child crash the cycle records.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "TUNEBACK_FAULT_AT"
_reached: Counter[str] = Counter()


def _target() -> tuple[str, int] | None:
    spec = os.environ.get(ENV, "").strip()
    if not spec:
        return None
    step, _, count = spec.partition(":")
    try:
        return step, int(count) if count else 1
    except ValueError:
        raise ValueError(f"{ENV}={spec!r}: expected <step> or <step>:<n>") from None


def checkpoint(step: str, *, parent: bool = False) -> None:
    """Die here (SIGKILL) if ``TUNEBACK_FAULT_AT`` names this step and occurrence.

    ``parent``: this process is a child of the cycle (training, evaluation);
    kill the cycle first, then this process.
    """
    target = _target()
    if target is None or target[0] != step:
        return
    _reached[step] += 1
    if _reached[step] != target[1]:
        return
    if parent:
        os.kill(os.getppid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
