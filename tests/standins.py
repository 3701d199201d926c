"""Stand-ins of the files the notebooks read, made for the tests: the official file layouts,
names and architectures with random weights and a few synthetic images (no real weights or
data can be had here). Where a size changes no code path it is tiny; each builder says what
differs from the real file."""

from __future__ import annotations

import copy
import gzip
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# The architectures of OpenAI's CLIPs (clip.model.build_model's reading of their files):
# embed_dim, vision_layers, vision_width, vision_patch_size at 224 px.
CLIP_ARCHITECTURES = {
    "RN50": (1024, (3, 4, 6, 3), 64, None),
    "RN101": (512, (3, 4, 23, 3), 64, None),
    "ViT-B/32": (512, 12, 768, 32),
    "ViT-B/16": (512, 12, 768, 16),
}


def clip_model(embed_dim=32, vision_layers=2, vision_width=64, patch_size=8, resolution=32,
               seed=0):
    """A ``clip.model.CLIP`` with random weights: a ViT image encoder (``vision_layers`` an
    int) or CLIP's ResNet (a tuple: ModifiedResNet, with batch norm); the text transformer is
    one layer of width 64 (CLIP's 77-token context and vocabulary, so its tokenizer and
    prompts are the real ones)."""
    from clip.model import CLIP

    torch.manual_seed(seed)
    return CLIP(embed_dim, resolution, vision_layers, vision_width, patch_size, 77, 49408,
                64, 1, 1).float().eval()


def save_as_official(model, file: Path) -> Path:
    """``model`` as OpenAI distributes CLIP: a TorchScript archive (traced) of float16 weights
    (a copy is traced: the trace shares its tensors, which ``half()`` would convert)."""
    import clip

    size = model.visual.input_resolution
    file.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on CLIP's Python control flow
        traced = torch.jit.trace(copy.deepcopy(model), (torch.rand(1, 3, size, size),
                                         clip.tokenize(["a photo of a cat."])), check_trace=False)
        torch.jit.save(traced.half(), str(file))
    return file


def official_clip(name: str, root: Path) -> Path:
    """CLIP ``name`` (RN50, RN101, ViT-B/32, ViT-B/16) saved at ``root/<its official file
    name>`` (``~/.cache/clip``'s layout): the real image encoder at 224 px with random weights,
    and the narrow text transformer of ``clip_model`` (the real one is 63 M parameters: the
    text features of ImageNet-V2's 1000 classes alone would take minutes on a CPU)."""
    import clip

    embed_dim, layers, width, patch = CLIP_ARCHITECTURES[name]
    model = clip_model(embed_dim, layers, width, patch, 224)
    return save_as_official(model, root / os.path.basename(clip.clip._MODELS[name]))


def timm_vit_b16(file: Path) -> Path:
    """timm's ViT-B/16 (1000 classes) with random weights, as the hub's model.safetensors."""
    import safetensors.torch
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False)
    file.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(model.state_dict(), str(file))
    return file


def sam_vit_b(file: Path) -> Path:
    """Segment-Anything ViT-B's state dict with random weights (Meta's file is 375 MB too)."""
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sam_model_registry["vit_b"]().state_dict(), file)
    return file


# ---------------------------------------------------------------- images and data sets

def pixels(seed: int, height: int = 40, width: int = 56) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def image_file(path: Path, seed: int, fmt: str = "JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels(seed)).save(path, fmt)
    return path


def _idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def idx_set(folder: Path, per_class: int = 4, seed: int = 0) -> Path:
    """MNIST's four gzipped IDX files (as torchvision and Zalando publish them), ``per_class``
    28x28 images of each of 10 classes per split."""
    rng = np.random.default_rng(seed)
    for prefix in ("train", "t10k"):
        labels = np.repeat(np.arange(10), per_class)
        _idx(folder / f"{prefix}-images-idx3-ubyte.gz",
             rng.integers(0, 256, (len(labels), 28, 28)))
        _idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


def cifar(root: Path, classes: int, per_class: int = 3, seed: int = 0) -> Path:
    """CIFAR-10 (``classes=10``) or CIFAR-100 in torchvision's layout: pickled batches of
    uint8 rows (3 x 32 x 32) with their labels, and the meta file of class names."""
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if classes == 10 else CIFAR100
    folder = root / cls.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    key = "labels" if classes == 10 else "fine_labels"
    for name, _ in cls.train_list + cls.test_list:
        labels = np.repeat(np.arange(classes), per_class).tolist()
        batch = {"data": rng.integers(0, 256, (len(labels), 3 * 32 * 32), dtype=np.uint8),
                 key: labels}
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {cls.meta["key"]: [f"class_{i}" for i in range(classes)]}
    (folder / cls.meta["filename"]).write_bytes(pickle.dumps(meta))
    return folder


def flowers102(root: Path, labels=(1, 1, 2, 2, 3, 3, 1, 2, 3, 102)) -> Path:
    """Flowers-102 in torchvision's layout (``flowers-102/jpg``, ``imagelabels.mat``,
    ``setid.mat``): one image per label (1-based, as published); the first half of the
    images training, then one validation image, the rest test."""
    from scipy.io import savemat

    folder = root / "flowers-102"
    for index in range(1, len(labels) + 1):
        image_file(folder / "jpg" / f"image_{index:05d}.jpg", index)
    half = len(labels) // 2
    savemat(folder / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    savemat(folder / "setid.mat", {"trnid": np.arange(1, half + 1)[None],
                                   "valid": np.array([[half + 1]]),
                                   "tstid": np.arange(half + 2, len(labels) + 1)[None]})
    return folder


def cub200(root: Path, images=((1, 1), (1, 0), (2, 1), (2, 0), (200, 1), (200, 0))) -> Path:
    """CUB-200-2011's official layout (``CUB_200_2011/images/<NNN.Name>/*.jpg`` and its four
    tables) with all 200 class names and one image per (class, is_training) given."""
    folder = root / "CUB_200_2011"
    names = {c: f"{c:03d}.Bird_Number_{c}" for c in range(1, 201)}
    rows = {"images.txt": [], "image_class_labels.txt": [], "train_test_split.txt": []}
    for image_id, (label, training) in enumerate(images, start=1):
        relative = f"{names[label]}/Bird_{image_id}.jpg"
        image_file(folder / "images" / relative, image_id)
        rows["images.txt"].append(f"{image_id} {relative}")
        rows["image_class_labels.txt"].append(f"{image_id} {label}")
        rows["train_test_split.txt"].append(f"{image_id} {training}")
    rows["classes.txt"] = [f"{c} {name}" for c, name in names.items()]
    for name, lines in rows.items():
        (folder / name).write_text("\n".join(lines) + "\n")
    return folder


def imagenet_a(root: Path, classes: int = 2, per_class: int = 2) -> Path:
    from helpers import data

    folder = root / "imagenet-a"
    wnids = [data.imagenet_wnids()[i] for i in data.imagenet_a_indices()[:classes]]
    for c, wnid in enumerate(wnids):
        for i in range(per_class):
            image_file(folder / wnid / f"{i}.jpg", 100 * c + i)
    return folder


def imagenet_v2(root: Path, classes: int = 2, per_class: int = 2) -> Path:
    folder = root / "imagenetv2-matched-frequency-format-val"
    for c in range(classes):
        for i in range(per_class):
            image_file(folder / str(c) / f"{i}.jpeg", 200 + 100 * c + i)
    return folder
