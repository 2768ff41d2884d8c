"""decisions.answer beside decisions.prompt (text kept per virtual model); the retraining window's index (virtual
model and time, replacing the one on virtual model alone) and the index of the decisions still holding text

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TEXT_KEPT = sa.text("prompt IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("decisions") as batch_op:
        batch_op.add_column(sa.Column("answer", sa.Text(), nullable=True))
        batch_op.drop_index("ix_decisions_virtual_model")
        batch_op.create_index("ix_decisions_virtual_model_created_at", ["virtual_model", "created_at"], unique=False)
        batch_op.create_index("ix_decisions_text_kept", ["virtual_model", "created_at"], unique=False,
                              postgresql_where=TEXT_KEPT, sqlite_where=TEXT_KEPT)


def downgrade() -> None:
    with op.batch_alter_table("decisions") as batch_op:
        batch_op.drop_index("ix_decisions_text_kept")
        batch_op.drop_index("ix_decisions_virtual_model_created_at")
        batch_op.create_index("ix_decisions_virtual_model", ["virtual_model"], unique=False)
        batch_op.drop_column("answer")
