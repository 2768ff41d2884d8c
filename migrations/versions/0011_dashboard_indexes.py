"""the dashboard's indexes: decisions by tenant, chosen expert, status and router version, each with its time
(replacing the indexes on tenant, chosen expert and status alone, which they serve too), and the decisions a
shadow version also took, by time

Revision ID: 0011
Revises: 0010
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REPLACED = ("tenant", "chosen_expert", "status")
SHADOWED = sa.text("shadow_version IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("decisions") as batch_op:
        for column in REPLACED:
            batch_op.drop_index(f"ix_decisions_{column}")
        for column in (*REPLACED, "router_version"):
            batch_op.create_index(f"ix_decisions_{column}_created_at", [column, "created_at"], unique=False)
        batch_op.create_index(
            "ix_decisions_shadowed", ["created_at"], unique=False, postgresql_where=SHADOWED, sqlite_where=SHADOWED
        )


def downgrade() -> None:
    with op.batch_alter_table("decisions") as batch_op:
        batch_op.drop_index("ix_decisions_shadowed")
        for column in (*REPLACED, "router_version"):
            batch_op.drop_index(f"ix_decisions_{column}_created_at")
        for column in REPLACED:
            batch_op.create_index(f"ix_decisions_{column}", [column], unique=False)
