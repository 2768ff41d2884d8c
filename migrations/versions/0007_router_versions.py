"""router_versions: trained router artifacts stored in the database, with their status and A/B share; shadow decisions

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "router_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("router", sa.String(length=100), nullable=False),
        sa.Column("family", sa.String(length=50), nullable=False),
        sa.Column("version", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("traffic_share", sa.Float(), nullable=True),
        sa.Column("metrics", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False),
        sa.Column("artifact", sa.LargeBinary(), nullable=False),
        sa.Column("artifact_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("router", "version"),
    )
    with op.batch_alter_table("router_versions") as batch_op:
        batch_op.create_index(batch_op.f("ix_router_versions_router"), ["router"], unique=False)
        batch_op.create_index(batch_op.f("ix_router_versions_status"), ["status"], unique=False)
    with op.batch_alter_table("decisions") as batch_op:
        batch_op.add_column(sa.Column("shadow_version", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("shadow_expert", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("shadow_agrees", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("shadow_delta", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("decisions") as batch_op:
        for column in ("shadow_delta", "shadow_agrees", "shadow_expert", "shadow_version"):
            batch_op.drop_column(column)
    with op.batch_alter_table("router_versions") as batch_op:
        batch_op.drop_index(batch_op.f("ix_router_versions_status"))
        batch_op.drop_index(batch_op.f("ix_router_versions_router"))
    op.drop_table("router_versions")
