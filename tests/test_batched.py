"""Many test images at once equal one at a time: MEMO (SGD and AdamW, one and two steps, with
and without the batch-norm prior), MEMO_PLUS, TPT and Zero adapt each image of a batched pass
as they adapt it alone, whatever the batch's size and composition.

"Equal" is: the same predictions, and logits within a relative 1e-5 of the largest (float32;
a batched matrix product or a grouped convolution may sum in another order). The loop
itself is pinned bit for bit against ``torch.optim`` and the authors' code elsewhere
(``test_tta``, ``test_tpt``, ``test_successors``, ``test_memo_plus``)."""

import pytest
import torch

from helpers.models import (
    Classifier,
    Preprocess,
    clip_classifier,
)
from helpers.tta import Memo, MemoPlus, Tpt, Zero, make_optimizer
from helpers.tta.base import functional_step, images_per_pass

NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "ankle boot"]


@pytest.fixture(scope="module")
def clip_model(small_clip):
    """A CLIP-like classifier (layer norm, attention) with random weights."""
    return clip_classifier(small_clip, NAMES, cache=False)


@pytest.fixture
def clip_images():
    return torch.rand(5, 3, 28, 28, generator=torch.Generator().manual_seed(1))


def assert_same(batched: torch.Tensor, alone: torch.Tensor) -> None:
    assert torch.equal(batched.argmax(-1), alone.argmax(-1))
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5 * float(alone.abs().max()))


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(model, reference):
    for k, v in model.state_dict().items():
        assert torch.equal(v, reference[k]), f"{k} changed"


MEMO_SETTINGS = [
    {"optimizer": "sgd", "lr": 0.05},
    {"optimizer": "sgd", "lr": 0.05, "steps": 2, "weight_decay": 0.1},  # momentum from step 2
    {"optimizer": "adamw", "lr": 0.01, "weight_decay": 0.01},
    {"optimizer": "adamw", "lr": 0.01, "steps": 2},
    {"optimizer": "adam", "lr": 0.01, "weight_decay": 0.1},
]


@pytest.mark.parametrize("settings", MEMO_SETTINGS)
@pytest.mark.parametrize("bn_prior", [None, 16])
def test_memo_batched_equals_one_at_a_time_on_a_batchnorm_cnn(tiny_cnn, images, settings,
                                                               bn_prior):
    source = state(tiny_cnn)
    alone = Memo(tiny_cnn, n_views=4, bn_prior=bn_prior, chunk=1, **settings)(images)
    memo = Memo(tiny_cnn, n_views=4, bn_prior=bn_prior, **settings)
    assert memo.images_per_pass(images) == len(images)  # all six in one pass
    batched = memo(images)
    assert_same(batched, alone)
    assert not torch.allclose(batched, Memo(tiny_cnn, n_views=4, lr=0.0, chunk=1)(images))
    assert_same_state(tiny_cnn, source)  # the source weights and statistics stay


@pytest.mark.parametrize("settings", MEMO_SETTINGS[:3])
def test_memo_batched_equals_one_at_a_time_on_a_clip(clip_model, clip_images, settings):
    source = state(clip_model)
    alone = Memo(clip_model, n_views=4, chunk=1, **settings)(clip_images)
    memo = Memo(clip_model, n_views=4, **settings)
    assert memo.images_per_pass(clip_images) == len(clip_images)
    assert_same(memo(clip_images), alone)
    assert_same_state(clip_model, source)


def test_memo_results_do_not_depend_on_batch_size_or_company(tiny_cnn, images):
    keys = [10, 11, 12, 13, 14, 15]
    whole = Memo(tiny_cnn, n_views=4, lr=0.05, bn_prior=16)(images, keys=keys)
    in_pairs = Memo(tiny_cnn, n_views=4, lr=0.05, bn_prior=16, chunk=2)(images, keys=keys)
    assert_same(in_pairs, whole)
    order = [5, 2, 0, 4, 1, 3]  # other company in each pass: the same per image (by its key)
    shuffled = Memo(tiny_cnn, n_views=4, lr=0.05, bn_prior=16, chunk=3)(
        images[order], keys=[keys[i] for i in order])
    assert_same(shuffled, whole[order])


def test_memo_batched_counts_a_nonfinite_image_and_predicts_it_with_the_source(tiny_cnn,
                                                                               images):
    def views(image, generator):  # NaN views for the images whose first pixel is < 0.3
        out = image.expand(4, -1, -1, -1).clone()
        return out.fill_(float("nan")) if image[0, 0, 0] < 0.3 else out.mul_(0.9)

    broken = int((images[:, 0, 0, 0] < 0.3).sum())
    assert 0 < broken < len(images)
    alone = Memo(tiny_cnn, views=views, lr=0.5, chunk=1)
    memo = Memo(tiny_cnn, views=views, lr=0.5)
    assert_same(memo(images), alone(images))
    assert memo.counters["skipped_nonfinite"] == alone.counters["skipped_nonfinite"] == broken


