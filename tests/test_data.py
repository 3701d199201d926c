"""Tests of helpers.data on the data that ships with the machine and its packages (no network)."""

from __future__ import annotations

import gzip
import itertools
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import standins
import torch
from PIL import Image
from skimage.metrics import structural_similarity

from helpers import data, paths

NO_DEBIAN_FASHION = not (paths.DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file()
WHY = f"{paths.DEBIAN_FASHION_MNIST} absent (apt-get install -y dataset-fashion-mnist)"
needs_debian_fashion = pytest.mark.skipif(NO_DEBIAN_FASHION, reason=WHY)


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path, monkeypatch):
    """Never read or write the repository's data/ or .cache/ from tests."""
    monkeypatch.setattr(paths, "DATA", tmp_path / "data")
    monkeypatch.setattr(paths, "CACHE", tmp_path / "cache")


@pytest.fixture(scope="module")
def fashion():
    if NO_DEBIAN_FASHION:
        pytest.skip(WHY)
    return data.fashion_mnist(root=paths.DEBIAN_FASHION_MNIST)


@pytest.fixture(scope="module")
def photos64():
    return data.sample_photos(size=64)


# ---------------------------------------------------------------- loaders

@needs_debian_fashion
def test_fashion_mnist_from_debian_package():
    ds = data.fashion_mnist()  # paths.DATA is empty here, so this falls back to Debian's files
    assert len(ds) == 10_000 and ds.name == "fashion-mnist-test"
    assert "Debian package dataset-fashion-mnist" in ds.description and "10,000" in ds.description
    image, label = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 28, 28) and isinstance(label, int)
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (10_000, 3, 28, 28)
    assert torch.equal(image, ds.images[0].float() / 255)
    assert torch.bincount(ds.labels).tolist() == [1000] * 10
    assert ds.class_names == data.FASHION_MNIST_CLASSES and len(ds.class_names) == 10
    images, labels = ds.batch([0, 5, 9])
    assert images.shape == (3, 3, 28, 28) and 0 <= images.min() and images.max() <= 1
    assert images.max() == 1 and labels.tolist() == ds.labels[[0, 5, 9]].tolist()


def _write_idx(path, array, compress=True):
    """A real IDX file: magic 0 0 8 (uint8) ndim, big-endian sizes, the bytes; gzipped as
    published, or unpacked as torchvision leaves it."""
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    content = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(content) if compress else content)


def test_fashion_mnist_reads_idx_files_from_root(tmp_path):
    images = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([9, 0, 3]))
    ds = data.fashion_mnist(root=tmp_path)
    assert ds.labels.tolist() == [9, 0, 3] and str(tmp_path) in ds.description
    assert torch.equal(ds.images[:, 1], torch.tensor(images, dtype=torch.uint8))
    with pytest.raises(data.DatasetNotFoundError, match="train-images"):
        data.fashion_mnist("train", root=tmp_path)


def _write_tiny_mnist(root):
    """Both splits in torchvision's layout (root/MNIST/raw/, unpacked); returns them."""
    rng = np.random.default_rng(0)
    splits = {"train": (rng.integers(0, 256, (5, 28, 28)), np.array([7, 3, 0, 9, 3])),
              "t10k": (rng.integers(0, 256, (2, 28, 28)), np.array([1, 7]))}
    for prefix, (images, labels) in splits.items():
        _write_idx(root / "MNIST" / "raw" / f"{prefix}-images-idx3-ubyte", images, compress=False)
        _write_idx(root / "MNIST" / "raw" / f"{prefix}-labels-idx1-ubyte", labels, compress=False)
    return splits


def test_full_mnist_reads_torchvision_raw_layout(tmp_path):
    from torchvision.datasets import MNIST

    splits = _write_tiny_mnist(tmp_path)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ds = data.load_dataset("mnist-full", split, root=tmp_path)
        images, labels = splits[prefix]
        assert isinstance(ds, data.ImageTensorDataset) and ds.name == f"mnist-{split}"
        assert ds.labels.tolist() == labels.tolist()
        assert ds.images.shape == (len(labels), 3, 28, 28)
        assert torch.equal(ds.images[:, 2], torch.tensor(images, dtype=torch.uint8))
        assert ds.class_names == data.mnist_digits().class_names == data.DIGIT_CLASSES
        assert str(tmp_path / "MNIST" / "raw") in ds.description
        # torchvision reads the same files the same way: the test files are its real layout.
        reference = MNIST(str(tmp_path), train=split == "train")
        assert torch.equal(ds.images[:, 0], reference.data)
        assert torch.equal(ds.labels, reference.targets)


