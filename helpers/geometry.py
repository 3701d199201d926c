"""Batched image geometry shared by the view generators (``views``) and the named
augmentations (``augment``): per-image random draws, 3x3 affine matrices in normalised
coordinates, and one warp of many images, each by its own matrix."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def uniform(shape, low, high, gen):
    """Uniform draws in [low, high) from ``gen``."""
    return low + (high - low) * torch.rand(shape, generator=gen)


def random_sign(n, gen):
    """``n`` random signs (-1 or 1) from ``gen``."""
    return torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)


def affine_grid(theta: torch.Tensor, height: int, width: int,
                field: torch.Tensor | None = None) -> torch.Tensor:
    """``F.affine_grid(theta, align_corners=False)`` (output -> input matrices, normalised
    units) as broadcast multiply-adds written in place into one buffer: the same sampling
    grid, many times faster on CPU than affine_grid's batched matmul with an inner size of 3
    or than stacking the two coordinate planes. ``field`` (n, H, W, 2), if given, displaces
    the output points first (elastic transforms)."""
    xs = torch.linspace(-1 + 1 / width, 1 - 1 / width, width, dtype=theta.dtype,
                        device=theta.device).view(1, 1, width)
    ys = torch.linspace(-1 + 1 / height, 1 - 1 / height, height, dtype=theta.dtype,
                        device=theta.device).view(1, height, 1)
    t = theta[:, :2, :, None, None]
    grid = torch.empty(len(theta), height, width, 2, dtype=theta.dtype, device=theta.device)
    for k in range(2):
        torch.add(t[:, k, 0] * xs, t[:, k, 1] * ys + t[:, k, 2], out=grid[..., k])
        if field is not None:  # the displacement goes through theta's linear part
            grid[..., k].addcmul_(t[:, k, 0], field[..., 0]).addcmul_(t[:, k, 1], field[..., 1])
    return grid


def warp(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Warp each image by its own matrix (output -> input, normalised coordinates, 2x3 or
    3x3); outside pixels are black, as with PIL's affine transforms in AugMix."""
    grid = affine_grid(theta.to(images), *images.shape[-2:])
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)


def identity_matrices(n):
    """``n`` 3x3 identity matrices (one affine map per image)."""
    return torch.eye(3).repeat(n, 1, 1)


def to_uint8(x):
    """Images in [0, 1] as uint8, rounded."""
    return (x * 255).round().clamp(0, 255).to(torch.uint8)


def augmix_geometry(name: str, level: torch.Tensor, sign: torch.Tensor, size) -> torch.Tensor:
    """The 3x3 matrices of AugMix's rotate (30 degrees), shear (0.3) and translate (a third
    of the image, whole pixels) at per-image ``level`` in [0, 1] and direction ``sign``.
    ``size`` is the image's (height, width), or one number for a square image. The matrices
    act on normalised coordinates, so the aspect ratio enters: a rotation stays a rotation
    in pixels on a non-square image."""
    height, width = (size, size) if isinstance(size, int) else size
    theta = identity_matrices(len(level))
    if name == "rotate":
        angle = sign * level * math.radians(30)
        theta[:, 0, :2] = torch.stack([angle.cos(), -angle.sin() * height / width], 1)
        theta[:, 1, :2] = torch.stack([angle.sin() * width / height, angle.cos()], 1)
    elif name in ("shear_x", "shear_y"):
        row, col = (0, 1) if name == "shear_x" else (1, 0)
        ratio = height / width if name == "shear_x" else width / height
        theta[:, row, col] = sign * level * 0.3 * ratio
    else:
        axis, length = (0, width) if name == "translate_x" else (1, height)
        pixels = (sign * level * length / 3).round()
        theta[:, axis, 2] = pixels * 2 / length
    return theta
