"""Index outbox.task_id: pruning, and the foreign key's ON DELETE SET NULL, by index.

Without it, deleting a task made both databases search the whole outbox for rows
pointing at it (the foreign key's action) and prune's "no pending or dead row"
check did the same per task: 100,000 finished tasks took minutes. Every outbox
append now writes one more index entry: measured on the worker loop's statements
on bare sqlite3, within 2% of the rate without it (docs/BENCHMARKS.md).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_outbox_task_id", "outbox", ["task_id"])


def downgrade() -> None:
    op.drop_index("ix_outbox_task_id", table_name="outbox")
