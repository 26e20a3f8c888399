"""Recovery from a retrain cycle that was killed outright (SIGKILL, power cut).

Such a cycle records nothing, so the next one cleans up after it, under the
cycle lease: it takes the lease over when its holder is a dead process on this
machine (:func:`holder_process`, :func:`alive`; a holder on another machine is
left to expire), marks the dead run ``failed`` with an ``abandoned`` error, and
removes what the run left half-written (:func:`recover`). Training and
evaluation children die with the cycle (:func:`die_with_parent`), so nothing
keeps training for a run that no longer exists; a cycle that lost its lease
stops its own (:func:`stop_children`).
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
from pathlib import Path

from sqlalchemy import Engine, select, update
from sqlmodel import col

from feedback.adapters.registry import Registry
from feedback.db import write_session
from feedback.models import DatasetSnapshot, RetrainRun, utcnow
from feedback.settings import Settings

log = logging.getLogger("retrain.cycle")


def die_with_parent() -> None:
    """In the forked child, before exec: SIGKILL me when my parent dies (Linux)."""
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def holder_process(holder: str) -> tuple[str, int | None]:
    """(host, pid) of a lease holder named ``host:pid:tag``."""
    host, _, rest = holder.rpartition(":")[0].rpartition(":")
    try:
        return host, int(rest)
    except ValueError:
        return host, None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped by its parent) is dead too
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def stop_children(folder: Path) -> list[int]:
    """SIGKILL this process's children whose command line names a file in ``folder``
    (the job files of a run's work folder); return their pids. Linux (``/proc``)
    only; elsewhere nothing is stopped and the cycle stops after the child ends."""
    me, prefix, stopped = os.getpid(), f"{folder}{os.sep}".encode(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rpartition(")")[2].split()[1])
            args = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not ours to read
        if ppid == me and any(arg.startswith(prefix) for arg in args):
            try:
                os.kill(int(stat.parent.name), signal.SIGKILL)
                stopped.append(int(stat.parent.name))
            except ProcessLookupError:
                pass
    return stopped


def recover(settings: Settings, engine: Engine, runs: list[RetrainRun]) -> None:
    """Clean up after cycles that died without finishing (we hold the lease now).

    ``runs`` are this call's own (queued, one per lane): every other run that
    started before them and never finished becomes ``failed`` (abandoned), its
    work folder goes, and so do dataset folders without a row and adapter
    folders without a row (:meth:`Registry.recover`, which also rewrites every
    lane's ``CURRENT``).
    """
    ours = [run.id for run in runs]
    latest = max(run.started_at for run in runs)
    with write_session(engine) as session:
        dead = list(
            session.execute(
                select(RetrainRun.id).where(
                    col(RetrainRun.finished_at).is_(None),
                    col(RetrainRun.id).not_in(ours),
                    RetrainRun.started_at <= latest,
                )
            ).scalars()
        )
        if dead:
            session.execute(
                update(RetrainRun)
                .where(col(RetrainRun.id).in_(dead))
                .values(status="failed", finished_at=utcnow(),
                        error=f"abandoned: the process died; found by run {ours[0]}")
            )  # fmt: skip
        snapshots = set(session.execute(select(DatasetSnapshot.id)).scalars())
        session.commit()
    removed = [settings.data_dir / "runs" / run_id for run_id in dead]
    datasets = settings.data_dir / "datasets"
    if datasets.is_dir():
        removed += [d for d in datasets.iterdir() if d.is_dir() and d.name not in snapshots]
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
    removed += Registry.from_settings(settings, engine).recover()
    for run_id in dead:
        log.warning("run %s: marked run %s failed (abandoned: its process died)", ours[0], run_id)
    if removed:
        log.info("run %s: removed %d folders left by crashed runs", ours[0], len(removed))