def test_full_mnist_feeds_the_transfer_study_with_its_own_split(tmp_path):
    from helpers.transfer import CnnConfig, task_data

    splits = _write_tiny_mnist(tmp_path)
    x, y = task_data("mnist-full", [7, 3], "train", CnnConfig(), root=tmp_path)
    assert x.shape == (3, 1, 28, 28) and y.tolist() == [0, 1, 1]  # all of train's 7s and 3s
    expected = torch.tensor(splits["train"][0][[0, 1, 4]], dtype=torch.float32) / 127.5 - 1
    assert torch.allclose(x[:, 0], expected) and x.min() == -1 and x.max() == 1  # 0..255 -> ±1
    x, y = task_data("mnist-full", [7, 3], "test", CnnConfig(), root=tmp_path)
    assert y.tolist() == [0]  # the test file's one 7, not a share held out of train


def test_full_mnist_download_fetches_torchvision_files_into_root(tmp_path, monkeypatch):
    """Offline here: the download itself is replaced by writing the named gzip file."""
    import torchvision.datasets.utils
    from torchvision.datasets import MNIST

    fetched = []

    def fake_download(url, folder, filename, md5):
        fetched.append(url)
        labels = filename.startswith(("train-labels", "t10k-labels"))
        _write_idx(Path(folder) / filename, np.zeros(4 if labels else (4, 28, 28), np.uint8))

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", fake_download)
    ds = data.mnist_full("test", root=tmp_path, download=True)
    assert len(ds) == 4 and fetched == [MNIST.mirrors[0] + f for f, _ in MNIST.resources]
    data.mnist_full("train", root=tmp_path, download=True)  # present: not fetched again
    assert len(fetched) == 4


def test_missing_full_mnist_says_where_and_how(tmp_path):
    from torchvision.datasets import MNIST

    for root, folder in ((tmp_path, tmp_path / "MNIST" / "raw"),
                         (None, paths.DATA / "MNIST" / "raw")):
        with pytest.raises(data.DatasetNotFoundError) as error:
            data.mnist_full("train", root=root)
        message = str(error.value)
        assert str(folder) in message and "train-images-idx3-ubyte" in message
        assert "download=True" in message and MNIST.mirrors[0] in message


def test_bundled_digit_sets():
    mnist = data.mnist_digits()
    assert len(mnist) == 5000 and mnist[0][0].shape == (3, 28, 28)
    assert torch.bincount(mnist.labels).tolist() == [500] * 10
    digits = data.sklearn_digits()
    assert len(digits) == 1797 and digits[0][0].shape == (3, 8, 8)
    assert digits.images.max() == 255 and digits.class_names[3] == "three"


def test_sample_photos_have_defensible_imagenet_labels():
    photos = data.sample_photos()
    assert photos.images.shape == (26, 3, 224, 224) and len(photos) == 26
    assert len(photos.class_names) == 1000 and len(photos.acceptable) == len(photos)
    for label, acceptable in zip(photos.labels.tolist(), photos.acceptable, strict=True):
        assert label in acceptable and all(0 <= i < 1000 for i in acceptable)
    assert photos.class_names[photos.labels[0]] == "Egyptian Mau"  # chelsea the cat
    assert photos.images.float().std() > 20  # real pictures, not blank
    names = data.sample_photo_names()
    assert len(set(names)) == 26 and names[:2] == ["chelsea", "coffee"]
    assert "26 real photos" in photos.description
    for source in ("5 from scikit-image", "1 from scikit-learn", "20 from the foolbox 3.3.4"):
        assert source in photos.description
    assert data.load_dataset("photos", size=32).images.shape == (26, 3, 32, 32)


def test_foolbox_photos_are_foolbox_own_samples_with_their_labels():
    """foolbox's own loader (utils.samples: the label from the file name, the image resized
    without a crop) against ours: same labels, and each of our photos matches its own."""
    import foolbox

    with pytest.warns(UserWarning, match="unknown model type"):
        images, labels = foolbox.utils.samples(object(), "imagenet", 0, 20, (64, 64),
                                               "channels_first", (0, 255))
    ours = data.sample_photos(size=64)
    assert ours.labels[6:].tolist() == labels.tolist()
    theirs = torch.from_numpy(images).flatten(1)
    mine = ours.images[6:].float().flatten(1)
    similarity = torch.corrcoef(torch.cat([mine, theirs]))[:20, 20:]
    assert similarity.argmax(1).tolist() == list(range(20))
    # 19 photos are square (512x512): the same pixels but for the resampling; the 1024x683
    # drum (10) is center-cropped by us and squeezed by foolbox (measured 0.65).
    square = [i for i in range(20) if i != 10]
    assert (similarity.diagonal()[square] > 0.99).all(), similarity.diagonal()


def test_missing_foolbox_says_how_to_get_the_photos(monkeypatch):
    from importlib import metadata

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(data.DatasetNotFoundError, match="pip install foolbox==3.3.4"):
        data.sample_photos(size=32)


