import math

import pytest
import torch

from helpers.geometry import affine_grid, augmix_geometry, warp
from helpers.views import (
    AUGMIX_OPS,
    AugMixViews,
    CropViews,
    _augmix_chain,
    _colour,
    _crop_flip_theta,
    generator_for,
)


def rand_image(size, seed=0):
    return torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed))


def shift_theta(dx_pixels, dy_pixels, size):
    """Output -> input translation by whole pixels, in affine_grid's normalised coordinates."""
    return torch.tensor([[[1.0, 0.0, dx_pixels * 2 / size], [0.0, 1.0, dy_pixels * 2 / size]]])


# ---------------------------------------------------------------- views


@pytest.mark.parametrize("size", [28, 224])  # pad-and-crop below 64 px, resized crop above
@pytest.mark.parametrize("make", [lambda: AugMixViews(4), lambda: CropViews(4)])
def test_views_shape_dtype_range_device(make, size):
    image = rand_image(size)
    views = make()(image, generator_for(0, 0))
    assert views.shape == (4, 3, size, size)
    assert views.dtype == torch.float32 and views.device == image.device
    assert views.min() >= 0 and views.max() <= 1


@pytest.mark.parametrize("views", [AugMixViews(4), CropViews(4)])
def test_views_depend_only_on_seed_and_key(views):
    image = rand_image(28)
    first = views(image, generator_for(0, 7))
    assert torch.equal(first, views(image, generator_for(0, 7)))
    assert not torch.equal(first, views(image, generator_for(0, 8)))
    assert not torch.equal(first, views(image, generator_for(1, 7)))


@pytest.mark.parametrize("size", [28, 224])
@pytest.mark.parametrize("views", [AugMixViews(8), CropViews(8)])
def test_no_view_is_the_original_image(views, size):
    image = rand_image(size, seed=2)
    for view in views(image, generator_for(0, 3)):
        assert not torch.equal(view, image)


def test_augmix_batch_equals_image_by_image():
    images = torch.stack([rand_image(28, seed) for seed in range(3)])
    views = AugMixViews(4)
    batched = views.batch(images, [generator_for(0, k) for k in range(3)])
    assert batched.shape == (3, 4, 3, 28, 28)
    for k in range(3):
        assert torch.allclose(batched[k], views(images[k], generator_for(0, k)), atol=1e-6)


def test_pad_crop_shifts_by_whole_pixels_up_to_four():
    theta = _crop_flip_theta(200, 28, 28, "pad", False, torch.Generator().manual_seed(0))
    shifts = theta[:, :2, 2] * 28 / 2
    assert torch.allclose(shifts, shifts.round(), atol=1e-5)
    for axis in (0, 1):
        assert set(shifts[:, axis].round().int().tolist()) == set(range(-4, 5))
    assert torch.equal(theta[:, :2, :2], torch.eye(2).expand(200, 2, 2))


def test_resized_crop_keeps_area_and_aspect_in_range():
    theta = _crop_flip_theta(500, 224, 224, "resized", False, torch.Generator().manual_seed(0))
    w, h = theta[:, 0, 0], theta[:, 1, 1]
    assert (w * h >= 0.08 - 1e-6).all() and (w * h <= 1 + 1e-6).all()
    unclamped = (w < 1) & (h < 1)
    ratio = w[unclamped] / h[unclamped]
    assert (ratio >= 3 / 4 - 1e-5).all() and (ratio <= 4 / 3 + 1e-5).all()
    # the crop stays inside the image: |offset| + half-size <= 1
    assert (theta[:, 0, 2].abs() <= 1 - w + 1e-6).all()
    assert (theta[:, 1, 2].abs() <= 1 - h + 1e-6).all()


# ---------------------------------------------------------------- operations


def test_solarize_inverts_pixels_at_or_above_one_minus_level():
    x = torch.tensor([0.0, 0.2, 0.5, 0.65, 0.75, 0.9, 1.0]).view(1, 1, 1, 7).repeat(2, 1, 1, 1)
    out = _colour("solarize", x, torch.tensor([0.3, 0.6]))
    # threshold 0.7 for the first image, 0.4 for the second
    expected = torch.tensor([[0.0, 0.2, 0.5, 0.65, 0.25, 0.1, 0.0],
                             [0.0, 0.2, 0.5, 0.35, 0.25, 0.1, 0.0]])
    assert torch.allclose(out.view(2, 7), expected, atol=1e-6)


def test_posterize_keeps_top_bits():
    x = torch.full((4, 1, 1, 3), 0.0)
    x[..., 0], x[..., 1], x[..., 2] = 183 / 255, 255 / 255, 31 / 255  # 10110111, 11111111, 00011111
    out = _colour("posterize", x, torch.tensor([0.0, 0.3, 0.6, 1.0]))  # 4, 3, 2, 0 bits
    expected = torch.tensor([[0b10110000, 0b11110000, 0b00010000],
                             [0b10100000, 0b11100000, 0b00000000],
                             [0b10000000, 0b11000000, 0b00000000],
                             [0, 0, 0]], dtype=torch.float32)
    assert torch.equal(out.view(4, 3) * 255, expected)


