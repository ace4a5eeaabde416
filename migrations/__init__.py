"""Alembic migrations of the local queue (the only way its schema is created or changed).

Kept at the repository's top level for ``alembic -c alembic.ini``; installed as the
package ``bridge.migrations`` (see pyproject.toml), never as a top-level ``migrations``.
"""