def test_missing_datasets_say_where_and_how(tmp_path):
    cases = [(lambda: data.cifar100(root=tmp_path), tmp_path / "cifar-100-python", "download=True"),
             (lambda: data.imagenet_a(root=tmp_path), tmp_path / "imagenet-a", "imagenet-a.tar"),
             (lambda: data.imagenet_v2(root=tmp_path),
              tmp_path / "imagenetv2-matched-frequency-format-val", "wget"),
             (lambda: data.load_dataset("fashion-mnist", root=tmp_path), tmp_path,
              "apt-get install")]
    for load, path, hint in cases:
        with pytest.raises(data.DatasetNotFoundError) as error:
            load()
        message = str(error.value)
        assert str(path) in message and hint in message and "TTA_DATA" in message
    assert issubclass(data.DatasetNotFoundError, FileNotFoundError)


def _save(path, seed, fmt):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, fmt)


def test_image_folder_skips_and_counts_corrupt_files(tmp_path):
    root = tmp_path / "imagenet-a"
    _save(root / "n01498041" / "a.jpg", 0, "JPEG")
    _save(root / "n01498041" / "b.png", 1, "PNG")
    _save(root / "n12267677" / "c.jpeg", 2, "JPEG")
    (root / "n12267677" / "broken.jpg").write_bytes(b"not an image at all")
    _save(root / "n12267677" / "truncated.jpg", 3, "JPEG")
    whole = (root / "n12267677" / "truncated.jpg").read_bytes()
    (root / "n12267677" / "truncated.jpg").write_bytes(whole[:len(whole) // 2])
    with Image.open(root / "n12267677" / "truncated.jpg") as image:
        image.verify()  # passes: structure alone does not catch a truncated JPEG
    (root / "README.txt").write_text("ignored")
    with pytest.warns(UserWarning, match="skipped 2"):
        ds = data.imagenet_a(root=tmp_path, size=32)
    assert len(ds) == 3 and ds.skipped == 2 and "2 unreadable" in ds.description
    assert all(file.name not in ("broken.jpg", "truncated.jpg") for file in ds.files)
    assert ds.batch(range(len(ds)))[0].shape == (3, 3, 32, 32)  # every indexed file decodes
    assert ds.labels.tolist() == [0, 0, 199]
    assert ds.class_names[0] == "stingray" and ds.class_names[199] == "acorn"
    assert ds.imagenet_indices[0] == 6 and ds.imagenet_indices[199] == 988
    image, label = ds[2]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label == 199
    images, labels = ds.batch([0, 2])
    assert images.shape == (2, 3, 32, 32) and labels.tolist() == [0, 199]


def test_imagenet_v2_labels_are_folder_numbers_not_sort_order(tmp_path):
    root = tmp_path / "imagenetv2-matched-frequency-format-val"
    for folder in ("2", "10", "999"):
        _save(root / folder / "x.jpeg", int(folder), "JPEG")
    ds = data.imagenet_v2(root=tmp_path, size=16)
    assert sorted(ds.labels.tolist()) == [2, 10, 999] and ds.skipped == 0
    assert ds.imagenet_indices == list(range(1000)) and ds.class_names[0] == "tench"


@pytest.mark.parametrize("loader, url_end, folder", [
    (data.imagenet_a, "hendrycks/imagenet-a.tar", "imagenet-a/n01498041"),
    (data.imagenet_v2, "imagenetv2-matched-frequency.tar.gz",
     "imagenetv2-matched-frequency-format-val/0")])
def test_imagenet_download_fetches_the_public_archive_into_root(tmp_path, monkeypatch, loader,
                                                                url_end, folder):
    """Offline here: the download itself is replaced by unpacking a one-image folder."""
    fetched = []

    def fake_download(url, root):
        fetched.append((url, root))
        _save(root / folder / "x.jpg", 0, "JPEG")

    monkeypatch.setattr(data, "_download_archive", fake_download)
    ds = loader(root=tmp_path, size=16, download=True)
    assert len(ds) == 1 and ds.labels.tolist() == [0]
    assert fetched == [(fetched[0][0], tmp_path)] and fetched[0][0].endswith(url_end)
    loader(root=tmp_path, size=16, download=True)  # present: not fetched again
    assert len(fetched) == 1


def test_imagenet_resources():
    names, wnids = data.imagenet_class_names(), data.imagenet_wnids()
    a_indices = data.imagenet_a_indices()
    assert len(names) == len(wnids) == 1000 and len(set(wnids)) == 1000
    assert all(re.fullmatch(r"n\d{8}", w) for w in wnids)
    assert (wnids[0], names[0]) == ("n01440764", "tench")
    assert (wnids[967], names[967]) == ("n07920052", "espresso")
    assert len(a_indices) == 200 == len(set(a_indices)) and a_indices == sorted(a_indices)
    assert all(0 <= i < 1000 for i in a_indices)
    # First and last ImageNet-A classes (timm's imagenet_a_synsets.txt / imagenet_a_indices.txt).
    first, last = a_indices[0], a_indices[-1]
    assert (first, wnids[first], names[first]) == (6, "n01498041", "stingray")
    assert (last, wnids[last], names[last]) == (988, "n12267677", "acorn")


def test_take_is_deterministic_and_keeps_attributes():
    digits = data.sklearn_digits()
    a, b, c = (data.take(digits, 50, seed=seed) for seed in (1, 1, 2))
    assert len(a) == 50 and torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.labels, c.labels)
    assert isinstance(a, data.ImageTensorDataset) and a.class_names == digits.class_names
    assert a.name == digits.name and "subset of 50" in a.description
    assert data.take(digits, None) is digits and data.take(digits, 10_000) is digits
    photos = data.take(data.sample_photos(size=32), 3, seed=0)
    assert [photos.labels[i] in photos.acceptable[i] for i in range(3)] == [True] * 3


def test_load_dataset_dispatch():
    with pytest.raises(ValueError, match="valid names: cifar10, cifar100, imagenet-a") as error:
        data.load_dataset("svhn")
    assert all(name in str(error.value) for name in data.DATASETS)
    assert len(data.load_dataset("digits")) == 1797
    with pytest.raises(ValueError, match="split"):
        data.load_dataset("digits", split="train")
    with pytest.raises(ValueError, match="'root'"):
        data.load_dataset("digits", root="/somewhere")
    # Notebooks pass download=True to any set; one shipped in a package has nothing to fetch.
    assert len(data.load_dataset("digits", download=True)) == 1797
    # A size decodes photos at a model's side; in-memory sets keep their own.
    assert data.load_dataset("digits", size=240).images.shape[-1] == 8
    assert data.load_dataset("photos", size=48).images.shape[-2:] == (48, 48)


# ---------------------------------------------------------------- CIFAR, Flowers-102, CUB-200

def _offline(monkeypatch):
    import urllib.error
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(urllib.request, "urlopen", offline)


def _center_views(files, size):
    """Each file decoded, its shorter side resized to ``size`` and center-cropped, uint8."""
    from torchvision.transforms import v2

    view = v2.Compose([v2.ToImage(), v2.Resize(size, antialias=True), v2.CenterCrop(size)])
    return torch.stack([view(Image.open(f).convert("RGB")).as_subclass(torch.Tensor)
                        for f in files])


@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_is_read_from_torchvisions_layout_without_torchvision(tmp_path, classes):
    import pickle

    folder = standins.cifar(tmp_path, classes, per_class=2)
    load = data.cifar10 if classes == 10 else data.cifar100
    test = load("test", root=tmp_path)
    batch = pickle.loads((folder / ("test_batch" if classes == 10 else "test")).read_bytes())
    assert torch.equal(test.images, torch.from_numpy(batch["data"]).view(-1, 3, 32, 32))
    assert test.labels.tolist() == [c for c in range(classes) for _ in range(2)]
    assert test.class_names[:2] == (["class_0", "class_1"] if classes == 10
                                    else ["class 0", "class 1"])  # CIFAR-100's "_" read as " "
    assert len(load("train", root=tmp_path)) == 2 * classes * (5 if classes == 10 else 1)
    (folder / ("test_batch" if classes == 10 else "test")).write_bytes(b"\x80\x04truncated")
    with pytest.raises(data.DatasetCorruptError, match="is truncated or corrupt .* Delete"):
        load("test", root=tmp_path)


def test_flowers102_reads_torchvisions_layout(tmp_path, monkeypatch):
    from torchvision.datasets import Flowers102

    labels = (1, 1, 2, 2, 3, 3, 1, 2, 3, 102)
    folder = standins.flowers102(tmp_path, labels)
    train = data.load_dataset("flowers102", "train", root=tmp_path, size=32)
    test = data.flowers102("test", root=tmp_path, size=32)
    # training and validation images train (ids 1-6), the rest test (7-10), labels 0-based
    assert train.labels.tolist() == [0, 0, 1, 1, 2, 2] and test.labels.tolist() == [0, 1, 2, 101]
    assert train.class_names == Flowers102.classes and len(train.class_names) == 102
    files = [folder / "jpg" / f"image_{i:05d}.jpg" for i in (7, 8, 9, 10)]
    assert torch.equal(test.images, _center_views(files, 32))
    assert "Oxford Flowers-102 test set" in test.description and "32x32" in test.description
    (folder / "setid.mat").write_bytes(b"MATLAB 5.0 but cut short")
    with pytest.raises(data.DatasetCorruptError, match="setid.mat or imagelabels.mat in"):
        data.flowers102(root=tmp_path, size=32)
    missing = tmp_path / "elsewhere"
    with pytest.raises(data.DatasetNotFoundError, match="download=True .*102flowers.tgz"):
        data.flowers102(root=missing)
    _offline(monkeypatch)
    with pytest.raises(data.DownloadError) as error:
        data.flowers102(root=missing, download=True)
    assert str(error.value).startswith(f"Could not download {data.FLOWERS_URL}102flowers.tgz "
                                       f"to {missing / 'flowers-102'} ")
    assert isinstance(error.value, data.UNAVAILABLE)


def test_cub200_reads_its_official_layout_and_names_the_archive(tmp_path):
    import tarfile

    images = ((1, 1), (1, 0), (2, 1), (2, 0), (200, 1), (200, 0))
    source = standins.cub200(tmp_path / "source", images)
    train = data.cub200("train", root=tmp_path / "source", size=24)
    test = data.load_dataset("cub200", root=tmp_path / "source", download=True, size=24)
    assert train.labels.tolist() == [0, 1, 199] and test.labels.tolist() == [0, 1, 199]
    assert len(train.class_names) == 200 and train.class_names[1] == "Bird Number 2"
    assert torch.equal(test.images, _center_views(
        [source / "images" / f"{i:03d}.Bird_Number_{i}" / f"Bird_{n}.jpg"
         for i, n in ((1, 2), (2, 4), (200, 6))], 24))
    root = tmp_path / "data"
    with pytest.raises(data.DatasetNotFoundError) as error:
        data.cub200(root=root)
    message = str(error.value)
    assert message.startswith(f"CUB-200-2011 not found at {root / 'CUB_200_2011'}. Download "
                              f"the archive CUB_200_2011.tgz from {data.CUB_PAGE} and put it in "
                              f"{root} (it is extracted there at the first load)")
    root.mkdir()
    with tarfile.open(root / "CUB_200_2011.tgz", "w:gz") as archive:
        archive.add(source, arcname="CUB_200_2011")
    assert torch.equal(data.cub200(root=root, size=24).images, test.images)  # extracted
    (root / "CUB_200_2011" / "train_test_split.txt").write_text("1 yes\n")
    with pytest.raises(data.DatasetCorruptError, match=r"train_test_split.txt gives "
                                                       r"is_training values \['yes'\]"):
        data.cub200(root=root)


def test_vpt_task_data_takes_flowers_and_cub_through_the_transfer_studys_loader(tmp_path):
    from helpers.vpt import prompted_vit, small

    standins.flowers102(tmp_path)
    standins.cub200(tmp_path)
    train, test, names = small.task_data("flowers102", "all", None, None, size=32,
                                         root=tmp_path)
    assert len(names) == 102 and train[0].dtype == torch.uint8
    assert train[0].shape == (6, 3, 32, 32) and train[1].tolist() == [0, 0, 1, 1, 2, 2]
    assert test[1].tolist() == [0, 1, 2, 101]
    train, test, names = small.task_data("cub200", [199, 1], None, None, size=32, root=tmp_path)
    assert names == ["Bird Number 200", "Bird Number 2"]  # in the order asked, relabelled
    assert train[1].tolist() == [1, 0] and test[1].tolist() == [1, 0]
    vit = prompted_vit("linear", 0, num_classes=2, arch="vit_tiny_patch16_224", img_size=16,
                       patch_size=8, embed_dim=32, depth=1, num_heads=2)
    inputs = small.fit(vit, train[0])  # per batch: scaled to [-1, 1], resized to the ViT's side
    assert inputs.shape == (2, 3, 16, 16) and inputs.min() >= -1 and inputs.max() <= 1
    with pytest.raises(ValueError, match="cub200 has classes 0..199; no \\[200\\]"):
        small.task_data("cub200", [0, 200], None, None, size=32, root=tmp_path)


# ---------------------------------------------------------------- corruptions

def _sharpness_loss(clean, corrupted):
    """1 - (mean gradient magnitude after / before): how much fine detail a blur removed."""
    def detail(images):
        images = images.float()
        return ((images[..., 1:, :] - images[..., :-1, :]).abs().mean()
                + (images[..., 1:] - images[..., :-1]).abs().mean())
    return float(1 - detail(corrupted) / detail(clean))


def _one_minus_correlation(clean, corrupted):
    return float(np.mean([1 - np.corrcoef(a.flatten().float(), b.flatten().float())[0, 1]
                          for a, b in zip(clean, corrupted, strict=True)]))


def _one_minus_ssim(clean, corrupted):
    def ssim(a, b):
        return structural_similarity(a.permute(1, 2, 0).numpy(), b.permute(1, 2, 0).numpy(),
                                     channel_axis=-1, data_range=255)
    return float(np.mean([1 - ssim(a, b) for a, b in zip(clean, corrupted, strict=True)]))


def _mean_abs_change(clean, corrupted):
    return float((corrupted.float() - clean.float()).abs().mean())


# Mean absolute change is the default, but it is not what three kinds of corruption raise:
# - blurs remove detail; glass blur's severity 3 (3 shuffling passes) moves pixels more than
#   severity 4 (2 passes, wider), yet severity 4 blurs more, so measure the loss of sharpness;
# - frost computes 0.65..1 * image + frost: dimming and frosting cancel in a pixel difference,
#   but the image's share (correlation with the clean one) drops steadily;
# - fog both lifts dark pixels and dims bright ones, which also cancels; 1 - SSIM does not.
CHANGE = {"defocus_blur": _sharpness_loss, "glass_blur": _sharpness_loss,
          "motion_blur": _sharpness_loss, "zoom_blur": _sharpness_loss,
          "gaussian_blur": _sharpness_loss,
          "frost": _one_minus_correlation, "fog": _one_minus_ssim}
# ImageNet-C's snow severities 2 and 3 whiten the image equally (factor 0.7) and trade flake
# count for flake size, so they change images by about as much (either may be larger).
# Spatter's severities 1-3 are water drops, 4-5 mud: the heaviest water (3) and the lightest
# mud (4) change images by about as much (measured 8.4 and 8.2 grey levels on the photos).
TOLERANCE = {"snow": 0.1, "spatter": 0.1}


# saturate is not monotone by design (severities 1-2 remove colour, 3-5 add it): tested below.
@pytest.mark.parametrize("corruption", data.CORRUPTIONS + ("speckle_noise", "gaussian_blur",
                                                           "spatter"))
def test_corruption_grows_with_severity(corruption, photos64, fashion):
    for clean in (photos64.images, fashion.images[:64]):
        outputs = [data.corrupt_images(clean, corruption, severity) for severity in range(1, 6)]
        for out in outputs:
            assert out.dtype == torch.uint8 and out.shape == clean.shape
        change = [CHANGE.get(corruption, _mean_abs_change)(clean, out) for out in outputs]
        tolerance = TOLERANCE.get(corruption, 1e-3)
        assert change[0] > 0 and change[-1] > change[0], change
        for weaker, stronger in itertools.pairwise(change):
            assert stronger >= weaker * (1 - tolerance), (corruption, change)


def test_saturate_removes_then_adds_colour(photos64):
    from skimage.color import rgb2hsv

    def saturation(images):
        return float(np.mean([rgb2hsv(image.permute(1, 2, 0).numpy())[..., 1].mean()
                              for image in images]))

    clean = saturation(photos64.images)
    after = [saturation(data.corrupt_images(photos64.images, "saturate", severity))
             for severity in range(1, 6)]
    # ImageNet-C's factors: x0.3, x0.1, x2, x5 + 0.1, x20 + 0.2 on HSV saturation.
    assert after[1] < after[0] < clean < after[2] < after[3] < after[4], (clean, after)
    # measured 0.32 and 0.12 of the clean saturation (uint8 rounding keeps a little more);
    # the increases saturate at 1.
    assert after[0] == pytest.approx(0.3 * clean, rel=0.1)
    assert after[1] == pytest.approx(0.1 * clean, rel=0.25)


def test_validation_corruptions_are_an_explicit_option(photos64):
    assert data.corruption_names() == data.CORRUPTIONS and len(data.CORRUPTIONS) == 15
    assert data.corruption_names("validation") == ("speckle_noise", "gaussian_blur", "spatter",
                                                   "saturate")
    assert not set(data.VALIDATION_CORRUPTIONS) & set(data.CORRUPTIONS)
    suite = data.corruption_suite(photos64, "validation", severity=2, n=3, seed=0)
    assert list(suite) == ["clean", *data.VALIDATION_CORRUPTIONS]
    assert all(torch.equal(task.labels, suite["clean"].labels) for task in suite.values())
    assert "held-out validation corruption" in suite["spatter"].description
    assert "held-out" not in data.corrupted(photos64, "fog", 2).description
    mixed = data.corruption_suite(photos64, ["fog", "saturate"], severity=2, n=3, clean=False)
    assert list(mixed) == ["fog", "saturate"]
    with pytest.raises(ValueError, match="'all', 'validation' or a list"):
        data.corruption_suite(photos64, "test")
    with pytest.raises(ValueError, match="speckle_noise, gaussian_blur, spatter, saturate"):
        data.corruption_suite(photos64, ["fog", "rain"])


def test_corruption_is_seeded_per_image_and_leaves_global_rng_alone(photos64):
    images = photos64.images[:4]
    state = np.random.get_state()
    for corruption in ("gaussian_noise", "impulse_noise", "glass_blur", "frost", "fog",
                       "speckle_noise", "spatter"):
        first = data.corrupt_images(images, corruption, 3, seed=7)
        assert torch.equal(first, data.corrupt_images(images, corruption, 3, seed=7)), corruption
        assert torch.equal(first[:2], data.corrupt_images(images[:2], corruption, 3, seed=7))
        other = data.corrupt_images(images, corruption, 3, seed=8)
        assert not torch.equal(first, other), corruption
    twins = data.corrupt_images(images[:1].repeat(2, 1, 1, 1), "gaussian_noise", 3)
    assert not torch.equal(twins[0], twins[1])  # each image gets its own noise
    after = np.random.get_state()
    assert all(np.array_equal(a, b) for a, b in zip(state, after, strict=True))


def test_invalid_corruption_arguments(photos64):
    with pytest.raises(ValueError, match="gaussian_noise, shot_noise"):
        data.corrupt_images(photos64.images, "rain", 1)
    for severity in (0, 6):
        with pytest.raises(ValueError, match="1, 2, 3, 4, 5"):
            data.corrupt_images(photos64.images, "fog", severity)
    with pytest.raises(ValueError, match="1, 2, 3, 4, 5"):
        data.corrupted(photos64, "fog", 9)


def test_fixed_corruptions_match_imagecorruptions(monkeypatch):
    """Our gaussian_blur / glass_blur / fog / frost reproduce the package's functions
    (patched to run)."""
    from skimage.filters import gaussian
    corruptions = data._imagecorruptions()

    def old_gaussian(image, sigma, multichannel=False, **kw):
        return gaussian(image, sigma=sigma, channel_axis=-1 if multichannel else None, **kw)

    monkeypatch.setattr(corruptions, "gaussian", old_gaussian)
    monkeypatch.setattr(np, "float_", np.float64, raising=False)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (36, 44, 3), dtype=np.uint8))
    for name in ("gaussian_blur", "glass_blur", "fog", "frost"):
        for severity in (1, 5):
            np.random.seed(3)
            expected = getattr(corruptions, name)(image, severity)
            np.random.seed(3)
            assert np.array_equal(getattr(data, name)(image, severity), expected), (name, severity)


