"""Helpers for command tests: run a command and check the one-line error contract."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner


def assert_user_error(result, *needles: str) -> str:
    """Exit code 2, one stderr line 'error: ...' naming every needle, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def assert_nothing_written(out: Path, *keep: Path) -> None:
    """``out`` does not exist, and its folder holds no temporary leftovers."""
    assert not out.exists()
    folder = out.parent
    if folder.exists():
        extra = [p for p in folder.iterdir() if p not in keep and p.name.startswith(f".{out.name}")]
        assert not extra, extra


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()
