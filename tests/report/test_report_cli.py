"""systolic-quantize report: outputs, the one-line error contract, nothing overwritten."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from systolic_sdk.cli.report_cmd import report_command
from tests.cli.conftest import assert_nothing_written, assert_user_error


def _args(paths, out: Path, *extra: str) -> list[str]:
    return [
        str(paths["quant"]),
        "--fp32",
        str(paths["fp32"]),
        "--data",
        str(paths["data"]),
        "-o",
        str(out),
        "--max-samples",
        "8",
        *extra,
    ]


def test_writes_html_and_json_beside_it(digits_paths, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    res = CliRunner().invoke(report_command, _args(digits_paths, out, "--dim", "8"))
    assert res.exit_code == 0, (res.output, res.exception)
    assert "logits: bit-exact" in res.output and "wrote" in res.output
    assert res.stderr == ""  # no progress bar when stderr is not a terminal
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["meta"]["samples"] == 8 and data["meta"]["dim"] == 8
    conv1 = next(layer for layer in data["layers"] if layer["name"] == "/conv1/Conv")
    # ceil(784/8) * ceil(8/8) * ceil(9/8) tiles of 8 cycles
    assert conv1["array"]["tiles"] == 98 * 1 * 2 and conv1["array"]["est_cycles"] == 196 * 8
    page = out.read_text()
    # Self-contained: no external resource, the data embedded, the renderer inline.
    assert "<link" not in page and "src=" not in page and "@import" not in page
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", page)
    assert 'id="report-data"' in page and 'data-chart="hist"' in page
    embedded = re.search(r'id="report-data">(.*?)</script>', page, re.S).group(1)
    assert json.loads(embedded) == data
    assert len(page) < 200_000


def test_explicit_json_path_and_quiet(digits_paths, tmp_path: Path) -> None:
    out, js = tmp_path / "r.html", tmp_path / "data" / "x.json"
    js.parent.mkdir()
    res = CliRunner().invoke(report_command, _args(digits_paths, out, "--json", str(js), "-q"))
    assert res.exit_code == 0 and res.output == ""
    assert json.loads(js.read_text())["meta"]["schema"] == "systolic-sdk-report/1"
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize(
    "what, needle",
    [
        ("missing model", "missing.onnx"),
        ("missing data", "missing.npz"),
        ("corrupt model", "corrupt.onnx"),
        ("html is the model", "refusing to overwrite"),
        ("json is the fp32 model", "refusing to overwrite"),
        ("same html and json", "same file"),
        ("no output folder", "does not exist"),
        ("wrong input shape", "input"),
        ("fp32 is quantized", "is a quantized model"),
        ("quant is float", "has no quantized tensors"),
    ],
)
def test_bad_input_is_one_line_exit_2(digits_paths, tmp_path: Path, what, needle) -> None:
    import numpy as np

    paths = dict(digits_paths)
    out = tmp_path / "r.html"
    extra: list[str] = []
    if what == "missing model":
        paths["quant"] = tmp_path / "missing.onnx"
    elif what == "missing data":
        paths["data"] = tmp_path / "missing.npz"
    elif what == "corrupt model":
        paths["quant"] = tmp_path / "corrupt.onnx"
        paths["quant"].write_bytes(b"not a model")
    elif what == "html is the model":
        out = paths["quant"]
    elif what == "json is the fp32 model":
        extra = ["--json", str(paths["fp32"])]
    elif what == "same html and json":
        extra = ["--json", str(out)]
    elif what == "no output folder":
        out = tmp_path / "nowhere" / "r.html"
    elif what == "wrong input shape":
        paths["data"] = tmp_path / "bad.npz"
        np.savez(paths["data"], input=np.zeros((4, 3, 28, 28), np.float32))
    elif what == "fp32 is quantized":
        paths["fp32"] = paths["quant"]
    elif what == "quant is float":
        paths["quant"] = paths["fp32"]
    before = paths["quant"].read_bytes() if paths["quant"].exists() else None
    res = CliRunner().invoke(report_command, _args(paths, out, *extra))
    assert_user_error(res, needle)
    if out != paths["quant"]:
        assert_nothing_written(out)
    assert not out.with_suffix(".json").exists() or out.with_suffix(".json") in paths.values()
    if before is not None:
        assert paths["quant"].read_bytes() == before


def test_help_has_an_example() -> None:
    res = CliRunner().invoke(report_command, ["--help"])
    assert res.exit_code == 0 and "Example" in res.output and "--max-samples" in res.output
