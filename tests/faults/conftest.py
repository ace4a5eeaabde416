"""The fault tests run on the same databases as the integration tests."""

from ..integration.conftest import db_url

__all__ = ["db_url"]
