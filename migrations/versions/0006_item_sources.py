"""items imported by reference: the s3://bucket/key an item's bytes are read from (DESIGN 4d)

Null for every existing item and every uploaded one: their bytes are in the item store by
content hash. A plain ADD COLUMN of a nullable column: no table rewrite on either back end.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 23:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("items", sa.Column("source", sa.String(length=2048), nullable=True))


def downgrade() -> None:
    # An item imported by reference has no bytes of its own to fall back on: it goes, with its
    # labels and selections (deleted explicitly first, as SQLite does not enforce cascades).
    by_reference = "SELECT id FROM items WHERE source IS NOT NULL"
    for table in ("labels", "leases", "selections"):
        op.execute(f"DELETE FROM {table} WHERE item_id IN ({by_reference})")  # noqa: S608
    op.execute(f"DELETE FROM items WHERE id IN ({by_reference})")  # noqa: S608
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.drop_column("source")
