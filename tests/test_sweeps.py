"""The sweeps of notebooks 01 and 03 (a setting at a time around each model's own, on the
validation corruptions) and the per-severity study: the sweep specs and their errors, the
rows, optima and severity numbers against hand-computed cases, and their figures."""

import matplotlib
import numpy as np
import pytest
import torch

from helpers import findings, plots

matplotlib.use("Agg")


# ---------------------------------------------------------------- sweep specs

def test_one_at_a_time_scales_a_relative_option_and_marks_the_chosen_value():
    rows = findings.one_at_a_time({"lr": 0.005, "n_views": 8, "steps": 1},
                                  {"lr": [0, 0.1, 1, 10], "n_views": [4, 8], "steps": []},
                                  "memo", relative=("lr",))
    assert [(r["setting"], r["value"]) for r in rows] == [
        ("lr", 0), ("lr", 0.1), ("lr", 1), ("lr", 10), ("n_views", 4), ("n_views", 8)]
    assert [r["settings"]["lr"] for r in rows[:4]] == pytest.approx([0, 0.0005, 0.005, 0.05])
    assert rows[1]["method"] == "memo lr=x0.1, n_views=8, steps=1"
    assert rows[4]["method"] == "memo lr=x1, n_views=4, steps=1"
    assert rows[4]["settings"] == {"lr": 0.005, "n_views": 4, "steps": 1}
    assert [r["chosen"] for r in rows] == [False, False, True, False, False, True]
    assert rows[2]["method"] == rows[5]["method"]  # the chosen setting: one name, run once
    assert {r["sweep"] for r in rows} == {"memo"}


@pytest.mark.parametrize("sweeps, relative, message", [
    ({"lr_rate": [1]}, (), "sweep of 'lr_rate': not a setting of memo; its settings are lr, "
                           "n_views"),
    ({"lr": [-1, 1]}, (), r"memo's lr: give a list of numbers >= 0 \(\[\] switches it off\), "
                          r"got \[-1, 1\]"),
    ({"n_views": 8}, (), "memo's n_views: give a list of numbers >= 0"),
    ({"n_views": ["8"]}, (), "memo's n_views: give a list of numbers >= 0"),
    ({"n_views": [True]}, (), "memo's n_views: give a list of numbers >= 0"),
    ([("lr", [1])], (), "a sweep of memo is a dict of option -> list of values"),
])
def test_bad_sweep_specs_are_errors_naming_the_fix(sweeps, relative, message):
    with pytest.raises(ValueError, match=message):
        findings.one_at_a_time({"lr": 0.005, "n_views": 8}, sweeps, "memo", relative)


def test_a_relative_sweep_needs_a_positive_chosen_value():
    with pytest.raises(ValueError, match="relative to its chosen value: the chosen lr must be "
                                         "a number > 0, got 0"):
        findings.one_at_a_time({"lr": 0}, {"lr": [0, 1]}, "memo", relative=("lr",))


def test_same_by_construction_names_what_a_zero_rate_is():
    assert findings.same_by_construction("memo", {"lr": 0.0}) == "source"
    assert findings.same_by_construction("memo", {"lr": 0.0, "bn_prior": 16}) is None
    assert findings.same_by_construction("memo", {"lr": 0.001}) is None
    assert findings.same_by_construction("tpt", {"lr": 0}) == "prompt"
    assert findings.same_by_construction("zero", {"lr": 0}) is None


def test_model_sweeps_sweep_each_model_around_its_own_setting_and_run_it_there_alone():
    own = {"clip": {"lr": 0.005, "n_views": 16},
           "cnn": {"lr": 0.001, "n_views": 8, "bn_prior": 16}}
    rows, factories = findings.model_sweeps(own.get, ["clip", "cnn"],
                                            {"lr": [0, 1], "n_views": [8]}, "memo", ("lr",))
    assert [(r["model"], r["method"]) for r in rows] == [
        ("clip", "source"), ("clip", "memo lr=x1, n_views=16"), ("clip", "memo lr=x1, n_views=8"),
        ("cnn", "memo lr=x0, n_views=8"), ("cnn", "memo lr=x1, n_views=8"),
        ("cnn", "memo lr=x1, n_views=8")]
    assert rows[0]["same_as"] == "source" and "same_as" not in rows[3]
    # the CLIP's rate 0 is Source's cells: no factory; each setting only on its own models
    assert set(factories) == {"memo lr=x1, n_views=16", "memo lr=x1, n_views=8",
                              "memo lr=x0, n_views=8"}
    shared = factories["memo lr=x1, n_views=8"]
    assert shared.settings("clip") == {"lr": 0.005, "n_views": 8}
    assert shared.settings("cnn") == {"lr": 0.001, "n_views": 8, "bn_prior": 16}
    assert factories["memo lr=x0, n_views=8"](object(), "clip") is None
    assert factories["memo lr=x1, n_views=16"](object(), "cnn") is None
    assert factories["memo lr=x0, n_views=8"].settings("cnn")["lr"] == 0


