"""The nineteen named augmentations of MEMO_PLUS, batched on tensors, and views built from a
recipe of them.

Every augmentation is ``fn(images, strength, generator) -> images`` on float images in
[0, 1] of shape (N, C, H, W), C = 1 or 3, on any device. ``strength`` in [0, 1] is one
number or one per image (shape (N,)); all random parameters are drawn per image from the
CPU ``generator`` (then moved to the images' device), so results depend only on the seed.
Strength 0 is the identity, except for the five all-or-nothing operations (horizontal and
vertical flip, greyscale, inverse, histogram equalisation), which ignore ``strength`` (a
half-inverted image is flat grey, a half flip does not exist): the recipe's probability
decides whether they happen.

Where ``torchvision.transforms.v2.functional`` takes one parameter per batch (brightness,
contrast, gamma, rotation, blur sigma, elastic displacement), the operation is written here
with per-image parameters and the same formula; geometric ones share one path: a 3x3
matrix per image (built with ``helpers.views``' AugMix geometry where it applies), one
``grid_sample``.

A recipe is a list of ``(name, (lo, hi), probability)``: each view gets each entry with that
probability, at a strength uniform in [lo, hi], entries applied in order (``RecipeViews``,
with named recipes in ``RECIPES``). The pointwise ones also exist in place (``IN_PLACE``,
``brightness_`` etc.), which RecipeViews uses on its own buffer.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from .geometry import (
    affine_grid,
    augmix_geometry,
    identity_matrices,
    random_sign,
    to_uint8,
    uniform,
)

# ------------------------------------------------------------------ parameters


def _strength(strength, n: int) -> torch.Tensor:
    """``strength`` as a float tensor of shape (n,) on the CPU, checked to lie in [0, 1]."""
    s = torch.as_tensor(strength, dtype=torch.float32).detach().cpu()
    if s.dim() == 0:
        s = s.expand(n)
    if s.shape != (n,):
        raise ValueError(f"strength must be one number or one per image (shape ({n},)), "
                         f"got shape {tuple(s.shape)}")
    if not ((s >= 0) & (s <= 1)).all():
        raise ValueError(f"strength must lie in [0, 1], got values from {s.min().item():g} "
                         f"to {s.max().item():g}")
    return s


def _per_image(values: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Per-image numbers shaped to broadcast over (N, C, H, W) on the images' device."""
    return values.to(images).view(-1, 1, 1, 1)


