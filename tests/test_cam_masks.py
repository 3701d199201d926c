import numpy as np
import pytest
import torch
from torch import nn

from helpers import cam, masks
from helpers.models import CheckpointNotFoundError, Classifier, Preprocess


class TwoColourNet(nn.Module):
    """Class 0's logit is the mean of a red detector's map, class 1's of a green one: the
    Grad-CAM of class c at the batch norm is exactly ReLU of detector c's map."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0] = self.conv.weight[1, 1] = 1.0
        self.norm = nn.BatchNorm2d(2).eval()  # identity statistics

    def forward(self, x):
        return self.norm(self.conv(x)).mean((2, 3))


def two_squares(size=32):
    image = torch.zeros(1, 3, size, size)
    image[0, 0, 4:12, 4:12] = 1.0    # red, top left
    image[0, 1, 20:28, 18:30] = 0.5  # green, bottom right
    return image


def two_colour_classifier():
    return Classifier(TwoColourNet(), Preprocess(None, (0.0,) * 3, (1.0,) * 3), ["red", "green"],
                      "two-colour detector (tests)")


def test_grad_cam_equals_relu_of_the_class_detector_map():
    model, image = two_colour_classifier(), two_squares()
    red, green = cam.heat_maps(model, image.repeat(2, 1, 1, 1), classes=[0, 1])
    np.testing.assert_allclose(red, image[0, 0].numpy(), atol=1e-5)  # already in [0, 1]
    np.testing.assert_allclose(green, (image[0, 1] / 0.5).numpy(), atol=1e-5)  # min-max scaled
    predicted = cam.heat_maps(model, image)[0]  # red has the larger mean: predicted class 0
    np.testing.assert_array_equal(predicted, red)


def test_heat_maps_release_hooks_restore_mode_and_leave_no_gradients(tiny_cnn, images):
    tiny_cnn.train()
    for _ in range(3):
        maps = cam.heat_maps(tiny_cnn, images, method="gradcam++")
    assert maps.shape == (len(images), 16, 16) and maps.dtype == np.float32
    assert 0 <= maps.min() and maps.max() <= 1
    assert cam.hook_count(tiny_cnn) == 0 and tiny_cnn.training
    assert all(p.requires_grad and p.grad is None for p in tiny_cnn.parameters())
    with pytest.raises(RuntimeError, match="inside"):
        with cam.cam_session(tiny_cnn) as session:
            assert cam.hook_count(tiny_cnn) > 0
            session(input_tensor=images[:1].requires_grad_(True), targets=None)
            raise RuntimeError("failure inside the session")
    assert cam.hook_count(tiny_cnn) == 0


def test_vit_reshape_puts_tokens_back_on_the_patch_grid():
    rows, cols, batch, width = 2, 3, 4, 5
    tokens = torch.arange((1 + rows * cols) * batch * width, dtype=torch.float32).view(
        1 + rows * cols, batch, width)
    grid = cam.vit_reshape((rows, cols))(tokens)
    assert grid.shape == (batch, width, rows, cols)
    for r in range(rows):
        for c in range(cols):
            assert torch.equal(grid[:, :, r, c], tokens[1 + r * cols + c])


def test_heat_maps_of_a_clip_vit_zero_shot_classifier():
    clip = pytest.importorskip("clip")
    from helpers.models import clip_classifier

    torch.manual_seed(0)  # random weights: only shapes and plumbing are checked here
    model = clip.model.CLIP(embed_dim=16, image_resolution=32, vision_layers=2, vision_width=64,
                            vision_patch_size=8, context_length=16, vocab_size=49408,
                            transformer_width=32, transformer_heads=2, transformer_layers=1)
    classifier = clip_classifier(model, ["cat", "dog", "car"], cache=False)
    layer, reshape = cam.target_layer(classifier)
    assert layer is model.visual.transformer.resblocks[-1].ln_1 and reshape is not None
    maps = cam.heat_maps(classifier, torch.rand(2, 3, 32, 32), classes=[0, 2])
    assert maps.shape == (2, 32, 32) and np.isfinite(maps).all()
    assert cam.hook_count(classifier) == 0


def test_efficientnet_target_is_the_head_norm_and_unknown_method_is_refused(tiny_cnn):
    from helpers.models import efficientnet_lite0
    net = efficientnet_lite0(device="cpu")
    layer, reshape = cam.target_layer(net)
    assert layer is net.backbone._bn1 and reshape is None  # before pooling, 7x7 for 224 px
    maps = cam.heat_maps(net, torch.rand(1, 3, 64, 64), classes=[281])
    assert maps.shape == (1, 64, 64) and maps.max() > 0
    layer, _ = cam.target_layer(tiny_cnn)
    assert layer is tiny_cnn.backbone.features[-2]  # any other CNN: the last batch norm
    with pytest.raises(ValueError, match="valid: \\['eigencam', 'gradcam'"):
        cam.heat_maps(tiny_cnn, torch.rand(1, 3, 8, 8), method="gradcam3")
    with pytest.raises(ValueError, match="N x C x H x W"):
        cam.heat_maps(tiny_cnn, torch.rand(3, 8, 8))


# ---------------------------------------------------------------- masks

def disc_image(size=64, radius=14):
    """A bright textured disc on a darker textured background, and the disc's mask."""
    gen = torch.Generator().manual_seed(0)
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = (ys - 30) ** 2 + (xs - 34) ** 2 <= radius**2
    image = 0.15 + 0.1 * torch.rand(3, size, size, generator=gen)
    image[0][disc] = 0.8 + 0.1 * torch.rand(int(disc.sum()), generator=gen)
    return image, disc.numpy()


