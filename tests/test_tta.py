import math

import pytest
import torch

from helpers.evaluate import evaluate, expected_calibration_error
from helpers.tta import Memo, NormAdapt, Source, Tent, build_method, entropy, marginal_entropy
from helpers.views import AugMixViews


def direct_marginal_entropy(logits):
    p = logits.double().softmax(-1).mean(0)
    return -(p * p.log()).nan_to_num(0).sum()


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(model, reference):
    now = model.state_dict()
    assert now.keys() == reference.keys()
    for k in reference:
        assert torch.equal(now[k], reference[k]), f"{k} changed"


def test_marginal_entropy_matches_formula():
    logits = torch.randn(8, 10, generator=torch.Generator().manual_seed(0)) * 3
    assert marginal_entropy(logits).item() == pytest.approx(
        direct_marginal_entropy(logits).item(), rel=1e-6)
    # identical uniform views: entropy of the uniform distribution
    assert marginal_entropy(torch.zeros(4, 7)).item() == pytest.approx(math.log(7), rel=1e-6)


def test_marginal_entropy_near_one_hot_and_float16_range():
    one_hot = torch.zeros(16, 5)
    one_hot[:, 2] = 1e4
    value = marginal_entropy(one_hot)
    assert torch.isfinite(value) and value.item() == pytest.approx(0.0, abs=1e-12)
    # views that disagree completely: the marginal is uniform over the two winners
    mixed = one_hot.clone()
    mixed[8:, 2], mixed[8:, 3] = 0, 1e4
    assert marginal_entropy(mixed).item() == pytest.approx(math.log(2), rel=1e-6)
    big = torch.randn(6, 20, generator=torch.Generator().manual_seed(3)) * 3e4
    big = big.clamp(-6e4, 6e4).half()
    assert torch.isfinite(big).all() and big.abs().max() > 3e4  # where half overflows
    value = marginal_entropy(big)
    assert torch.isfinite(value)
    assert value.item() == pytest.approx(direct_marginal_entropy(big.double()).item(),
                                         rel=1e-5, abs=1e-9)


def test_entropy_per_row():
    logits = torch.tensor([[0.0, 0.0], [100.0, 0.0]])
    assert torch.allclose(entropy(logits), torch.tensor([math.log(2), 0.0]), atol=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("params", ["all", "norm"])
def test_memo_restores_every_tensor_bit_for_bit(tiny_cnn, images, optimizer, params):
    source = state(tiny_cnn)
    memo = Memo(tiny_cnn, n_views=8, steps=2, optimizer=optimizer, lr=0.5, params=params)
    with memo.adapted(images[0]) as adapted:  # the restore below undoes a real change
        changed = [k for k, v in adapted.state_dict().items() if not torch.equal(v, source[k])]
    assert changed and all(k.endswith(("weight", "bias")) for k in changed)
    assert_same_state(tiny_cnn, source)
    for i in range(3):
        memo(images[2 * i:2 * i + 2])
        assert_same_state(tiny_cnn, source)
        assert len(memo.optimizer.state) == 0
        assert all(p.grad is None for p in memo.params)


def test_memo_step_lowers_marginal_entropy_then_forgets(tiny_cnn, images):
    views = AugMixViews(16)
    memo = Memo(tiny_cnn, views=views, lr=0.05)
    with torch.no_grad():
        v = views(images[0], memo.generator(0))
        before = marginal_entropy(tiny_cnn(v)).item()
    memo.adapt(images[0], memo.generator(0))
    with torch.no_grad():
        after = marginal_entropy(tiny_cnn(v)).item()
    memo.restore()
    assert after < before
    with torch.no_grad():
        assert marginal_entropy(tiny_cnn(v)).item() == before


@pytest.mark.parametrize("params", ["all", "norm"])
def test_memo_one_sgd_step_fast_path_equals_torch_optim_step(tiny_cnn, images, params):
    """The fast path never writes the weights; its predictions must equal those of a copy of
    the model adapted by torch.optim.SGD (momentum and weight decay on), bit for bit (one
    image at a time; ``test_batched`` compares the batched path with it)."""
    import copy

    source = state(tiny_cnn)
    memo = Memo(tiny_cnn, n_views=8, lr=0.5, weight_decay=0.01, params=params, chunk=1)
    assert memo.one_sgd_step
    fast = memo(images[:3])
    assert_same_state(tiny_cnn, source)
    for i, image in enumerate(images[:3]):
        reference = copy.deepcopy(tiny_cnn)
        chosen = Memo(reference, params=params).params
        optimizer = torch.optim.SGD(chosen, lr=0.5, momentum=0.9, weight_decay=0.01)
        views = memo.views(image, memo.generator(i))
        marginal_entropy(reference(views)).backward()
        optimizer.step()
        with torch.no_grad():
            assert torch.equal(fast[i:i + 1], reference(image[None]))


def one_by_one(model, images):
    """Source predictions one image at a time, as MEMO predicts (batch size changes the
    float rounding of convolutions)."""
    return torch.cat([Source(model)(image[None]) for image in images])


def test_memo_changes_predictions_only_through_adaptation(tiny_cnn, images):
    source = one_by_one(tiny_cnn, images)
    assert torch.equal(Memo(tiny_cnn, lr=0.0, n_views=4, chunk=1)(images), source)
    adapted = Memo(tiny_cnn, lr=0.5, n_views=4)(images)
    assert not torch.equal(adapted, source)


def test_nonfinite_loss_skips_update_and_predicts_with_source(tiny_cnn, images):
    def broken_views(image, generator):
        return torch.full((4, *image.shape), float("nan"))

    memo = Memo(tiny_cnn, views=broken_views, lr=1.0)
    logits = memo(images)
    assert memo.counters["skipped_nonfinite"] == len(images)
    assert torch.equal(logits, one_by_one(tiny_cnn, images))


def test_norm_adapt_uses_batch_statistics_and_keeps_running_ones(tiny_cnn, images):
    source = state(tiny_cnn)
    logits = NormAdapt(tiny_cnn)(images)
    assert_same_state(tiny_cnn, source)
    import copy
    reference = copy.deepcopy(tiny_cnn).train()
    with torch.no_grad():
        assert torch.allclose(logits, reference(images), atol=1e-6)
    assert not torch.allclose(logits, Source(tiny_cnn)(images), atol=1e-4)


def test_norm_adapt_refuses_models_without_batchnorm():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LayerNorm(12), torch.nn.Linear(12, 3))
    with pytest.raises(ValueError, match="batch-norm"):
        NormAdapt(model)


