"""A conformance suite generated once per session (one case per op and corner)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from systolic_sdk.conformance import generate_suite

SEED = 0


@pytest.fixture(scope="session")
def suite_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full suite (every op and corner, ``count=1``); do not modify it."""
    out = tmp_path_factory.mktemp("conformance") / "suite"
    generate_suite(out, count=1, seed=SEED)
    return out


@pytest.fixture(scope="session")
def manifest(suite_dir: Path) -> dict:
    return json.loads((suite_dir / "manifest.json").read_text())