def test_memo_plus_batched_equals_one_at_a_time(tiny_cnn, images):
    from helpers import masks

    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[4:12, 4:12] = True

    def fixed(image, cam=None):
        return [masks.Mask(mask.numpy(), 1.0, "fixed")]

    options = {"masks": fixed, "n_views": 8, "focus": 0.5, "steps": 2, "lr": 0.05,
               "kinds": ("crop", "replace-background")}
    alone, batched = MemoPlus(tiny_cnn, chunk=1, **options), MemoPlus(tiny_cnn, **options)
    assert_same(batched(images), alone(images))
    # one object per image, found once although two steps draw views of it
    assert batched.counters["mask_fixed"] == alone.counters["mask_fixed"] == len(images)
    assert batched.focus_log == alone.focus_log


@pytest.mark.parametrize("settings", [{}, {"steps": 2}, {"class_specific": True,
                                                          "ctx_init": None}])
def test_tpt_batched_equals_one_at_a_time(small_clip, clip_images, settings):
    alone = Tpt(small_clip, NAMES, n_views=7, keep=2, chunk=1, **settings)
    tpt = Tpt(small_clip, NAMES, n_views=7, keep=2, **settings)
    ctx = tpt.head.prompt.ctx.detach().clone()
    assert tpt.images_per_pass(clip_images) == len(clip_images)
    batched = tpt(clip_images, keys=[3, 1, 4, 1, 5])
    assert_same(batched, alone(clip_images, keys=[3, 1, 4, 1, 5]))
    assert torch.equal(tpt.head.prompt.ctx, ctx) and tpt.head.prompt.ctx.grad is None
    assert_same(Tpt(small_clip, NAMES, n_views=7, keep=2, chunk=2, **settings)(
        clip_images, keys=[3, 1, 4, 1, 5]), batched)


def test_prompt_features_per_image_equal_the_learners_own(small_clip):
    tpt = Tpt(small_clip, NAMES)
    prompt = tpt.head.prompt
    ctx = torch.stack([prompt.ctx.detach(), prompt.ctx.detach() + 0.1])
    with torch.no_grad():
        per_image = prompt(True, ctx)
        own = prompt(True)
        untrimmed = prompt(False, ctx)
        prompt.ctx += 0.1
        shifted = prompt(True)
    assert per_image.shape == (2, len(NAMES), own.shape[-1])
    torch.testing.assert_close(per_image[0], own, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(per_image[1], shifted, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(untrimmed, per_image, rtol=1e-5, atol=1e-6)


def test_zero_batched_equals_one_at_a_time(small_clip, clip_images):
    model = Tpt(small_clip, NAMES).model
    alone = Zero(model, n_views=15, chunk=1)(clip_images, keys=[7, 8, 9, 10, 11])
    batched = Zero(model, n_views=15)(clip_images, keys=[7, 8, 9, 10, 11])
    assert_same(batched, alone)
    assert_same(Zero(model, n_views=15, chunk=2)(clip_images[[4, 0, 2]], keys=[11, 7, 9]),
                batched[[4, 0, 2]])


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_functional_step_is_the_optimizers_step(name):
    gen = torch.Generator().manual_seed(0)
    source = torch.randn(3, 4, generator=gen)
    grads = [torch.randn(2, 3, 4, generator=gen) for _ in range(3)]  # 2 images, 3 steps
    params, state = {"w": source}, {}
    for step, grad in enumerate(grads, 1):
        params = functional_step(name, params, {"w": grad}, state, step, lr=0.1, momentum=0.9,
                                 weight_decay=0.05)
    for image in range(2):
        weight = torch.nn.Parameter(source.clone())
        optimizer = make_optimizer([weight], name, lr=0.1, momentum=0.9, weight_decay=0.05)
        for grad in grads:
            weight.grad = grad[image].clone()
            optimizer.step()
        torch.testing.assert_close(params["w"][image], weight.detach(), rtol=1e-6, atol=1e-7)


def test_chunk_is_checked_and_autocast_keeps_the_loop(tiny_cnn, images):
    with pytest.raises(ValueError, match="chunk"):
        Memo(tiny_cnn, chunk=0)
    assert images_per_pass(10, 100, None, budget=350) == 3
    assert images_per_pass(10, 100, 4) == 4 and images_per_pass(2, 100, 4) == 2
    assert Memo(tiny_cnn, n_views=4, precision="fp16").images_per_pass(images) == 1
    assert Memo(tiny_cnn, n_views=4, precision="bf16").images_per_pass(images) == 1
    assert Memo(tiny_cnn, n_views=4).images_per_pass(images[:1]) == 1


def test_a_cnn_classifier_in_float32_batches_by_budget(images):
    net = Classifier(torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten(),
                                         torch.nn.LazyLinear(3)),
                     Preprocess(None, (0.5,) * 3, (0.5,) * 3), ["a", "b", "c"], "test")
    net(images[:1])  # materialise the lazy layer
    memo = Memo(net.eval(), n_views=4, lr=0.1, chunk=4)
    assert memo.images_per_pass(images) == 4
    assert_same(memo(images), Memo(net, n_views=4, lr=0.1, chunk=1)(images))
