import numpy as np
import pytest
from scipy import stats

from helpers import findings


def _cell(method, data, correct, labels, accuracy=None, ece=0.1, seconds=0.01):
    correct = list(correct)
    return {"model": "m", "data": data, "method": method, "correct": correct,
            "labels": list(labels), "predictions": list(labels),
            "accuracy": np.mean(correct) if accuracy is None else accuracy, "ece": ece,
            "seconds_per_sample": seconds}


def test_paired_bootstrap_estimate_is_the_mean_over_tasks_and_its_interval_matches_scipy():
    rng = np.random.default_rng(1)
    diffs = rng.integers(-1, 2, size=(3, 400)).astype(float)  # 3 tasks sharing 400 images
    estimate, low, high = findings.paired_bootstrap([diffs], resamples=20_000)
    assert estimate == pytest.approx(diffs.mean(1).mean(), abs=1e-12)
    reference = stats.bootstrap((diffs.mean(0),), np.mean, n_resamples=20_000,
                                method="percentile", random_state=2).confidence_interval
    assert low == pytest.approx(reference.low, abs=0.006)
    assert high == pytest.approx(reference.high, abs=0.006)
    assert low < estimate < high


def test_paired_bootstrap_weights_groups_by_their_tasks_and_is_degenerate_without_change():
    a, b = np.ones((1, 50)), np.zeros((3, 20))
    estimate, low, high = findings.paired_bootstrap([a, b])
    assert estimate == pytest.approx(0.25)  # (1 * 1 + 3 * 0) / 4 tasks
    assert low == high == pytest.approx(0.25)
    assert findings.paired_bootstrap([np.zeros((2, 10))]) == (0.0, 0.0, 0.0)


def test_mcnemar_is_the_exact_binomial_test_of_the_discordant_images():
    baseline = np.array([0] * 8 + [1] * 2 + [1] * 5)
    method = np.array([1] * 8 + [0] * 2 + [1] * 5)
    # 8 gained, 2 lost: two-sided P = 2 * P(X <= 2 | n=10, 1/2) = 2 * 56 / 1024
    assert findings.mcnemar_p(baseline, method) == pytest.approx(112 / 1024)
    assert findings.mcnemar_p(baseline, baseline) == 1.0


def test_compare_pairs_tasks_on_the_same_images_and_counts_significant_tasks():
    labels = list(range(40))
    base_a, base_b = [0] * 40, [1] * 40
    memo_a, memo_b = [1] * 30 + [0] * 10, [1] * 40  # +0.75 on a (significant), 0 on b
    results = [_cell("source", "a", base_a, labels, ece=0.2, seconds=0.0),
               _cell("source", "b", base_b, labels, ece=0.2, seconds=0.0),
               _cell("memo", "a", memo_a, labels, seconds=0.5),
               _cell("memo", "b", memo_b, labels, seconds=0.5),
               _cell("memo", "only-memo", [1] * 40, labels)]
    (row,) = findings.compare(results, "memo")
    assert row["model"] == "m" and row["tasks"] == 2 and row["images"] == 40
    assert row["baseline_accuracy"] == pytest.approx(0.5)
    assert row["accuracy"] == pytest.approx((0.75 + 1) / 2)
    assert row["change"] == pytest.approx(0.375)
    assert 0 < row["ci_low"] < 0.375 < row["ci_high"] <= 0.5
    assert (row["better_on"], row["worse_on"], row["better_tasks"]) == (1, 0, ["a"])
    assert row["ece"] == pytest.approx(0.1) and row["baseline_ece"] == pytest.approx(0.2)
    assert findings.verdict(row) == "gain"
    text = findings.sentence(row)
    assert "0.500 → 0.875" in text and "+0.375" in text and "better on 1, worse on 0" in text
    assert [r["method"] for r in findings.compare_all(results)] == ["memo"]
    assert "better_tasks" not in findings.table([row])[0]


def test_correct_per_image_falls_back_to_predictions_and_labels():
    assert findings.correct_per_image({"predictions": [1, 2, 3], "labels": [1, 0, 3]}).tolist() \
        == [1.0, 0.0, 1.0]


def test_verdict_reads_the_interval():
    assert findings.verdict({"ci_low": -0.1, "ci_high": -0.01}) == "loss"
    assert findings.verdict({"ci_low": -0.1, "ci_high": 0.01}) == "no detectable change"


