"""The stand-ins' training recipes (helpers.recipes), their names (helpers.models) and the
step that trains them up front (helpers.standins)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import entropy
from torchvision.transforms.v2 import functional as TF

from helpers import data, models, recipes, standins


def rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- recipes


def test_none_leaves_images_untouched():
    images = rand(4, 3, 28, 28)
    views = recipes.training_views(images, "none", gen())
    assert len(views) == 1 and torch.equal(views[0], images)


def test_standard_is_a_padded_crop_then_a_flip_per_image():
    """Each output equals torchvision's pad, crop and flip with the draws of the same seed:
    shifts dy, dx in -4..4 (top-left corner 4 + dy, 4 + dx of the padded image), then a flip
    where a uniform draw is below 1/2."""
    images = rand(16, 3, 28, 28, seed=1)
    out = recipes.pad_crop_flip(images, gen(5))
    g = gen(5)
    shifts = torch.randint(-4, 5, (16, 2), generator=g)
    flips = torch.rand(16, generator=g) < 0.5
    assert 0 < flips.sum() < 16 and len(set(shifts.flatten().tolist())) > 4
    for image, (dx, dy), flip, got in zip(images, shifts.tolist(), flips, out):
        expected = TF.crop(TF.pad(image, [4]), 4 + dy, 4 + dx, 28, 28)
        expected = TF.horizontal_flip(expected) if flip else expected
        assert torch.equal(got, expected)


def test_standard_by_hand_on_a_small_image():
    image = torch.arange(25.0).view(1, 1, 5, 5)
    g = gen(3)
    (dx, dy), = torch.randint(-1, 2, (1, 2), generator=g).tolist()
    flip = bool(torch.rand(1, generator=g) < 0.5)
    out = recipes.pad_crop_flip(image, gen(3), padding=1)[0, 0]
    for i in range(5):
        for j in range(5):
            col = (4 - j if flip else j) + dx
            inside = 0 <= i + dy < 5 and 0 <= col < 5
            assert out[i, j] == (image[0, 0, i + dy, col] if inside else 0)


def test_flips_only_where_flippable():
    images = rand(64, 3, 28, 28, seed=2)
    never = recipes.pad_crop_flip(images, gen(0), flippable=torch.zeros(64, dtype=torch.bool))
    unflipped = recipes.pad_crop_flip(images, gen(0), padding=4,
                                      flippable=torch.zeros(64, dtype=torch.bool))
    assert torch.equal(never, unflipped)
    g = gen(0)
    shifts = torch.randint(-4, 5, (64, 2), generator=g)
    for image, (dx, dy), got in zip(images, shifts.tolist(), never):
        assert torch.equal(got, TF.crop(TF.pad(image, [4]), 4 + dy, 4 + dx, 28, 28))


def test_augmix_recipe_is_the_standard_batch_and_two_augmix_batches_of_it():
    images = rand(8, 3, 28, 28, seed=3)
    clean, first, second = recipes.training_views(images, "augmix", gen(7))
    assert torch.equal(clean, recipes.pad_crop_flip(images, gen(7)))
    for mixed in (first, second):
        assert mixed.shape == images.shape and mixed.min() >= 0 and mixed.max() <= 1
        assert (mixed - clean).abs().amax(dim=(1, 2, 3)).min() > 0.01  # every image changed
    assert not torch.equal(first, second)
    again = recipes.training_views(images, "augmix", gen(7))
    assert all(torch.equal(a, b) for a, b in zip(again, (clean, first, second)))


def test_clip_recipe_at_full_scale_without_jitter_is_identity_or_flip():
    images = rand(32, 3, 28, 28, seed=4)
    out = recipes.resized_crop_flip(images, gen(1), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    flipped = 0
    for image, got in zip(images, out):
        if torch.allclose(got, image, atol=1e-5):
            continue
        assert torch.allclose(got, TF.horizontal_flip(image), atol=1e-5)
        flipped += 1
    assert 0 < flipped < 32
    kept = recipes.resized_crop_flip(images, gen(1), torch.zeros(32, dtype=torch.bool),
                                     scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.allclose(kept, images, atol=1e-5)
    assert torch.equal(recipes.photometric_jitter(images, gen(2), strength=0.0), images)


def test_clip_recipe_crops_and_jitters():
    images = rand(16, 3, 28, 28, seed=5)
    (out,) = recipes.training_views(images, "clip", gen(0))
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    assert (out - images).abs().amax(dim=(1, 2, 3)).min() > 0.05
    # brightness factor b then contrast c around the mean grey, as torchvision's formulas
    g = gen(9)
    b = 1 + 0.4 * (2 * torch.rand(16, generator=g) - 1)
    c = 1 + 0.4 * (2 * torch.rand(16, generator=g) - 1)
    jittered = recipes.photometric_jitter(images, gen(9))
    for image, bi, ci, got in zip(images, b, c, jittered):
        expected = TF.adjust_contrast(TF.adjust_brightness(image, bi.item()), ci.item())
        assert torch.allclose(got, expected, atol=1e-5)


def test_unknown_recipe_lists_the_valid_ones():
    with pytest.raises(ValueError, match="'mixup'.*none, standard, augmix, clip"):
        recipes.training_views(rand(1, 3, 28, 28), "mixup", gen())


def test_jensen_shannon_is_augmix_consistency_term():
    logits = [rand(5, 10, seed=s) * 4 for s in range(3)]
    probs = [x.softmax(-1).double().numpy() for x in logits]
    mixture = sum(probs) / 3
    expected = np.mean([np.mean([entropy(p[i], mixture[i]) for i in range(5)]) for p in probs])
    assert recipes.jensen_shannon(logits).item() == pytest.approx(expected, rel=1e-4)
    assert recipes.jensen_shannon([logits[0]] * 3).item() == pytest.approx(0.0, abs=1e-6)
    labels = torch.tensor([0, 1, 2, 3, 4])
    loss = recipes.recipe_loss(logits, labels)
    assert loss.item() == pytest.approx(F.cross_entropy(logits[0], labels).item()
                                        + 12 * expected, rel=1e-4)
    assert recipes.recipe_loss(logits[:1], labels).item() == pytest.approx(
        F.cross_entropy(logits[0], labels).item())


# ---------------------------------------------------------------- names and configs


def test_names_parse_to_model_and_recipe():
    assert models.parse_standin("small-cnn:augmix") == ("small-cnn", "augmix")
    assert models.parse_standin("small-clip:none") == ("small-clip", "none")
    assert models.parse_standin("small-cnn") == ("small-cnn", "augmix")
    assert models.parse_standin("small-clip") == ("small-clip", "clip")
    assert models.parse_standin("ViT-B/32") is None
    assert models.parse_standin("efficientnet-lite0") is None
    assert "small-clip:clip" in models.STANDIN_NAMES
    assert "small-cnn:clip" not in models.STANDIN_NAMES


@pytest.mark.parametrize("name", ["small-cnn:clip", "small-cnn:augmx", "small-clip:"])
def test_bad_recipe_names_error_with_the_valid_names(name):
    with pytest.raises(ValueError, match="small-cnn:none|small-clip:none"):
        models.build_classifier(name, ["a", "b"], device="cpu")
    with pytest.raises(ValueError, match="alone is"):
        models.describe(name)


def test_recipes_of_one_architecture_differ_in_the_augmentation_alone():
    """The recipe ablation compares like with like: same data, epochs and everything else."""
    from dataclasses import asdict, replace

    for model, named in models.STANDIN_RECIPES.items():
        configs = [models.standin_config(f"{model}:{r}") for r in named]
        assert [c.recipe for c in configs] == list(named)
        assert all(asdict(replace(c, recipe="none")) == asdict(replace(configs[0], recipe="none"))
                   for c in configs)
    assert models.standin_config("small-cnn") == models.standin_config("small-cnn:augmix")
    clip = models.standin_config("small-clip:none")
    assert clip.recipe == "none" and clip.domains == ("fashion-mnist", "mnist")


def test_the_recipe_changes_the_cache_key():
    keys = {models._config_key(models.standin_config(name)) for name in models.STANDIN_NAMES}
    assert len(keys) == len(models.STANDIN_NAMES)
    base = models.SmallCnnConfig()
    assert models._config_key(base) != models._config_key(models.SmallCnnConfig(recipe="standard"))


def test_describe_says_the_recipe_and_not_the_real_clip():
    text = models.describe("small-clip:none")
    assert "not the real CLIP" in text and "recipe 'none'" in text and "no augmentation" in text
    assert "MNIST digits" in models.describe("small-clip")
    assert "in-domain" in models.describe("small-clip:none")
    assert "in-domain" not in models.describe("small-cnn")
    assert "recipe 'augmix'" in models.describe("small-cnn")
    assert "AugMix" in models.describe("small-cnn")
    assert models.describe("small-cnn:standard") != models.describe("small-cnn:none")


def test_clip_training_data_gives_each_domain_its_classes_and_captions():
    try:
        images, labels, names, captions, flippable = models._clip_training_data(
            models.standin_config("small-clip"))
    except data.DatasetNotFoundError as error:
        pytest.skip(str(error))
    assert names == data.FASHION_MNIST_CLASSES + data.DIGIT_CLASSES
    assert len(images) == len(labels) == len(flippable) == 60_000 + 4_000
    assert labels[:60_000].max() == 9 and labels[60_000:].min() == 10
    assert flippable[:60_000].all() and not flippable[60_000:].any()
    assert captions[0] == models.TEMPLATES["small"] and captions[10] == models.TEMPLATES["digits"]
    held_out = data.split(data.mnist_digits(), 1000)[0]
    trained = {bytes(x.numpy()) for x in images[60_000:]}
    assert not any(bytes(x.numpy()) in trained for x in held_out.images)


def test_tiny_cnn_trains_with_every_recipe(tmp_path, monkeypatch):
    """The whole training path of each recipe, on a tiny net, 256 images, two steps."""
    monkeypatch.setattr(models.paths, "CACHE", tmp_path)
    images = (rand(256, 3, 28, 28, seed=6) * 255).to(torch.uint8)
    labels = torch.arange(256) % 10
    monkeypatch.setattr(models, "_fashion_arrays",
                        lambda split: (images, labels, data.FASHION_MNIST_CLASSES))
    weights = {}
    for recipe in models.CNN_RECIPES:
        config = models.SmallCnnConfig(channels=(4,), epochs=1, batch_size=128, recipe=recipe)
        model = models.small_cnn_classifier(config, device="cpu", verbose=False)
        assert model.metrics["steps"] == 2 and recipe in model.description
        weights[recipe] = model.backbone.head.weight.detach()
    assert not torch.equal(weights["none"], weights["standard"])
    assert not torch.equal(weights["standard"], weights["augmix"])
    assert len(list(tmp_path.glob("models/small-cnn-*.pt"))) == 3


# ---------------------------------------------------------------- prepare


def test_prepare_names_and_errors(capsys):
    assert standins.canonical("small-cnn") == "small-cnn:augmix"
    assert standins.canonical("small-clip:none") == "small-clip:none"
    assert set(map(standins.canonical, standins.profile_standins("offline"))) == {
        "small-clip:clip", "small-clip:none", "small-cnn:none", "small-cnn:standard",
        "small-cnn:augmix"}  # the recipe ablation of notebooks 01 and 03
    assert set(standins.profile_standins("smoke")) == {"small-clip", "small-cnn"}
    assert standins.main(["--prepare", "small-cnn:bogus"]) == 2
    assert "small-cnn:augmx" not in capsys.readouterr().err
    with pytest.raises(ValueError, match="not a stand-in"):
        standins.canonical("ViT-B/32")