def test_affine_translation_by_whole_pixels_shifts_content():
    image = rand_image(12)[None]
    out = warp(image, shift_theta(2, 0, 12))
    assert torch.allclose(out[..., :, :-2], image[..., :, 2:], atol=1e-6)
    assert out[..., :, -2:].abs().max() < 1e-6  # outside pixels are black
    out = warp(image, shift_theta(0, -3, 12))
    assert torch.allclose(out[..., 3:, :], image[..., :-3, :], atol=1e-6)
    assert out[..., :3, :].abs().max() < 1e-6


@pytest.mark.parametrize("name,axis", [("translate_x", -1), ("translate_y", -2)])
def test_translate_moves_a_third_of_the_image_times_level_in_whole_pixels(name, axis):
    size, level = 12, torch.tensor([0.25, 0.5, 0.75, 1.0, 0.5])
    sign = torch.tensor([1.0, 1.0, -1.0, 1.0, -1.0])
    theta = augmix_geometry(name, level, sign, size)
    row = 0 if name == "translate_x" else 1
    pixels = theta[:, row, 2] * size / 2
    assert torch.allclose(pixels, torch.tensor([1.0, 2, -3, 4, -2]), atol=1e-6)
    assert torch.equal(theta[:, 1 - row, 2], torch.zeros(5))
    assert torch.equal(theta[:, :2, :2], torch.eye(2).expand(5, 2, 2))
    image = rand_image(size)[None]
    for i in range(5):
        p = int(pixels[i].round())
        out = warp(image, theta[i:i + 1])
        expected = image.roll(-p, dims=axis)  # output pixel j shows input pixel j + p
        keep = slice(0, size - p) if p > 0 else slice(-p, size)
        index = (..., keep) if axis == -1 else (..., keep, slice(None))
        assert torch.allclose(out[index], expected[index], atol=1e-6)


def test_rotate_by_level_zero_is_identity():
    theta = augmix_geometry("rotate", torch.zeros(2), torch.tensor([1.0, -1.0]), 16)
    assert torch.equal(theta, torch.eye(3).expand(2, 3, 3))
    image = rand_image(16)[None].repeat(2, 1, 1, 1)
    assert torch.allclose(warp(image, theta), image, atol=1e-6)


def test_rotate_and_shear_matrices():
    level, sign = torch.tensor([0.5]), torch.tensor([-1.0])
    c, s = math.cos(math.radians(-15)), math.sin(math.radians(-15))  # 30 degrees at level 1
    expected = torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    assert torch.allclose(augmix_geometry("rotate", level, sign, 16)[0], expected, atol=1e-6)
    shear = torch.tensor([[1.0, 0, 0], [-0.15, 1, 0], [0, 0, 1]])  # 0.3 at level 1
    assert torch.allclose(augmix_geometry("shear_y", level, sign, 16)[0], shear, atol=1e-7)
    assert torch.allclose(augmix_geometry("shear_x", level, sign, 16)[0], shear.T, atol=1e-7)


def chain(names, levels, signs, base):
    ops = torch.tensor([[AUGMIX_OPS.index(name)] for name in names])
    return _augmix_chain(base, ops, torch.tensor(levels).view(-1, 1),
                         torch.tensor(signs).view(-1, 1))


def test_consecutive_geometric_ops_are_one_warp_by_the_product_matrix():
    base, size = rand_image(16)[None], 16
    out = chain(["rotate", "translate_x"], [0.7, 0.5], [1.0, -1.0], base)
    rotate = augmix_geometry("rotate", torch.tensor([0.7]), torch.tensor([1.0]), size)
    translate = augmix_geometry("translate_x", torch.tensor([0.5]), torch.tensor([-1.0]), size)
    assert torch.allclose(out, warp(base, rotate @ translate), atol=1e-6)
    # not two resamplings in a row (bilinear twice blurs more), nor the reverse order
    twice = warp(warp(base, rotate), translate)
    assert not torch.allclose(out, twice, atol=1e-3)
    assert not torch.allclose(out, warp(base, translate @ rotate), atol=1e-3)


def test_colour_op_between_geometric_ops_splits_the_warp():
    base, size = rand_image(16)[None], 16
    out = chain(["rotate", "solarize", "shear_x"], [0.7, 0.5, 0.9], [1.0, 1.0, -1.0], base)
    rotate = augmix_geometry("rotate", torch.tensor([0.7]), torch.tensor([1.0]), size)
    shear = augmix_geometry("shear_x", torch.tensor([0.9]), torch.tensor([-1.0]), size)
    solarized = _colour("solarize", warp(base, rotate), torch.tensor([0.5]))
    assert torch.allclose(out, warp(solarized, shear), atol=1e-6)


