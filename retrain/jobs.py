"""Steps that run in a child process: training, evaluation and the trigger probe.

Each loads a model, so the cycle runs each one as ``python -m <module> JOB.json``:
a crash, an out-of-memory kill or a hang then cannot take the cycle (or the
scheduler) down with it, and the memory the model held goes back when it ends.

One protocol for all three. A job is a dataclass deriving from :class:`ChildJob`
that travels as JSON (nested dataclasses such as the training config included).
The parent :func:`launch` es the child on a job file; the child's ``main`` is
:func:`child_main`, which loads the job, does the work and writes the result at
the ``out_path`` the job carries, atomically (temporary file, fsync, rename);
the parent reads it from there. A result file therefore exists only once a child
finished: one that died leaves none, and the step fails with :class:`JobFailedError`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

from feedback.durable import write_atomic
from feedback.exceptions import TunebackError

Result = TypeVar("Result")
T = TypeVar("T")


class JobFailedError(TunebackError, RuntimeError):
    """A child job crashed, ran past its time limit or left no readable result."""

    code, status = "job_failed", 500


class ChildJob:
    """Base of the job dataclasses. Each names the ``module`` that runs it and
    ``what`` it is (for errors), and has an ``out_path`` (where its result goes)
    and a ``run_id`` (for the log)."""

    module: ClassVar[str]
    what: ClassVar[str]
    out_path: str
    run_id: str

    def save(self, path: Path) -> None:
        write_atomic(Path(path), json.dumps(dataclasses.asdict(self)).encode())

    @classmethod
    def load(cls, path: Path) -> Self:
        return from_dict(cls, json.loads(Path(path).read_text()))


Job = TypeVar("Job", bound=ChildJob)


def from_dict(cls: type[T], raw: dict[str, Any]) -> T:
    """The dataclass ``cls`` from its :func:`dataclasses.asdict` form.

    A field whose type is a dataclass (or a dataclass or None) is built from its
    dictionary the same way; other values are taken as they are. Unknown keys
    are refused (``TypeError``), as the dataclass refuses them.
    """
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in raw.items():
        inner = _dataclass_in(hints.get(name))
        values[name] = from_dict(inner, value) if inner and isinstance(value, dict) else value
    return cls(**values)


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass a field of type ``hint`` holds: ``hint``, or the one in ``X | None``."""
    for candidate in (hint, *typing.get_args(hint)):
        if isinstance(candidate, type) and dataclasses.is_dataclass(candidate):
            return candidate
    return None


def launch(job: ChildJob, job_file: Path, *, timeout_s: float | None = None) -> Any:
    """Save ``job`` to ``job_file``, run ``python -m job.module job_file`` and return
    the result the child wrote at ``job.out_path``.

    All the child's output (progress bars, losses) goes to our stderr, so that
    stdout stays clean for ``--json``. On Linux the child is killed if we die, so
    a SIGKILLed cycle leaves nothing training on. After ``timeout_s`` seconds
    (None: no limit) the child is killed. Raises :class:`JobFailedError` when it
    crashed, ran out of time or left no readable result.
    """
    from retrain.recovery import die_with_parent  # here: it loads the store, children need not

    job.save(job_file)
    out = Path(job.out_path)
    out.unlink(missing_ok=True)  # a result left from an earlier try must not pass for this one
    try:
        done = subprocess.run(
            [sys.executable, "-m", job.module, str(job_file)],
            stdout=sys.stderr,
            check=False,
            timeout=timeout_s,
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
        )
    except subprocess.TimeoutExpired:
        raise JobFailedError(
            f"{job.what} ran past its time limit of {timeout_s:g} s and was stopped"
        ) from None
    if done.returncode != 0:
        raise JobFailedError(f"{job.what} crashed (exit code {done.returncode}); see the log above")
    try:
        return json.loads(out.read_text())
    except (OSError, ValueError) as error:
        raise JobFailedError(f"{job.what} left no readable result: {error}") from error


def complete(job: Job, work: Callable[[Job], Result]) -> Result:
    """Do ``work(job)`` in this process; write its result at ``job.out_path`` and return it."""
    result = work(job)
    write_atomic(Path(job.out_path), json.dumps(result, indent=2).encode())
    return result


def child_main(job_type: type[Job], work: Callable[[Job], Any], argv: list[str] | None) -> int:
    """The ``main`` of a job's module: load the job file ``argv`` names, :func:`complete` it."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit(f"usage: python -m {job_type.module} JOB.json")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    complete(job_type.load(Path(argv[0])), work)
    return 0