def test_corrupted_dataset_is_cached_atomically(fashion, monkeypatch):
    small = data.take(fashion, 16, seed=0)
    out = data.corrupted(small, "gaussian_noise", 5, seed=0)
    assert out.name == "fashion-mnist-test/gaussian_noise-5"
    assert "gaussian_noise at severity 5" in out.description
    assert "padded to 32x32" in out.description
    assert torch.equal(out.labels, small.labels) and out.class_names == small.class_names
    assert not torch.equal(out.images, small.images)
    files = list((paths.CACHE / "corruptions").rglob("*"))
    assert [f.suffix for f in files if f.is_file()] == [".npz"]  # no temporary file left behind

    computed, real = [], data.corrupt_images
    monkeypatch.setattr(data, "corrupt_images",
                        lambda *args, **kwargs: computed.append(1) or real(*args, **kwargs))
    assert torch.equal(data.corrupted(small, "gaussian_noise", 5, seed=0).images, out.images)
    assert computed == []  # read from the cache
    other = data.take(fashion, 16, seed=1)  # the same name, other images: their own file
    assert other.name == small.name
    data.corrupted(other, "gaussian_noise", 5, seed=0)
    assert computed == [1]


def test_grey_sets_stay_grey_and_colour_sets_keep_colour(fashion, photos64):
    grey = data.corrupted(data.take(fashion, 8, seed=0), "gaussian_noise", 5, seed=0).images
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 0], grey[:, 2])
    colour = data.corrupted(photos64, "gaussian_noise", 5, seed=0).images
    assert not torch.equal(colour[:, 0], colour[:, 1])


