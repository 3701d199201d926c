import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from helpers.augment import (
    ALL_OR_NOTHING,
    AUGMENTATIONS,
    RECIPES,
    RecipeViews,
    adjust_brightness,
    adjust_contrast,
    adjust_gamma,
    augmentation_name,
    parse_recipe,
)
from helpers.views import generator_for, views_per_image

NAMES = list(AUGMENTATIONS)
GRADUAL = [name for name in NAMES if name not in ALL_OR_NOTHING]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def rand_images(n=4, channels=3, height=32, width=40, seed=1):
    return torch.rand(n, channels, height, width, generator=gen(seed))


def constant(value, n=4, height=32, width=40):
    return torch.full((n, 3, height, width), value)


def test_the_nineteen_are_registered():
    assert len(AUGMENTATIONS) == 19
    assert set(ALL_OR_NOTHING) <= set(AUGMENTATIONS)


# ---------------------------------------------------------------- every augmentation


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", NAMES)
def test_shape_dtype_range_device(name, channels):
    images = rand_images(channels=channels)
    out = AUGMENTATIONS[name](images, 0.7, gen())
    assert out.shape == images.shape
    assert out.dtype == images.dtype and out.device == images.device
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU here")
def test_runs_on_the_gpu_with_the_cpu_generator():
    """Random parameters come from the CPU generator: the same views on either device."""
    images = rand_images().cuda()
    for name, augment in AUGMENTATIONS.items():
        out = augment(images, 0.7, gen())
        assert out.device == images.device, name
        assert torch.allclose(out.cpu(), augment(images.cpu(), 0.7, gen()), atol=1e-4), name
    views = RecipeViews("course", 8)
    assert torch.allclose(views(images[0], gen()).cpu(), views(images[0].cpu(), gen()),
                          atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_output_and_input_untouched(name):
    images = rand_images()
    before = images.clone()
    first = AUGMENTATIONS[name](images, 0.7, gen(3))
    assert torch.equal(first, AUGMENTATIONS[name](images, 0.7, gen(3)))
    assert torch.equal(images, before)


@pytest.mark.parametrize("name", GRADUAL)
def test_strength_zero_is_the_identity(name):
    images = rand_images()
    assert torch.allclose(AUGMENTATIONS[name](images, 0.0, gen()), images, atol=1e-5)


@pytest.mark.parametrize("name", GRADUAL)
def test_strength_per_image(name):
    """A strength per image: the images at strength 0 are kept, the others change."""
    images = rand_images()
    out = AUGMENTATIONS[name](images, torch.tensor([0.0, 0.9, 0.0, 0.9]), gen())
    assert torch.allclose(out[[0, 2]], images[[0, 2]], atol=1e-5)
    for k in (1, 3):
        assert (out[k] - images[k]).abs().max() > 1e-2


@pytest.mark.parametrize("strength, message", [
    (1.5, r"strength must lie in \[0, 1\], got values from 1.5"),
    (torch.tensor([-0.1, 0.2, 0.3, 0.4]), r"must lie in \[0, 1\], got values from -0.1 to 0.4"),
    (torch.zeros(3), r"one number or one per image \(shape \(4,\)\), got shape \(3,\)"),
])
def test_bad_strength(strength, message):
    with pytest.raises(ValueError, match=message):
        AUGMENTATIONS["rotation"](rand_images(), strength, gen())


# ---------------------------------------------------------------- each one's own property


def test_flips_twice_are_the_identity_and_mirror():
    images = rand_images()
    for name, dim in (("horizontal_flip", -1), ("vertical_flip", -2)):
        once = AUGMENTATIONS[name](images, 0.3, gen())
        assert torch.equal(once, images.flip(dim))
        assert torch.equal(AUGMENTATIONS[name](once, 0.3, gen()), images)


def test_inverse_is_one_minus_x():
    images = rand_images()
    assert torch.equal(AUGMENTATIONS["inverse"](images, 0.5, gen()), 1 - images)


def test_greyscale_channels_equal_the_luma():
    images = rand_images()
    out = AUGMENTATIONS["greyscale"](images, 0.5, gen())
    luma = 0.2989 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]
    for channel in range(3):
        assert torch.allclose(out[:, channel], luma, atol=1e-6)
    grey = rand_images(channels=1)
    assert torch.equal(AUGMENTATIONS["greyscale"](grey, 0.5, gen()), grey)


def test_brightness_raises_the_mean_by_its_factor():
    images = rand_images() * 0.5  # nothing clips at factor 1.5
    out = AUGMENTATIONS["brightness"](images, 0.5, gen())
    assert torch.allclose(out, images * 1.5)
    assert (out.mean((1, 2, 3)) > images.mean((1, 2, 3))).all()


