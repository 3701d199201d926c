import copy
import json
import math
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers import paths
from helpers.anchors import finding_lines
from helpers.evaluate import RunLog
from helpers.transfer import (
    CnnConfig,
    PretrainConfig,
    SeriesConfig,
    accuracy_together,
    batch_schedule,
    build_cnn,
    clustering_ari,
    gain_over_baseline,
    kept_layers,
    kmeans_ari,
    layer_activations,
    layer_shapes,
    new_layers,
    repeats_for,
    run_series,
    series_config,
    setting_scores,
    stratified_subset,
    study,
    task_data,
    train_one,
    train_together,
)
from helpers.transfer.batched import train_early_stopped
from helpers.transfer.study import _pretrain, fresh_modules, validation_split

TINY = CnnConfig(depth=2, channels=(3, 4), hidden=6, image_size=12, num_classes=3)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "CACHE", tmp_path / "cache")


def test_config_round_trips_through_json_and_shapes_match_the_network():
    config = CnnConfig(depth=3, channels=(4, 5, 6), kernel_size=5, activation="gelu",
                       pool_every=2, pool_stride=2, dense_layers=1, num_classes=7)
    assert CnnConfig.from_json(config.to_json()) == config
    assert config.layer_names() == ["conv1", "conv2", "conv3", "output"]
    x = torch.rand(2, 1, 28, 28)
    for layer, shape in zip(build_cnn(config), layer_shapes(config)):
        x = layer(x)
        assert tuple(x.shape[1:]) == shape
    assert layer_shapes(config)[1] == (5, 14, 14)  # pooled after conv2 only


def test_pooling_before_a_monotone_activation_changes_nothing():
    """The blocks pool before ReLU (cheaper): outputs and gradients equal the usual order."""
    torch.manual_seed(0)
    block = build_cnn(CnnConfig(depth=1, dense_layers=1, channels=4))[0]
    conv, pool, act = block
    assert isinstance(pool, torch.nn.MaxPool2d) and isinstance(act, torch.nn.ReLU)
    x = torch.randn(3, 1, 28, 28, requires_grad=True)
    (g1,) = torch.autograd.grad(block(x).square().sum(), x)
    usual = pool(act(conv(x)))
    (g2,) = torch.autograd.grad(usual.square().sum(), x)
    assert torch.equal(block(x), usual) and torch.allclose(g1, g2)


@pytest.mark.parametrize("cut", [0, 4, -1, 1.5])
def test_cut_points_outside_the_network_are_refused(cut):
    with pytest.raises(ValueError, match=r"outside the network.*k = 1\.\.3"):
        new_layers(TINY, cut, "reinit")


def test_cut_keeps_pretrained_layers_and_renews_or_removes_the_rest():
    torch.manual_seed(0)
    net = build_cnn(TINY)
    x = torch.rand(5, 1, 12, 12)
    for cut in (1, 2, 3):
        kept = kept_layers(net, cut)
        assert all(torch.equal(a, b) for a, b in zip(kept.parameters(),
                                                     net[:cut].parameters()))
        renewed = new_layers(TINY, cut, "reinit")
        assert len(renewed) == TINY.n_layers - cut
        truncated = new_layers(TINY, cut, "truncate")
        assert [type(m).__name__ for m in truncated] == ["Flatten", "Linear"]
        for tail in (renewed, truncated):
            assert torch.nn.Sequential(*kept, *tail)(x).shape == (5, 3)
    with pytest.raises(ValueError, match="reinit or truncate"):
        new_layers(TINY, 1, "replace")


def _tiny_problem(repeats=3, n=10, steps=4, batch=4, channels=1):
    torch.manual_seed(0)
    x, y = torch.randn(40, channels, 12, 12), torch.randint(0, 3, (40,))
    indices = torch.stack([torch.randperm(40)[:n] for _ in range(repeats)])
    schedules = torch.stack([batch_schedule(n, batch, steps, torch.Generator().manual_seed(r))
                             for r in range(repeats)])
    return x, y, indices, schedules


