import math

import pytest
import torch
import torch.nn.functional as F

from helpers.data import ImageTensorDataset
from helpers.ensemble_grid import ensemble_results, fit_temperatures
from helpers.evaluate import evaluate
from helpers.models import Classifier, Preprocess, SmallCnn
from helpers.tta import (
    Ensemble,
    Memo,
    Source,
    Tent,
    combine,
    disagreement,
    fit_temperature,
)


def logits3():
    """3 members, 4 images, 5 classes."""
    return torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0)) * 2


def test_mean_rule_is_the_mean_of_probabilities():
    z = logits3()
    expected = sum(z[m].softmax(-1) for m in range(3)) / 3
    out = combine(z, "mean")
    assert torch.allclose(out.exp(), expected, atol=1e-6)
    assert torch.allclose(out.softmax(-1), expected, atol=1e-6)  # what evaluate reads


def test_temperature_rule_divides_each_member_by_its_temperature():
    z, temps = logits3(), [0.5, 1.0, 4.0]
    expected = sum((z[m] / t).softmax(-1) for m, t in enumerate(temps)) / 3
    assert torch.allclose(combine(z, "temperature", temps).exp(), expected, atol=1e-6)
    assert torch.allclose(combine(z, "temperature", [1, 1, 1]), combine(z, "mean"))
    with pytest.raises(ValueError, match="3 members but 2 temperatures.*fit_temperatures"):
        combine(z, "temperature", [1.0, 2.0])


def test_entropy_rule_weighs_confident_members_more():
    z = logits3()
    p = z.softmax(-1)
    h = -(p * p.log()).sum(-1)  # members x images
    w = torch.exp(-h) / torch.exp(-h).sum(0)
    expected = (w[..., None] * p).sum(0)
    assert torch.allclose(combine(z, "entropy").exp(), expected, atol=1e-6)
    # a one-hot member against a uniform one: the confident one dominates
    sharp = torch.tensor([[[20.0, 0, 0]], [[0.0, 0, 0]]])
    out = combine(sharp, "entropy").exp()[0]
    weight = 1 / (1 + math.exp(-math.log(3)))  # exp(-0) / (exp(-0) + exp(-log 3))
    assert out[0].item() == pytest.approx(weight + (1 - weight) / 3, abs=1e-6)


def test_vote_rule_majority_then_mean_probability_breaks_ties():
    # image 0: votes 2-1 for class 0 although class 1 has the higher mean probability
    # image 1: one vote each for classes 0, 1, 2: the highest mean probability (2) wins
    z = torch.tensor([[[5.0, 4.9, 0.0], [3.0, 0.0, 2.9]],
                      [[5.0, 4.9, 0.0], [0.0, 3.0, 2.9]],
                      [[0.0, 9.0, 0.0], [0.0, 2.5, 3.0]]])
    out = combine(z, "vote").exp()
    assert out.argmax(-1).tolist() == [0, 2]
    mean_p = z.softmax(-1).mean(0)
    votes = torch.tensor([[2.0, 1, 0], [1, 1, 1]])
    assert torch.allclose(out, (votes + mean_p) / 4, atol=1e-6)
    assert torch.allclose(out.sum(-1), torch.ones(2))
    assert mean_p[0].argmax() == 1  # the mean rule would have chosen otherwise


def test_fitted_temperature_lowers_held_out_nll():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(5, (400,), generator=gen)
    clean = F.one_hot(labels, 5).float() * 2 + torch.randn(400, 5, generator=gen) * 1.5
    overconfident = clean * 6  # right often, but far too sure
    fit, test = slice(0, 200), slice(200, 400)
    t = fit_temperature(overconfident[fit], labels[fit])
    assert t > 2
    before = F.cross_entropy(overconfident[test], labels[test])
    after = F.cross_entropy(overconfident[test] / t, labels[test])
    assert after < before - 0.1
    # the fitted T is the NLL minimum on its split: small changes do not improve it
    nll = [F.cross_entropy(overconfident[fit] / (t * s), labels[fit]) for s in (0.9, 1, 1.1)]
    assert nll[1] <= min(nll[0], nll[2])


@pytest.fixture
def cnn_pair():
    torch.manual_seed(0)
    models = []
    for _ in range(2):
        net = SmallCnn(channels=(4, 8), num_classes=5)
        models.append(Classifier(net, Preprocess(None, (0.5,) * 3, (0.5,) * 3),
                                 [f"c{i}" for i in range(5)], "tiny random CNN").eval())
    return models