def _pixel_to_normalised(matrix: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A 3x3 output -> input map in centred pixel units as the same map in affine_grid's
    normalised units, so that rotations and shears stay rotations and shears in pixels on a
    non-square image."""
    scale = torch.diag(torch.tensor([width / 2, height / 2, 1.0]))
    return torch.linalg.inv(scale) @ matrix @ scale


def _warp_by(make_theta, images, strength, generator):
    """One geometric augmentation: its per-image matrices, then one resampling."""
    s = _strength(strength, len(images))
    return _sample(images, make_theta(s, generator, tuple(images.shape[-2:])))


# ------------------------------------------------------------------ per-image adjustments


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``TF.adjust_brightness`` with one factor per image: ``x * factor``, clamped."""
    return (images * _per_image(factor, images)).clamp_(0, 1)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``TF.adjust_contrast`` with one factor per image: blend with the mean of the image's
    grey level (the same formula, with the same rounding-free float arithmetic)."""
    grey = TF.rgb_to_grayscale(images) if images.shape[1] == 3 else images
    mean = grey.mean(dim=(-3, -2, -1), keepdim=True)
    ratio = _per_image(factor, images)
    return (ratio * images + (1.0 - ratio) * mean).clamp_(0, 1)


def adjust_gamma(images: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """``TF.adjust_gamma`` (gain 1) with one gamma per image: ``x ** gamma``."""
    return images.clamp(0, 1).pow(_per_image(gamma, images))


def _blur(images: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Separable blur with one odd-length 1-D kernel per image (N, K): one depthwise
    convolution per axis over all images and channels, reflecting at the borders."""
    n, c, h, w = images.shape
    size = kernels.shape[1]
    x = F.pad(images.reshape(1, n * c, h, w), [size // 2] * 4, mode="reflect")
    weight = kernels.to(images).repeat_interleave(c, 0)  # (n * c, K)
    x = F.conv2d(x, weight.view(n * c, 1, 1, size), groups=n * c)
    x = F.conv2d(x, weight.view(n * c, 1, size, 1), groups=n * c)
    return x.view(n, c, h, w)


def box_kernels(radius: torch.Tensor) -> torch.Tensor:
    """Mean filters of per-image integer ``radius`` (0: the identity), padded with zeros to
    the largest one's length."""
    largest = int(radius.max())
    offsets = torch.arange(-largest, largest + 1).abs()
    inside = (offsets <= radius.view(-1, 1)).float()
    return inside / inside.sum(1, keepdim=True)


def gaussian_kernels(sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian filters of per-image ``sigma`` in pixels (0: the identity, exactly),
    3 sigma wide, as ``TF.gaussian_blur`` with kernel size 2 ceil(3 sigma) + 1."""
    half = math.ceil(3 * float(sigma.max()))
    offsets = torch.arange(-half, half + 1, dtype=torch.float32)
    kernels = torch.exp(-offsets**2 / (2 * sigma.clamp(min=1e-3).view(-1, 1) ** 2))
    return kernels / kernels.sum(1, keepdim=True)


# ------------------------------------------------------------------ the nineteen


def _rotation_theta(s, generator, size):
    return augmix_geometry("rotate", s, random_sign(len(s), generator), size)


def rotation(images, strength, generator):
    """Rotate by up to 30 degrees at strength 1 (AugMix's range), random direction."""
    return _warp_by(_rotation_theta, images, strength, generator)


def _zoom_theta(s, generator, size):
    theta = identity_matrices(len(s))
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / (1 + s)
    return theta


def zoom(images, strength, generator):
    """Zoom into the centre by a factor 1 + strength (2x at strength 1). Zooming out would
    add black borders, which rotation and translation already make."""
    return _warp_by(_zoom_theta, images, strength, generator)


def _flip_theta(axis):
    def theta(s, generator, size):
        matrix = identity_matrices(len(s))
        matrix[:, axis, axis] = -1
        return matrix
    return theta


def horizontal_flip(images, strength, generator):
    """Mirror left-right (strength ignored)."""
    _strength(strength, len(images))
    return TF.horizontal_flip(images)


def vertical_flip(images, strength, generator):
    """Mirror top-bottom (strength ignored)."""
    _strength(strength, len(images))
    return TF.vertical_flip(images)


def _out_of_place(augment_):
    """The public augmentation of an in-place one (``name_``, as torch's ``add_``), which
    RecipeViews calls on its own buffers: a fresh tensor per call costs more than the
    arithmetic on CPU (first touch of new memory)."""
    def augment(images, strength, generator):
        return augment_(images.clone(), strength, generator)
    augment.__name__, augment.__doc__ = augment_.__name__[:-1], augment_.__doc__
    return augment


def greyscale_(images, strength, generator):
    """Replace colour by the grey level, keeping the channel count (strength ignored)."""
    _strength(strength, len(images))
    if images.shape[1] == 3:
        images.copy_(TF.rgb_to_grayscale(images).expand_as(images))
    return images


def inverse_(images, strength, generator):
    """The negative, 1 - x, as ``TF.invert`` (strength ignored)."""
    _strength(strength, len(images))
    return images.neg_().add_(1)


def blur(images, strength, generator):
    """Box (mean) blur of radius round(strength * R) pixels, R = min side / 56 (4 px at 224,
    1 px at 28)."""
    s = _strength(strength, len(images))
    largest = max(1, round(min(images.shape[-2:]) / 56))
    radius = (s * largest).round().long()
    if not radius.any():
        return images.clone()
    return _blur(images, box_kernels(radius)).clamp_(0, 1)


def _crop_theta(s, generator, size):
    n = len(s)
    area = 1 - 0.9 * s
    log_ratio = (torch.rand(n, generator=generator) * 2 - 1) * s * math.log(4 / 3)
    w = (area * log_ratio.exp()).sqrt().clamp(max=1)
    h = (area / log_ratio.exp()).sqrt().clamp(max=1)
    theta = identity_matrices(n)
    theta[:, 0, 0], theta[:, 1, 1] = w, h
    theta[:, 0, 2] = (torch.rand(n, generator=generator) * 2 - 1) * (1 - w)
    theta[:, 1, 2] = (torch.rand(n, generator=generator) * 2 - 1) * (1 - h)
    return theta


def crop(images, strength, generator):
    """A random resized crop: keep a window of area 1 - 0.9 strength (10% at strength 1,
    about RandomResizedCrop's 8%) and aspect ratio within (4/3) ** +-strength, at a random
    place, resized to the full image."""
    return _warp_by(_crop_theta, images, strength, generator)


def _affine_theta(s, generator, size):
    n, (height, width) = len(s), size
    u = (torch.rand(5, n, generator=generator) * 2 - 1) * s
    angle, shear, scale = u[0] * math.radians(20), u[1] * 0.2, 2 ** (u[2] * 0.25)
    matrix = identity_matrices(n)
    cos, sin = angle.cos(), angle.sin()
    matrix[:, 0, 0], matrix[:, 0, 1] = cos / scale, (cos * shear - sin) / scale
    matrix[:, 1, 0], matrix[:, 1, 1] = sin / scale, (sin * shear + cos) / scale
    matrix[:, 0, 2], matrix[:, 1, 2] = u[3] * 0.1 * width, u[4] * 0.1 * height
    return _pixel_to_normalised(matrix, height, width)


def affine(images, strength, generator):
    """A random affine map, as RandomAffine: rotation up to 20 degrees, shear up to 0.2,
    scale within 2 ** +-0.25, translation up to 10% of each side, all times strength."""
    return _warp_by(_affine_theta, images, strength, generator)


def gamma_(images, strength, generator):
    """Gamma 2 ** (+-strength): darker (gamma up to 2) or brighter (down to 1/2)."""
    s = _strength(strength, len(images))
    return images.clamp_(0, 1).pow_(_per_image(2 ** (random_sign(len(s), generator) * s), images))


def _translation_theta(s, generator, size):
    angle = torch.rand(len(s), generator=generator) * 2 * math.pi
    shift_x = augmix_geometry("translate_x", s * angle.cos().abs(), angle.cos().sign(), size)
    shift_y = augmix_geometry("translate_y", s * angle.sin().abs(), angle.sin().sign(), size)
    return shift_x @ shift_y


def translation(images, strength, generator):
    """Shift by up to a third of the image (AugMix's range) times strength, in a random
    direction, by whole pixels; the uncovered part is black."""
    return _warp_by(_translation_theta, images, strength, generator)


def _elastic_field(s, generator, size, like):
    """A smooth random displacement (n, H, W, 2) in normalised units: Gaussian noise of sd
    3 px times strength on a grid of 8 px cells, upsampled bilinearly."""
    n, (height, width) = len(s), size
    cells = (max(3, height // 8), max(3, width // 8))
    noise = torch.randn(n, 2, *cells, generator=generator) * (3 * s).view(n, 1, 1, 1)
    noise[:, 0] *= 2 / width  # pixels -> normalised units
    noise[:, 1] *= 2 / height
    field = F.interpolate(noise.to(like), size=size, mode="bilinear", align_corners=True)
    return field.permute(0, 2, 3, 1)


def _sample(images, theta, field=None):
    """Warp each image by its matrix (output -> input), after displacing the output points
    by ``field`` if given: one resampling for a chain of affine maps and an elastic one.
    Outside pixels are black after an affine map, repeated edges after an elastic one."""
    grid = affine_grid(theta.to(images), *images.shape[-2:], field)
    padding = "zeros" if field is None else "border"
    return F.grid_sample(images, grid, mode="bilinear", padding_mode=padding,
                         align_corners=False).clamp_(0, 1)


def elastic_transform(images, strength, generator):
    """Elastic deformation, as ElasticTransform: each pixel moves by a smooth random field,
    here with a standard deviation of 3 px times strength and a correlation length of about
    8 px, edges repeated. The field is Gaussian noise on a coarse grid, upsampled
    bilinearly: a smooth field like torchvision's blurred full-size noise, at a fraction of
    the cost (blurring full-size noise costs more than the warp itself)."""
    s = _strength(strength, len(images))
    size = tuple(images.shape[-2:])
    return _sample(images, identity_matrices(len(s)), _elastic_field(s, generator, size, images))


def brightness_(images, strength, generator):
    """Brighten by a factor 1 + strength (gamma and contrast also darken)."""
    s = _strength(strength, len(images))
    return images.mul_(_per_image(1 + s, images)).clamp_(0, 1)


def histogram_equalisation(images, strength, generator):
    """Equalise each channel's histogram on 256 levels, as PIL (strength ignored)."""
    _strength(strength, len(images))
    return TF.equalize(to_uint8(images)).to(images.dtype) / 255


def salt_and_pepper_(images, strength, generator):
    """Set a fraction 0.1 strength of the pixels (all channels) to white or black, half each."""
    s = _strength(strength, len(images))
    n, _, height, width = images.shape
    u = torch.rand(n, 1, height, width, generator=generator).to(images.device)
    amount = _per_image(0.1 * s, images)
    salt = u < amount / 2
    pepper = (u < amount) ^ salt
    return images.masked_fill_(salt, 1.0).masked_fill_(pepper, 0.0)


def gaussian_blur(images, strength, generator):
    """Gaussian blur of sigma = strength * min side / 64 pixels (3.5 px at 224), at least
    0.75 px at strength 1 on small images."""
    s = _strength(strength, len(images))
    sigma = s * max(0.75, min(images.shape[-2:]) / 64)
    if not sigma.any():
        return images.clone()
    return _blur(images, gaussian_kernels(sigma)).clamp_(0, 1)


POISSON_PHOTONS = 30.0  # photons at intensity 1 at strength 1: noise sd 0.13 at grey 0.5


def poisson_noise(images, strength, generator):
    """Shot noise: each value x becomes a photon count of mean x k, divided by k, with
    k = 30 / strength ** 2 photons per unit intensity, so the noise's standard deviation,
    sqrt(x / 30) strength, grows linearly with strength and strength 0 (infinite light) is
    the identity. The count is Poisson's normal approximation rounded to whole photons,
    round(x k + sqrt(x k) z): the same mean and variance, and ten times cheaper than
    ``torch.poisson`` (60 ns a value on CPU), which dominated a recipe's cost."""
    s = _strength(strength, len(images))
    photons = _per_image(POISSON_PHOTONS / s.clamp(min=1e-3) ** 2, images)
    z = torch.randn(images.shape, generator=generator).to(images)
    rates = images * photons
    out = rates.sqrt().mul_(z).add_(rates).round_().clamp_(min=0).div_(photons).clamp_(0, 1)
    still = (s == 0).nonzero().flatten().to(images.device)  # infinite light: no noise
    return out.index_copy_(0, still, images[still])


def speckle_noise(images, strength, generator):
    """Multiplicative noise x (1 + n), n ~ N(0, (0.4 strength) ** 2), as skimage's speckle."""
    s = _strength(strength, len(images))
    noise = torch.randn(images.shape, generator=generator).to(images)
    return noise.mul_(_per_image(0.4 * s, images)).add_(1).mul_(images).clamp_(0, 1)


def contrast_(images, strength, generator):
    """Contrast factor 1 +- 0.8 strength (from 0.2, nearly flat, to 1.8), as
    ``TF.adjust_contrast``: a blend with the mean grey level."""
    s = _strength(strength, len(images))
    ratio = _per_image(1 + 0.8 * random_sign(len(s), generator) * s, images)
    grey = TF.rgb_to_grayscale(images) if images.shape[1] == 3 else images
    mean = grey.mean(dim=(-3, -2, -1), keepdim=True)
    return images.mul_(ratio).add_((1.0 - ratio) * mean).clamp_(0, 1)


IN_PLACE = {fn.__name__[:-1]: fn for fn in (
    greyscale_, inverse_, gamma_, brightness_, salt_and_pepper_, contrast_)}
greyscale, inverse, gamma, brightness, salt_and_pepper, contrast = (
    _out_of_place(fn) for fn in IN_PLACE.values())


AUGMENTATIONS = {fn.__name__: fn for fn in (
    rotation, zoom, horizontal_flip, vertical_flip, greyscale, inverse, blur, crop, affine,
    gamma, translation, elastic_transform, brightness, histogram_equalisation,
    salt_and_pepper, gaussian_blur, poisson_noise, speckle_noise, contrast)}

# The affine ones as per-image matrices (output -> input, normalised units), which RecipeViews
# composes into one resampling per view; the flips are applied directly unless composed.
AFFINE_THETAS = {"rotation": _rotation_theta, "zoom": _zoom_theta, "crop": _crop_theta,
                 "affine": _affine_theta, "translation": _translation_theta,
                 "horizontal_flip": _flip_theta(0), "vertical_flip": _flip_theta(1)}

# Applied fully whenever chosen; their strength is ignored.
ALL_OR_NOTHING = ("horizontal_flip", "vertical_flip", "greyscale", "inverse",
                  "histogram_equalisation")

# ------------------------------------------------------------------ recipes

RECIPES = {
    # Geometry and light photometric changes: views that stay close to the test image.
    "mild": [("crop", (0.0, 0.5), 0.5), ("horizontal_flip", (0, 1), 0.5),
             ("rotation", (0.0, 0.5), 0.3), ("brightness", (0.0, 0.3), 0.3),
             ("contrast", (0.0, 0.3), 0.3), ("gaussian_blur", (0.0, 0.3), 0.2)],
    # More and stronger geometry, colour and noise.
    "strong": [("crop", (0.2, 0.8), 0.7), ("horizontal_flip", (0, 1), 0.5),
               ("affine", (0.3, 1.0), 0.5), ("elastic_transform", (0.3, 1.0), 0.3),
               ("gamma", (0.2, 0.8), 0.4), ("contrast", (0.2, 0.8), 0.4),
               ("greyscale", (0, 1), 0.2), ("gaussian_blur", (0.2, 0.8), 0.3),
               ("speckle_noise", (0.2, 0.8), 0.3)],
    # The course project's list: every one of the nineteen, each in a quarter of the views.
    "course": [(name, (0.2, 0.8), 0.25) for name in AUGMENTATIONS],
    # MEMO_PLUS's object-only views: photometric changes only, so the object stays under
    # its mask (a warp would move it off the mask it is pasted through).
    "object": [("brightness", (0.1, 0.6), 0.5), ("contrast", (0.1, 0.6), 0.5),
               ("gamma", (0.1, 0.6), 0.4), ("greyscale", (0, 1), 0.2),
               ("gaussian_blur", (0.1, 0.5), 0.3), ("speckle_noise", (0.1, 0.5), 0.3),
               ("inverse", (0, 1), 0.05)],
}


def augmentation_name(name: str) -> str:
    """The registry's name for ``name``: case, spaces and hyphens do not matter
    ("Gaussian blur" -> "gaussian_blur"); an unknown name raises, listing the valid ones."""
    key = re.sub(r"[\s\-]+", "_", str(name).strip().lower())
    if key not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}; valid augmentations: "
                         f"{', '.join(AUGMENTATIONS)}")
    return key


def parse_recipe(recipe) -> list[tuple[str, tuple[float, float], float]]:
    """A checked recipe from a recipe name of RECIPES, a string
    ``"name:lo-hi:p, name:lo-hi:p"`` (for notebook parameters), or a list of
    ``(name, (lo, hi), p)`` or ``(name, strength, p)``."""
    if isinstance(recipe, str):
        if recipe in RECIPES:
            return parse_recipe(RECIPES[recipe])
        if ":" not in recipe:
            raise ValueError(f"unknown recipe {recipe!r}; named recipes: {', '.join(RECIPES)}"
                             " (or write 'name:lo-hi:p, ...')")
        recipe = [_parse_entry(part) for part in recipe.split(",") if part.strip()]
    if not len(recipe):
        raise ValueError("a recipe needs at least one (name, (lo, hi), probability) entry")
    entries = []
    for entry in recipe:
        if len(entry) != 3:
            raise ValueError(f"a recipe entry is (name, (lo, hi), probability), got {entry!r}")
        name, strength, p = entry
        lo, hi = (strength, strength) if isinstance(strength, (int, float)) else strength
        lo, hi, p = float(lo), float(hi), float(p)
        if not 0 <= lo <= hi <= 1:
            raise ValueError(f"{name}: the strength range needs 0 <= lo <= hi <= 1, "
                             f"got ({lo:g}, {hi:g})")
        if not 0 <= p <= 1:
            raise ValueError(f"{name}: probability must lie in [0, 1], got {p:g}")
        entries.append((augmentation_name(name), (lo, hi), p))
    return entries


def _parse_entry(text: str):
    try:
        name, strength, p = (part.strip() for part in text.split(":"))
        lo, _, hi = strength.partition("-")
        return name, (float(lo), float(hi or lo)), float(p)
    except ValueError:
        raise ValueError(f"cannot read recipe entry {text.strip()!r}; write it as "
                         "'name:lo-hi:p', e.g. 'rotation:0.2-0.6:0.5'") from None


class RecipeViews:
    """Views of one image from a recipe: for each entry in turn, a Bernoulli(p) draw picks
    the views that get it and each picked view a strength uniform in [lo, hi]; the entry is
    applied to those views at once (one batched call). Consecutive geometric entries of a
    view (rotation, zoom, flips, crop, affine, translation, then an elastic one) are
    composed and resampled once, just before the view's next other entry: sharper views, and
    most of the speed. Same interface as the generators of ``helpers.views``:
    ``views(image, generator) -> (n_views, C, H, W)``, everything drawn from the generator,
    so an image's views depend only on its seed."""

    def __init__(self, recipe="course", n_views: int = 64):
        if n_views < 1:
            raise ValueError(f"n_views must be at least 1, got {n_views}")
        self.name = recipe if isinstance(recipe, str) and recipe in RECIPES else None
        self.recipe, self.n_views = parse_recipe(recipe), n_views
        self._buffer = None

    def _gather(self, views: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``views[index]`` copied into a buffer kept between calls, which in-place entries
        then modify: new memory costs more than the arithmetic of a pointwise entry on CPU
        (first touch of every page)."""
        if self._buffer is None or self._buffer.shape != views.shape or \
                self._buffer.dtype != views.dtype or self._buffer.device != views.device:
            self._buffer = torch.empty_like(views)
        return torch.index_select(views, 0, index, out=self._buffer[:len(index)])

    def __getstate__(self):  # the buffer is a cache, not state
        return {**self.__dict__, "_buffer": None}

    def __repr__(self):
        recipe = repr(self.name) if self.name else f"<{len(self.recipe)} entries>"
        return f"RecipeViews({recipe}, n_views={self.n_views})"

    def __call__(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if image.dim() != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"expected one image (C, H, W) with C = 1 or 3, got shape "
                             f"{tuple(image.shape)}")
        n, size = self.n_views, tuple(image.shape[-2:])
        views = image.expand(n, -1, -1, -1).clone()
        warp = _Pending(n)
        for name, (lo, hi), p in self.recipe:
            chosen = (torch.rand(n, generator=generator) < p).nonzero().flatten()
            strength = uniform(n, lo, hi, generator)[chosen]
            if not len(chosen):
                continue
            if name in AFFINE_THETAS:
                theta = AFFINE_THETAS[name](strength, generator, size)
                direct = warp.compose(chosen, theta, start=not name.endswith("flip"))
                if len(direct):  # flips of views with no warp pending: no resampling
                    index = chosen[direct].to(views.device)
                    views.index_copy_(0, index, AUGMENTATIONS[name](
                        views.index_select(0, index), 0, generator))
                continue
            index = chosen.to(views.device)
            if name == "elastic_transform":
                field = _elastic_field(strength, generator, size, views)
                views.index_copy_(0, index, warp.apply(views.index_select(0, index), chosen,
                                                       field))
            else:
                batch = warp.apply(self._gather(views, index), chosen)
                augment = IN_PLACE.get(name, AUGMENTATIONS[name])
                views.index_copy_(0, index, augment(batch, strength, generator))
        everything = torch.arange(n)
        return warp.apply(views, everything)


class _Pending:
    """Affine warps waiting to be applied to some of the views: consecutive geometric
    entries of a view become one matrix and one resampling (sharper than resampling at
    each step, and far cheaper), applied just before the view's next other entry."""

    def __init__(self, n: int):
        self.theta, self.pending = identity_matrices(n), torch.zeros(n, dtype=torch.bool)

    def compose(self, chosen, theta, start: bool = True) -> torch.Tensor:
        """Append ``theta`` to the chosen views' warps; with ``start=False``, only to those
        with a warp pending. Returns the positions in ``chosen`` not composed."""
        take = torch.ones(len(chosen), dtype=torch.bool) if start else self.pending[chosen]
        views = chosen[take]
        self.theta[views] = self.theta[views] @ theta[take]
        self.pending[views] = True
        return (~take).nonzero().flatten()

    def apply(self, batch, chosen, field=None):
        """``batch`` (the views ``chosen``) with their pending warps applied and cleared,
        after a displacement field of theirs if given (which resamples them all anyway)."""
        rows = torch.arange(len(chosen)) if field is not None else \
            self.pending[chosen].nonzero().flatten()
        if len(rows) == len(chosen):
            batch = _sample(batch, self.theta[chosen], field)
        elif len(rows):
            index = rows.to(batch.device)
            batch.index_copy_(0, index, _sample(batch.index_select(0, index),
                                                self.theta[chosen[rows]]))
        self.theta[chosen], self.pending[chosen] = torch.eye(3), False
        return batch