def test_tent_online_adapts_and_reset_restores(tiny_cnn, images):
    source = state(tiny_cnn)
    tent = Tent(tiny_cnn, lr=0.1)
    tent(images)
    changed = [k for k, v in tiny_cnn.state_dict().items() if not torch.equal(v, source[k])]
    assert any(k.endswith("weight") for k in changed)  # BN affine parameters moved
    tent.reset()
    assert_same_state(tiny_cnn, source)
    episodic = Tent(tiny_cnn, lr=0.1, episodic=True)
    episodic(images)
    assert_same_state(tiny_cnn, source)


def test_build_method_rejects_unknown_names(tiny_cnn):
    with pytest.raises(ValueError, match="valid"):
        build_method("memo_pls", tiny_cnn)
    with pytest.raises(ValueError, match="'all' or 'norm'"):
        Memo(tiny_cnn, params="head")
    with pytest.raises(ValueError, match="optimizer"):
        Memo(tiny_cnn, optimizer="lbfgs")


def test_ece_against_hand_computation():
    conf = [0.95, 0.95, 0.55, 0.55, 0.55]
    correct = [1, 0, 1, 1, 0]
    # bin 0.9-1.0: acc 0.5, conf 0.95 -> |0.45| * 2/5; bin 0.5-0.6: acc 2/3, conf .55
    expected = 0.4 * 0.45 + 0.6 * abs(2 / 3 - 0.55)
    assert expected_calibration_error(conf, correct) == pytest.approx(expected)
    assert expected_calibration_error([1.0, 1.0], [1, 1]) == 0.0


class _Tiny(torch.utils.data.Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], i % 5


def test_evaluate_is_bit_for_bit_reproducible(tiny_cnn, images):
    data = _Tiny(images)
    first = evaluate(Memo(tiny_cnn, n_views=4, lr=0.1, seed=3), data, batch_size=4,
                     progress=False)
    second = evaluate(Memo(tiny_cnn, n_views=4, lr=0.1, seed=3), data, batch_size=2,
                      progress=False)
    assert first["predictions"] == second["predictions"]
    assert first["confidences"] == second["confidences"]
    assert first["n"] == 6 and 0 <= first["accuracy"] <= 1
    assert first["accuracy"] == sum(p == y for p, y in zip(first["predictions"],
                                                           first["labels"])) / 6
    other_seed = evaluate(Memo(tiny_cnn, n_views=4, lr=0.1, seed=4), data, progress=False)
    assert other_seed["confidences"] != first["confidences"]


