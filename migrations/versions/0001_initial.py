"""Initial local queue: tasks, outbox, task_types, bridge_state.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("remote_id", sa.Integer(), nullable=True),
        sa.Column("type", sa.String(255), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("remote_attempt", sa.Integer(), nullable=True),
        sa.Column("remote_worker_id", sa.String(255), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(), nullable=True),
        sa.Column("locked_by", sa.String(255), nullable=True),
        sa.Column("locked_until", sa.DateTime(), nullable=True),
        sa.Column("progress", sa.Integer(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'done', 'failed', 'expired', 'cancelled')",
            name="ck_tasks_status",
        ),
        sa.UniqueConstraint("remote_id"),
    )
    queued = sa.text("status = 'queued'")
    op.create_index(
        "ix_tasks_queued",
        "tasks",
        [sa.text("priority DESC"), "id"],
        sqlite_where=queued,
        postgresql_where=queued,
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column(
            "task_id", sa.Integer(), sa.ForeignKey("tasks.id", ondelete="SET NULL"), nullable=True
        ),
        sa.Column("remote_id", sa.Integer(), nullable=True),
        sa.Column("remote_attempt", sa.Integer(), nullable=True),
        sa.Column("remote_worker_id", sa.String(255), nullable=True),
        sa.Column("dedupe_key", sa.String(64), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("settled_at", sa.DateTime(), nullable=True),
        sa.CheckConstraint(
            "kind IN ('complete', 'fail', 'progress', 'create_task', 'register_type')",
            name="ck_outbox_kind",
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'delivered', 'superseded', 'dead')", name="ck_outbox_status"
        ),
    )
    pending = sa.text("status = 'pending'")
    progress = sa.text("kind = 'progress' AND status = 'pending'")
    create = sa.text("kind = 'create_task' AND status = 'pending'")
    op.create_index(
        "ix_outbox_pending", "outbox", ["id"], sqlite_where=pending, postgresql_where=pending
    )
    op.create_index(
        "ix_outbox_pending_progress",
        "outbox",
        ["task_id"],
        sqlite_where=progress,
        postgresql_where=progress,
    )
    op.create_index(
        "ix_outbox_pending_create",
        "outbox",
        ["dedupe_key"],
        sqlite_where=create,
        postgresql_where=create,
    )
    op.create_table(
        "task_types",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("remote_id", sa.Integer(), nullable=True),
        sa.Column("version", sa.String(64), nullable=True),
        sa.Column("param_schema", sa.JSON(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "bridge_state",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("bridge_state")
    op.drop_table("task_types")
    op.drop_index("ix_outbox_pending_create", table_name="outbox")
    op.drop_index("ix_outbox_pending_progress", table_name="outbox")
    op.drop_index("ix_outbox_pending", table_name="outbox")
    op.drop_table("outbox")
    op.drop_index("ix_tasks_queued", table_name="tasks")
    op.drop_table("tasks")
