"""The README's Python examples run as written (with /tmp/ redirected to a test folder)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_readme_has_python_examples() -> None:
    assert len(BLOCKS) >= 3


def test_readme_python_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    namespace: dict[str, object] = {}
    for block in BLOCKS:  # in order: later blocks use files written by earlier ones
        exec(compile(block.replace("/tmp/", f"{tmp_path}/"), "README.md", "exec"), namespace)
    assert (tmp_path / "digits.qdq.onnx").exists()
    assert "logits" in namespace["outputs"]