@pytest.fixture
def dataset():
    gen = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (10, 3, 16, 16), generator=gen, dtype=torch.uint8)
    return ImageTensorDataset(images, torch.randint(5, (10,), generator=gen).numpy(),
                              [f"c{i}" for i in range(5)], "toy", "random images (tests)")


def test_members_adapt_and_reset_on_their_own(cnn_pair, images):
    memo = Memo(cnn_pair[0], n_views=4, lr=0.1)
    tent = Tent(cnn_pair[1], episodic=False)
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in cnn_pair]
    ens = Ensemble({"memo": memo, "tent": tent}, rule="mean")
    out = ens(images, keys=range(6))
    assert any(not torch.equal(v, before[1][k]) for k, v in cnn_pair[1].state_dict().items())
    ens.reset()
    for model, state in zip(cnn_pair, before):
        for k, v in model.state_dict().items():
            assert torch.equal(v, state[k]), k
    alone = [Memo(cnn_pair[0], n_views=4, lr=0.1)(images, range(6)),
             Tent(cnn_pair[1])(images, range(6))]
    assert torch.allclose(out, combine(torch.stack(alone), "mean"), atol=1e-5)


def test_results_table_has_every_member_and_rule_and_replays_exactly(cnn_pair, dataset):
    members = {"a": Source(cnn_pair[0]), "b": Memo(cnn_pair[1], n_views=4, lr=0.1)}
    ens = Ensemble(members, rule="entropy")
    held_out = dataset.subset(torch.arange(5), "held out")
    test = dataset.subset(torch.arange(5, 10), "test")
    temps = fit_temperatures(ens, held_out, batch_size=4)
    assert len(temps) == 2 and all(t > 0 for t in temps)
    results = ensemble_results(ens, test, batch_size=4, progress=False)
    names = [r["method"] for r in results]
    assert names == ["a", "b", "ensemble (mean)", "ensemble (temperature)",
                     "ensemble (entropy)", "ensemble (vote)"]
    live = evaluate(ens, test, batch_size=4, progress=False)
    replayed = results[names.index("ensemble (entropy)")]
    assert live["predictions"] == replayed["predictions"]
    assert live["confidences"] == pytest.approx(replayed["confidences"], abs=1e-5)
    assert replayed["seconds_per_sample"] >= results[1]["seconds_per_sample"]
    row = disagreement(results, ["a", "b"])
    preds = torch.tensor([results[0]["predictions"], results[1]["predictions"]])
    assert row["disagree"] == pytest.approx((preds[0] != preds[1]).float().mean().item())


def test_members_must_agree_on_classes(cnn_pair):
    cnn_pair[1].class_names = ["x"] * 5
    with pytest.raises(ValueError, match="different classes"):
        Ensemble([Source(cnn_pair[0]), Source(cnn_pair[1])])
    with pytest.raises(ValueError, match="rule must be one of"):
        Ensemble([Source(cnn_pair[0])], rule="median")


def test_held_out_split_is_disjoint_random_and_complete(dataset):  # data.split
    from helpers.data import split

    held, rest = split(dataset, 4, seed=0)
    assert len(held) == 4 and len(rest) == 6
    rows = {tuple(x.flatten().tolist()) for x in torch.cat([held.images, rest.images])}
    assert rows == {tuple(x.flatten().tolist()) for x in dataset.images}
    assert not torch.equal(held.images, dataset.images[:4])  # random, not the first items
    with pytest.raises(ValueError, match="cannot hold out 10 of 10"):
        split(dataset, 10)


def test_temperature_of_a_chance_level_member_is_bounded():
    gen = torch.Generator().manual_seed(1)
    labels = torch.randint(5, (50,), generator=gen)
    wrong = F.one_hot((labels + 1) % 5, 5).float() * 5  # always sure, always wrong
    assert fit_temperature(wrong, labels) == pytest.approx(100.0)


def test_fitted_temperature_matches_the_hand_computed_minimum():
    # Two classes, logits (a, 0) on every image, class 0 right on a share q of them: the NLL of
    # softmax(z / T) is minimal where sigmoid(a / T) = q, i.e. T = a / log(q / (1 - q)).
    a, q = 4.0, 0.75
    labels = torch.tensor([0] * 75 + [1] * 25)
    logits = torch.tensor([[a, 0.0]]).repeat(100, 1)
    assert fit_temperature(logits, labels) == pytest.approx(a / math.log(q / (1 - q)),
                                                            rel=1e-3)


