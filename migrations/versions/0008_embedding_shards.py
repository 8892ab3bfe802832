"""embedding shards: the objects of embeddings workers write to the item store (DESIGN 4d)

With ``SVP_STORAGE_URL`` set, each embedded chunk's vectors are one object in the store, and a
row here registers it (in the transaction that marks the chunk done), so a worker on another
machine finds it. An empty table for every existing deployment: the data-dir default writes none.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "embedding_shards",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("backbone", sa.String(length=255), nullable=False),
        sa.Column("image_size", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=1024), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("created_at", app.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key"),
    )
    with op.batch_alter_table("embedding_shards", schema=None) as batch_op:
        batch_op.create_index(
            "ix_embedding_shards_lookup",
            ["project_id", "backbone", "image_size", "id"],
            unique=False,
        )


def downgrade() -> None:
    # The objects stay in the store: without their rows no worker reads them, and a worker that
    # needs those vectors embeds them again.
    with op.batch_alter_table("embedding_shards", schema=None) as batch_op:
        batch_op.drop_index("ix_embedding_shards_lookup")
    op.drop_table("embedding_shards")