def test_validation_tasks_take_the_same_images_under_the_held_out_corruptions():
    from helpers.data import ImageTensorDataset

    gen = torch.Generator().manual_seed(0)
    base = ImageTensorDataset(torch.randint(0, 256, (20, 3, 32, 32), generator=gen,
                                            dtype=torch.uint8), list(range(10)) * 2,
                              [str(i) for i in range(10)], "toy", "toy")
    tasks = findings.validation_tasks(base, 2, 6, severity=3, seed=1)
    assert list(tasks) == ["speckle_noise", "gaussian_blur"]
    assert len(tasks["gaussian_blur"]) == 6
    assert torch.equal(tasks["speckle_noise"].labels, tasks["gaussian_blur"].labels)
    assert list(findings.validation_tasks(base, 4, 6)) == ["speckle_noise", "gaussian_blur",
                                                            "spatter", "saturate"]
    assert findings.validation_tasks(base, 4, 0) == {}


# ---------------------------------------------------------------- rows and optima

def cell(method, task, correct, confidences, model="m"):
    return {"model": model, "data": task, "method": method, "labels": [0] * len(correct),
            "correct": correct, "accuracy": float(np.mean(correct)),
            "confidences": confidences, "mean_confidence": float(np.mean(confidences)),
            "ece": 0.1, "seconds_per_sample": 0.5}


def test_sweep_rows_give_mean_confidence_over_the_tasks_with_its_interval():
    results = [cell("source", "a", [1, 0, 0, 0], [0.5] * 4),
               cell("source", "b", [1, 0, 0, 0], [0.5] * 4),
               cell("memo x", "a", [1, 1, 0, 0], [0.9, 0.7, 0.6, 0.4]),
               cell("memo x", "b", [1, 1, 1, 0], [0.8, 0.8, 0.6, 0.2])]
    sweep = [{"setting": "lr", "value": 1, "method": "memo x", "sweep": "memo",
              "chosen": True, "model": "m"},
             {"setting": "lr", "value": 0, "method": "source", "sweep": "memo",
              "same_as": "source", "model": "m"},
             {"setting": "lr", "value": 1, "method": "memo x", "model": "other"}]
    first, zero = findings.sweep_rows(results, sweep, "source")  # other model's row: none
    # per image over both tasks: 0.85, 0.75, 0.6, 0.3 -> mean 0.625
    assert first["confidence"] == pytest.approx(0.625)
    assert 0.3 <= first["confidence_low"] < 0.625 < first["confidence_high"] <= 0.85
    assert first["accuracy"] == pytest.approx(5 / 8) and first["chosen"]
    assert first["sweep"] == "memo" and first["same_as"] is None
    # the baseline's own cells at its same-as value: equal confidences, no change
    assert zero["same_as"] == "source" and zero["confidence"] == pytest.approx(0.5)
    assert zero["confidence_low"] == zero["confidence_high"] == pytest.approx(0.5)
    assert zero["change"] == zero["change_low"] == zero["change_high"] == 0


def optimum_case():
    """20 images, one task: the chosen rate right on 10, rate 10 on those and 6 more,
    rate 0.1 on 8 of the chosen one's."""
    chosen = [1] * 10 + [0] * 10
    better = [1] * 16 + [0] * 4
    worse = [1] * 8 + [0] * 12
    results = [cell("source", "t", chosen, [0.5] * 20),
               cell("memo x0.1", "t", worse, [0.4] * 20),
               cell("memo x1", "t", chosen, [0.6] * 20),
               cell("memo x10", "t", better, [0.99] * 20)]
    sweep = [{"setting": "lr", "value": v, "method": f"memo x{v:g}", "sweep": "memo",
              "chosen": v == 1} for v in (0.1, 1, 10)]
    return results, findings.sweep_rows(results, sweep, "source")