def test_corruption_suite_uses_the_same_images_everywhere(fashion):
    suite = data.corruption_suite(fashion, ["contrast", "pixelate"], severity=3, n=12, seed=1)
    assert list(suite) == ["clean", "contrast", "pixelate"]
    assert all(torch.equal(task.labels, suite["clean"].labels) for task in suite.values())
    assert all(len(task) == 12 for task in suite.values())
    assert len(data.corruption_suite(fashion, "all", 1, n=2, clean=False)) == 15


def test_severity_suite_keys_each_corruption_by_severity_on_the_same_images(fashion):
    suite = data.severity_suite(fashion, ["contrast"], [2, 4], n=6, seed=1)
    assert list(suite) == ["clean", "contrast/2", "contrast/4"]
    assert all(torch.equal(task.labels, suite["clean"].labels) for task in suite.values())
    direct = data.corruption_suite(fashion, ["contrast"], 4, n=6, seed=1)["contrast"]
    assert torch.equal(suite["contrast/4"].images, direct.images)
    assert "clean" not in data.severity_suite(fashion, ["contrast"], [2], n=6, clean=False)


def test_validation_corruptions_are_held_out_and_run(fashion, photos64):
    """ImageNet-C's four validation corruptions (for choosing settings) are not among the
    15 test ones, and each runs and grows with severity on photos."""
    assert set(data.VALIDATION_CORRUPTIONS).isdisjoint(data.CORRUPTIONS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the package's pkg_resources deprecation
        from imagecorruptions import get_corruption_names
    assert list(data.VALIDATION_CORRUPTIONS) == get_corruption_names("validation")
    for corruption in data.VALIDATION_CORRUPTIONS:
        outputs = [data.corrupt_images(photos64.images, corruption, s) for s in (1, 5)]
        change = [_mean_abs_change(photos64.images, out) for out in outputs]
        assert 0 < change[0] < change[1], (corruption, change)
    suite = data.corruption_suite(fashion, "validation", 5, n=4, clean=False)
    assert list(suite) == list(data.VALIDATION_CORRUPTIONS)
    assert not torch.equal(suite["speckle_noise"].images, data.take(fashion, 4).images)



# ---------------------------------------------------------------- ImageNet sample photos

def _small_sample(folder: Path, classes=((0, "tench"), (207, "golden_retriever"),
                                         (4, "hammerhead"))) -> dict:
    """A manifest of JPEGs written here, named as the real files are (n<wnid>_<name>.JPEG)."""
    wnids = data.imagenet_wnids()
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for index, name in classes:
        file = f"{wnids[index]}_{name}.JPEG"
        pixels = np.random.default_rng(index).integers(0, 255, (40, 60, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / file)
        files.append({"file": file, "sha256": data.file_sha256(folder / file)})
    return {**data.imagenet_sample_manifest(), "files": files}


def test_imagenet_sample_manifest_pins_one_photo_per_class():
    manifest = data.imagenet_sample_manifest()
    assert manifest["commit"] == "bc69043e2862758a1906c6a24a792bb28c6bb2ff"
    assert manifest["commit"] in manifest["url"]
    wnids = [entry["file"].split("_")[0] for entry in manifest["files"]]
    assert sorted(wnids) == sorted(data.imagenet_wnids())  # each of the 1000 classes once
    assert all(re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]) for entry in manifest["files"])