def test_cam_coverage_against_the_formula():
    heat = np.array([[1.0, 0.5], [0.0, 0.25]])
    mask = np.array([[True, True], [False, False]])
    coverage = masks.cam_coverage(mask, heat)
    assert coverage["mass_share"] == pytest.approx(1.5 / 1.75)
    assert coverage["area"] == 0.5
    assert coverage["soft_iou"] == pytest.approx(1.5 / (1.75 + 0.0 + 0.5))


def test_object_mask_prefers_the_object_over_the_whole_image_and_the_background():
    image, disc = disc_image()
    heat = disc.astype(np.float32) * 0.9 + 0.05
    candidates = [masks.Mask(np.ones_like(disc), 1.0, "whole"),
                  masks.Mask(~disc, 1.0, "background"),
                  masks.Mask(disc, 0.5, "disc")]
    best, coverage = masks.object_mask(candidates, heat)
    assert best == 2 and coverage[0]["mass_share"] == pytest.approx(1.0)
    assert masks.object_mask(candidates[:2], heat, max_area=0.5) == (None, coverage[:2])
    assert masks.object_mask([], heat) == (None, [])


def test_offline_masks_find_the_disc_from_a_rough_heat_map():
    image, disc = disc_image()
    ys, xs = np.mgrid[:64, :64]
    heat = np.exp(-((ys - 30) ** 2 + (xs - 34) ** 2) / (2 * 10.0**2))  # blob over the disc
    found = masks.OfflineMasks()(image, heat)
    assert found[0].source == "grabcut" and all(0 <= m.score <= 1 for m in found)
    best, _ = masks.object_mask(found, heat)
    chosen = found[best].mask
    iou = (chosen & disc).sum() / (chosen | disc).sum()
    assert chosen.shape == disc.shape and chosen.dtype == bool and iou > 0.85
    without_cam = masks.OfflineMasks()(image)  # a centred box seeds GrabCut
    assert without_cam and all(m.mask.shape == disc.shape for m in without_cam)


def test_bad_mask_provider_input_is_refused():
    with pytest.raises(ValueError, match="valid: \\['offline', 'sam'\\]"):
        masks.mask_provider("sam2")
    with pytest.raises(ValueError, match="low < high"):
        masks.OfflineMasks(low=0.9, high=0.5)
    with pytest.raises(ValueError, match="C x H x W"):
        masks.OfflineMasks()(torch.rand(64, 64))