def test_chain_without_ops_returns_the_base():
    base = rand_image(16)[None].repeat(2, 1, 1, 1)
    ops = torch.full((3, 2), -1)
    assert torch.equal(_augmix_chain(base, ops, torch.rand(3, 2), torch.ones(3, 2)), base)


# ---------------------------------------------------------------- arguments


def test_invalid_arguments_raise_helpful_errors():
    with pytest.raises(ValueError, match="n_views must be at least 1, got 0"):
        AugMixViews(n_views=0)
    with pytest.raises(ValueError, match="n_views must be at least 1, got 0"):
        CropViews(n_views=0)
    for severity in (0, 11):
        with pytest.raises(ValueError, match=rf"severity must be in 1\.\.10.*got {severity}"):
            AugMixViews(severity=severity)
    with pytest.raises(ValueError, match="crop must be 'auto', 'resized', 'pad' or None, "
                                         "not 'center'"):
        AugMixViews(crop="center")
    with pytest.raises(ValueError, match="crop must be"):
        _crop_flip_theta(2, 8, 8, "center", True, torch.Generator())


def test_affine_grid_equals_torch_affine_grid():
    theta = torch.randn(5, 2, 3)
    for height, width in [(7, 7), (224, 224), (10, 31)]:
        expected = torch.nn.functional.affine_grid(theta, [5, 3, height, width],
                                                   align_corners=False)
        assert torch.allclose(affine_grid(theta, height, width), expected, atol=1e-5)


@pytest.mark.parametrize("name", ["rotate", "translate_x", "translate_y", "shear_x"])
def test_geometry_on_non_square_images_acts_in_pixels(name):
    """In pixel units (x = (x_n + 1) w / 2), a rotation stays orthonormal, a translation
    moves a third of the image's own side times the level, whole pixels."""
    height, width = 20, 40
    level, sign = torch.tensor([0.9]), torch.tensor([1.0])
    theta = augmix_geometry(name, level, sign, (height, width))[0]
    to_pixels = torch.diag(torch.tensor([width / 2, height / 2, 1.0]))
    in_pixels = to_pixels @ theta @ torch.linalg.inv(to_pixels)
    if name == "rotate":
        linear = in_pixels[:2, :2]
        assert torch.allclose(linear @ linear.T, torch.eye(2), atol=1e-6)
    elif name == "shear_x":
        assert in_pixels[0, 1].item() == pytest.approx(0.9 * 0.3)
    else:
        axis, length = (0, width) if name == "translate_x" else (1, height)
        assert in_pixels[axis, 2].item() == pytest.approx(round(0.9 * length / 3))


def test_make_views_builds_views_from_plain_descriptions():
    """Profiles choose MEMO's and TPT's views by name or dict (JSON-able settings)."""
    from helpers.views import make_views
    assert repr(make_views(None, 8)) == repr(AugMixViews(8))
    assert repr(make_views("crop", 5)) == repr(CropViews(5))
    mild = make_views({"kind": "augmix", "severity": 1}, 4)
    assert isinstance(mild, AugMixViews) and mild.severity == 1 and mild.n_views == 4
    pad = make_views({"kind": "crop", "crop": "pad"}, 6)
    image = rand_image(28, seed=5)
    views = pad(image, generator_for(0, 1))
    g = generator_for(0, 1)
    shifts = torch.randint(-4, 5, (6, 2), generator=g).float()
    for view, (dx, dy) in zip(views, shifts):  # whole-pixel shifts, and perhaps a flip
        shifted = warp(image[None], shift_theta(dx, dy, 28))[0]
        mirrored = warp(image[None], shift_theta(-dx, dy, 28))[0].flip(-1)
        assert torch.allclose(view, shifted, atol=1e-5) or torch.allclose(
            view, mirrored, atol=1e-5)
    assert make_views(pad, 99) is pad
    with pytest.raises(ValueError, match="augmix.*crop"):
        make_views({"kind": "mixup"}, 4)
    with pytest.raises(ValueError, match="min_scale"):
        CropViews(4, min_scale=0)


def test_crop_views_min_scale_bounds_the_crop_area():
    theta = _crop_flip_theta(500, 28, 28, "resized", False, torch.Generator().manual_seed(0),
                             min_scale=0.35)
    area = (theta[:, 0, 0] * theta[:, 1, 1])
    assert area.min() >= 0.35 * 0.99 and area.max() <= 1


def test_augmix_mix_gives_one_view_per_image_from_one_generator():
    images = torch.stack([rand_image(28, seed) for seed in range(5)])
    views = AugMixViews(1, crop=None, flip=False)
    mixed = views.mix(images, torch.Generator().manual_seed(3))
    assert mixed.shape == images.shape and mixed.min() >= 0 and mixed.max() <= 1
    assert torch.equal(mixed, views.mix(images, torch.Generator().manual_seed(3)))
    assert (mixed - images).abs().amax(dim=(1, 2, 3)).min() > 0
