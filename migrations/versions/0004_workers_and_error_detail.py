"""Operators see workers and why tasks failed: the workers table, tasks.error_detail.

``workers``: each worker process records itself (host, pid, types, concurrency, pool,
start, last beat, counts) so that ``status``, the dashboard and the metrics can list the
live ones and name the lost. ``tasks.error_detail``: the handler's traceback of its last
failure, kept locally (the server gets the one-line error).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("error_detail", sa.Text(), nullable=True))
    op.create_table(
        "workers",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("types", sa.JSON(), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("pool", sa.String(32), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("beat_at", sa.DateTime(), nullable=False),
        sa.Column("stopped_at", sa.DateTime(), nullable=True),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("workers")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("error_detail")
    if op.get_bind().dialect.name == "sqlite":
        # SQLite's batch rebuilds the table, and its copy of ix_tasks_queued loses
        # "priority DESC": put the index back as revision 0001 made it.
        queued = sa.text("status = 'queued'")
        op.drop_index("ix_tasks_queued", table_name="tasks")
        op.create_index(
            "ix_tasks_queued", "tasks", [sa.text("priority DESC"), "id"], sqlite_where=queued
        )
