"""text items: a project's kind (image or text), and the text of a text item in its row

Every existing project is an image project (the server default fills the column in place); an
image item keeps its width and height, which become nullable because a text item has neither.
On SQLite the items table is rebuilt to drop the NOT NULL (batch mode copies every row).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 19:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("kind", sa.String(length=8), server_default="image", nullable=False)
        )
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.add_column(sa.Column("text", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("text_chars", sa.Integer(), nullable=True))
        batch_op.alter_column("width", existing_type=sa.Integer(), nullable=True)
        batch_op.alter_column("height", existing_type=sa.Integer(), nullable=True)


def downgrade() -> None:
    # A text item cannot be an image item: they go, with their labels and selections (cascade
    # on PostgreSQL; deleted explicitly first so SQLite, without enforced cascades, agrees).
    text_items = "SELECT id FROM items WHERE text IS NOT NULL OR width IS NULL"
    for table in ("labels", "leases", "selections"):
        op.execute(f"DELETE FROM {table} WHERE item_id IN ({text_items})")  # noqa: S608
    op.execute(f"DELETE FROM items WHERE id IN ({text_items})")  # noqa: S608
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.alter_column("height", existing_type=sa.Integer(), nullable=False)
        batch_op.alter_column("width", existing_type=sa.Integer(), nullable=False)
        batch_op.drop_column("text_chars")
        batch_op.drop_column("text")
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_column("kind")
