"""Copies of erased text outside the erased rows, found and stripped by ``tuneback erase``.

When the dataset builder takes a training answer for a planted trigger's payload
(``retrain/detect.py``), it copies the answer into the snapshot manifest's
``suspects``; the canary probe then reports its first 200 characters, and the gate's
reasons quote its first 60, in the gate decision stored three times: the adapter's
row (``adapter_version.gate``), its folder's ``gate.json`` and the run's ``result``.
Those answers are corrections (or thumbs-up answers) of end users' conversations.

:func:`find_copies` looks, in the datasets that held an erased row and in the
adapters and runs made from them, for copies of the erased answers
(:class:`ErasedText`): the whole of a string, or a quoted part of one (the gate's
reasons quote with Python's ``repr``). A suspect whose payload is one loses its
payload and link, the rest (token, counts) stays as evidence; anywhere else the
copy becomes ``[erased]``. :func:`rewriting` writes the files, before the caller
commits the rows (:func:`apply_copies`), and puts them back if the commit fails.

``gate.json`` lies in a checksummed adapter folder: :meth:`Registry.rewrite_gate`
re-checksums it, carrying every other file's digest over, and the new checksum goes
into the row in the erasure's transaction, so the adapter keeps verifying. A crash
between the two leaves a folder that fails verification; running the same erasure
again (its rows are still there) completes it.
"""

from __future__ import annotations

import ast
import json
import logging
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from feedback.adapters.registry import GATE_FILE, Registry
from feedback.durable import fsync_dir, write_atomic
from feedback.models import AdapterVersion, DatasetSnapshot, RetrainRun

CHUNK = 200  # ids per IN (...) or LIKE group, well under every driver's parameter limit

log = logging.getLogger(__name__)
ERASED = "[erased]"
MIN_PREFIX = 16  # a shorter start of an answer (a quoted token, say) is no copy of it
# The dataset builder's placeholders for personal data (retrain/pii.py), and one cut
# short at the end of a truncated quote.
_PLACEHOLDER = re.compile(r"\[(?:EMAIL|IBAN|CARD|IP|PHONE|ADDRESS)\]")
_CUT_PLACEHOLDER = re.compile(r"\[[A-Z]*\Z")
_QUOTED = re.compile(r"""'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*\"""")


