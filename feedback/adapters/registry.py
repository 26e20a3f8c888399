"""The adapter registry: versions on disk and in the store; promote, roll back, recover.

Each adapter lives in ``<root>/<version>/`` in the folder format of
:mod:`feedback.adapters.files`; its row (:mod:`feedback.adapters.store`) holds
the sha256 of the folder's ``checksums.json``, so one digest vouches for it.
Needs neither torch nor the training code: the retrain cycle, the serving
process, the command line and the dashboard all call this same class, built by
:meth:`Registry.from_settings`, so each applies the same checks.

Crash safety. :meth:`Registry.add` builds the folder under ``.tmp-*``, fsyncs
it, renames it into place, and only then inserts the row: a crash leaves a
temp folder or an unregistered folder (both removed by :meth:`Registry.recover`),
never a row without its files. The database is authoritative for which adapter
is promoted; a switch is one transaction (see :mod:`feedback.adapters.store`).
``<root>/CURRENT`` names the default lane's promoted version for operators
(``<root>/CURRENT-<lane>`` another lane's), rewritten after each commit; it may
lag after a crash, until :meth:`Registry.recover`.

Lanes. A registry works on one lane (:mod:`feedback.lanes`): :meth:`Registry.add`
registers into it, and promote, roll back, ``promoted`` and ``list`` see only
it. Version names are unique across lanes, so folders need no lane level; a
version of another lane is refused by name. :meth:`Registry.for_lane` gives the
same registry on another lane.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from feedback import faults
from feedback.adapters import store as adapter_store
from feedback.adapters.files import (
    CHECKSUMS,
    MANIFEST,
    CorruptAdapterError,
    check_fits_base,
    checksums_bytes,
    generated_files,
    json_bytes,
    parse_checksums,
    source_files,
    stage,
    verify_adapter_dir,
    write_durably,
)
from feedback.base_model import served_base_model
from feedback.db import write_session
from feedback.durable import fsync_dir
from feedback.exceptions import InvalidInputError, NotFoundError, TunebackError
from feedback.lanes import check_name
from feedback.models import DEFAULT_LANE, AdapterVersion
from feedback.settings import Settings

POINTER = "CURRENT"
TMP_PREFIX = ".tmp-"
GATE_FILE = "gate.json"
log = logging.getLogger(__name__)
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class AdapterRejectedError(TunebackError, ValueError):
    """Promotion of an adapter the gate rejected, without ``force``."""

    code, status = "adapter_rejected", 409


def _checkpoint(step: str) -> None:
    """A named step of add, promote or rollback, where a crash test may die
    (``TUNEBACK_FAULT_AT=registry.<step>``, see :mod:`feedback.faults`)."""
    faults.checkpoint(f"registry.{step}")


# --- the registry --------------------------------------------------------------


class Registry:
    """Adapter versions of one lane under ``root``, with their rows in the store.

    ``base_model``, when given, is the model this deployment serves: verify and
    promote then refuse adapters trained for any other.
    """

    def __init__(
        self,
        root: Path,
        engine: Engine,
        *,
        base_model: str | None = None,
        lane: str = DEFAULT_LANE,
    ) -> None:
        self.root = Path(root)
        self.engine = engine
        self.base_model = base_model
        self.lane = check_name(lane)

    @classmethod
    def from_settings(
        cls, settings: Settings, engine: Engine, *, lane: str = DEFAULT_LANE
    ) -> Registry:
        """The deployment's registry: ``<data dir>/adapters``, checking adapters against
        the base model these settings serve (see :func:`feedback.base_model.served_base_model`)."""
        served = served_base_model(settings.base_model, settings.data_dir)
        return cls(Path(settings.data_dir) / "adapters", engine, base_model=served, lane=lane)

    def for_lane(self, lane: str) -> Registry:
        return Registry(self.root, self.engine, base_model=self.base_model, lane=lane)

    def path(self, version: str) -> Path:
        if not _VERSION.match(version):
            raise InvalidInputError(f"{version!r} is not a valid adapter version name")
        return self.root / version

    def get(self, version: str) -> AdapterVersion:  # a version of another lane is not found
        self.path(version)  # a name no version can have is refused before any query
        with Session(self.engine, expire_on_commit=False) as session:
            return self._own(adapter_store.get_adapter_version(session, version))

    def _own(self, adapter: AdapterVersion) -> AdapterVersion:
        if adapter.lane != self.lane:
            raise NotFoundError(
                f"adapter version {adapter.version!r} belongs to lane {adapter.lane!r}, "
                f"not {self.lane!r}"
            )
        return adapter

    def promoted(self) -> AdapterVersion | None:
        with Session(self.engine, expire_on_commit=False) as session:
            return adapter_store.promoted_adapter(session, self.lane)

    def add(
        self,
        source_dir: Path,
        *,
        base_model: str,
        version: str | None = None,
        dataset_id: str | None = None,
        run_id: str | None = None,
        config: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        gate: dict[str, Any] | None = None,
        status: str = "candidate",
    ) -> AdapterVersion:
        """Store the adapter in ``source_dir`` as a new version and register it.

        The folder is complete and fsynced before it appears under its name,
        and the row is inserted only after that: see the module docstring.
        """
        if status not in ("candidate", "rejected"):
            raise InvalidInputError(f"a new adapter is a candidate or rejected, not {status!r}")
        source_dir = Path(source_dir)
        files = source_files(source_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        version = self._free_name() if version is None else version
        final = self.path(version)
        if final.exists() or self._registered(version):
            raise adapter_store.AdapterVersionExistsError(f"adapter {version!r} already exists")
        extra = generated_files(
            version=version, base_model=base_model, dataset_id=dataset_id, run_id=run_id,
            config=config, metrics=metrics, gate=gate,
        )  # fmt: skip
        checksum = self._place(source_dir, files, extra, final, base_model)
        _checkpoint("renamed")
        row = dict(dataset_id=dataset_id, run_id=run_id, config=config, metrics=metrics, gate=gate)
        try:
            with write_session(self.engine) as session:
                adapter = adapter_store.create_adapter_version(
                    session, version=version, base_model=base_model, path=str(final.resolve()),
                    checksum=checksum, status=status, lane=self.lane, **row,
                )  # fmt: skip
                _checkpoint("inserted")
                session.commit()
        except BaseException:
            self._forget_unregistered(version)
            raise
        _checkpoint("committed")
        return adapter

    def verify(self, version: str, *, expected_base_model: str | None = None) -> None:
        """Raise :class:`CorruptAdapterError` unless ``version``'s folder is intact."""
        self._verify_row(self.get(version), expected_base_model)

    def promote(self, version: str, *, actor: str, force: bool = False) -> AdapterVersion:
        """Make ``version`` the serving adapter, retiring the one before.

        Refuses an adapter the gate rejected, or one whose folder fails
        :meth:`verify`, unless ``force``; a forced promotion is recorded as such.
        """
        problems: builtins.list[str] = []
        try:
            self.verify(version)
        except CorruptAdapterError as error:
            if not force:
                raise CorruptAdapterError(f"{error}; promote with force to override") from error
            problems.append(str(error))
        with write_session(self.engine) as session:
            adapter = self._own(adapter_store.get_adapter_version(session, version))
            if adapter.status == "rejected" and not force:
                reasons = "; ".join(adapter.gate.get("reasons") or []) or "no reasons recorded"
                raise AdapterRejectedError(
                    f"adapter {version!r} was rejected by the gate ({reasons}); "
                    "promote with force to override"
                )
            forced = bool(problems) or adapter.status == "rejected"
            action = "force-promote" if forced else "promote"
            adapter = adapter_store.promote_adapter(
                session, version=version, actor=actor, action=action
            )
            _checkpoint("promoted")
            session.commit()
        _checkpoint("committed")
        self._update_pointer(version)
        return adapter

    def rollback(self, *, actor: str) -> AdapterVersion | None:
        """Go back to the lane's previously promoted adapter (None: the base model).

        The adapter rolled back to must still verify; otherwise nothing changes.
        """
        with write_session(self.engine) as session:
            adapter_store.lock_promotions(session)
            _, target = adapter_store.rollback_target(session, self.lane)
            if target is not None:
                self._verify_row(target, None)
            restored = adapter_store.rollback_adapter(session, actor=actor, lane=self.lane)
            _checkpoint("rolled_back")
            session.commit()
        _checkpoint("committed")
        self._update_pointer(restored.version if restored else None)
        return restored

    def recover(self) -> builtins.list[Path]:
        """Remove what crashed adds left behind and rewrite every lane's ``CURRENT``;
        return the removed.

        Removes ``.tmp-*`` entries and version folders that have a manifest but
        no row. Run it when no other process is adding adapters (at the start
        of a retrain cycle, under its lease): an add in flight looks the same.
        """
        if not self.root.is_dir():
            return []
        with Session(self.engine) as session:
            rows = adapter_store.list_adapter_versions(session)
        known, lanes = {a.version for a in rows}, {a.lane for a in rows}
        promoted = {a.lane: a for a in rows if a.status == "promoted"}
        removed = []
        for entry in sorted(self.root.iterdir()):
            orphan = entry.is_dir() and entry.name not in known and (entry / MANIFEST).is_file()
            if entry.name.startswith(TMP_PREFIX) or orphan:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed.append(entry)
        if removed:
            fsync_dir(self.root)
        for lane in sorted(lanes | {DEFAULT_LANE}):
            current = promoted.get(lane)
            self.for_lane(lane)._write_pointer(current.version if current else None)
        return removed

    def rewrite_gate(
        self, version: str, gate: dict[str, Any], *, checksum: str, was: Any = None
    ) -> tuple[str | None, dict[str, bytes]]:
        """Replace ``version``'s ``gate.json`` with ``gate`` and re-checksum the folder
        (an erasure strips end users' text from it); return the folder's new checksum
        and the bytes replaced (for :meth:`put_back`).

        The caller stores the new checksum in the row, in its own transaction: until
        then verification fails. ``checksums.json`` is rewritten only when it is the
        registered one (``checksum``), or that one with ``gate.json``'s digest already
        changed by a rewrite the caller did not commit (``was``: the row's gate); every
        other file's digest is carried over, not recomputed, so a folder altered since
        its registration still fails verification. Otherwise only ``gate.json`` is
        replaced, and the checksum returned is None.
        """
        folder = self.path(version)
        body = json_bytes(gate)
        before = {
            n: (folder / n).read_bytes() for n in (GATE_FILE, CHECKSUMS) if (folder / n).is_file()
        }
        listed = parse_checksums(before.get(CHECKSUMS, b""))
        registered = listed is not None and (
            _sha(before[CHECKSUMS]) == checksum
            or _sha(checksums_bytes(listed | {GATE_FILE: _sha(json_bytes(was))})) == checksum
        )
        if not registered:
            self._replace_files(folder, {GATE_FILE: body})
            return None, before
        checksums = checksums_bytes(listed | {GATE_FILE: _sha(body)})
        self._replace_files(folder, {GATE_FILE: body, CHECKSUMS: checksums})
        return _sha(checksums), before

    def put_back(self, version: str, files: dict[str, bytes]) -> None:
        """Write back what :meth:`rewrite_gate` replaced (its caller's commit failed)."""
        self._replace_files(self.path(version), files)

    def list(self) -> builtins.list[AdapterVersion]:
        """The lane's registered adapters, newest first (folders without a row are not adapters)."""
        with Session(self.engine, expire_on_commit=False) as session:
            return adapter_store.list_adapter_versions(session, lane=self.lane)

    # --- internals ---

    def _verify_row(self, adapter: AdapterVersion, expected_base_model: str | None) -> None:
        base = expected_base_model or self.base_model or adapter.base_model
        folder = self.path(adapter.version)
        verify_adapter_dir(
            folder,
            expected_checksum=adapter.checksum,
            expected_base_model=base,
            expected_version=adapter.version,
        )
        if Path(base).is_dir():  # shapes against the base model's layers (headers only)
            check_fits_base(folder, base)

    def _free_name(self) -> str:
        """The next ``vNNNN`` that neither a row nor a folder (a crashed add) uses."""
        with Session(self.engine) as session:
            name = adapter_store.next_version_name(session)
        while (self.root / name).exists():
            name = f"v{int(name[1:]) + 1:04d}"
        return name

    def _place(
        self, source: Path, files: builtins.list[str], extra: dict[str, Any], final: Path, base: str
    ) -> str:
        """Build the folder under a temp name, verify it, rename it to ``final``."""
        staging = self.root / f"{TMP_PREFIX}{final.name}-{secrets.token_hex(4)}"
        try:
            checksum = stage(source, files, staging, extra)
            verify_adapter_dir(staging, expected_checksum=checksum, expected_base_model=base)
            if Path(base).is_dir():
                check_fits_base(staging, base)
            _checkpoint("staged")
            os.replace(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        fsync_dir(self.root)
        return checksum

    def _registered(self, version: str) -> bool:
        with Session(self.engine) as session:
            return session.get(AdapterVersion, version) is not None

    def _forget_unregistered(self, version: str) -> None:
        """Remove the folder of an add whose row did not commit (if it surely did not)."""
        try:
            registered = self._registered(version)
        except Exception:  # noqa: BLE001 - the database is unreachable: recover() decides later
            return
        if not registered:
            shutil.rmtree(self.path(version), ignore_errors=True)

    def _update_pointer(self, version: str | None) -> None:
        """Rewrite ``CURRENT`` after a committed switch; failing to is only worth a warning,
        since the database already says which adapter is promoted."""
        try:
            self._write_pointer(version)
        except OSError as error:
            log.warning("could not update %s (run recover() later): %s", self.pointer, error)

    def _replace_files(self, folder: Path, files: dict[str, bytes]) -> None:
        """Replace files of an adapter folder, each written under a temporary name in
        the root (never in the folder, where verification would see it; :meth:`recover`
        removes what a crash leaves), fsynced and renamed; ``checksums.json`` last."""
        for name in sorted(files, key=lambda name: name == CHECKSUMS):
            staging = self.root / f"{TMP_PREFIX}{folder.name}-{secrets.token_hex(4)}"
            write_durably(staging, [files[name]])
            os.replace(staging, folder / name)
        fsync_dir(folder)

    @property
    def pointer(self) -> Path:
        name = POINTER if self.lane == DEFAULT_LANE else f"{POINTER}-{self.lane}"
        return self.root / name

    def _write_pointer(self, version: str | None) -> None:
        """Atomically write ``CURRENT``: the promoted version, or empty for the base model."""
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f"{TMP_PREFIX}{POINTER}-{secrets.token_hex(4)}"
        write_durably(staging, [f"{version or ''}\n".encode()])
        _checkpoint("pointer_staged")
        os.replace(staging, self.pointer)
        fsync_dir(self.root)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
