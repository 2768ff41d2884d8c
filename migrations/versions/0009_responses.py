"""responses: the Responses API's stored responses

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "responses",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("api_key_id", sa.Integer(), nullable=True),
        sa.Column("tenant", sa.String(length=200), nullable=True),
        sa.Column("messages", sa.Text(), nullable=False),
        sa.Column("response", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("responses") as batch_op:
        batch_op.create_index(batch_op.f("ix_responses_created_at"), ["created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("responses") as batch_op:
        batch_op.drop_index(batch_op.f("ix_responses_created_at"))
    op.drop_table("responses")