def test_per_image_adjustments_equal_torchvision_image_by_image():
    images = rand_images()
    factors = torch.tensor([0.3, 0.9, 1.4, 2.0])
    for ours, theirs in ((adjust_brightness, TF.adjust_brightness),
                         (adjust_contrast, TF.adjust_contrast),
                         (adjust_gamma, TF.adjust_gamma)):
        out = ours(images, factors)
        for k, factor in enumerate(factors.tolist()):
            assert torch.allclose(out[k], theirs(images[k], factor), atol=1e-6), ours.__name__


def test_gamma_moves_every_pixel_one_way_per_image():
    images = rand_images(n=8).clamp(0.01, 0.99)
    out = AUGMENTATIONS["gamma"](images, 0.8, gen())
    darker = (out <= images).flatten(1).all(1)
    brighter = (out >= images).flatten(1).all(1)
    assert (darker ^ brighter).all()
    assert darker.any() and brighter.any()  # both directions drawn among 8 images


def test_contrast_factor_within_range():
    """Contrast 1 +- 0.8 s: the spread around the grey mean scales by that factor."""
    images = 0.25 + 0.5 * rand_images(n=8)  # nothing clips at factor 1.4
    out = AUGMENTATIONS["contrast"](images, 0.5, gen())
    ratio = out.std((1, 2, 3)) / images.std((1, 2, 3))
    lower = (ratio - 0.6).abs() < 1e-4
    assert (lower | ((ratio - 1.4).abs() < 1e-4)).all()
    assert lower.any() and not lower.all()  # both directions drawn among 8 images


def test_box_blur_is_a_reflect_padded_mean():
    images = rand_images(height=56, width=56)  # largest radius 1 at 56 px
    out = AUGMENTATIONS["blur"](images, 1.0, gen())
    expected = F.avg_pool2d(F.pad(images, [1] * 4, mode="reflect"), 3, stride=1)
    assert torch.allclose(out, expected, atol=1e-6)


def test_gaussian_blur_matches_torchvision():
    images = rand_images(height=64, width=64)
    strength = torch.tensor([0.0, 0.4, 0.7, 1.0])
    out = AUGMENTATIONS["gaussian_blur"](images, strength, gen())
    for k, s in enumerate(strength.tolist()[1:], start=1):
        sigma = s * 1.0  # max(0.75, 64 / 64)
        size = 2 * math.ceil(3 * sigma) + 1
        assert torch.allclose(out[k], TF.gaussian_blur(images[k], [size, size], [sigma, sigma]),
                              atol=1e-5)


def test_equalisation_equals_torchvision_on_uint8():
    images = rand_images() ** 2
    out = AUGMENTATIONS["histogram_equalisation"](images, 0.5, gen())
    as_uint8 = (images * 255).round().to(torch.uint8)
    assert torch.equal(out, TF.equalize(as_uint8).float() / 255)


def test_salt_and_pepper_sets_a_tenth_of_the_pixels_white_or_black():
    images = constant(0.5, height=64, width=64)
    out = AUGMENTATIONS["salt_and_pepper"](images, 1.0, gen())
    changed = (out != 0.5).any(1)
    assert ((out == 0) | (out == 1)).all(1)[changed].all()  # all channels together
    assert abs(changed.float().mean().item() - 0.1) < 0.01
    assert abs((out[:, 0] == 1).float().mean().item() - 0.05) < 0.01


def test_poisson_noise_mean_and_variance():
    images = constant(0.5, height=64, width=64)
    out = AUGMENTATIONS["poisson_noise"](images, 0.5, gen())
    assert abs(out.mean().item() - 0.5) < 0.005
    assert abs(out.var().item() / (0.5 * 0.5**2 / 30) - 1) < 0.05
    counts = out * 30 / 0.5**2  # whole photon counts
    assert torch.allclose(counts, counts.round(), atol=1e-3)


def test_speckle_noise_is_multiplicative():
    images = constant(0.5, height=64, width=64)
    out = AUGMENTATIONS["speckle_noise"](images, 0.5, gen())
    assert abs(out.std().item() / (0.5 * 0.4 * 0.5) - 1) < 0.05
    assert torch.equal(AUGMENTATIONS["speckle_noise"](torch.zeros(2, 3, 8, 8), 1.0, gen()),
                       torch.zeros(2, 3, 8, 8))


def test_rotation_blackens_corners_keeps_centre():
    images = constant(0.5, height=33, width=33)
    out = AUGMENTATIONS["rotation"](images, 1.0, gen())
    assert (out[:, :, 0, 0] == 0).all() and (out[:, :, 16, 16] - 0.5).abs().max() < 1e-5


