"""retraining tables

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dataset_snapshot",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column(
            "counts",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("path", sa.String(length=1000), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("dataset_snapshot", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_dataset_snapshot_created_at"), ["created_at"], unique=False
        )

    op.create_table(
        "lease",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "promotion_event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=True),
        sa.Column("previous", sa.String(length=64), nullable=True),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("promotion_event", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_promotion_event_at"), ["at"], unique=False)

    op.create_table(
        "retrain_run",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("scheduled_for", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("dataset_id", sa.String(length=32), nullable=True),
        sa.Column("adapter_version", sa.String(length=64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "result",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("scheduled_for"),
    )
    with op.batch_alter_table("retrain_run", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_retrain_run_started_at"), ["started_at"], unique=False)

    op.create_table(
        "adapter_version",
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("base_model", sa.String(length=500), nullable=False),
        sa.Column("path", sa.String(length=1000), nullable=False),
        sa.Column("checksum", sa.String(length=64), nullable=False),
        sa.Column("dataset_id", sa.String(length=32), nullable=True),
        sa.Column("run_id", sa.String(length=32), nullable=True),
        sa.Column(
            "config",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "metrics",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "gate",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["dataset_snapshot.id"],
        ),
        sa.PrimaryKeyConstraint("version"),
    )
    with op.batch_alter_table("adapter_version", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_adapter_version_created_at"), ["created_at"], unique=False
        )
        batch_op.create_index(
            "uq_adapter_one_promoted",
            ["status"],
            unique=True,
            sqlite_where=sa.text("status = 'promoted'"),
            postgresql_where=sa.text("status = 'promoted'"),
        )

    op.create_table(
        "dataset_example",
        sa.Column("dataset_id", sa.String(length=32), nullable=False),
        sa.Column("example_id", sa.String(length=64), nullable=False),
        sa.Column("completion_id", sa.String(length=32), nullable=False),
        sa.Column("split", sa.String(length=8), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["dataset_snapshot.id"],
        ),
        sa.PrimaryKeyConstraint("dataset_id", "example_id"),
    )
    with op.batch_alter_table("dataset_example", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_dataset_example_completion_id"), ["completion_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("dataset_example", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dataset_example_completion_id"))

    op.drop_table("dataset_example")
    with op.batch_alter_table("adapter_version", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_adapter_one_promoted",
            sqlite_where=sa.text("status = 'promoted'"),
            postgresql_where=sa.text("status = 'promoted'"),
        )
        batch_op.drop_index(batch_op.f("ix_adapter_version_created_at"))

    op.drop_table("adapter_version")
    with op.batch_alter_table("retrain_run", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_retrain_run_started_at"))

    op.drop_table("retrain_run")
    with op.batch_alter_table("promotion_event", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_promotion_event_at"))

    op.drop_table("promotion_event")
    op.drop_table("lease")
    with op.batch_alter_table("dataset_snapshot", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dataset_snapshot_created_at"))

    op.drop_table("dataset_snapshot")