@pytest.mark.parametrize("frozen, channels", [
    (None, 1), (None, 3),  # whole networks: grey images take the depthwise first layer
    ((1, "reinit"), 1),    # on a frozen prefix's feature maps: convolution first
    ((1, "truncate"), 1),  # ... flatten first
    ((2, "reinit"), 1),    # ... dense layers only
], ids=["grey", "colour", "features-conv", "features-flatten", "features-dense"])
def test_repeats_trained_together_equal_training_them_one_by_one(frozen, channels):
    x, y, indices, schedules = _tiny_problem(channels=channels)
    config = replace(TINY, in_channels=channels)
    modules = []
    for seed in range(3):
        torch.manual_seed(seed)
        modules.append(new_layers(TINY, *frozen) if frozen else build_cnn(config))
    if frozen:  # the new layers alone, on the prefix's outputs (computed once, as the study)
        torch.manual_seed(5)
        x = build_cnn(TINY)[:frozen[0]](x).detach()
    alone = [copy.deepcopy(m) for m in modules]
    for r, module in enumerate(alone):
        train_one(module, x, y, indices[r], schedules[r], lr=1e-3)
    stack = train_together(modules, x, y, indices, schedules, lr=1e-3)
    # Adam moves each weight by up to lr per step whatever the gradient's size, so rounding
    # differences in near-zero gradients show at ~lr/100: compare at lr = 1e-3 (the study's).
    for r, module in enumerate(alone):
        trained = stack.module(r)
        moved = False
        for (name, a), b in zip(trained.state_dict().items(), module.state_dict().values()):
            assert torch.allclose(a, b, atol=1e-5), name
            moved |= not torch.allclose(b, modules[r].state_dict()[name])
        with torch.no_grad():
            test = (module(x).argmax(1) == y).float().mean()
            own = (module(x[indices[r]]).argmax(1) == y[indices[r]]).float().mean()
        assert accuracy_together(stack, x, y, chunk=16)[r] == pytest.approx(float(test))
        assert accuracy_together(stack, x, y, indices, chunk=3)[r] == pytest.approx(float(own))
    assert moved


def test_batch_schedule_visits_every_item_once_per_epoch():
    schedule = batch_schedule(10, 4, 5, torch.Generator().manual_seed(0))
    assert schedule.shape == (5, 4)
    assert sorted(schedule.flatten()[:10].tolist()) == list(range(10))
    assert batch_schedule(3, 64, 2, torch.Generator()).shape == (2, 3)


def test_stratified_subsets_keep_every_class_and_one_size_per_fraction():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    sizes = set()
    for seed in range(3):
        subset = stratified_subset(labels, 0.1, torch.Generator().manual_seed(seed))
        assert torch.bincount(labels[subset]).tolist() == [5, 3, 2]
        sizes.add(len(subset))
    assert sizes == {10}
    tiny = stratified_subset(labels, 0.001, torch.Generator().manual_seed(0))
    assert torch.bincount(labels[tiny]).tolist() == [1, 1, 1]


def test_more_repeats_for_small_fractions():
    assert [repeats_for(f, 5, 20) for f in (1.0, 0.1, 0.025, 0.01, 0.001)] == [5, 5, 10, 16, 20]
    assert repeats_for(0.01, 5, 20) == math.ceil(5 * math.sqrt(10))


def _pretrain_config(**kw):
    settings = {"n_train": 300, "max_epochs": 2, "batch_size": 32, **kw}
    return PretrainConfig(cnn=CnnConfig(depth=2, channels=4, hidden=16), **settings)