def test_zoom_and_crop_show_no_border():
    """Unlike rotation, zoom and crop stay inside the image: a constant stays constant."""
    images = constant(0.5)
    for name in ("zoom", "crop"):
        assert torch.allclose(AUGMENTATIONS[name](images, 1.0, gen()), images, atol=1e-5)


def test_zoom_magnifies_about_the_centre():
    columns = torch.linspace(0, 1, 41).expand(1, 3, 41, 41)
    out = AUGMENTATIONS["zoom"](columns, 1.0, gen())  # factor 2: slope halves
    assert torch.allclose(out[0, 0, 20, 20], columns[0, 0, 20, 20], atol=1e-5)
    slope = (out[0, 0, 20, 30] - out[0, 0, 20, 10]) / 20
    assert abs(slope.item() - 1 / 40 / 2) < 1e-5


def test_translation_shifts_by_whole_pixels():
    images = torch.arange(1, 32 * 40 + 1, dtype=torch.float32).view(1, 1, 32, 40) / 2000
    out = AUGMENTATIONS["translation"](images.expand(4, 3, -1, -1), 1.0, gen(5))
    for view in out[:, 0]:
        inside = view > 0
        assert inside.any() and (~inside).any()
        index = (view[inside] * 2000).round().long() - 1  # where each value came from
        rows, cols = index // 40, index % 40
        here_rows, here_cols = inside.nonzero().unbind(1)
        assert len(set((rows - here_rows).tolist())) == 1
        assert len(set((cols - here_cols).tolist())) == 1
        shift = math.hypot((rows - here_rows)[0] / 32, (cols - here_cols)[0] / 40)
        assert shift <= 1 / 3 + 0.05


def test_elastic_keeps_constants_and_moves_a_few_pixels():
    images = constant(0.5)
    assert torch.allclose(AUGMENTATIONS["elastic_transform"](images, 1.0, gen()), images,
                          atol=1e-6)
    columns = torch.linspace(0, 39, 40).expand(8, 3, 32, 40) / 39  # value = column / 39
    out = AUGMENTATIONS["elastic_transform"](columns, 1.0, gen())
    moved = (out - columns)[..., 2:-2] * 39  # displacement in pixels, away from borders
    assert 1 < moved.std() < 5


def test_affine_keeps_a_constant_interior():
    images = constant(0.5, height=64, width=64)
    out = AUGMENTATIONS["affine"](images, 1.0, gen())
    assert torch.allclose(out[..., 24:40, 24:40], images[..., 24:40, 24:40], atol=1e-5)


# ---------------------------------------------------------------- recipes and views


def image(channels=3, seed=2):
    return torch.rand(channels, 32, 40, generator=gen(seed))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_recipe_views_shape_range_and_seed(recipe, channels):
    views = RecipeViews(recipe, n_views=6)
    first = views(image(channels), generator_for(0, 7))
    assert first.shape == (6, channels, 32, 40) and first.dtype == torch.float32
    assert first.min() >= 0 and first.max() <= 1
    assert torch.equal(first, views(image(channels), generator_for(0, 7)))
    assert not torch.equal(first, views(image(channels), generator_for(0, 8)))


def test_probability_zero_never_applies():
    x = image()
    untouched = RecipeViews([("inverse", (0, 1), 0.0), ("brightness", (1, 1), 0.0)], 8)
    assert torch.equal(untouched(x, gen()), x.expand(8, -1, -1, -1))
    flipped = RecipeViews([("brightness", (0.5, 0.5), 0.0), ("horizontal_flip", (0, 1), 1.0),
                           ("rotation", (1, 1), 0.0)], 8)
    assert torch.equal(flipped(x, gen()), x.flip(-1).expand(8, -1, -1, -1))


def test_each_entry_reaches_about_its_share_of_views():
    x = torch.full((3, 8, 8), 0.5)
    views = RecipeViews([("inverse", (0, 1), 0.3)], n_views=2000)(x * 0.2, gen())
    share = (views[:, 0, 0, 0] > 0.5).float().mean().item()
    assert abs(share - 0.3) < 0.04


def test_pointwise_entries_in_order_equal_calling_them_in_turn():
    """With probability 1, a recipe is the augmentations applied in order, drawing from the
    generator in the same order: which views (n), strengths (n), then the operation's own."""
    recipe = [("brightness", (0.1, 0.4), 1.0), ("gamma", (0.2, 0.9), 1.0),
              ("contrast", (0.0, 0.5), 1.0), ("speckle_noise", (0.1, 0.2), 1.0)]
    x = image()
    views = RecipeViews(recipe, 5)(x, gen(4))
    g, expected = gen(4), x.expand(5, -1, -1, -1)
    for name, (lo, hi), _ in recipe:
        torch.rand(5, generator=g)
        strength = lo + (hi - lo) * torch.rand(5, generator=g)
        expected = AUGMENTATIONS[name](expected, strength, g)
    assert torch.allclose(views, expected, atol=1e-6)


