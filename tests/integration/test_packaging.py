"""The built wheel: what it installs, and that the installed layout finds its migrations.

Built once per run from a copy of the source (the working tree stays clean) without
build isolation, so the test needs no network: the ``test`` extra brings a
setuptools new enough for the PEP 639 license metadata.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import HeaderParser
from pathlib import Path

import pytest

from bridge.storage.migrations import head_revision

pytestmark = pytest.mark.acceptance
ROOT = Path(__file__).resolve().parents[2]
REVISION_SCRIPTS = sorted((ROOT / "migrations" / "versions").glob("*.py"))
SOURCE = ["pyproject.toml", "README.md", "LICENSE", "bridge", "taskmanager", "migrations"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("setuptools", minversion="77")
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCE:
        origin = ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=ignore)
        else:
            shutil.copy2(origin, source / name)
    out = work / "dist"
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    built = subprocess.run(
        [*pip_wheel, "-q", "--no-index", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (found,) = out.glob("taskmanager_bridge-*.whl")
    return found


def _names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_migrations_ship_inside_bridge_not_at_top_level(wheel: Path) -> None:
    names = _names(wheel)
    top_level = {name.split("/", 1)[0] for name in names if "/" in name}
    assert "migrations" not in top_level
    assert {n for n in top_level if not n.endswith(".dist-info")} == {"bridge", "taskmanager"}
    for needed in (
        "bridge/migrations/__init__.py",
        "bridge/migrations/env.py",
        "bridge/migrations/script.py.mako",
        *(f"bridge/migrations/versions/{path.name}" for path in REVISION_SCRIPTS),
        "bridge/py.typed",
        "taskmanager/py.typed",
    ):
        assert needed in names, needed


def test_every_source_package_is_in_the_wheel(wheel: Path) -> None:
    """pyproject.toml lists the packages by hand (package-dir renames one): a new
    subpackage must be added there, or the wheel silently lacks it."""
    names = _names(wheel)
    for top in ("bridge", "taskmanager"):
        for init in (ROOT / top).rglob("__init__.py"):
            if "__pycache__" not in init.parts:
                assert init.relative_to(ROOT).as_posix() in names, init


def test_license_metadata_is_pep_639(wheel: Path) -> None:
    names = _names(wheel)
    (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    with zipfile.ZipFile(wheel) as archive:
        metadata = HeaderParser().parsestr(archive.read(metadata_name).decode())
        dist_info = metadata_name.rsplit("/", 1)[0]
        shipped = archive.read(f"{dist_info}/licenses/LICENSE").decode()
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert shipped.startswith("MIT License")


def test_unpacked_wheel_upgrades_a_database(wheel: Path, tmp_path: Path) -> None:
    """The wheel's own layout (not the source tree) finds its migrations as package data."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    # The unpacked wheel comes first on the path; cwd is empty so the source tree's
    # top-level migrations/ is not importable by accident.
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("BRIDGE_CONFIG", None)
    env.pop("BRIDGE_DB_URL", None)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=60,
            check=False,
        )

    where = run("-c", "import bridge.migrations as m; print(m.__file__)")
    assert where.returncode == 0 and where.stdout.startswith(str(site)), where
    assert run("-c", "import migrations").returncode != 0
    db = f"sqlite:///{tmp_path / 'x.db'}"
    upgraded = run("-m", "bridge", "--db-url", db, "db", "upgrade")
    head = head_revision()
    assert upgraded.returncode == 0 and f"at schema revision {head}" in upgraded.stdout, upgraded
    current = run("-m", "bridge", "--db-url", db, "db", "current")
    assert current.returncode == 0 and "(up to date)" in current.stdout, current
