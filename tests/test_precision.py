"""Mixed precision (helpers.precision): what "auto" means, float16's loss scaling, and the
methods and VPT's training step in bfloat16 autocast against float32 on a CPU (no GPU here:
CUDA's float16 autocast is the same code with another dtype)."""

import copy

import pytest
import torch

from helpers import data
from helpers.models import small_clip_classifier
from helpers.precision import LOSS_SCALE, Precision
from helpers.tta import Memo, Tpt, Zero
from helpers.tta.base import Episodic
from helpers.vpt import prompted_vit, train_step

# Measured: MEMO, TPT and Zero differ by at most 0.08 in logits (|logits| up to 20) on the
# fixed case below; VPT's step by 0.007 after 20 steps. The tolerances leave 3-7x room.
METHOD_TOLERANCE = 0.25
VPT_TOLERANCE = 0.05


def test_auto_is_float32_on_a_cpu_and_float16_autocast_on_cuda():
    cpu = Precision("auto", "cpu")
    assert (cpu.name, cpu.dtype, cpu.scaled, cpu.describe()) == ("fp32", None, False, "fp32")
    with cpu.autocast():
        assert not torch.is_autocast_enabled("cpu")
    cuda = Precision("auto", torch.device("cuda", 0))  # no GPU needed to decide
    assert (cuda.name, cuda.dtype, cuda.scaled) == ("amp", torch.float16, True)
    assert cuda.describe() == f"amp (float16 autocast, loss scale from {LOSS_SCALE:g})"
    amp_on_cpu = Precision("amp", "cpu")
    assert (amp_on_cpu.dtype, amp_on_cpu.scaled) == (torch.bfloat16, False)
    with Precision("bf16", "cpu").autocast():
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, amp, bf16, "
                                         "fp16, not 'half'"):
        Precision("half")


def _overflowing_loss(weight, precision):
    """A loss whose float16 activation gradient overflows once scaled by LOSS_SCALE: the
    gradient of y^2 * 1e3 at y = 300 is 6e5 x 1000, far above float16's 65504."""
    with precision.autocast():
        y = torch.nn.functional.linear(torch.full((1, 1), 300.0), weight)
    return (y.float() ** 2).sum() * 1e3


def test_float16_loss_scaling_skips_an_overflowing_step_and_takes_a_normal_one():
    weight = torch.nn.Parameter(torch.ones(1, 1))
    optimizer = torch.optim.SGD([weight], lr=1e-3)
    precision = Precision("fp16", "cpu")
    assert precision.step(_overflowing_loss(weight, precision), optimizer) is False
    assert weight.item() == 1.0 and precision.scaler.get_scale() == LOSS_SCALE / 2
    optimizer.zero_grad()
    with precision.autocast():
        y = torch.nn.functional.linear(torch.full((1, 1), 0.5), weight)
    assert precision.step((y.float() ** 2).sum(), optimizer) is True
    # d/dw (0.5 w)^2 = 0.5 at w = 1, unscaled before the SGD step: w = 1 - 1e-3 * 0.5
    assert weight.item() == pytest.approx(1 - 1e-3 * 0.5, abs=1e-6)


def test_a_skipped_float16_step_is_counted():
    layer = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.ones_(layer.weight)
    adapter = Episodic(layer, params="all", precision="fp16")
    assert adapter.update(_overflowing_loss(layer.weight, adapter.precision)) is False
    assert adapter.counters == {"skipped_overflow": 1} and layer.weight.item() == 1.0
    assert adapter.config()["precision"].startswith("fp16 (float16 autocast, loss scale")


@pytest.fixture(scope="module")
def fashion_case():
    """The small CLIP trained here and the first 12 FashionMNIST test images: a fixed case
    whose predictions have margins (0.7 and more) well above the tolerance."""
    try:
        test_set = data.fashion_mnist("test")
    except data.DatasetNotFoundError as error:
        pytest.skip(str(error))
    model = small_clip_classifier(device="cpu")  # trained once, in the repository's cache
    images, _ = test_set.batch(range(12))
    return model, images


@pytest.mark.slow
@pytest.mark.parametrize("method", ["memo", "tpt", "zero"])
def test_methods_in_bfloat16_autocast_agree_with_float32(fashion_case, method):
    model, images = fashion_case
    builders = {"memo": lambda p: Memo(model, n_views=8, lr=1e-3, precision=p),
                "zero": lambda p: Zero(model, n_views=15, precision=p),
                "tpt": lambda p: Tpt(model.clip_model, model.class_names, n_views=15,
                                     precision=p)}
    full, low = (builders[method](p) for p in ("fp32", "bf16"))
    expected, found = full(images, keys=range(12)), low(images, keys=range(12))
    assert found.dtype == torch.float32
    # Zero's prediction is the vote of its confident views: one view whose two best classes
    # are within bfloat16's rounding moves a whole vote (measured: 1 of these 12 images with
    # the stand-in trained in a clean clone). MEMO and TPT average probabilities: none flips.
    agree = found.argmax(1) == expected.argmax(1)
    assert agree.sum() >= (11 if method == "zero" else 12)
    assert (found - expected)[agree].abs().max() < METHOD_TOLERANCE
    assert (found - expected).abs().max() > 0  # bfloat16 did run
    assert full.config()["precision"] == "fp32"
    assert low.config()["precision"] == "bf16 (bfloat16 autocast)"


def test_the_vpt_step_in_bfloat16_autocast_agrees_with_float32():
    torch.manual_seed(0)
    base = prompted_vit("vpt-deep", 5, num_classes=3, arch="vit_tiny_patch16_224", img_size=32,
                        patch_size=8, embed_dim=32, depth=2, num_heads=2)
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(16, 3, 32, 32, generator=generator)
    labels = torch.randint(3, (16,), generator=generator)
    logits = {}
    for name in ("fp32", "bf16"):
        model = copy.deepcopy(base)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                      lr=1e-2)
        precision = Precision(name)
        for _ in range(20):
            train_step(model, optimizer, images, labels, precision)
        assert all(p.dtype == torch.float32 for p in model.parameters())  # float32 weights
        with torch.no_grad():
            logits[name] = model.eval()(images)
    assert torch.equal(logits["bf16"].argmax(1), logits["fp32"].argmax(1))
    assert 0 < (logits["bf16"] - logits["fp32"]).abs().max() < VPT_TOLERANCE
