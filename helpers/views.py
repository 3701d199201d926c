"""Augmented views of one test image, built as one batched tensor on the image's device.

A view generator is any callable ``views(image, generator) -> Tensor[n, 3, H, W]`` taking
an image in [0, 1] (3 x H x W) and a CPU ``torch.Generator``; all random parameters come
from that generator, so a test image's views depend only on its seed, never on batch
order. Random parameters are drawn per view and applied per view with batched kernels
(affine grids, per-sample thresholds), never with a per-view PIL loop.
"""

from __future__ import annotations

import math

import torch
from torchvision.transforms.v2 import functional as TF
from torchvision.transforms.v2.functional import gaussian_blur

from .augment import RecipeViews
from .geometry import (
    augmix_geometry,
    identity_matrices,
    random_sign,
    to_uint8,
    uniform,
    warp,
)

# AugMix's operations, without those that overlap ImageNet-C's corruptions (as in AugMix
# and MEMO): no colour, contrast, brightness or sharpness.
AUGMIX_OPS = ("autocontrast", "equalize", "posterize", "rotate", "solarize",
              "shear_x", "shear_y", "translate_x", "translate_y")


COLOUR_OPS = ("autocontrast", "equalize", "posterize", "solarize")


def _colour(name: str, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """A colour operation of AugMix on a batch, with a per-image ``level`` in [0, 1]."""
    if name == "autocontrast":
        return TF.autocontrast(x)
    if name == "equalize":
        return TF.equalize(to_uint8(x)).float() / 255
    n = x.shape[0]
    if name == "posterize":  # keep 4 - int(4 level) bits, as AugMix
        bits = 4 - (level * 4).long().clamp(max=4)
        mask = (256 - 2 ** (8 - bits)).to(torch.uint8).to(x.device).view(n, 1, 1, 1)
        return (to_uint8(x) & mask).float() / 255
    threshold = (1 - level).to(x).view(n, 1, 1, 1)  # solarize
    return torch.where(x >= threshold, 1 - x, x)


def _augmix_chain(base: torch.Tensor, ops: torch.Tensor, levels: torch.Tensor,
                  signs: torch.Tensor) -> torch.Tensor:
    """Apply per-view operation sequences (``ops[step, view]``, -1 for none, with their
    ``levels`` and ``signs``). Consecutive
    geometric operations of a view are composed into one warp, applied only before a colour
    operation and at the end: one resampling instead of several, and far fewer kernels."""
    x, n, size = base.clone(), base.shape[0], tuple(base.shape[-2:])
    pending, warped = identity_matrices(n), torch.zeros(n, dtype=torch.bool)

    def flush(views):
        views = views[warped[views]]
        if len(views):
            x[views.to(x.device)] = warp(x[views.to(x.device)], pending[views])
            pending[views], warped[views] = torch.eye(3), False

    for step_ops, step_levels, step_signs in zip(ops, levels, signs):
        for k, name in enumerate(AUGMIX_OPS):
            views = (step_ops == k).nonzero().flatten()
            if not len(views):
                continue
            if name in COLOUR_OPS:
                flush(views)
                x[views.to(x.device)] = _colour(name, x[views.to(x.device)], step_levels[views])
            else:
                matrix = augmix_geometry(name, step_levels[views], step_signs[views], size)
                pending[views] = pending[views] @ matrix
                warped[views] = True
    flush(torch.arange(n))
    return x


def _crop_flip_theta(n: int, height: int, width: int, crop: str | None, flip: bool, gen,
                     min_scale: float = 0.08):
    """Per-view 3x3 matrices of the pre-augmentation: RandomResizedCrop (scale min_scale-1,
    ratio 3/4-4/3) for large images, a 4-pixel pad-and-crop for small ones, then a flip."""
    theta = identity_matrices(n)
    if crop == "resized":
        area = uniform(n, min_scale, 1.0, gen)
        log_ratio = uniform(n, math.log(3 / 4), math.log(4 / 3), gen)
        w = (area * log_ratio.exp()).sqrt().clamp(max=1)
        h = (area / log_ratio.exp()).sqrt().clamp(max=1)
        theta[:, 0, 0], theta[:, 1, 1] = w, h
        theta[:, 0, 2] = (torch.rand(n, generator=gen) * 2 - 1) * (1 - w)
        theta[:, 1, 2] = (torch.rand(n, generator=gen) * 2 - 1) * (1 - h)
    elif crop == "pad":
        shift = torch.randint(-4, 5, (n, 2), generator=gen).float()
        theta[:, 0, 2] = shift[:, 0] * 2 / width
        theta[:, 1, 2] = shift[:, 1] * 2 / height
    elif crop is not None:
        raise ValueError(f"crop must be 'resized', 'pad' or None, not {crop!r}")
    if flip:
        theta[:, 0, :] *= random_sign(n, gen).view(n, 1)
    return theta


class AugMixViews:
    """MEMO's views: a random crop and flip, then AugMix (``width`` chains of 1-3 random
    operations mixed with Dirichlet weights, then mixed with the crop by a Beta(1, 1)
    weight). ``crop="auto"`` picks RandomResizedCrop for images of 64 px and more (the
    ImageNet recipe) and pad-and-crop below (the CIFAR recipe)."""

    def __init__(self, n_views: int = 64, severity: int = 3, width: int = 3,
                 max_depth: int = 3, crop: str | None = "auto", flip: bool = True):
        if n_views < 1:
            raise ValueError(f"n_views must be at least 1, got {n_views}")
        if not 1 <= severity <= 10:
            raise ValueError(f"severity must be in 1..10 (AugMix's scale), got {severity}")
        if crop not in ("auto", "resized", "pad", None):
            raise ValueError(f"crop must be 'auto', 'resized', 'pad' or None, not {crop!r}")
        self.n_views, self.severity, self.width = n_views, severity, width
        self.max_depth, self.crop, self.flip = max_depth, crop, flip

    def __repr__(self):
        return (f"AugMixViews(n_views={self.n_views}, severity={self.severity}, "
                f"width={self.width}, crop={self.crop!r}, flip={self.flip})")

    def _plan(self, crop: str | None, height: int, width: int, gen, n: int | None = None) -> dict:
        """Every random draw for ``n`` views (default: one image's ``n_views``), from one
        generator."""
        n, depth = n or self.n_views, self.max_depth
        plan = {"theta": _crop_flip_theta(n, height, width, crop, self.flip, gen)}
        weights = -torch.rand(n, self.width, generator=gen).log()  # Dirichlet(1, ..., 1)
        plan["weights"] = weights / weights.sum(1, keepdim=True)
        for chain in range(self.width):
            depths = torch.randint(1, depth + 1, (n,), generator=gen)
            ops = torch.randint(len(AUGMIX_OPS), (depth, n), generator=gen)
            ops[torch.arange(depth).view(-1, 1) >= depths] = -1
            plan[f"ops{chain}"] = ops
            # AugMix: level ~ U(0.1, severity) on a scale of 10
            plan[f"levels{chain}"] = uniform((depth, n), 0.1, self.severity, gen) / 10
            plan[f"signs{chain}"] = random_sign((depth, n), gen)
        plan["m"] = torch.rand(n, generator=gen)  # Beta(1, 1)
        return plan

    def _crop_kind(self, height: int, width: int) -> str | None:
        if self.crop != "auto":
            return self.crop
        return "resized" if min(height, width) >= 64 else "pad"

    def _render(self, images: torch.Tensor, plan: dict) -> torch.Tensor:
        """One view per row of ``images`` (a view's image repeated as often as it has
        views), from the concatenated random draws of ``plan``."""
        total = len(images)
        base = warp(images, plan["theta"])
        weights = plan["weights"].to(images)
        mix = torch.zeros_like(base)
        for chain in range(self.width):
            mix += weights[:, chain].view(total, 1, 1, 1) * _augmix_chain(
                base, plan[f"ops{chain}"], plan[f"levels{chain}"], plan[f"signs{chain}"])
        m = plan["m"].to(images).view(total, 1, 1, 1)
        return ((1 - m) * base + m * mix).clamp(0, 1)

    def batch(self, images: torch.Tensor, generators) -> torch.Tensor:
        """Views of several images (N x n_views x 3 x H x W) in one pass of batched
        kernels: identical to calling the generator image by image, much faster on small
        images where per-call overhead dominates."""
        count, (_, height, width) = len(images), images.shape[1:]
        crop = self._crop_kind(height, width)
        plans = [self._plan(crop, height, width, g) for g in generators]
        plan = {k: torch.cat([p[k] for p in plans], dim=-1 if k[:3] in ("ops", "lev", "sig")
                             else 0) for k in plans[0]}
        views = self._render(images.repeat_interleave(self.n_views, 0), plan)
        return views.view(count, self.n_views, *images.shape[1:])

    def mix(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One AugMix image per image of a batch (N x 3 x H x W), every draw from one
        generator: AugMix as a training augmentation (``helpers.recipes``), where a batch
        of thousands of images needs no generator per image."""
        _, _, height, width = images.shape
        plan = self._plan(self._crop_kind(height, width), height, width, generator,
                          n=len(images))
        return self._render(images, plan)

    def __call__(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.batch(image[None], [generator])[0]


class CropViews:
    """TPT's views for ImageNet-like sets: random resized crops (area ``min_scale`` to 1 of
    the image) and flips only; ``crop="pad"`` shifts by up to 4 pixels instead (the CIFAR
    recipe, for small images a resized crop would shrink to a few pixels)."""

    def __init__(self, n_views: int = 63, flip: bool = True, crop: str = "resized",
                 min_scale: float = 0.08):
        if n_views < 1:
            raise ValueError(f"n_views must be at least 1, got {n_views}")
        if crop not in ("resized", "pad"):
            raise ValueError(f"crop must be 'resized' or 'pad', not {crop!r}")
        if not 0 < min_scale <= 1:
            raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
        self.n_views, self.flip, self.crop, self.min_scale = n_views, flip, crop, min_scale

    def __repr__(self):
        extra = "" if self.crop == "resized" and self.min_scale == 0.08 else (
            f", crop={self.crop!r}, min_scale={self.min_scale}")
        return f"CropViews(n_views={self.n_views}, flip={self.flip}{extra})"

    def __call__(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, (_, height, width) = self.n_views, image.shape
        theta = _crop_flip_theta(n, height, width, self.crop, self.flip, generator,
                                 self.min_scale)
        return warp(image.expand(n, -1, -1, -1), theta).clamp(0, 1)


VIEW_KINDS = {"augmix": AugMixViews, "crop": CropViews}


def make_views(spec, n_views: int):
    """A view generator from a plain (JSON, YAML) description, so that a profile can choose
    a method's views: ``"augmix"`` or ``"crop"`` (the defaults of AugMixViews and
    CropViews), or a dict of one of them with its options, e.g. ``{"kind": "augmix",
    "severity": 1}`` (MEMO's CIFAR views). None means AugMix; a view generator is returned
    as it is."""
    if spec is None:
        spec = "augmix"
    if callable(spec):
        return spec
    options = {"kind": spec} if isinstance(spec, str) else dict(spec)
    kind = options.pop("kind", None)
    if kind not in VIEW_KINDS:
        raise ValueError(f"views must be one of {sorted(VIEW_KINDS)} or a dict with 'kind' "
                         f"one of them (and its options), not {spec!r}")
    return VIEW_KINDS[kind](n_views=n_views, **options)


VIEW_BUDGET = 2**25  # floats of views built at once (128 MB)


def views_per_image(views, images, generators, budget: int = VIEW_BUDGET):
    """Each image's views in turn. A generator with ``batch`` builds them for many images at
    once (one pass of batched kernels), in chunks of at most ``budget`` floats; any other is
    called image by image, just before that image's views are needed (never all at once:
    64 views of 64 ImageNet images would take 2.5 GB)."""
    if not hasattr(views, "batch"):
        for image, generator in zip(images, generators):
            yield views(image, generator)
        return
    chunk = max(1, budget // (views.n_views * images[0].numel()))
    for i in range(0, len(images), chunk):
        yield from views.batch(images[i:i + chunk], generators[i:i + chunk])


def generator_for(seed: int, index: int) -> torch.Generator:
    """The generator of one test image: same seed and index, same views."""
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


# ---------------------------------------------------------------- object-focused views

FOCUS_KINDS = ("crop", "blur-background", "replace-background", "augment-object")


def _mask_box(mask: torch.Tensor) -> tuple[float, float, float, float]:
    """Centre and half-size of a mask's bounding box in normalised coordinates [-1, 1]."""
    rows = torch.nonzero(mask.any(1)).flatten()
    cols = torch.nonzero(mask.any(0)).flatten()
    height, width = mask.shape
    x0, x1 = cols[0].item(), cols[-1].item() + 1
    y0, y1 = rows[0].item(), rows[-1].item() + 1
    return ((x0 + x1) / width - 1, (y0 + y1) / height - 1,
            (x1 - x0) / width, (y1 - y0) / height)