def test_sweep_optima_pair_the_best_value_with_the_chosen_one_on_the_same_images():
    results, rows = optimum_case()
    (optimum,) = findings.sweep_optima(results, rows)
    assert (optimum["best"], optimum["chosen"]) == (10, 1)
    assert optimum["accuracy"] == pytest.approx(0.8)
    assert optimum["change"] == pytest.approx(0.3)
    # every paired difference is 0 or +1; a resample with none of the 6 gains has
    # probability (14/20)^20 < 0.001, so the lower 2.5% bound is above zero
    assert 0 < optimum["change_low"] < 0.3 < optimum["change_high"] <= 0.6
    assert optimum["apart"]
    assert optimum["values"] == [0.1, 1, 10]
    assert optimum["confidence"] == pytest.approx([0.4, 0.6, 0.99])
    assert optimum["gap"] == pytest.approx([0.0, 0.1, 0.19])
    # 16 of 20 right: a resample has 19 or 20 right with probability 0.069, 20 with 0.012
    assert optimum["accuracy_high"][-1] == pytest.approx(0.95)
    (line,) = findings.optimum_lines([optimum], {"lr": "learning rate"}, " (toy)")
    assert line.startswith(
        "m, memo learning rate (toy): the highest mean accuracy is at 10, 0.800 (95% CI ")
    assert "1 data set of 20 images), better than the chosen 1 (0.500) on the same images by " \
           "+0.300 (95% CI +" in line
    assert line.endswith("Mean confidence rises from 0.400 (0.400 to 0.400) at 0.1 to 0.990 "
                         "(0.990 to 0.990) at 10; confidence minus accuracy +0.000 at 0.1, "
                         "+0.190 at the largest value (over-confident there: confidence above "
                         "accuracy's interval).")
    optimum["confidence_high"][0] = 0.995  # overlapping intervals: no direction claimed
    assert "Mean confidence does not move beyond its intervals from 0.400" in \
        findings.optimum_lines([optimum])[0]


def test_sweep_optima_say_when_the_chosen_value_is_best_and_skip_sweeps_without_it():
    results, rows = optimum_case()
    rows = [r for r in rows if r["value"] != 10]
    (optimum,) = findings.sweep_optima(results, rows)
    assert optimum["best"] == optimum["chosen"] == 1 and not optimum["apart"]
    assert optimum["change"] == optimum["change_low"] == 0
    assert "at 1, 0.500 (95% CI" in findings.optimum_lines([optimum])[0]
    assert "the chosen value itself" in findings.optimum_lines([optimum])[0]
    assert findings.sweep_optima(results, [r for r in rows if not r["chosen"]]) == []


# ---------------------------------------------------------------- severity

def test_severity_of_reads_the_suite_names():
    assert findings.severity_of("snow/3") == 3
    assert findings.severity_of("fashion-mnist/snow/5") == 5
    assert findings.severity_of("snow") is None and findings.severity_of("clean") is None


def severity_case():
    """Two corruptions at severities 1 and 5 of the same 10 images: Source right on 8 and 2
    of them, NormAdapt on 8 at both."""
    results = []
    for corruption in ("a", "b"):
        results += [cell("source", f"{corruption}/1", [1] * 8 + [0] * 2, [0.9] * 10),
                    cell("source", f"{corruption}/5", [1] * 2 + [0] * 8, [0.9] * 10),
                    cell("norm", f"{corruption}/1", [1] * 8 + [0] * 2, [0.9] * 10),
                    cell("norm", f"{corruption}/5", [1] * 8 + [0] * 2, [0.9] * 10)]
    return results


