"""Alembic migrations of the local queue (the only way its schema is created or changed)."""