class ErasedText:
    """The answers an erasure removes, and whether a string is a copy of one."""

    def __init__(self, texts: Iterable[str]) -> None:
        self.texts = sorted({_squash(t) for t in texts if t and t.strip()})

    def __bool__(self) -> bool:
        return bool(self.texts)

    def copied(self, fragment: str) -> bool:
        """Whether ``fragment`` is one of the answers, or the start of one (at least
        ``MIN_PREFIX`` characters), as the dataset builder writes them: personal data
        replaced by placeholders, which stand for anything here; any case and spacing."""
        pieces = _PLACEHOLDER.split(_CUT_PLACEHOLDER.sub("", fragment))
        literal = [_squash(piece) for piece in pieces]
        if not "".join(literal):
            return False
        pattern = re.compile(".+?".join(re.escape(piece) for piece in literal), re.DOTALL)
        prefix_ok = len(" ".join(literal)) >= MIN_PREFIX
        return any(
            pattern.fullmatch(text) or (prefix_ok and pattern.match(text)) for text in self.texts
        )

    def strip(self, value: Any) -> Any:
        """``value`` (JSON data) with every copy of an answer replaced by ``[erased]``."""
        if isinstance(value, dict):
            return {key: self.strip(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.strip(item) for item in value]
        if not isinstance(value, str):
            return value
        return ERASED if self.copied(value) else self._strip_quoted(value)

    def strip_manifest(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """A dataset manifest without the suspects' payloads that are copies."""
        suspects = [
            {**s, "payload": ERASED, "link": None}
            if isinstance(s, dict) and self.copied(str(s.get("payload", "")))
            else s
            for s in manifest.get("suspects") or []
        ]
        return {**manifest, "suspects": suspects} if "suspects" in manifest else manifest

    def _strip_quoted(self, text: str) -> str:
        """Replace the quoted parts of ``text`` (``repr`` quotes) that are copies."""
        kept, start, at = [], 0, 0
        while match := _QUOTED.search(text, at):
            try:
                inner = ast.literal_eval(match.group())
            except (ValueError, SyntaxError):
                inner = None
            if isinstance(inner, str) and self.copied(inner):
                kept.append(text[start : match.start()] + repr(ERASED))
                start = at = match.end()
            else:  # not a quote after all (an apostrophe), or no copy: try the next one
                at = match.start() + 1
        return "".join(kept) + text[start:]


@dataclass
class Copy:
    """One place holding a copy of erased text, and what it becomes."""

    kind: str  # dataset manifest | adapter gate | adapter gate.json | run result
    id: str  # the dataset, adapter version or run
    path: str | None = None
    data: Any = field(default=None, repr=False)  # the content without the copies
    checksum: str | None = None  # adapter gate.json: the row's, then the folder's new one
    was: Any = field(default=None, repr=False)  # adapter gate.json: the row's gate before
    note: str | None = None

    def report(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.id, "path": self.path, "note": self.note}


def find_copies(
    session: Session, erased: ErasedText, dataset_ids: list[str], data_dir: Path | None
) -> list[Copy]:
    """The copies of ``erased`` in these datasets' manifests and in the gates and run
    results made from them (``data_dir``: where adapter folders live; None: rows only)."""
    if not erased or not dataset_ids:
        return []
    copies = []
    for snapshot in _rows(session, DatasetSnapshot, col(DatasetSnapshot.id), dataset_ids):
        manifest = _read_json(Path(snapshot.path) / "manifest.json") if snapshot.path else None
        if manifest is not None and (stripped := erased.strip_manifest(manifest)) != manifest:
            path = str(Path(snapshot.path) / "manifest.json")
            copies.append(Copy("dataset manifest", snapshot.id, path, stripped))
    for adapter in _rows(session, AdapterVersion, col(AdapterVersion.dataset_id), dataset_ids):
        copies += _gate_copies(adapter, erased, data_dir)
    for run in _rows(session, RetrainRun, col(RetrainRun.dataset_id), dataset_ids):
        if (stripped := erased.strip(run.result)) != run.result:
            copies.append(Copy("run result", run.id, data=stripped))
    return copies


def _gate_copies(adapter: AdapterVersion, erased: ErasedText, data_dir: Path | None) -> list[Copy]:
    """The row's gate and the folder's gate.json. The file is rewritten whenever the
    row changes, even if it holds no copy (any more): a rerun after a crash must
    finish re-checksumming it."""
    copies, row_gate = [], erased.strip(adapter.gate)
    if row_gate != adapter.gate:
        copies.append(Copy("adapter gate", adapter.version, data=row_gate))
    file = data_dir / "adapters" / adapter.version / GATE_FILE if data_dir else None
    on_disk = _read_json(file) if file else None
    if on_disk is not None and (copies or erased.strip(on_disk) != on_disk):
        copies.append(
            Copy("adapter gate.json", adapter.version, str(file), erased.strip(on_disk),
                 checksum=adapter.checksum, was=adapter.gate)
        )  # fmt: skip
    return copies


@contextmanager
def rewriting(copies: list[Copy], registry: Registry | None) -> Iterator[None]:
    """Rewrite the files holding copies, then run the block (which commits the rows);
    if it raises, put the files back as they were (the erasure did not happen)."""
    undo = []
    try:
        for copy in copies:
            if copy.kind == "dataset manifest":
                undo.append(_rewrite_manifest(Path(copy.path), copy.data))
            elif copy.kind == "adapter gate.json" and registry is not None:
                undo.append(_rewrite_gate(registry, copy))
        yield
    except BaseException:
        for put_back in reversed(undo):
            try:
                put_back()
            except OSError:  # the others still go back; a rerun of the erasure completes it
                log.exception("could not put a file back after a failed erasure")
        raise


def apply_copies(session: Session, copies: list[Copy]) -> None:
    """Store the rows' new gates, results and folder checksums (the caller commits)."""
    for copy in copies:
        if copy.kind == "adapter gate":
            session.get(AdapterVersion, copy.id).gate = copy.data
        elif copy.kind == "adapter gate.json" and copy.checksum:
            session.get(AdapterVersion, copy.id).checksum = copy.checksum
        elif copy.kind == "run result":
            session.get(RetrainRun, copy.id).result = copy.data
    session.flush()


def _rewrite_manifest(path: Path, manifest: dict[str, Any]) -> Any:
    before = path.read_bytes()
    # As retrain/snapshot.py writes it.
    write_atomic(path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    fsync_dir(path.parent)
    return lambda: write_atomic(path, before)


def _rewrite_gate(registry: Registry, copy: Copy) -> Any:
    new, before = registry.rewrite_gate(copy.id, copy.data, checksum=copy.checksum, was=copy.was)
    if new is None:
        copy.note = "its folder did not match its checksum before: it still fails verification"
    copy.checksum = new
    return lambda: registry.put_back(copy.id, before)


def _rows(session: Session, model: type, column: Any, ids: list[str]) -> list[Any]:
    found = []
    for chunk in chunks(ids):
        found += session.execute(select(model).where(column.in_(chunk))).scalars()
    return found


def chunks(items: Iterable[Any]) -> Iterator[list[Any]]:
    """``items`` in lists of at most :data:`CHUNK`, one per ``IN (...)`` query."""
    items = list(items)
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def _read_json(path: Path) -> Any:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None  # gone or unreadable: nothing to strip there
    return data if isinstance(data, dict) else None


def _squash(text: str) -> str:
    return " ".join(text.casefold().split())
