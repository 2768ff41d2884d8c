"""decision_dead_letters: records the database refused for their data, kept with the error

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "decision_dead_letters",
        # The record's id, or a hash of a spilled line that could not be read as a record: a replay sets the
        # same record aside once.
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("record", sa.Text(), nullable=False),  # JSON text (escaped, so a NUL the record held fits)
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("decision_dead_letters") as batch_op:
        batch_op.create_index(batch_op.f("ix_decision_dead_letters_failed_at"), ["failed_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("decision_dead_letters") as batch_op:
        batch_op.drop_index(batch_op.f("ix_decision_dead_letters_failed_at"))
    op.drop_table("decision_dead_letters")