def test_severity_rows_give_error_per_severity_and_the_paired_change_over_source():
    rows = findings.severity_rows(severity_case(), ["source", "norm", "tent"])
    assert [(r["method"], r["severity"]) for r in rows] == [
        ("source", 1), ("source", 5), ("norm", 1), ("norm", 5)]
    source_5, norm_1, norm_5 = rows[1], rows[2], rows[3]
    assert source_5["error"] == pytest.approx(0.8) and source_5["tasks"] == 2
    assert source_5["error_low"] <= 0.8 <= source_5["error_high"]
    assert source_5["change"] == 0 and norm_1["change"] == pytest.approx(0)
    assert norm_5["error"] == pytest.approx(0.2) and norm_5["change"] == pytest.approx(0.6)
    # 6 of 10 images gain, none loses: a resample without a gain has probability 0.4^10
    assert 0 < norm_5["change_low"] < 0.6 < norm_5["change_high"] <= 1
    assert norm_1["change_low"] == norm_1["change_high"] == 0  # identical at severity 1
    (line,) = findings.severity_lines(rows)
    assert line == ("m · **norm** against source on the same images (2 corruptions of 10 "
                    "images per severity), change in accuracy: severity 1 +0.000 (+0.000 to "
                    f"+0.000); severity 5 +0.600 ({norm_5['change_low']:+.3f} to "
                    f"{norm_5['change_high']:+.3f}); its change over source grows with "
                    "severity (the two intervals do not overlap).")


def test_severity_lines_do_not_claim_a_trend_the_intervals_cannot_tell():
    rows = [{"model": "m", "method": "memo", "severity": s, "change": c, "change_low": c - 0.1,
             "change_high": c + 0.1, "tasks": 1, "images": 5} for s, c in ((1, 0.0), (5, 0.1))]
    (line,) = findings.severity_lines(rows)
    assert "1 corruption of 5 images" in line
    assert line.endswith("the two intervals overlap: this run cannot tell whether its change "
                         "over source depends on severity.")


# ---------------------------------------------------------------- figures

def test_sweep_intervals_draw_error_and_confidence_and_leave_out_same_as_points():
    rows = [{"model": "m", "sweep": "memo", "setting": "lr", "value": v, "accuracy": a,
             "ci_low": a - 0.1, "ci_high": a + 0.1, "confidence": c,
             "confidence_low": c - 0.05, "confidence_high": c + 0.05, "chosen": v == 1,
             "same_as": "source" if v == 0 else None, "baseline": "source",
             "baseline_accuracy": 0.5, "baseline_low": 0.4, "baseline_high": 0.6}
            for v, a, c in ((0, 0.5, 0.7), (1, 0.6, 0.8), (10, 0.7, 0.95))]
    fig = plots.sweep_intervals(rows, {"lr": "rate"}, metrics=("error", "confidence"))
    error, confidence = fig.axes
    x, y = error.lines[0].get_data()
    # evenly spaced slots of 0, 1, 10 (0 keeps its slot, undrawn); error is 1 - accuracy
    assert list(x) == [1, 2] and list(y) == pytest.approx([0.4, 0.3])
    assert [t.get_text() for t in error.get_xticklabels()] == ["0", "1", "10"]
    assert error.lines[2].get_ydata()[0] == pytest.approx(0.5)  # Source, as error
    assert list(confidence.lines[0].get_ydata()) == pytest.approx([0.8, 0.95])
    assert list(error.lines[1].get_xdata()) == [1]  # the chosen value's square, in slot 1
    assert error.get_ylabel() == "mean error (95% CI)" and error.get_xlabel() == "rate"
    with pytest.raises(ValueError, match=r"unknown metrics \['loss'\]; choose among"):
        plots.sweep_intervals(rows, metrics=("loss",))


def test_severity_intervals_draw_a_panel_per_model_and_methods_in_order():
    rows = findings.severity_rows(severity_case(), ["source", "norm"])
    rows += [{**r, "model": "n"} for r in rows if r["method"] == "source"]
    fig = plots.severity_intervals(rows, ["source", "tent", "norm"], title="t")
    first, second = fig.axes
    assert [line.get_label() for line in first.lines] == ["source", "norm"]
    assert list(first.lines[1].get_ydata()) == pytest.approx([0.2, 0.2])
    assert [line.get_label() for line in second.lines] == ["source"]
    assert first.get_title() == "m" and list(first.get_xticks()) == [1, 5]
