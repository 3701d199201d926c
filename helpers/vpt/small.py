"""A small ViT pretrained here on some FashionMNIST classes, and the tuning modes compared on
other classes: real accuracies for the VPT notebook without downloading any weights."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch

from ..models import cached_training
from ..precision import Precision
from .model import PromptedViT, build_vit, train_step

# timm's smallest registered ViT; its sizes are overridden by the config below.
SMALL_ARCH = "vit_tiny_patch16_224"


@dataclass
class SmallVitConfig:
    """The pretrained backbone: a ViT of ``depth`` blocks on 28x28 images (16 patches of 7x7)."""

    image_size: int = 28
    patch_size: int = 7
    embed_dim: int = 64
    depth: int = 4
    num_heads: int = 4
    classes: tuple = (0, 1, 2, 3, 4)
    n_train: int | None = 10000
    epochs: int = 3
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    seed: int = 0

    def overrides(self) -> dict:
        return {"img_size": self.image_size, "patch_size": self.patch_size,
                "embed_dim": self.embed_dim, "depth": self.depth, "num_heads": self.num_heads}


@dataclass
class FinetuneConfig:
    """Fine-tuning on new classes: the same steps and batches for every mode; ``lr`` per
    mode (full fine-tuning needs a smaller one than prompts and head)."""

    steps: int = 150
    batch_size: int = 64
    lr: dict | None = None
    prompt_dropout: float = 0.0
    seed: int = 0
    precision: str = "auto"  # helpers.precision: float32 on a CPU, float16 autocast on CUDA

    def lr_for(self, mode: str) -> float:
        lrs = {"linear": 1e-2, "vpt-shallow": 1e-2, "vpt-deep": 1e-2, "full": 1e-3}
        return {**lrs, **(self.lr or {})}[mode]


def task_data(name: str, classes, n_train: int | None, n_test: int | None, seed: int = 0,
              size: int = 28, root=None, download: bool = False):
    """``(train, test, class_names)``: train and test are (uint8 images N x 3 x H x W, labels
    0..k-1) of ``classes`` (a list of class indices, or ``"all"``) of ``name`` (fashion-mnist,
    mnist, digits, flowers102, cub200, ...), through the transfer study's loader, so both
    notebooks select, relabel and split the data alike. The 28x28 sets keep their side; sets
    of photos (Flowers-102, CUB-200) are decoded at ``size``, the backbone's input side. Kept
    as uint8 (CUB's 11,788 images at 224 px are 1.8 GB so, four times that as floats) and
    normalised per batch (:func:`fit`)."""
    from ..transfer import class_images

    train_x, train_y, names = class_images(name, classes, "train", n_train, seed, root,
                                           download, size)
    test_x, test_y, _ = class_images(name, classes, "test", n_test, seed, root, download, size)
    return (train_x, train_y), (test_x, test_y), names


def fit(model, images: torch.Tensor) -> torch.Tensor:
    """A batch on the model's device as the ViT takes it: uint8 pixels scaled to [-1, 1]
    (the mean and std 0.5 of timm's ViT-B/16 weights and of the small ViT) and resized to its
    input size (28x28 data on a 224 px ViT-B/16 in the full profile)."""
    size = model.vit.patch_embed.img_size
    images = images.to(next(model.parameters()).device)
    if images.dtype == torch.uint8:
        images = (images.float() / 255 - 0.5) / 0.5
    if tuple(images.shape[-2:]) != tuple(size):
        images = torch.nn.functional.interpolate(images, size=size, mode="bilinear",
                                                 antialias=True)
    return images


@torch.no_grad()
def predict(model, inputs: torch.Tensor, batch_size: int = 250,
            precision: Precision | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted classes and their softmax confidences (on the CPU), the forward passes
    under ``precision``'s autocast (None: float32)."""
    model.eval()
    precision = precision or Precision("fp32")
    predictions, confidences = [], []
    for i in range(0, len(inputs), batch_size):
        with precision.autocast():
            logits = model(fit(model, inputs[i:i + batch_size])).float()
        confidence, predicted = logits.softmax(1).max(1)
        predictions.append(predicted.cpu())
        confidences.append(confidence.cpu())
    return torch.cat(predictions), torch.cat(confidences)


def accuracy(model, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int = 250,
             precision: Precision | None = None) -> float:
    """Top-1 accuracy, the forward passes under ``precision``'s autocast (None: float32)."""
    predictions, _ = predict(model, inputs, batch_size, precision)
    return float((predictions == labels).float().mean())


def _train(model, inputs, labels, steps, batch_size, lr, seed, weight_decay=0.0,
           precision: Precision | None = None) -> float:
    """AdamW with cosine decay over ``steps`` batches drawn with a seeded generator (the same
    batches for every mode), each step at ``precision`` (None: float32); returns the training
    seconds."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        batch = torch.randint(len(labels), (batch_size,), generator=generator)
        train_step(model, optimizer, fit(model, inputs[batch]),
                   labels[batch].to(next(model.parameters()).device), precision)
        schedule.step()
    return time.perf_counter() - start


def _train_small_vit(config: SmallVitConfig):
    torch.manual_seed(config.seed)
    (x, y), (x_test, y_test), _ = task_data("fashion-mnist", config.classes, config.n_train,
                                            None, config.seed)
    model = PromptedViT(build_vit(SMALL_ARCH, len(config.classes), **config.overrides()),
                        mode="full", n_prompts=0)
    steps = config.epochs * len(y) // config.batch_size
    seconds = _train(model, x, y, steps, config.batch_size, config.lr, config.seed,
                     config.weight_decay)
    return model.vit.state_dict(), {"train_seconds": round(seconds, 1), "steps": steps,
                                    "test_accuracy": accuracy(model, x_test, y_test)}


def pretrained_small_vit(config: SmallVitConfig | None = None, verbose: bool = True):
    """The small ViT trained here on FashionMNIST ``config.classes`` (cached by config);
    ``.metrics`` holds its training time and test accuracy on those classes."""
    config = config or SmallVitConfig()
    file = cached_training("small-vit", config, _train_small_vit, verbose)
    saved = torch.load(file, map_location="cpu", weights_only=True)
    vit = build_vit(SMALL_ARCH, len(config.classes), **config.overrides())
    vit.load_state_dict(saved["state_dict"])
    vit.weights = (f"trained here on FashionMNIST classes {list(config.classes)} "
                   f"({file.name})")
    vit.metrics = saved["metrics"]
    return vit


def finetune(backbone, mode: str, n_prompts: int, train, test, config: FinetuneConfig,
             num_classes: int, device=None, **model_options) -> dict:
    """Tune a copy of ``backbone`` with a new head in ``mode`` on ``train``; test accuracy,
    trainable parameters, training time and the precision of the steps (``config.precision``,
    resolved for ``device``), and per test image whether it was right (``correct``), with the
    ``labels``, the ``ece`` and the test seconds per image, as a grid cell has them for
    :mod:`helpers.findings`. ``model_options``: attention, checkpointing."""
    from ..evaluate import expected_calibration_error

    torch.manual_seed(config.seed)
    vit = copy.deepcopy(backbone)
    vit.reset_classifier(num_classes)
    model = PromptedViT(vit, mode, n_prompts if mode.startswith("vpt") else 0,
                        config.prompt_dropout, **model_options).to(device or "cpu")
    precision = Precision(config.precision, device or "cpu")
    seconds = _train(model, *train, config.steps, config.batch_size, config.lr_for(mode),
                     config.seed, precision=precision)
    start = time.perf_counter()
    predictions, confidences = predict(model, test[0], precision=precision)
    test_seconds = time.perf_counter() - start
    correct = (predictions == test[1]).float()
    return {"mode": mode, "prompts": model.n_prompts, "trainable": model.trainable_parameters(),
            "trainable %": 100 * model.trainable_parameters() / model.total_parameters(),
            "accuracy": float(correct.mean()), "train_seconds": round(seconds, 1),
            "precision": precision.describe(), "correct": correct.tolist(),
            "labels": test[1].tolist(),
            "ece": expected_calibration_error(confidences.numpy(), correct.numpy()),
            "seconds_per_sample": test_seconds / len(correct)}