def test_geometric_entries_compose_into_one_warp():
    """zoom, rotation and flips as one resampling: on a linear ramp (which bilinear
    interpolation reproduces exactly) the result equals applying them in turn."""
    rows, cols = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    ramp = ((0.3 * cols + 0.7 * rows) / 48).expand(3, -1, -1)
    recipe = [("zoom", (0.5, 0.8), 1.0), ("horizontal_flip", (0, 1), 1.0),
              ("rotation", (0.2, 0.4), 1.0), ("vertical_flip", (0, 1), 1.0)]
    views = RecipeViews(recipe, 4)(ramp, gen(1))
    g, expected = gen(1), ramp.expand(4, -1, -1, -1)
    for name, (lo, hi), _ in recipe:
        torch.rand(4, generator=g)
        strength = lo + (hi - lo) * torch.rand(4, generator=g)
        expected = AUGMENTATIONS[name](expected, strength, g)
    assert torch.allclose(views[..., 8:40, 8:40], expected[..., 8:40, 8:40], atol=1e-5)


def test_a_flip_alone_does_not_resample():
    x = image()
    views = RecipeViews([("vertical_flip", (0, 1), 1.0)], 3)(x, gen())
    assert torch.equal(views, x.flip(-2).expand(3, -1, -1, -1))


def test_recipe_views_work_with_views_per_image():
    images = torch.stack([image(seed=k) for k in range(3)])
    views = RecipeViews("mild", 4)
    out = list(views_per_image(views, images, [generator_for(0, k) for k in range(3)]))
    assert len(out) == 3 and out[2].shape == (4, 3, 32, 40)
    assert torch.equal(out[1], views(images[1], generator_for(0, 1)))


# ---------------------------------------------------------------- parsing


def test_names_are_normalised():
    assert augmentation_name("Gaussian blur") == "gaussian_blur"
    assert augmentation_name("salt-and-pepper") == "salt_and_pepper"


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown augmentation 'sharpen'; valid "
                                         r"augmentations: rotation, zoom, horizontal_flip"):
        RecipeViews([("sharpen", (0, 1), 0.5)])


def test_recipe_from_a_string():
    assert parse_recipe("rotation:0.2-0.6:0.5, Gaussian blur:0.3:1") == [
        ("rotation", (0.2, 0.6), 0.5), ("gaussian_blur", (0.3, 0.3), 1.0)]
    assert parse_recipe("mild") == parse_recipe(RECIPES["mild"])
    assert parse_recipe([["zoom", 0.5, 1]]) == [("zoom", (0.5, 0.5), 1.0)]  # YAML lists
    assert len(parse_recipe("course")) == 19


@pytest.mark.parametrize("recipe, message", [
    ("wild", r"unknown recipe 'wild'; named recipes: mild, strong, course"),
    ("rotation:0.2", r"cannot read recipe entry 'rotation:0.2'; write it as 'name:lo-hi:p'"),
    ([("zoom", (0.8, 0.2), 0.5)], r"zoom: the strength range needs 0 <= lo <= hi <= 1"),
    ([("zoom", (0, 1), 1.5)], r"zoom: probability must lie in \[0, 1\], got 1.5"),
    ([("zoom", (0, 1))], r"a recipe entry is \(name, \(lo, hi\), probability\)"),
    ([], r"a recipe needs at least one"),
])
def test_bad_recipes(recipe, message):
    with pytest.raises(ValueError, match=message):
        parse_recipe(recipe)


def test_bad_views():
    with pytest.raises(ValueError, match="n_views must be at least 1"):
        RecipeViews("mild", 0)
    with pytest.raises(ValueError, match=r"expected one image \(C, H, W\) with C = 1 or 3"):
        RecipeViews("mild", 2)(torch.rand(2, 3, 8, 8), gen())


def test_views_do_not_share_memory_between_calls():
    """RecipeViews keeps a work buffer between calls: earlier views must not change."""
    views, x = RecipeViews("course", 8), image()
    first = views(x, gen(0))
    kept = first.clone()
    views(x, gen(1))
    assert torch.equal(first, kept)


def test_recipe_views_pickle_without_their_buffer():
    import pickle

    views, x = RecipeViews("strong", 4), image()
    before = views(x, gen(0))
    copy = pickle.loads(pickle.dumps(views))
    assert copy._buffer is None and torch.equal(copy(x, gen(0)), before)
