"""keyed secret hashes: session and token hashes re-stored as HMAC under SVP_SECRET_KEY

Earlier releases stored the bare SHA-256 of each session and API-token secret; the server now
stores HMAC-SHA256 (key: SVP_SECRET_KEY) of that same SHA-256, so this keys every stored row in
place and no one is signed out. Run it with the secret key the server will use. Downgrading
cannot un-key the rows: it deletes sessions and tokens instead (everyone signs in again).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 11:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.security import key_stored_hash

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("auth_sessions", "api_tokens")


def _table(name: str) -> sa.TableClause:
    return sa.table(name, sa.column("id", sa.Integer), sa.column("token_hash", sa.String))


def upgrade() -> None:
    conn = op.get_bind()
    for name in TABLES:
        table = _table(name)
        for row_id, unkeyed in conn.execute(sa.select(table.c.id, table.c.token_hash)).all():
            conn.execute(
                sa.update(table)
                .where(table.c.id == row_id)
                .values(token_hash=key_stored_hash(unkeyed))
            )


def downgrade() -> None:
    for name in TABLES:
        op.execute(sa.delete(_table(name)))
