"""Load and save ONNX models safely: clear errors, atomic writes, no escaping paths."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from systolic_sdk.errors import ModelLoadError, SdkError


def load_model(source: str | os.PathLike[str] | onnx.ModelProto) -> onnx.ModelProto:
    """Load a model from a path (or pass a ModelProto through), with one-line errors."""
    if isinstance(source, onnx.ModelProto):
        return source
    path = Path(source)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a folder, expected an .onnx file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not data:
        raise ModelLoadError(f"{path}: empty file, not an ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError):
        raise ModelLoadError(
            f"{path}: not an ONNX model (protobuf parse failed; truncated?)"
        ) from None
    if not model.graph.node and not model.graph.output:
        raise ModelLoadError(f"{path}: not an ONNX model (no graph)")
    if not model.opset_import:
        raise ModelLoadError(f"{path}: not an ONNX model (no opset_import)")
    _load_external_data(model, path)
    return model


def _load_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Load external tensors, refusing locations that escape the model's folder."""
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    base = path.resolve().parent
    external = [t for t in _all_tensors(model) if uses_external_data(t)]
    if not external:
        return
    for tensor in external:
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (base / location).resolve()
        if base not in target.parents and target != base:
            raise ModelLoadError(
                f"{path}: tensor '{tensor.name}' external data location '{location}' "
                "escapes the model's folder"
            )
        if not target.exists():
            raise ModelLoadError(
                f"{path}: tensor '{tensor.name}' external data file '{location}' is missing"
            )
    load_external_data_for_model(model, str(base))


def _all_tensors(model: onnx.ModelProto):
    from onnx.external_data_helper import _get_all_tensors

    return _get_all_tensors(model)


#: Files a data folder is read from (an output of these kinds must not land in one).
DATA_SUFFIXES = frozenset({".npy", ".npz", ".pb", ".png", ".jpg", ".jpeg", ".bmp"})


def check_output_path(output: str | os.PathLike[str], *inputs: str | os.PathLike[str]) -> Path:
    """Validate an output file path before any work: it is none of ``inputs``, not a data
    file inside an input folder, not a folder, and its folder exists."""
    out = Path(output)
    for src in inputs:
        if src is None:
            continue
        if _same_path(out, Path(src)):
            raise SdkError(f"{out}: output path is an input ({src}); refusing to overwrite it")
        if Path(src).is_dir() and out.suffix.lower() in DATA_SUFFIXES and _inside(out, Path(src)):
            raise SdkError(
                f"{out}: would be read as data of the input folder {src}; refusing to write it"
            )
    if out.is_dir():
        raise SdkError(f"{out}: is a folder, expected an output file path")
    parent = out.resolve().parent
    if not parent.is_dir():
        raise SdkError(f"{out}: output folder {parent} does not exist")
    return out


def check_output_dir(output: str | os.PathLike[str], *inputs: str | os.PathLike[str]) -> Path:
    """Validate an output folder path: it is not the current folder, not an input file,
    not an input folder, and it neither contains nor lies inside an input."""
    out = Path(output)
    if out.resolve() == Path.cwd().resolve():
        raise SdkError(f"{out}: is the current folder; give a folder of its own")
    for src in inputs:
        if src is None:
            continue
        s = Path(src)
        if _same_path(out, s) or _inside(out, s) or _inside(s, out):
            raise SdkError(f"{out}: output folder overlaps the input {src}; refusing it")
    if out.exists() and not out.is_dir():
        raise SdkError(f"{out}: exists and is not a folder")
    return out


def _same_path(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` lies strictly inside ``folder``."""
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return path.resolve() != folder.resolve()


def save_model(model: onnx.ModelProto, output: str | os.PathLike[str]) -> Path:
    """Write ``model`` atomically: temporary file in the same folder, then rename.

    Models above protobuf's 2 GiB limit are refused (external data is not written).
    """
    out = check_output_path(output)
    data = model.SerializeToString()
    write_bytes_atomic(out, data)
    return out


@contextmanager
def atomic_dir(out: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary sibling folder to fill; when the block ends without error it replaces
    ``out`` (an earlier folder there is removed), on any error it is removed instead."""
    out = Path(out).resolve()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700; give what mkdir would
        yield tmp
        if out.is_dir():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes_atomic(out: Path, data: bytes) -> None:
    """Write bytes to ``out`` via a temporary sibling file and an atomic rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.resolve().parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it 0600; give what open() would
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
