"""The installed distribution's version, read from its metadata.

pyproject.toml is the one place the version is written; reading it back here
means a release cannot ship with a stale copy. A source tree used without
installing it has no metadata, hence the fallback (a valid PEP 440 version that
sorts below every release). Its own module so that ``taskmanager.transport``
can import it while ``taskmanager/__init__.py`` is still executing.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "taskmanager-bridge"
UNKNOWN_VERSION = "0+unknown"

try:
    __version__: str = version(DISTRIBUTION)
except PackageNotFoundError:  # pragma: no cover - running from an uninstalled source tree
    __version__ = UNKNOWN_VERSION