def test_bad_series_settings_are_refused_with_the_fix():
    pre = _pretrain_config()
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        SeriesConfig("s", pre, fractions=(0.5, 1.5))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        SeriesConfig("s", pre, fractions=(0,))
    with pytest.raises(ValueError, match="classes are empty"):
        SeriesConfig("s", pre, classes=())
    with pytest.raises(ValueError, match="classes are empty"):
        PretrainConfig(classes=[])
    with pytest.raises(ValueError, match="outside the network"):
        SeriesConfig("s", pre, cuts=(4,))
    with pytest.raises(ValueError, match="reinit | truncate"):
        SeriesConfig("s", pre, variants=("reinit/frozen", "reinit"))
    with pytest.raises(ValueError, match="pretrain-set->finetune-set"):
        series_config("fashion-mnist", {}, {}, {})
    with pytest.warns(UserWarning, match=r"share classes \[3, 4\].*allow_overlap"):
        SeriesConfig("s", pre, classes=(3, 4, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SeriesConfig("s", pre, classes=(3, 4, 5), allow_overlap=True)
        SeriesConfig("s", pre, dataset="mnist", classes=(0, 1, 2))  # other data set: transfer


def test_digits_are_resized_and_padded_like_mnist_and_labels_renumbered():
    x, y = task_data("digits", [7, 3], "test", CnnConfig(), n=50)
    assert x.shape == (50, 1, 28, 28) and set(y.tolist()) <= {0, 1}
    assert torch.all(x[:, :, :4] == -1) and torch.all(x[:, :, :, -4:] == -1)  # zero border
    assert x.max() > 0.5


def test_pretraining_keeps_the_best_epoch_and_stops_early():
    config = _pretrain_config(max_epochs=3, patience=1)
    state, metrics = _pretrain(config)
    history = metrics["val_accuracy"]
    assert metrics["best_epoch"] == history.index(max(history)) + 1
    stopped = any(b <= a for a, b in zip(history, history[1:]))
    assert len(history) == 3 or stopped
    net = build_cnn(config.cnn)
    net.load_state_dict(state)
    x, y = task_data(config.dataset, config.classes, "train", config.cnn, config.n_train)
    n_val = round(config.val_share * len(y))
    with torch.no_grad():
        accuracy = (net(x[:n_val]).argmax(1) == y[:n_val]).float().mean()
    assert float(accuracy) == pytest.approx(max(history), abs=1e-4)


def test_run_log_resumes_only_for_the_same_parameters(tmp_path):
    path = tmp_path / "series.json"
    log = RunLog(path, {"a": 1}, ("fraction", "repeat"))
    log.add([{"fraction": 0.1, "repeat": 0, "test_accuracy": 0.5}])
    saved = json.loads(path.read_text())
    assert saved[0] == {"parameters": {"a": 1}} and len(saved) == 2
    again = RunLog(path, {"a": 1}, ("fraction", "repeat"))
    assert again.has(fraction=0.1, repeat=0) and not again.has(fraction=0.1, repeat=1)
    assert not RunLog(path, {"a": 2}, ("fraction", "repeat")).runs


def test_series_runs_every_setting_on_shared_subsets_and_resumes(tmp_path, monkeypatch):
    config = SeriesConfig("tiny", _pretrain_config(), n_train=60, n_test=40, fractions=(0.1, 1.0),
                          variants=("reinit/frozen", "truncate/trainable"), cuts=(1, 3),
                          min_repeats=1, max_repeats=2, eval_every=2, patience=1, max_steps=6,
                          batch_size=16)
    runs = run_series(config, tmp_path / "tiny.json", verbose=False)
    per_fraction = {0.1: repeats_for(0.1, 1, 2), 1.0: 1}
    assert len(runs) == sum(per_fraction.values()) * (1 + 2 * 2)
    for r in runs:
        assert 0 <= r["test_accuracy"] <= 1 and r["lr"] == 1e-3
        # 12 of the pool's 60 held out for validation (20% of each class), subsets of the rest
        assert r["n_train"] == 48 if r["fraction"] == 1.0 else 4 <= r["n_train"] <= 6
        assert 2 <= r["steps"] <= 6 and r["best_step"] <= r["steps"]
        assert r["n_val"] == 12  # the whole held-out split: 10 a class would be more
        assert r["capped"] == (r["steps"] == 6 and r["best_step"] == 6) or not r["capped"]
    sizes = {(r["fraction"], r["repeat"]): set() for r in runs}
    for r in runs:
        sizes[r["fraction"], r["repeat"]].add(r["n_train"])
    assert all(len(s) == 1 for s in sizes.values())  # baseline and variants: same subsets
    assert {r["cut_after"] for r in runs} == {"input", "conv1", "dense"}
    gains = gain_over_baseline(runs)
    assert len(gains) == 2 * 2 * 2
    assert all(g["gain"] == pytest.approx(g["test_accuracy"] - g["baseline"]) for g in gains)

    def no_training(*args, **kwargs):
        raise AssertionError("a recorded run was trained again")

    monkeypatch.setattr(study, "train_early_stopped", no_training)
    assert run_series(config, tmp_path / "tiny.json", verbose=False) == runs


def test_a_series_whose_data_cannot_be_had_is_skipped_with_a_note(tmp_path, monkeypatch):
    """Notebook 05 offline with download=True: the failed download of MNIST or CIFAR-10 is a
    DownloadError, a missing set without download a DatasetNotFoundError; both skip the
    series with a note that says why, and a series whose data is there runs."""
    import urllib.error
    import urllib.request

    from helpers.transfer import run_series_or_skip

    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    settings = dict(n_train=60, n_test=40, fractions=(1.0,), variants=("reinit/frozen",),
                    cuts=(1,), min_repeats=1, max_repeats=1, max_steps=1)
    tiny = {"depth": 2, "channels": [3, 4], "hidden": 6}
    for spec, download, why in (
            ("mnist-full->mnist-full", True, "Could not download http"),
            ({"pretrain": "cifar10", "finetune": "cifar10", "cnn": {"in_channels": 3,
                                                                    "image_size": 32}},
             True, "Could not download https://www.cs.toronto.edu/~kriz/cifar-10-python"),
            ("mnist-full->mnist-full", False, "MNIST train set (train-images-idx3-ubyte) not "
                                              "found at")):
        config = series_config(spec, tiny, {"n_train": 60, "max_epochs": 1}, settings)
        runs, note = run_series_or_skip(config, tmp_path / "series.json",
                                        root=tmp_path / "data", download=download)
        assert runs is None and note.startswith(f"{config.name} skipped: {why}")
    config = series_config("digits->digits", tiny, {"n_train": 60, "max_epochs": 1}, settings)
    runs, note = run_series_or_skip(config, tmp_path / "digits.json", download=True,
                                    verbose=False)
    assert note is None and len(runs) == 2  # the baseline and the one setting
    with pytest.raises(ValueError, match="has classes 0..9"):  # other errors are not skipped
        run_series_or_skip(replace(config, classes=(5, 12)), tmp_path / "bad.json")


def test_kmeans_ari_is_one_on_separated_clusters_and_rows_cover_every_layer():
    labels = torch.arange(3).repeat_interleave(20)
    features = torch.randn(60, 5) * 0.01 + labels[:, None] * 10.0
    assert kmeans_ari(features, labels) == pytest.approx(1.0)
    torch.manual_seed(0)
    net = build_cnn(TINY).eval()
    images = torch.randn(30, 1, 12, 12)
    acts = layer_activations(net, images, TINY.layer_names())
    assert list(acts) == ["input", "conv1", "conv2", "dense", "output"]
    assert acts["output"].shape == (30, 3)
    rows = clustering_ari(net, images, labels[::2], TINY.layer_names(), n_samples=20,
                          n_subsets=2)
    units = {(r["layer"], r["unit"]) for r in rows}
    assert ("conv1", "channel best") in units and ("dense", "channel mean") not in units
    assert len([r for r in rows if r["unit"] == "layer"]) == 2 * 5
    assert all(-0.5 <= r["ari"] <= 1 for r in rows)
    best = [r["ari"] for r in rows if r["unit"] == "channel best"]
    mean = [r["ari"] for r in rows if r["unit"] == "channel mean"]
    assert all(b >= m for b, m in zip(best, mean))


def test_gain_is_a_paired_difference_over_repeats_with_a_t_interval():
    def run(variant, cut, repeat, accuracy, fraction=0.5):
        return {"series": "s", "lr": 1e-3, "fraction": fraction, "variant": variant, "cut": cut,
                "cut_after": "conv1" if cut else "input", "repeat": repeat,
                "test_accuracy": accuracy}

    runs = ([run("baseline", 0, r, a) for r, a in enumerate([0.5, 0.6, 0.7])]
            + [run("reinit/frozen", 1, r, a) for r, a in enumerate([0.6, 0.8, 0.9])]
            + [run("baseline", 0, 0, 0.5, 1.0), run("reinit/frozen", 1, 0, 0.4, 1.0)])
    gains = {g["fraction"]: g for g in gain_over_baseline(runs)}
    half = 4.302652729911275 * np.std([0.1, 0.2, 0.2], ddof=1) / np.sqrt(3)  # t(0.975, 2)
    assert gains[0.5]["gain"] == pytest.approx(0.5 / 3)
    assert gains[0.5]["ci_low"] == pytest.approx(0.5 / 3 - half)
    assert gains[0.5]["ci_high"] == pytest.approx(0.5 / 3 + half)
    assert gains[0.5]["repeats"] == 3 and gains[0.5]["baseline"] == pytest.approx(0.6)
    assert np.isnan(gains[1.0]["ci_low"])  # one repeat: no interval
    (score,) = setting_scores(list(gains.values()))
    assert (score["cells"], score["better"], score["worse"]) == (2, 1, 0)
    assert score["lowest_gain"] == pytest.approx(-0.1)


@pytest.mark.parametrize("patience", [1, 2])
def test_early_stopping_together_equals_stopping_each_model_alone(patience):
    """The reference: each model trained alone with train_one, evaluated every 2 steps on the
    validation rows, stopped after ``patience`` evaluations without a better accuracy, and
    restored to its best weights."""
    x, y, indices, schedules = _tiny_problem(repeats=3, n=10, steps=12, batch=4)
    val = torch.arange(20, 40)
    modules = []
    for seed in range(3):
        torch.manual_seed(seed)
        modules.append(build_cnn(TINY))
    alone, expected = [copy.deepcopy(m) for m in modules], []
    for r, module in enumerate(alone):
        optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
        best, best_step, stale, state = -1.0, 0, 0, None
        for start in range(0, 12, 2):
            train_one(module, x, y, indices[r], schedules[r][start:start + 2], 1e-3, optimizer)
            with torch.no_grad():
                accuracy = float((module(x[val]).argmax(1) == y[val]).float().mean())
            if accuracy > best:
                best, best_step, stale = accuracy, start + 2, 0
                state = copy.deepcopy(module.state_dict())
            else:
                stale += 1
            if stale >= patience:
                break
        module.load_state_dict(state)
        expected.append((best_step, start + 2, stale < patience))
    stack, stops = train_early_stopped(modules, x, y, indices, schedules, 1e-3, x[val], y[val],
                                       eval_every=2, patience=patience)
    for r, module in enumerate(alone):
        got = (int(stops["best_step"][r]), int(stops["steps"][r]), bool(stops["capped"][r]))
        assert got == expected[r]
        for (name, a), b in zip(stack.module(r).state_dict().items(),
                                module.state_dict().values()):
            assert torch.allclose(a, b, atol=1e-5), name
    assert any(steps < 12 for _, steps, _ in expected)  # some stopped before the maximum
    with pytest.raises(ValueError, match="eval_every and patience must be >= 1"):
        train_early_stopped(modules, x, y, indices, schedules, 1e-3, x, y, 0, 1)


def test_validation_split_holds_out_each_class_once_and_apart_from_the_subsets():
    labels = torch.arange(5).repeat_interleave(40)
    held, rest = validation_split(labels, 0.2, seed=3)
    assert torch.bincount(labels[held]).tolist() == [8] * 5
    assert sorted(held.tolist() + rest.tolist()) == list(range(200))
    again, _ = validation_split(labels, 0.2, seed=3)
    assert torch.equal(held, again)
    rows = study.validation_rows(labels[held], 5, ratio=4.0, seed=0)
    assert torch.bincount(labels[held][rows]).tolist() == [8] * 5  # 10 a class, 8 there
    rows = study.validation_rows(labels, 60, ratio=4.0, seed=0)  # 240 rows: 48 a class
    assert torch.bincount(labels[rows]).tolist() == [40] * 5  # capped at what it holds
    rows = study.validation_rows(labels, 20, ratio=4.0, seed=0)
    assert torch.bincount(labels[rows]).tolist() == [16] * 5
    with pytest.raises(ValueError, match="val_ratio"):
        SeriesConfig("s", _pretrain_config(), val_ratio=0)
    with pytest.raises(ValueError, match="val_share is the share"):
        SeriesConfig("s", _pretrain_config(), val_share=1.0)


def test_truncate_at_the_last_cut_is_reinit_by_construction_and_runs_once():
    config = SeriesConfig("s", _pretrain_config(), variants=("reinit/frozen",
                          "truncate/frozen", "truncate/trainable"), cuts="all")
    last = config.network().n_layers - 1
    assert [(s["variant"], s["cut"], s["same_as"]) for s in config.identical_settings()] == [
        ("truncate/frozen", last, "reinit/frozen")]
    assert ("truncate/frozen", last) not in config.settings()
    assert ("truncate/trainable", last) in config.settings()  # no reinit/trainable to equal
    assert ("truncate/frozen", last - 1) in config.settings()
    net = build_cnn(config.pretrain.cnn)
    x = torch.randn(6, 1, 28, 28)
    features = net[:last](x).detach()
    for variant in ("reinit/frozen", "truncate/frozen"):
        module = fresh_modules(config, net, variant, last, 1)[0]
        if variant == "reinit/frozen":
            reinit = module(features)
        else:
            assert torch.equal(module(features), reinit)


def test_the_published_findings_get_this_runs_evidence_and_its_direction():
    def gain(series, variant, cut, fraction, value, low, high):
        return {"series": series, "variant": variant, "cut": cut, "fraction": fraction,
                "gain": value, "ci_low": low, "ci_high": high}

    gains = [gain("a->a", "reinit/frozen", 1, 1.0, 0.10, 0.05, 0.15),
             gain("a->a", "reinit/frozen", 3, 1.0, -0.20, -0.30, -0.10),
             gain("a->b", "reinit/frozen", 1, 1.0, 0.00, -0.05, 0.05),
             gain("a->b", "reinit/frozen", 3, 1.0, -0.30, -0.35, -0.25),
             gain("a->b", "reinit/trainable", 1, 1.0, 0.02, -0.01, 0.05)]
    anchors = [{"method": "transfer", "model": "m", "dataset": "d", "metric": "accuracy",
                "value": None, "finding": f"finding {i}", "source": "s", "paper": "p",
                "where": "Abstract", "setting": setting}
               for i, setting in enumerate(["features transferred from the bottom, middle or "
                                            "top of the network", "base and target tasks at "
                                            "different distances", "transferred layers "
                                            "fine-tuned on the target data set", "other"])]
    table = study.anchor_table(anchors, gains)
    top, distance, tuned, other = table.to_dict("records")
    assert "up to cut 1: mean gain +0.050" in top["offline here"]
    assert "(the top): -0.250, below zero in 2 of 2 cells" in top["offline here"]
    assert top["direction"] == "same direction"
    # within a->a: mean of +0.10, -0.20; across a->b: 0.00, -0.30, +0.02
    assert "mean gain -0.050 within one data set, -0.093 across" in distance["offline here"]
    assert distance["direction"] == "same direction"
    assert tuned["direction"] == "same direction (no interval excludes zero)"
    assert other["direction"] == "not comparable"
    lines = finding_lines(table)
    assert lines[0].startswith("Features transferred from the bottom") and len(lines) == 4
