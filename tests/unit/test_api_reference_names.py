"""Every name docs/API_REFERENCE.md gives is importable where it says: a dotted name
(`bridge.worker.load_handler`) resolves, and each heading's class or function comes
from its package (`from bridge import LocalQueue`)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import pytest

REFERENCE = (Path(__file__).resolve().parents[2] / "docs" / "API_REFERENCE.md").read_text()
FILES = {"bridge.toml"}  # a file name, not a module
DOTTED = sorted(set(re.findall(r"`((?:bridge|taskmanager)(?:\.[A-Za-z_]\w*)+)", REFERENCE)) - FILES)


def _heading_names() -> list[tuple[str, str]]:
    """(package, name) of each ``## `Name(...)` `` heading, by the part it stands in."""
    found: list[tuple[str, str]] = []
    package = "taskmanager"
    for line in REFERENCE.splitlines():
        part = re.match(r"# API reference: `(\w+)`", line)
        if part:
            package = part.group(1)
        heading = re.match(r"## `([A-Z]\w*)[(`]", line)
        if heading:
            found.append((package, heading.group(1)))
    return found


def resolve(dotted: str) -> Any:
    """Import the longest module prefix of ``dotted``, then read the rest as attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target: Any = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            target = getattr(target, attribute)
        return target
    raise ModuleNotFoundError(dotted)


def test_the_reference_names_some_of_each_package():
    assert len(DOTTED) > 20 and len(_heading_names()) > 5


@pytest.mark.parametrize("dotted", DOTTED)
def test_a_dotted_name_in_the_reference_resolves(dotted: str):
    resolve(dotted)


@pytest.mark.parametrize(("package", "name"), _heading_names())
def test_a_headings_name_comes_from_its_package(package: str, name: str):
    assert hasattr(importlib.import_module(package), name), f"from {package} import {name}"