def test_batch_moments_match_var_mean_also_far_from_zero():
    from helpers.tta.norm import batch_moments
    torch.manual_seed(0)
    for offset in (0.0, 1e3):  # a one-pass E[x^2] - E[x]^2 would lose the variance here
        x = torch.randn(4, 3, 5, 6) * torch.tensor([0.01, 1.0, 5.0]).view(1, 3, 1, 1) + offset
        mean, var = batch_moments(x)
        ref_var, ref_mean = torch.var_mean(x.double(), [0, 2, 3], correction=0)
        assert torch.allclose(mean.double(), ref_mean, rtol=1e-6)
        assert torch.allclose(var.double(), ref_var, rtol=1e-3)


def test_batchnorm_prior_interpolates_between_source_and_batch_statistics(tiny_cnn, images):
    import copy

    from helpers.tta.norm import BatchNormPrior
    source = state(tiny_cnn)
    with torch.no_grad():
        eval_out = tiny_cnn(images)
        batch_out = copy.deepcopy(tiny_cnn).train()(images)
        with BatchNormPrior(tiny_cnn, prior=0):
            assert torch.allclose(tiny_cnn(images), batch_out, atol=1e-5)
        with BatchNormPrior(tiny_cnn, prior=1e9):
            assert torch.allclose(tiny_cnn(images), eval_out, atol=1e-5)
        with BatchNormPrior(tiny_cnn, prior=16):
            mixed = tiny_cnn(images)
    assert not torch.allclose(mixed, eval_out, atol=1e-4)
    assert_same_state(tiny_cnn, source)
    with torch.no_grad():  # the layers' own forward is back
        assert torch.equal(tiny_cnn(images), eval_out)


def test_memo_with_bn_prior_restores_and_refuses_models_without_batchnorm(tiny_cnn, images):
    source = state(tiny_cnn)
    Memo(tiny_cnn, n_views=4, lr=0.1, bn_prior=16)(images)
    assert_same_state(tiny_cnn, source)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 3))
    with pytest.raises(ValueError, match="bn_prior"):
        Memo(model, bn_prior=16)


def test_memo_adapted_yields_the_adapted_model_and_restores_it(tiny_cnn, images):
    source = state(tiny_cnn)
    memo = Memo(tiny_cnn, n_views=4, steps=2, optimizer="sgd", lr=0.1, bn_prior=16)
    with memo.adapted(images[0], key=3) as model:
        assert model is tiny_cnn
        changed = [k for k, v in tiny_cnn.state_dict().items() if not torch.equal(v, source[k])]
        assert changed  # adapted inside
    assert_same_state(tiny_cnn, source)


def test_clip_resnets_have_batch_norm_so_norm_adapt_and_tent_apply_and_memo_uses_the_prior():
    """CLIP's RN50 / RN101 image encoder (ModifiedResNet; here tiny, random) has batch norm,
    unlike its ViTs: NormAdapt applies, Tent adapts the batch norms' affine weights, and MEMO
    (the full profile's bn_prior: 16) normalises each layer with the source statistics mixed
    16:1 with the adapted image's; without bn_prior it keeps the source statistics. Running
    statistics never change."""
    import standins

    from helpers.models import clip_classifier
    from helpers.tta import method_factories, select_parameters
    from helpers.tta.norm import BatchNormPrior, has_batchnorm

    names = ["cat", "dog", "car"]
    resnet = clip_classifier(standins.clip_model(vision_layers=(1, 1, 1, 1), vision_width=8,
                                                 patch_size=None), names, cache=False)
    vit = clip_classifier(standins.clip_model(), names, cache=False)
    assert has_batchnorm(resnet) and not has_batchnorm(vit)
    factories = method_factories(["norm", "tent"], {"tent": {"lr": 1e-3}})
    assert isinstance(factories["norm"](resnet, "RN50"), NormAdapt)
    assert factories["norm"](vit, "ViT-B/32") is None  # reported as not applicable
    batch_norms = [m for m in resnet.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    tent = factories["tent"](resnet, "RN50")
    assert {id(p) for p in tent.params} == {id(p) for m in batch_norms for p in m.parameters()}
    assert set(map(id, select_parameters(resnet, "norm"))) == set(map(id, tent.params))

    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    source = state(resnet)
    with torch.no_grad():
        plain = resnet(images)
        mixed = torch.cat([_with_prior(resnet, image, BatchNormPrior) for image in images])
    # lr 0: what remains of MEMO is how it normalises the image it predicts
    assert torch.allclose(Memo(resnet, n_views=2, lr=0.0)(images), plain, atol=1e-6)
    assert torch.allclose(Memo(resnet, n_views=2, lr=0.0, bn_prior=16)(images), mixed,
                          atol=1e-6)
    assert not torch.allclose(mixed, plain, atol=1e-3)
    Memo(resnet, n_views=2, lr=1e-2, bn_prior=16)(images)
    assert_same_state(resnet, source)


def _with_prior(model, image, prior):
    with prior(model, 16):
        return model(image[None])