def _feather(mask: torch.Tensor, sigma: float) -> torch.Tensor:
    """A soft version of a binary mask (1 x 1 x H x W), so composites show no hard seam."""
    size = 2 * math.ceil(3 * sigma) + 1
    return gaussian_blur(mask[None, None].float(), [size, size], [sigma, sigma])


class FocusedViews:
    """Views that look at the object of ``mask`` (MEMO_PLUS): the views are shared in turn
    between ``kinds``:

    - ``crop``: a square crop around the object's box, ``margin`` times its size, jittered
      and flipped;
    - ``blur-background``: the background blurred, the object kept;
    - ``replace-background``: the background replaced by a random colour;
    - ``augment-object``: views of the named augmentations' ``object_recipe`` (a recipe of
      ``helpers.augment``: a name, a string or a list) applied to the object only.
    """

    def __init__(self, n_views: int = 32, kinds=FOCUS_KINDS, object_recipe="object",
                 margin=(1.1, 1.6), flip: bool = True):
        unknown = sorted(set(kinds) - set(FOCUS_KINDS))
        if unknown or not kinds:
            raise ValueError(f"Unknown or no focus kinds {unknown}; valid: {list(FOCUS_KINDS)}")
        if n_views < 1:
            raise ValueError(f"n_views must be at least 1, got {n_views}")
        self.n_views, self.kinds, self.margin, self.flip = n_views, tuple(kinds), margin, flip
        counts = {k: len(range(i, n_views, len(kinds))) for i, k in enumerate(kinds)}
        self.counts = {k: n for k, n in counts.items() if n}
        self.object_views = None
        if "augment-object" in self.counts:
            self.object_views = RecipeViews(object_recipe, self.counts["augment-object"])

    def __repr__(self):
        return (f"FocusedViews(n_views={self.n_views}, kinds={list(self.kinds)}, "
                f"margin={self.margin}, object_views={self.object_views!r})")

    def _crop(self, image, mask, n, gen):
        cx, cy, w, h = _mask_box(mask)
        _, height, width = image.shape
        side = max(w * width, h * height)  # pixels: a square crop keeps the aspect ratio
        scale = uniform(n, *self.margin, gen) * side
        sx, sy = (scale / width).clamp(max=1), (scale / height).clamp(max=1)
        jitter = (torch.rand(n, 2, generator=gen) * 2 - 1) * 0.1
        theta = identity_matrices(n)
        theta[:, 0, 0], theta[:, 1, 1] = sx, sy
        theta[:, 0, 2] = (cx + jitter[:, 0] * sx).clamp(-1 + sx, 1 - sx)
        theta[:, 1, 2] = (cy + jitter[:, 1] * sy).clamp(-1 + sy, 1 - sy)
        if self.flip:
            theta[:, 0, :] *= random_sign(n, gen).view(n, 1)
        return warp(image.expand(n, -1, -1, -1), theta)

    def _blur_background(self, image, soft, n, gen):
        sigma = 0.03 * max(image.shape[-2:])
        size = 2 * math.ceil(3 * sigma) + 1
        blurred = gaussian_blur(image[None], [size, size], [sigma, sigma])
        strength = uniform(n, 0.6, 1.0, gen).to(image).view(n, 1, 1, 1) * (1 - soft)
        return image + strength * (blurred - image)

    def _replace_background(self, image, soft, n, gen):
        colours = torch.rand(n, image.shape[0], 1, 1, generator=gen).to(image)
        return soft * image + (1 - soft) * colours

    def _augment_object(self, image, soft, n, gen):
        return soft * self.object_views(image, gen) + (1 - soft) * image

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, generator) -> torch.Tensor:
        """``n_views`` views (n x C x H x W) of ``image`` focused on ``mask`` (H x W)."""
        mask = torch.as_tensor(mask, device=image.device).bool()
        if mask.shape != image.shape[-2:] or not mask.any():
            raise ValueError(f"mask must be a non-empty H x W mask of the image's size "
                             f"{tuple(image.shape[-2:])}, got {tuple(mask.shape)}")
        soft = _feather(mask, 0.01 * max(mask.shape)).to(image)
        parts = []
        for kind, n in self.counts.items():
            if kind == "crop":
                parts.append(self._crop(image, mask, n, generator))
            else:
                make = getattr(self, "_" + kind.replace("-", "_"))
                parts.append(make(image, soft, n, generator))
        return torch.cat(parts).clamp(0, 1)
