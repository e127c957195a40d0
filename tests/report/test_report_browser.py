"""The page in a real browser: every chart is drawn, and the screenshot is not blank."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


class Charts(HTMLParser):
    """Every div.chart of a dumped DOM: its attributes and the SVG marks inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: list[dict] = []
        self.body: dict[str, str | None] = {}
        self._stack: list[int | None] = []  # open elements: chart index or None

    def handle_starttag(self, tag, attrs) -> None:
        a = dict(attrs)
        if tag == "body":
            self.body = a
        current = next((i for i in reversed(self._stack) if i is not None), None)
        if tag == "div" and "chart" in (a.get("class") or "").split():
            self.charts.append({"attrs": a, "marks": 0, "svg": 0})
            current = len(self.charts) - 1
            self._stack.append(current)
        else:
            if current is not None:
                if tag == "svg":
                    self.charts[current]["svg"] += 1
                if "mark" in (a.get("class") or "").split():
                    self.charts[current]["marks"] += 1
            self._stack.append(None)

    def handle_startendtag(self, tag, attrs) -> None:
        self.handle_starttag(tag, attrs)
        self._stack.pop()

    def handle_endtag(self, tag) -> None:
        if self._stack:
            self._stack.pop()


def run_browser(browser: str, page: Path, profile: Path, *args: str) -> str:
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=10000",
        *args,
        page.resolve().as_uri(),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def check_page(browser: str, page: Path, report: dict, tmp: Path) -> Path:
    dom = run_browser(browser, page, tmp / "profile", "--dump-dom")
    parser = Charts()
    parser.feed(dom)
    kinds = [c["attrs"].get("data-chart") for c in parser.charts]
    assert kinds.count("sqnr") == kinds.count("acc") == kinds.count("cycles") == 1
    assert kinds.count("hist") == len(report["activations"]) > 0
    for c in parser.charts:
        a = c["attrs"]
        assert "data-error" not in a, a
        assert a.get("data-drawn") == "true", a
        assert int(a["data-marks"]) == c["marks"] > 0, (a, c["marks"])
        assert c["svg"] == 1
    assert parser.body.get("data-charts-drawn") == str(len(parser.charts))
    # One mark per layer in the SQNR chart, one per array layer (and bounds) in the others.
    by_kind = {
        c["attrs"]["data-chart"]: c for c in parser.charts if c["attrs"]["data-chart"] != "hist"
    }
    assert by_kind["sqnr"]["marks"] == len(report["layers"])
    n_array = sum(1 for layer in report["layers"] if layer["array"])
    assert by_kind["cycles"]["marks"] == 2 * n_array and by_kind["acc"]["marks"] == 3 * n_array

    png = tmp / f"{page.stem}.png"
    run_browser(browser, page, tmp / "profile", f"--screenshot={png}", "--window-size=1280,2400")
    from PIL import Image

    with Image.open(png) as im:
        rgb = im.convert("RGB")
        assert rgb.size == (1280, 2400)
        colors = rgb.getcolors(maxcolors=1 << 20)
        assert colors is not None and len(colors) > 50  # text, charts, not one flat colour
        # The bars' colour (#3465a4) covers a visible area: the charts were painted.
        bar = sum(
            n for n, c in colors if abs(c[0] - 0x34) + abs(c[1] - 0x65) + abs(c[2] - 0xA4) < 12
        )
        assert bar > 500, bar
    return png


@pytest.fixture(scope="module")
def browser() -> str:
    path = find_browser()
    if path is None:
        pytest.skip(f"no headless browser found (looked for {', '.join(BROWSERS)})")
    return path


def _render(paths: dict, out: Path, samples: int) -> dict:
    from systolic_sdk.graph.io import write_bytes_atomic
    from systolic_sdk.report import build_report, render_html

    report = build_report(
        paths["quant"], paths["fp32"], paths["data"], max_samples=samples, progress=False
    )
    write_bytes_atomic(out, render_html(report).encode())
    return report


def test_digits_report_draws_every_chart(browser, digits_paths, digits_report, tmp_path) -> None:
    from systolic_sdk.report import render_html

    page = tmp_path / "digits.html"
    page.write_text(render_html(digits_report))
    check_page(browser, page, digits_report, tmp_path)


def test_efficientnet_report_draws_every_chart(browser, effnet_paths, tmp_path) -> None:
    page = tmp_path / "effnet.html"
    report = _render(effnet_paths, page, samples=2)
    assert report["meta"]["samples"] == 2
    assert report["exactness"]["bit_exact"] is True
    assert len(report["layers"]) >= 50 and not report["unmapped"]
    assert report["meta"]["fp32_reference"].startswith("fp32 model")
    # Every layer's SQNR is a finite number well above 0 dB (a wrong fp32 counterpart or a
    # missed per-channel rescaling gives values near or below 0).
    assert all(5.0 < layer["sqnr_db"] < 80.0 for layer in report["layers"])
    check_page(browser, page, report, tmp_path)
