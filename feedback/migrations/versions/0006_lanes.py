"""lanes: named use cases, each with its own data, adapters and serving name

Every row from before lanes belongs to the ``default`` lane, which always exists.
One adapter per lane may be promoted; a scheduled tick may have one run per lane.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PROMOTED = {
    "sqlite_where": sa.text("status = 'promoted'"),
    "postgresql_where": sa.text("status = 'promoted'"),
}
LANED = ("completion", "dataset_snapshot", "retrain_run", "adapter_version", "promotion_event")
# 0002 left retrain_run's unique constraint on scheduled_for unnamed; this names it.
NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _json():
    return sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    lane = op.create_table(
        "lane",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("settings", _json(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.execute(
        lane.insert().values(
            name="default",
            description="Everything from before lanes, and what names no lane.",
            settings={},
            created_at=sa.func.current_timestamp(),
        )
    )
    for table in LANED:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(
                sa.Column("lane", sa.String(length=64), nullable=False, server_default="default")
            )
            batch_op.create_index(f"ix_{table}_lane", ["lane"], unique=False)
    with op.batch_alter_table("serving_replica", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lanes", _json(), nullable=False, server_default="{}"))
    with op.batch_alter_table("adapter_version", schema=None) as batch_op:
        batch_op.drop_index("uq_adapter_one_promoted", **PROMOTED)
        batch_op.create_index("uq_adapter_one_promoted", ["lane"], unique=True, **PROMOTED)
    _retrain_run_unique(old=("scheduled_for",), new=("scheduled_for", "lane"))


def downgrade() -> None:
    # Only the default lane existed before: other lanes' rows cannot go back, and folding
    # them into one lane would mix their data and break the one-promoted rule. Refuse
    # before changing anything (SQLite cannot roll back a half-done batch alteration).
    bind = op.get_bind()
    for table in ("lane", *LANED):
        column = "name" if table == "lane" else "lane"
        found = bind.execute(sa.text(f"SELECT 1 FROM {table} WHERE {column} <> 'default' LIMIT 1"))
        if found.first() is not None:
            raise RuntimeError(
                f"cannot downgrade below lanes: {table} has rows of lanes other than default; "
                "erase those lanes' data first (or restore a backup from before the upgrade)"
            )
    _retrain_run_unique(old=("scheduled_for", "lane"), new=("scheduled_for",))
    with op.batch_alter_table("adapter_version", schema=None) as batch_op:
        batch_op.drop_index("uq_adapter_one_promoted", **PROMOTED)
        batch_op.create_index("uq_adapter_one_promoted", ["status"], unique=True, **PROMOTED)
    with op.batch_alter_table("serving_replica", schema=None) as batch_op:
        batch_op.drop_column("lanes")
    for table in reversed(LANED):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(f"ix_{table}_lane")
            batch_op.drop_column("lane")
    op.drop_table("lane")


def _retrain_run_unique(*, old: tuple[str, ...], new: tuple[str, ...]) -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    with op.batch_alter_table("retrain_run", schema=None, naming_convention=NAMING) as batch_op:
        unique = "retrain_run_scheduled_for_key" if postgresql else "uq_retrain_run_scheduled_for"
        if old == ("scheduled_for",):
            batch_op.drop_constraint(unique, type_="unique")
        else:
            batch_op.drop_index("uq_retrain_run_tick")
        if new == ("scheduled_for",):
            batch_op.create_unique_constraint(unique, ["scheduled_for"])
        else:
            batch_op.create_index("uq_retrain_run_tick", list(new), unique=True)