def test_held_out_images_are_source_images_and_never_test_images(dataset):
    from helpers.data import ImageTensorDataset
    from helpers.ensemble_grid import held_out_set

    # a "training split" holding 3 of the test images among 6 images of its own
    gen = torch.Generator().manual_seed(9)
    own = torch.randint(0, 256, (6, 3, 16, 16), generator=gen, dtype=torch.uint8)
    source = ImageTensorDataset(torch.cat([dataset.images[:3], own]), list(range(5)) + [0] * 4,
                                dataset.class_names, "toy-train", "toy training split")
    held = held_out_set(source, 6, [dataset], seed=0)
    assert sorted(map(bytes, held.images.flatten(1).numpy())) == sorted(
        map(bytes, own.flatten(1).numpy()))  # all of its own, none of the test images
    assert held.name == "toy-train"
    assert not torch.equal(held.images, own)  # random order, not the first items
    with pytest.raises(ValueError, match="6 images that are not test images, fewer than "
                                         "n_held_out = 7: lower it"):
        held_out_set(source, 7, [dataset])
    with pytest.raises(ValueError, match="n_held_out = 0: .*n_held_out: 0"):
        held_out_set(source, 0, [dataset])


def test_fashion_mnist_held_out_comes_from_its_training_split():
    from helpers.data import corruption_suite, fashion_mnist
    from helpers.ensemble_grid import image_digests, source_held_out

    tasks = corruption_suite(fashion_mnist("test"), ["contrast"], n=64, seed=0)
    held = source_held_out("fashion-mnist", 200, tasks.values(), seed=0)
    assert held.name == "fashion-mnist-train" and len(held) == 200
    assert not image_digests([held]) & image_digests(tasks.values())
    assert source_held_out("fashion-mnist", 0, tasks.values()) is None
    with pytest.raises(ValueError, match="photos has no 'train' split.*n_held_out: 0"):
        source_held_out("photos", 10)


def test_ensemble_grid_fits_on_held_out_evaluates_on_test_and_resumes(cnn_pair, dataset,
                                                                      tmp_path):
    from helpers.ensemble_grid import ensemble_grid
    from helpers.evaluate import ResultStore
    from helpers.tta import method_factories

    built = []
    models = {"cnn": lambda: built.append(1) or cnn_pair[0]}
    held_out = dataset.subset(torch.arange(4), "held out")
    held_out.name = "toy-train"
    tasks = {"toy": dataset.subset(torch.arange(4, 10), "test"),
             "toy2": dataset.subset(torch.arange(2, 8), "test 2")}
    members = method_factories(["source", "memo", "tpt"], {"memo": {"n_views": 4}})
    store = ResultStore(tmp_path / "cells.json", {"p": 1})
    results, temps = ensemble_grid(models, tasks, members, store, batch_size=4,
                                   progress=False, held_out=held_out)
    methods = [(r["data"], r["method"]) for r in results]
    assert methods[:6] == [("toy", m) for m in ["source", "memo", "ensemble (mean)",
                                                "ensemble (temperature)", "ensemble (entropy)",
                                                "ensemble (vote)"]]
    assert all(r["n"] == 6 for r in results)
    # one temperature per model and member, fitted once on the held-out images, used by
    # every task: the ensemble built by hand with them gives the same predictions
    assert [(t["model"], t["member"]) for t in temps] == [("cnn", "source"), ("cnn", "memo")]
    ens = Ensemble({"source": Source(cnn_pair[0]), "memo": Memo(cnn_pair[0], n_views=4)})
    assert [t["temperature"] for t in temps] == pytest.approx(
        fit_temperatures(ens, held_out, batch_size=4), rel=1e-5)
    assert all(t["held_out_images"] == 4 for t in temps)
    by_hand = ensemble_results(ens, tasks["toy2"], batch_size=4, progress=False)
    grid = [r for r in results if r["data"] == "toy2"]
    assert [r["predictions"] for r in grid] == [r["predictions"] for r in by_hand]
    no_held_out, _ = ensemble_grid(models, tasks, members,
                                   ResultStore(tmp_path / "other.json", {"p": 1}), batch_size=4)
    assert "ensemble (temperature)" not in {r["method"] for r in no_held_out}
    again = ResultStore(tmp_path / "cells.json", {"p": 1})
    built.clear()
    assert ensemble_grid(models, tasks, members, again, batch_size=4, held_out=held_out) == (
        results, temps)
    assert not built  # every cell was stored: no model built the second time
