"""The mutation check's list stays true to the code: every mutation's text is still
there, once (scripts/mutation_check.py runs on demand; this runs in every suite)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "mutation_check.py"


def test_every_mutation_still_applies_to_exactly_one_place():
    spec = importlib.util.spec_from_file_location("mutation_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["mutation_check"] = module
    try:
        spec.loader.exec_module(module)
        assert module.stale() == []
        assert len(module.MUTATIONS) >= 20
    finally:
        del sys.modules["mutation_check"]