def test_proportion_interval_is_wilsons():
    low, high = findings.proportion_interval(0.8, 100)
    # Wilson: (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), z = 1.95996
    z = stats.norm.ppf(0.975)
    centre, half = 0.8 + z**2 / 200, z * np.sqrt(0.16 / 100 + z**2 / 40000)
    assert low == pytest.approx((centre - half) / (1 + z**2 / 100))
    assert high == pytest.approx((centre + half) / (1 + z**2 / 100))


def test_intervals_keep_the_change_and_its_interval():
    row = {"model": "m", "method": "memo", "baseline": "source", "change": 0.1, "ci_low": 0.05,
           "ci_high": 0.15, "tasks": 3, "better_tasks": ["a"]}
    assert findings.intervals([row]) == [{"model": "m", "method": "memo", "baseline": "source",
                                          "change": 0.1, "ci_low": 0.05, "ci_high": 0.15}]


BEFORE = ("each batch is predicted before its own step, as in the authors' code, so the first "
          "batch is always the source model's and the last step acts on nothing. The paper's "
          "ImageNet-C runs take")


def test_steps_lines_count_the_steps_against_the_batches_and_the_paper():
    rows = [{"model": "m", "method": "eata", "n": 400,
             "counters": {"steps": 7, "reliable": 300, "selected": 100}},
            {"model": "m", "method": "eata", "n": 400,
             "counters": {"steps": 4, "reliable": 100, "selected": 0}},
            {"model": "m", "method": "sar", "n": 400, "counters": {}},
            {"model": "m", "method": "source", "n": 400, "counters": {}}]
    assert findings.steps_lines(rows, ["eata", "sar", "tent"], 64) == [
        "m · **eata** at the paper's learning rate took 5.5 SGD steps per data set on average, "
        f"of 7 batches (400 images, batches of 64); {BEFORE} 782 steps per corruption "
        "(50,000 images, batches of 64). It trusted 50% of the images (entropy below E_0) and "
        "used 12% (EATA also drops a sample whose prediction resembles the average of those "
        "it used).",
        "m · **sar** at the paper's learning rate took 0.0 SGD steps per data set on average, "
        f"of 7 batches (400 images, batches of 64); {BEFORE} 782 steps per corruption "
        "(50,000 images, batches of 64)."]


def test_mean_view_agreement_averages_the_corrupted_sets_only(monkeypatch):
    import torch

    from helpers import evaluate
    from helpers.data import ImageTensorDataset

    seen = []

    def fake(classifier, dataset, views, seed):
        seen.append(len(dataset))
        return {"source": 0.5, "views": 0.2 * len(seen), "marginal": 0.6}

    monkeypatch.setattr(evaluate, "view_agreement", fake)
    def task(name):
        return ImageTensorDataset(torch.zeros(9, 3, 2, 2, dtype=torch.uint8), [0] * 9, ["a"],
                                  name, name)

    tasks = {name: task(name) for name in ("clean", "noise", "blur")}
    score = findings.mean_view_agreement(None, tasks, None, n_images=4)
    assert seen == [4, 4] and score == {"source": 0.5, "views": 0.3, "marginal": 0.6}
    assert findings.agreement_line("m", "Zero's", score, 4) == (
        "m, Zero's views without adaptation (mean over the corruptions, 4 images each): a single "
        "view is right on 0.300 of the images, the average over the views on 0.600, the image "
        "itself on 0.500 (average minus image +0.100).")


def test_images_for_half_width_scales_the_interval_as_one_over_root_n():
    row = {"model": "m", "method": "memo_plus", "baseline": "memo", "images": 100,
           "ci_low": -0.06, "ci_high": 0.02}  # half-width 0.04: four times the images for 0.02
    assert findings.images_for_half_width(row, 0.02) == 400
    assert findings.images_for_half_width(row, 0.04) == 100
    line = findings.resolution_line(row)
    assert "100 images per task" in line and "±0.040" in line and "about 400" in line
    narrow = findings.resolution_line({**row, "ci_low": -0.025, "ci_high": 0.008})
    assert "±0.017), already within ±0.02" in narrow and "-0.025 to +0.008" in narrow
    assert "would need" not in narrow
