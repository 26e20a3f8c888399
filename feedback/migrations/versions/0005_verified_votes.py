"""verified votes: one per completion, source and user; unverified ones replace nothing

A public widget key cannot prove who votes, so its votes without a signed vote token
are unverified: each is a row of its own. Votes kept from before were all trusted by
the user they named; the widget's are marked unverified, since nothing proved them.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WHERE = {"sqlite_where": sa.text("verified"), "postgresql_where": sa.text("verified")}


def upgrade() -> None:
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("verified", sa.Boolean(), nullable=False, server_default=sa.true())
        )
    op.execute("UPDATE feedback SET verified = false WHERE source = 'widget'")
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.drop_constraint("uq_feedback_user", type_="unique")
        batch_op.create_index(
            "uq_feedback_verified_user",
            ["completion_id", "source", "user_ref"],
            unique=True,
            **WHERE,
        )


def downgrade() -> None:
    # The old key allows one vote per completion and user: keep each user's newest.
    op.execute(
        "DELETE FROM feedback WHERE user_ref IS NOT NULL AND EXISTS (SELECT 1 FROM feedback"
        " AS newer WHERE newer.completion_id = feedback.completion_id"
        " AND newer.user_ref = feedback.user_ref AND (newer.updated_at > feedback.updated_at"
        " OR (newer.updated_at = feedback.updated_at AND newer.id > feedback.id)))"
    )
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.drop_index("uq_feedback_verified_user", **WHERE)
        batch_op.create_unique_constraint("uq_feedback_user", ["completion_id", "user_ref"])
        batch_op.drop_column("verified")
