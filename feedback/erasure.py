"""Erasure: remove one end user's, or one completion's, data from the store.

``tuneback erase --user REF`` and ``tuneback erase --completion ID`` call
:func:`plan_erasure` then :func:`erase`, in one transaction: either every row
goes or none does.

What goes. For a user: every vote they cast (with its comment) and every
completion logged with ``metadata.user`` equal to REF (the conversation, the
answer), with all votes and corrections of those completions. For a
completion: it, its votes and its corrections. In both cases the idempotency
records whose stored answers name an erased row (their bodies can repeat a
comment or a correction) go too.

What stays, and why. Lineage rows (``dataset_example``: a dataset id, an
example id, a completion id; no text) stay, so that the adapters trained on
erased rows can be listed now and later. The erasure report lists those
adapters and the dataset snapshot folders on disk that still hold the rows'
(scrubbed) text: retraining without them, and deleting or rebuilding those
folders, is the operator's decision, not something a command should do behind
their back. The next dataset built does not contain the rows: they no longer
exist.

Copies of the erased answers that the retrain cycle made outside the rows go
too (:mod:`feedback.erasure_copies`): trigger-suspect payloads in the manifests
of the datasets that held the rows, and the canary quotes in the gate decisions
of the adapters and runs made from them (rows, and each adapter folder's
``gate.json``, re-checksummed so that the adapter still verifies). The report
lists every place it rewrote.

The audit line (:meth:`ErasurePlan.audit`) holds counts, the erased row ids
(random, meaningless once the rows are gone), the adapters and the places
rewritten; never the user reference or any text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session
from sqlmodel import col

from feedback.erasure_copies import Copy, ErasedText, apply_copies, chunks, find_copies
from feedback.exceptions import InvalidInputError, NotFoundError
from feedback.models import (
    AdapterVersion,
    Completion,
    Correction,
    DatasetExample,
    DatasetSnapshot,
    Feedback,
    IdempotencyRecord,
    utcnow,
)


@dataclass
class ErasurePlan:
    """The rows an erasure removes, and what was trained on them."""

    by: str  # "user" | "completion"
    completion_ids: list[str] = field(default_factory=list)
    vote_ids: list[str] = field(default_factory=list)
    correction_ids: list[str] = field(default_factory=list)
    idempotency_keys: list[tuple[str, str]] = field(default_factory=list)
    adapters: list[dict[str, Any]] = field(default_factory=list)
    datasets: list[dict[str, Any]] = field(default_factory=list)
    copies: list[Copy] = field(default_factory=list)  # of erased answers, outside the rows

    @property
    def empty(self) -> bool:
        return not (self.completion_ids or self.vote_ids or self.correction_ids)

    def counts(self) -> dict[str, int]:
        return {
            "completions": len(self.completion_ids),
            "votes": len(self.vote_ids),
            "corrections": len(self.correction_ids),
            "idempotency_records": len(self.idempotency_keys),
        }

    def audit(self, *, dry_run: bool) -> dict[str, Any]:
        """One JSON-ready line for the audit log, free of personal data."""
        return {
            "at": utcnow().isoformat(),
            "action": "erase",
            "by": self.by,
            "dry_run": dry_run,
            "counts": self.counts(),
            "completion_ids": self.completion_ids,
            "vote_ids": self.vote_ids,
            "adapters": [a["version"] for a in self.adapters],
            "copies": [{"kind": c.kind, "id": c.id} for c in self.copies],
        }


def plan_erasure(
    session: Session,
    *,
    user: str | None = None,
    completion_id: str | None = None,
    data_dir: Path | None = None,
) -> ErasurePlan:
    """What erasing ``user`` (a vote's ``user`` / a completion's ``metadata.user``)
    or ``completion_id`` would remove. Reads only. Exactly one must be given.
    ``data_dir`` is where dataset snapshots and adapter folders hold copies of the
    erased answers (None: only those in rows are found)."""
    if (user is None) == (completion_id is None):
        raise InvalidInputError("give exactly one of a user reference or a completion id")
    if completion_id is not None:
        if session.get(Completion, completion_id) is None:
            raise NotFoundError(f"completion {completion_id!r} does not exist")
        plan, voted_on = ErasurePlan("completion", [completion_id]), set()
    else:
        if not user or not user.strip():
            raise InvalidInputError("the user reference is empty")
        owned = select(Completion.id).where(col(Completion.meta)["user"].as_string() == user)
        plan = ErasurePlan("user", sorted(session.execute(owned).scalars()))
        own_votes = session.execute(
            select(Feedback.id, Feedback.completion_id).where(Feedback.user_ref == user)
        ).all()
        plan.vote_ids = [vote_id for vote_id, _ in own_votes]
        voted_on = {cid for _, cid in own_votes} - set(plan.completion_ids)
    for ids in chunks(plan.completion_ids):
        plan.vote_ids += session.execute(
            select(Feedback.id).where(col(Feedback.completion_id).in_(ids))
        ).scalars()
        plan.correction_ids += session.execute(
            select(Correction.id).where(col(Correction.completion_id).in_(ids))
        ).scalars()
    plan.vote_ids = sorted(set(plan.vote_ids))
    plan.correction_ids.sort()
    plan.idempotency_keys = _idempotency_keys(
        session, [*plan.completion_ids, *plan.vote_ids, *plan.correction_ids]
    )
    plan.adapters, plan.datasets = _trained_on(session, plan.completion_ids, voted_on)
    erased = ErasedText(_answers(session, plan))
    plan.copies = find_copies(session, erased, [d["id"] for d in plan.datasets], data_dir)
    return plan


def erase(session: Session, plan: ErasurePlan) -> None:
    """Delete the planned rows and store the gates and run results without the copies
    (their files: :func:`feedback.erasure_copies.rewriting`). The caller commits (or
    rolls back: nothing changes); an engine from :func:`feedback.db.make_engine`
    syncs the commit to disk."""
    for keys in chunks(plan.idempotency_keys):
        session.execute(
            delete(IdempotencyRecord).where(
                or_(
                    *(
                        (IdempotencyRecord.api_key_id == owner) & (IdempotencyRecord.key == key)
                        for owner, key in keys
                    )
                )
            )
        )
    for model, ids in (
        (Feedback, plan.vote_ids),
        (Correction, plan.correction_ids),
        (Completion, plan.completion_ids),
    ):
        for chunk in chunks(ids):
            session.execute(delete(model).where(col(model.id).in_(chunk)))
    apply_copies(session, plan.copies)
    session.flush()


def _answers(session: Session, plan: ErasurePlan) -> list[str]:
    """The erased answers a dataset could have copied: corrections, and completions'
    responses (thumbs-up positives)."""
    found: list[str] = []
    for model, column, ids in (
        (Correction, Correction.corrected_response, plan.correction_ids),
        (Completion, Completion.response, plan.completion_ids),
    ):
        for chunk in chunks(ids):
            found += session.execute(select(column).where(col(model.id).in_(chunk))).scalars()
    return found


def _idempotency_keys(session: Session, ids: list[str]) -> list[tuple[str, str]]:
    """Records whose stored answer names one of ``ids`` (row ids are 32 hex
    characters, so a substring match cannot hit another id by accident)."""
    found: set[tuple[str, str]] = set()
    for chunk in chunks(ids):
        rows = session.execute(
            select(IdempotencyRecord.api_key_id, IdempotencyRecord.key).where(
                or_(*(col(IdempotencyRecord.response_body).contains(i) for i in chunk))
            )
        ).all()
        found.update((owner, key) for owner, key in rows)
    return sorted(found)


def _trained_on(
    session: Session, erased: list[str], voted_on: set[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Adapters, and dataset snapshots, whose datasets held an erased completion,
    or a thumbs-up positive the user's vote helped make."""
    dataset_ids: set[str] = set()
    for chunk in chunks(erased):
        dataset_ids.update(
            session.execute(
                select(DatasetExample.dataset_id).where(
                    col(DatasetExample.completion_id).in_(chunk)
                )
            ).scalars()
        )
    for chunk in chunks(sorted(voted_on)):
        dataset_ids.update(
            session.execute(
                select(DatasetExample.dataset_id).where(
                    col(DatasetExample.completion_id).in_(chunk), DatasetExample.kind == "positive"
                )
            ).scalars()
        )
    adapters, datasets = [], []
    for chunk in chunks(sorted(dataset_ids)):
        for a in session.execute(
            select(AdapterVersion).where(col(AdapterVersion.dataset_id).in_(chunk))
        ).scalars():
            adapters.append({"version": a.version, "status": a.status, "dataset_id": a.dataset_id})
        for d in session.execute(
            select(DatasetSnapshot).where(col(DatasetSnapshot.id).in_(chunk))
        ).scalars():
            datasets.append({"id": d.id, "path": d.path})
    return sorted(adapters, key=lambda a: a["version"]), sorted(datasets, key=lambda d: d["id"])