def test_imagenet_sample_labels_come_from_the_file_names(tmp_path, monkeypatch):
    manifest = _small_sample(tmp_path / "imagenet-sample")
    monkeypatch.setattr(data, "imagenet_sample_manifest", lambda: manifest)
    photos = data.load_dataset("imagenet-sample", root=tmp_path, size=32)
    assert photos.labels.tolist() == [0, 207] and len(photos.class_names) == 1000
    assert photos.class_names[207] == "Golden Retriever"
    assert photos.images.shape == (2, 3, 32, 32) and photos.imagenet_indices == list(range(1000))
    held_out = data.load_dataset("imagenet-sample", "train", root=tmp_path, size=32)
    assert held_out.labels.tolist() == [4]  # every fifth class: source images, not test ones


def test_missing_imagenet_sample_says_where_and_how(tmp_path, monkeypatch):
    manifest = _small_sample(tmp_path / "elsewhere")
    monkeypatch.setattr(data, "imagenet_sample_manifest", lambda: manifest)
    with pytest.raises(data.DatasetNotFoundError, match=r"3 of 3 files missing.*download=True"):
        data.imagenet_sample(root=tmp_path)
    assert isinstance(data.DatasetNotFoundError("x"), data.UNAVAILABLE)


def test_imagenet_sample_download_checks_every_file(tmp_path, monkeypatch):
    """A local server stands in for GitHub: the files arrive checked; a file whose bytes do not
    match the manifest's SHA-256 is refused and not kept."""
    import functools
    import http.server
    import threading

    served = tmp_path / "served"
    manifest = _small_sample(served)
    monkeypatch.setattr(data, "imagenet_sample_manifest", lambda: manifest)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=served)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        monkeypatch.setitem(manifest, "url", base)
        photos = data.imagenet_sample(root=tmp_path / "data", size=32, download=True)
        assert photos.labels.tolist() == [0, 207]
        assert sorted(p.name for p in (tmp_path / "data" / "imagenet-sample").iterdir()) == \
            sorted(e["file"] for e in manifest["files"])
        bad = [{**manifest["files"][0], "sha256": "0" * 64}]
        with pytest.raises(data.DownloadError, match="SHA-256"):
            data.fetch_imagenet_sample(tmp_path / "other", bad, base)
        assert not (tmp_path / "other" / bad[0]["file"]).exists()
    finally:
        server.shutdown()


