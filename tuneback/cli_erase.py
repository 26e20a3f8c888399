"""``tuneback erase``: remove an end user's or a completion's data (right to erasure)."""

from __future__ import annotations

import json
import logging
import os

import click

AUDIT_FILE = ("audit", "erasure.jsonl")
log = logging.getLogger("tuneback.erase")


@click.command("erase")
@click.option("--user", "user", help="The end user's reference (a vote's `user`, a "
              "completion's `metadata.user`).")  # fmt: skip
@click.option("--completion", "completion_id", help="One completion id.")
@click.option("--dry-run", is_flag=True, help="Show what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def erase(user: str | None, completion_id: str | None, dry_run: bool, as_json: bool) -> None:
    """Delete a user's (or a completion's) completions, votes, corrections and
    idempotency records in one transaction, and list the adapters trained on them.
    Copies of their answers in dataset manifests (trigger suspects) and in gate
    decisions (rows and adapter folders' gate.json) are rewritten without them.

    An audit line without personal data is appended to <data dir>/audit/erasure.jsonl.
    """
    from sqlalchemy.orm import Session

    from feedback import db, erasure
    from feedback.adapters.registry import Registry
    from feedback.erasure_copies import rewriting
    from tuneback.runtime import load_settings, open_engine

    if (user is None) == (completion_id is None):
        raise click.UsageError("give exactly one of --user REF or --completion ID")
    settings = load_settings()
    with open_engine(settings) as engine:
        opener = Session(engine, expire_on_commit=False) if dry_run else db.write_session(engine)
        with opener as session:
            plan = erasure.plan_erasure(
                session, user=user, completion_id=completion_id, data_dir=settings.data_dir
            )
            if not dry_run:
                registry = Registry.from_settings(settings, engine)
                # Files first (the new gate.json checksums go into the rows), put back
                # if the commit fails.
                with rewriting(plan.copies, registry):
                    erasure.erase(session, plan)
                    # On disk when it returns (db.make_engine: SQLite synchronous=FULL,
                    # PostgreSQL synchronous_commit on): only then may the audit say "erased".
                    session.commit()
    audit = plan.audit(dry_run=dry_run)
    if not dry_run and not plan.empty:
        _append_audit(settings.data_dir.joinpath(*AUDIT_FILE), audit)
    _report(plan, dry_run=dry_run, as_json=as_json)


def _append_audit(path, line: dict) -> None:  # noqa: ANN001
    """Append one line and fsync it: the erasure is committed, its record must last."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(line, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _report(plan, *, dry_run: bool, as_json: bool) -> None:  # noqa: ANN001
    counts = plan.counts()
    if as_json:
        report = {"dry_run": dry_run, "counts": counts, "completion_ids": plan.completion_ids,
                  "adapters": plan.adapters, "datasets": plan.datasets,
                  "copies": [c.report() for c in plan.copies]}  # fmt: skip
        click.echo(json.dumps(report, default=str))
        return
    verb = "would erase" if dry_run else "erased"
    click.echo(
        f"{verb} {counts['completions']} completions, {counts['votes']} votes, "
        f"{counts['corrections']} corrections, {counts['idempotency_records']} idempotency records"
    )
    if plan.empty:
        click.echo("nothing matched: no rows hold this reference", err=True)
    for adapter in plan.adapters:
        click.echo(
            f"adapter {adapter['version']} ({adapter['status']}) was trained on a dataset "
            f"({adapter['dataset_id']}) that included these rows"
        )
    for copy in plan.copies:
        where = f" ({copy.path})" if copy.path else ""
        note = f": {copy.note}" if copy.note else ""
        verb = "would strip" if dry_run else "stripped"
        click.echo(f"{verb} a copy of their text from {copy.kind} {copy.id}{where}{note}")
    for dataset in plan.datasets:
        click.echo(f"dataset snapshot {dataset['id']} still holds their text at {dataset['path']}")
    if plan.adapters:
        click.echo(
            "retrain without these rows (`tuneback retrain`) and roll back or retire the "
            "adapters listed if they must not keep what they learned from them",
            err=True,
        )


COMMANDS = (erase,)
