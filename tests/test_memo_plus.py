import numpy as np
import pytest
import torch
from test_tta import assert_same_state, state

from helpers import masks
from helpers.tta import MemoPlus, build_method
from helpers.views import FOCUS_KINDS, FocusedViews


def square_scene(size=32):
    """A red square object on a grey background, and its mask."""
    image = torch.full((3, size, size), 0.5)
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[8:16, 12:20] = True
    image[:, mask] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1)
    return image, mask


def inner(mask, margin=2):
    """The mask's pixels at least ``margin`` pixels from its edge (unaffected by feathering)."""
    eroded = mask.clone()
    for axis in (0, 1):
        for shift in range(1, margin + 1):
            eroded &= mask.roll(shift, axis) & mask.roll(-shift, axis)
    return eroded


def test_focused_views_share_views_between_kinds_and_are_deterministic():
    image, mask = square_scene()
    views = FocusedViews(10, kinds=("crop", "blur-background", "replace-background"))
    assert views.counts == {"crop": 4, "blur-background": 3, "replace-background": 3}
    first = views(image, mask, torch.Generator().manual_seed(3))
    again = views(image, mask, torch.Generator().manual_seed(3))
    assert first.shape == (10, 3, 32, 32) and torch.equal(first, again)
    assert 0 <= first.min() and first.max() <= 1


def test_focused_views_keep_the_object_and_change_the_rest():
    image, mask = square_scene()
    core, far = inner(mask), ~inner(~mask, 4)  # deep inside / far outside the object
    views = FocusedViews(6, kinds=("blur-background", "replace-background"))
    blurred, replaced = views(image, mask, torch.Generator().manual_seed(0)).split(3)
    for view in torch.cat([blurred, replaced]):
        torch.testing.assert_close(view[:, core], image[:, core])
    for view in replaced:  # one random colour per view outside the object
        outside = view[:, ~far]
        torch.testing.assert_close(outside, outside[:, :1].expand_as(outside), atol=1e-4, rtol=0)
    # blurring a flat grey background leaves it grey; next to the red square it turns reddish
    assert (blurred[:, 0, ~far] >= 0.5 - 1e-6).all()


def test_crop_views_zoom_on_the_object():
    image, mask = square_scene()
    crops = FocusedViews(8, kinds=("crop",), margin=(1.1, 1.3))(
        image, mask, torch.Generator().manual_seed(0))
    red = (crops[:, 0] > 0.9) & (crops[:, 1] < 0.1)
    share = red.float().mean((1, 2))
    assert (share > 0.4).all() and share.min() > 3 * mask.float().mean()


def test_augment_object_changes_only_the_object():
    image, mask = square_scene()
    views = FocusedViews(4, kinds=("augment-object",))(image, mask,
                                                       torch.Generator().manual_seed(0))
    far = ~inner(~mask, 4)
    torch.testing.assert_close(views[:, :, ~far], image[:, ~far].expand(4, -1, -1), atol=1e-4,
                               rtol=0)
    assert not torch.allclose(views[:, :, inner(mask)], image[:, inner(mask)].expand(4, -1, -1))


def test_focused_views_refuse_bad_input():
    image, mask = square_scene()
    with pytest.raises(ValueError, match="valid: \\['crop'"):
        FocusedViews(4, kinds=("crop", "zoom-out"))
    with pytest.raises(ValueError, match="non-empty H x W mask"):
        FocusedViews(4, kinds=("crop",))(image, torch.zeros(32, 32, dtype=torch.bool), None)
    with pytest.raises(ValueError, match="non-empty H x W mask"):
        FocusedViews(4, kinds=("crop",))(image, mask[:16], None)


class FixedMasks:
    """A provider that always offers the given masks (none: no object found)."""

    description = "fixed masks (tests)"

    def __init__(self, *candidates):
        self.candidates = [masks.Mask(m.numpy(), 1.0, "fixed") for m in candidates]

    def __call__(self, image, cam=None):
        return self.candidates


@pytest.mark.parametrize("steps", [1, 2])
def test_memo_plus_is_episodic_and_records_the_chosen_masks(tiny_cnn, images, steps):
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[4:12, 4:12] = True
    source = state(tiny_cnn)
    method = MemoPlus(tiny_cnn, masks=FixedMasks(mask), n_views=8, focus=0.5, steps=steps,
                      lr=0.05, kinds=("crop", "replace-background"))
    adapted = method(images)
    assert_same_state(tiny_cnn, source)
    with torch.no_grad():
        assert not torch.allclose(adapted, tiny_cnn(images))  # the update changed predictions
    assert method.counters["mask_fixed"] == len(images) and len(method.focus_log) == len(images)
    assert method.focus_log[0]["area"] == pytest.approx(0.25)
    again = MemoPlus(tiny_cnn, masks=FixedMasks(mask), n_views=8, focus=0.5, steps=steps,
                     lr=0.05, kinds=("crop", "replace-background"))(images)
    assert torch.equal(adapted, again)
    method.reset()
    assert method.focus_log == [] and not method.counters


def test_memo_plus_views_mix_ordinary_and_focused_and_fall_back_without_a_mask(tiny_cnn, images):
    image = images[0]
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[2:6, 2:6] = True
    method = MemoPlus(tiny_cnn, masks=FixedMasks(mask), n_views=8, focus=0.25)
    views = method.make_views(image, torch.Generator().manual_seed(0))
    assert views.shape == (8, 3, 16, 16)
    assert method.ordinary.n_views == 6 and method.focused.n_views == 2
    only_focused = MemoPlus(tiny_cnn, masks=FixedMasks(mask), n_views=8, focus=1.0)
    assert only_focused.ordinary is None
    recipes = MemoPlus(tiny_cnn, masks=FixedMasks(mask), n_views=8, focus=0.5,
                       ordinary_recipe="mild", object_recipe="brightness:0.5-0.9:1")
    assert type(recipes.ordinary).__name__ == "RecipeViews" and recipes.ordinary.n_views == 4
    assert recipes.focused.object_views.recipe == [("brightness", (0.5, 0.9), 1.0)]
    assert recipes.make_views(image, torch.Generator().manual_seed(0)).shape == (8, 3, 16, 16)
    blind = MemoPlus(tiny_cnn, masks=FixedMasks(), n_views=8)
    out = blind(images[:2])
    assert out.shape == (2, 5) and blind.counters["no_object_mask"] == 2
    assert blind.focus_log == [{"source": None}] * 2


def test_memo_plus_with_the_offline_provider_and_grad_cam(tiny_cnn, images):
    method = build_method("memo_plus", tiny_cnn, n_views=4, focus=0.5, lr=0.01)
    assert isinstance(method.masks, masks.OfflineMasks)
    mask, heat, candidates, best, coverage = method.find_object(images[0])
    assert heat.shape == (16, 16) and len(coverage) == len(candidates)
    assert best is None or (mask.shape == (16, 16) and mask.dtype == torch.bool)
    out = method(images[:2])
    assert out.shape == (2, 5) and sum(method.counters.values()) == 2
    config = method.config()
    assert config["method"] == "memo_plus" and "2 ordinary + 2 object-focused" in config["views"]
    assert np.isfinite(out.numpy()).all()


def test_memo_plus_refuses_bad_settings(tiny_cnn):
    with pytest.raises(ValueError, match="focus"):
        MemoPlus(tiny_cnn, focus=0)
    with pytest.raises(ValueError, match="valid: \\['offline', 'sam'\\]"):
        MemoPlus(tiny_cnn, masks="grabcut")
    assert set(FOCUS_KINDS) == {"crop", "blur-background", "replace-background", "augment-object"}