def test_imagenet_sample_on_disk_matches_its_manifest():
    """Where the photos are present (``TTA_DATA/imagenet-sample``), a few of them have the
    manifest's bytes and the labels their names say."""
    root = Path(os.environ.get("TTA_DATA", paths.REPO / "data"))  # paths.DATA is isolated here
    folder = root / "imagenet-sample"
    if not folder.is_dir():
        pytest.skip(f"the ImageNet sample photos are not at {folder} (optional data)")
    manifest = data.imagenet_sample_manifest()
    names = data.imagenet_class_names()
    for entry in manifest["files"][::250]:
        assert data.file_sha256(folder / entry["file"]) == entry["sha256"], entry["file"]
    photos = data.imagenet_sample(root=root, size=64)
    held_out = data.imagenet_sample("train", root=root, size=64)
    assert names[int(photos.labels[0])] == "tench" and (len(photos), len(held_out)) == (800, 200)
    assert sorted(photos.labels.tolist() + held_out.labels.tolist()) == list(range(1000))


def test_load_available_falls_back_with_a_note_or_skips(tmp_path):
    photos, note = data.load_available("imagenet-a", "photos", root=tmp_path, size=32)
    assert len(photos) == 26 and "`imagenet-a` is not available here" in note
    assert str(tmp_path / "imagenet-a") in note  # the reason names where it looked
    nothing, note = data.load_available("imagenet-a", root=tmp_path)
    assert nothing is None and note.startswith("Skipped:")
    found, note = data.load_available("digits")
    assert len(found) > 0 and note == ""
