"""feedback on decisions; decisions.propensity and decisions.explored

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("decision_id", sa.String(length=36), nullable=False),
        sa.Column("source", sa.String(length=50), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("expert", sa.String(length=200), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("api_key_id", sa.Integer(), nullable=True),
        sa.Column("tenant", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("decision_id", "source"),
    )
    with op.batch_alter_table("feedback") as batch_op:
        batch_op.create_index(batch_op.f("ix_feedback_decision_id"), ["decision_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_feedback_tenant"), ["tenant"], unique=False)
        batch_op.create_index(batch_op.f("ix_feedback_created_at"), ["created_at"], unique=False)
    with op.batch_alter_table("decisions") as batch_op:
        batch_op.add_column(sa.Column("propensity", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("explored", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("decisions") as batch_op:
        batch_op.drop_column("explored")
        batch_op.drop_column("propensity")
    with op.batch_alter_table("feedback") as batch_op:
        batch_op.drop_index(batch_op.f("ix_feedback_created_at"))
        batch_op.drop_index(batch_op.f("ix_feedback_tenant"))
        batch_op.drop_index(batch_op.f("ix_feedback_decision_id"))
    op.drop_table("feedback")
