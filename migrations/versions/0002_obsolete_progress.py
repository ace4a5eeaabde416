"""Outbox status 'obsolete': progress made moot by its own task's end.

'superseded' keeps one meaning, the alertable one: the server's state made a row
moot (our lease went to another worker). Rows already stored as superseded
progress with the local-end reason become 'obsolete'.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_OLD = "status IN ('pending', 'delivered', 'superseded', 'dead')"
_NEW = "status IN ('pending', 'delivered', 'superseded', 'obsolete', 'dead')"
_LOCAL_END = "task ended locally%"
_INDEXES = (
    ("ix_outbox_pending", ["id"], "status = 'pending'"),
    ("ix_outbox_pending_progress", ["task_id"], "kind = 'progress' AND status = 'pending'"),
    ("ix_outbox_pending_create", ["dedupe_key"], "kind = 'create_task' AND status = 'pending'"),
)


def _replace_check(old: str, new: str) -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint("ck_outbox_status", "outbox", type_="check")
        op.create_check_constraint("ck_outbox_status", "outbox", new)
        return
    # SQLite rebuilds the table: nothing references outbox, so the copy loses nothing. The
    # partial indexes are dropped and made again here, not left to reflection.
    for name, _columns, _where in _INDEXES:
        op.drop_index(name, table_name="outbox")
    with op.batch_alter_table("outbox", recreate="always") as batch:
        batch.drop_constraint("ck_outbox_status", type_="check")
        batch.create_check_constraint("ck_outbox_status", new)
    for name, columns, where in _INDEXES:
        predicate = sa.text(where)
        op.create_index(name, "outbox", columns, sqlite_where=predicate)


def upgrade() -> None:
    _replace_check(_OLD, _NEW)
    op.execute(
        sa.text(
            "UPDATE outbox SET status = 'obsolete' WHERE status = 'superseded' "
            "AND kind = 'progress' AND last_error LIKE :local_end"
        ).bindparams(local_end=_LOCAL_END)
    )


def downgrade() -> None:
    op.execute("UPDATE outbox SET status = 'superseded' WHERE status = 'obsolete'")
    _replace_check(_NEW, _OLD)