def test_sam_without_checkpoint_names_the_file_and_where_to_put_it(tmp_path):
    with pytest.raises(CheckpointNotFoundError) as error:
        masks.SamMasks(checkpoint=tmp_path / "sam_vit_b_01ec64.pth")
    message = str(error.value)
    assert str(tmp_path / "sam_vit_b_01ec64.pth") in message
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth" in message
    assert "masks='offline'" in message


def test_sam_checkpoints_are_looked_for_under_tta_checkpoints(tmp_path, monkeypatch):
    from helpers.models import NotACheckpointError

    monkeypatch.setattr(masks.paths, "CHECKPOINTS", tmp_path / "drive")
    monkeypatch.setattr(masks.paths, "REPO", tmp_path / "repo")
    (tmp_path / "drive").mkdir()
    (tmp_path / "drive" / "sam_vit_b_01ec64.pth").write_bytes(b"\x00" * 64)
    with pytest.raises(NotACheckpointError, match="not a SAM checkpoint: "
                                                  f"{tmp_path / 'drive' / 'sam_vit_b_01ec64.pth'}"):
        masks.mask_provider("sam", model_type="vit_b", device="cpu")  # Meta's name, found
    with pytest.raises(CheckpointNotFoundError) as error:
        masks.mask_provider("sam", checkpoint="sam-copy.pth", device="cpu")
    assert str(error.value).startswith(
        f"Segment-Anything checkpoint 'sam-copy.pth' not found: looked at "
        f"{tmp_path / 'drive' / 'sam-copy.pth'} and {tmp_path / 'repo' / 'sam-copy.pth'}. "
        f"Download {masks.SAM_URL}sam_vit_b_01ec64.pth and put it under TTA_CHECKPOINTS")


def tiny_random_sam(size=64):
    """Segment-Anything's architecture at toy size with random weights (none can be had
    here): the provider's plumbing, not the quality of its masks."""
    from functools import partial

    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )
    torch.manual_seed(0)
    embed, patch = 32, 16
    grid = size // patch
    encoder = ImageEncoderViT(img_size=size, patch_size=patch, embed_dim=32, depth=1,
                              num_heads=2, out_chans=embed,
                              norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
    prompt = PromptEncoder(embed_dim=embed, image_embedding_size=(grid, grid),
                           input_image_size=(size, size), mask_in_chans=4)
    decoder = MaskDecoder(transformer_dim=embed, transformer=TwoWayTransformer(
        depth=1, embedding_dim=embed, mlp_dim=64, num_heads=2), num_multimask_outputs=3,
        iou_head_hidden_dim=16)
    return Sam(encoder, prompt, decoder)


def test_sam_provider_runs_segment_anything_with_prompts_from_the_heat_map():
    image, disc = disc_image()
    heat = disc.astype(np.float32)
    provider = masks.SamMasks(sam=tiny_random_sam(), points_per_side=4, device="cpu")
    found = provider(image, heat)
    sources = [m.source for m in found]
    assert sources.count("sam-point") == 3 and sources.count("sam-box") == 1
    assert all(m.mask.shape == disc.shape and m.mask.dtype == bool for m in found)
    assert all(np.isfinite(m.score) for m in found)


def test_adapted_heat_maps_name_each_prediction_and_restore_the_model():
    """An episodic method stand-in that swaps the class detectors while adapted: the heat-map
    after adaptation is the other class's map, and the model is the source's again after."""
    import contextlib

    model, image = two_colour_classifier(), two_squares()[0]

    class Swap:
        @contextlib.contextmanager
        def adapted(self, image, key=0):
            weight = model.backbone.conv.weight.data.clone()
            model.backbone.conv.weight.data = weight.flip(0)
            try:
                yield model
            finally:
                model.backbone.conv.weight.data = weight

    before = model.backbone.conv.weight.clone()
    maps = cam.adapted_heat_maps(image, model, {"swap": Swap()}, ["red", "green"])
    assert list(maps) == ["source: red", "swap: green"]
    np.testing.assert_allclose(maps["source: red"], image[0].numpy(), atol=1e-5)
    assert torch.equal(model.backbone.conv.weight, before)
