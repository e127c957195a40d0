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


def _shell_commands() -> list[str]:
    """Every ``systolic-quantize ...`` command of the README's sh blocks, joined lines."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith("systolic-quantize "):
                commands.append(line)
    return commands


def test_readme_commands_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command-line tour runs as written, in order (later commands read earlier outputs)."""
    import shlex

    from click.testing import CliRunner

    from systolic_sdk.cli import cli

    monkeypatch.chdir(ROOT)
    commands = _shell_commands()
    assert len(commands) >= 12
    for command in commands:
        args = shlex.split(command.replace("/tmp/", f"{tmp_path}/"))[1:]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, f"{command}\n{result.output}"
