"""Training recipes of the small models trained here: what a training batch looks like
before the model sees it, and the loss that goes with it.

Test-time methods that ask a prediction to agree across augmented views (MEMO, TPT) were
made for models trained to be invariant to such views: CLIP saw random crops of varied
photos, MEMO's CIFAR model crops and flips, its robust ImageNet models AugMix. A model never
taught those invariances gains nothing from agreement on them, so the stand-ins come in
recipes (an ablation, ``none`` being the plain training):

- ``none``: the images as they are;
- ``standard``: the CIFAR recipe, a 4-pixel zero pad and random 28-pixel crop, and a
  horizontal flip (torchvision's ``RandomCrop(28, padding=4)``, ``RandomHorizontalFlip``);
- ``augmix``: ``standard``, then AugMix as in its authors' CIFAR code: the clean image
  and two AugMix images of it (severity 3, width 3, depth 1-3, operations that do not
  overlap ImageNet-C's corruptions) in one batch, cross-entropy on the clean one plus 12
  times the Jensen-Shannon divergence of the three predictions;
- ``clip``: what CLIP's training sees of an image, a random resized crop (area 50-100%,
  aspect 3/4-4/3), a flip, and photometric jitter (brightness and contrast factors in
  0.6-1.4, as torchvision's ``ColorJitter(0.4, 0.4)``). Brightness and contrast are also two
  of ImageNet-C's 15 corruptions: a model trained so is partly robust to them by
  construction (AugMix leaves them out for this reason).

Every augmentation works on a whole batch of tensors at once with per-image random
parameters drawn from one ``torch.Generator``, so a training run is reproducible from its
seed and no image goes through PIL. Flips are applied only where ``flippable`` allows
(clothes stay clothes mirrored, digits do not).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .augment import adjust_brightness, adjust_contrast
from .geometry import affine_grid
from .views import AugMixViews

RECIPES = ("none", "standard", "augmix", "clip")
DESCRIPTIONS = {
    "none": "no augmentation",
    "standard": "4-pixel pad-and-crop and horizontal flip (the CIFAR recipe)",
    "augmix": "pad-and-crop, flip and AugMix with the Jensen-Shannon consistency loss "
              "(AugMix's CIFAR recipe)",
    "clip": "random resized crops, flips and brightness/contrast jitter (CLIP-style)",
}
PADDING = 4
AUGMIX_SEVERITY = 3  # AugMix's CIFAR default (MEMO's CIFAR test-time views use 1)
JSD_WEIGHT = 12.0  # AugMix's lambda
CLIP_CROP_SCALE = (0.5, 1.0)  # of the image's area; 28-pixel images allow no 8% crops
CLIP_JITTER = 0.4  # brightness and contrast factors uniform in 1 -+ 0.4


def check_recipe(recipe: str, valid=RECIPES) -> str:
    if recipe not in valid:
        raise ValueError(f"Unknown training recipe {recipe!r}; valid: {', '.join(valid)}")
    return recipe


def _flips(n: int, generator: torch.Generator, flippable) -> torch.Tensor:
    """Which images of a batch to mirror: half at random, among those ``flippable``."""
    flip = torch.rand(n, generator=generator) < 0.5
    if flippable is not None:
        flip &= torch.as_tensor(flippable, dtype=torch.bool).cpu()
    return flip


def pad_crop_flip(images: torch.Tensor, generator: torch.Generator, flippable=None,
                  padding: int = PADDING) -> torch.Tensor:
    """``RandomCrop(size, padding)`` then ``RandomHorizontalFlip`` per image, as one gather:
    output pixel (i, j) is input pixel (i + dy, j + dx), zero outside, with whole-pixel
    shifts dy, dx uniform in -padding..padding, and j mirrored where flipped."""
    n, channels, height, width = images.shape
    shifts = torch.randint(-padding, padding + 1, (n, 2), generator=generator)
    flip = _flips(n, generator, flippable)
    padded = F.pad(images, (padding,) * 4)
    cols = torch.arange(width).expand(n, width)
    cols = torch.where(flip[:, None], cols.flip(1), cols) + shifts[:, :1] + padding
    rows = torch.arange(height)[None] + shifts[:, 1:] + padding
    index = rows[:, :, None] * (width + 2 * padding) + cols[:, None, :]  # n x H x W
    index = index.view(n, 1, -1).expand(n, channels, -1).to(images.device)
    return padded.flatten(2).gather(2, index).view(n, channels, height, width)


def resized_crop_flip(images: torch.Tensor, generator: torch.Generator, flippable=None,
                      scale=CLIP_CROP_SCALE, ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """``RandomResizedCrop`` (area ``scale`` of the image, aspect ``ratio``, bilinear) and a
    flip per image, as one affine resampling of the batch."""
    n, _, height, width = images.shape
    area = scale[0] + (scale[1] - scale[0]) * torch.rand(n, generator=generator)
    log_ratio = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * torch.rand(
        n, generator=generator)
    w = (area * log_ratio.exp()).sqrt().clamp(max=1)
    h = (area / log_ratio.exp()).sqrt().clamp(max=1)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = torch.where(_flips(n, generator, flippable), -w, w)
    theta[:, 1, 1] = h
    theta[:, 0, 2] = (torch.rand(n, generator=generator) * 2 - 1) * (1 - w)
    theta[:, 1, 2] = (torch.rand(n, generator=generator) * 2 - 1) * (1 - h)
    grid = affine_grid(theta.to(images), height, width)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)


def photometric_jitter(images: torch.Tensor, generator: torch.Generator,
                       strength: float = CLIP_JITTER) -> torch.Tensor:
    """Brightness, then contrast, each by a factor uniform in 1 -+ strength per image
    (``ColorJitter(strength, strength)`` in a fixed order)."""
    n = len(images)
    brightness = 1 + strength * (2 * torch.rand(n, generator=generator) - 1)
    contrast = 1 + strength * (2 * torch.rand(n, generator=generator) - 1)
    return adjust_contrast(adjust_brightness(images, brightness), contrast)


def augmix(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One AugMix image per image (AugMix's CIFAR settings, after the crop and flip that
    the caller did). One call for both of a batch's AugMix copies: the cost is mostly per
    kernel, 32 ms for 128 images and 40 ms for 256 on one CPU thread."""
    return AugMixViews(1, severity=AUGMIX_SEVERITY, crop=None, flip=False).mix(images, generator)


def training_views(images: torch.Tensor, recipe: str, generator: torch.Generator,
                   flippable=None) -> list[torch.Tensor]:
    """What the model is trained on for a batch of images in [0, 1]: one batch, or for
    ``augmix`` the clean (cropped, flipped) batch and two AugMix batches of it."""
    check_recipe(recipe)
    if recipe == "none":
        return [images]
    if recipe == "clip":
        return [photometric_jitter(resized_crop_flip(images, generator, flippable), generator)]
    cropped = pad_crop_flip(images, generator, flippable)
    if recipe == "standard":
        return [cropped]
    return [cropped, *augmix(torch.cat([cropped, cropped]), generator).chunk(2)]


def jensen_shannon(logits: list[torch.Tensor]) -> torch.Tensor:
    """AugMix's consistency term: the mean over inputs of KL(p_i || mixture), batch-mean,
    with the mixture clamped at 1e-7 as in AugMix's code."""
    probs = [x.softmax(-1) for x in logits]
    log_mixture = (sum(probs) / len(probs)).clamp(1e-7, 1).log()
    return sum(F.kl_div(log_mixture, p, reduction="batchmean") for p in probs) / len(probs)


def recipe_loss(logits: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the first (clean) batch, plus AugMix's weighted Jensen-Shannon
    consistency when there are augmented batches beside it."""
    loss = F.cross_entropy(logits[0], labels)
    if len(logits) > 1:
        loss = loss + JSD_WEIGHT * jensen_shannon(logits)
    return loss
