"""A notebook's closing section: identical methods found on hand-made cells, sentences whose
strength follows the intervals, explanations where a result is null or negative, the
Limitations paragraph, and the comparison with hand-made anchor tables."""

import json

import matplotlib
import pandas as pd
import pytest

matplotlib.use("Agg")

from helpers import conclusions, notebook  # noqa: E402


def _cell(model, method, data, predictions, labels=None):
    labels = labels or [0] * len(predictions)
    return {"model": model, "method": method, "data": data, "predictions": predictions,
            "labels": labels}


def _row(method, change, low, high, better=0, worse=0, tasks=16, model="cnn"):
    return {"model": model, "method": method, "baseline": "source", "tasks": tasks,
            "images": 320, "baseline_accuracy": 0.4, "accuracy": 0.4 + change,
            "change": change, "ci_low": low, "ci_high": high, "better_on": better,
            "worse_on": worse}


def test_identical_pairs_name_the_first_equal_method_and_count_the_images():
    cells = []
    for data in ("clean", "snow"):
        cells += [_cell("cnn", "source", data, [0, 1, 2]),
                  _cell("cnn", "norm", data, [0, 1, 1]),
                  _cell("cnn", "eata", data, [0, 1, 1]),
                  _cell("cnn", "sar", data, [0, 1, 1]),
                  _cell("clip", "source", data, [2, 2, 2]),
                  _cell("clip", "eata", data, [2, 2, 2])]
    cells.append(_cell("cnn", "tent", "clean", [0, 1, 1]))
    cells.append(_cell("cnn", "tent", "snow", [0, 0, 1]))  # one image differs: not identical
    pairs = conclusions.identical_pairs(cells)
    assert pairs == [
        {"model": "cnn", "method": "eata", "same_as": "norm", "images": 6, "total": 6,
         "tasks": 2},
        {"model": "cnn", "method": "sar", "same_as": "norm", "images": 6, "total": 6,
         "tasks": 2},
        {"model": "clip", "method": "eata", "same_as": "source", "images": 6, "total": 6,
         "tasks": 2}]
    # the order given decides which method the others are said to equal
    assert conclusions.identical_pairs(cells, methods=["sar", "eata"])[0] == \
        {"model": "cnn", "method": "eata", "same_as": "sar", "images": 6, "total": 6,
         "tasks": 2}
    # tent differs on 1 of 6 images: a pair only when the agreement asked for allows it
    near = conclusions.identical_pairs(cells, agreement=5 / 6)
    assert {"model": "cnn", "method": "tent", "same_as": "norm", "images": 5, "total": 6,
            "tasks": 2} in near


def test_identical_pairs_compare_only_the_data_sets_both_ran():
    cells = [_cell("cnn", "norm", "clean", [1, 2]), _cell("cnn", "norm", "snow", [0, 0]),
             _cell("cnn", "tent", "snow", [0, 0]), _cell("cnn", "memo", "fog", [1, 1])]
    assert conclusions.identical_pairs(cells) == [
        {"model": "cnn", "method": "tent", "same_as": "norm", "images": 2, "total": 2,
         "tasks": 1}]


@pytest.mark.parametrize("row, expected", [
    (_row("a", 0.005, 0.001, 0.009, better=1), "small gain"),  # under 0.01
    (_row("a", 0.03, 0.01, 0.05, better=0), "small gain"),  # no data set's test finds it
    (_row("a", 0.03, 0.01, 0.05, better=3), "gain"),
    (_row("a", 0.2, 0.15, 0.25, better=8), "clear gain"),  # half the data sets
    (_row("a", -0.2, -0.25, -0.15, worse=12), "clear loss"),
    (_row("a", -0.002, -0.004, -0.0001), "small loss"),
    (_row("a", 0.05, -0.001, 0.1, better=4), "no detectable change"),  # interval holds 0
])
def test_strength_follows_the_interval_and_the_per_data_set_tests(row, expected):
    assert conclusions.strength(row) == expected


def test_what_we_found_states_the_comparisons_identity_and_explanations():
    rows = [_row("norm", 0.19, 0.166, 0.215, better=11),
            _row("eata", 0.19, 0.166, 0.215, better=11),
            _row("memo", 0.005, -0.002, 0.012, better=3, worse=1),
            _row("tent", -0.01, -0.016, -0.004, better=1, worse=4),
            _row("sar", 0.03, 0.01, 0.05, better=4)]
    identical = [{"model": "cnn", "method": "eata", "same_as": "norm", "images": 5120,
                  "total": 5120, "tasks": 16},
                 {"model": "cnn", "method": "sar", "same_as": "norm", "images": 5118,
                  "total": 5120, "tasks": 16}]
    explanations = {("cnn", "memo"): "Its views are right on 0.30 of the images.",
                    ("cnn", "tent"): "It took 2 steps.",
                    ("cnn", "sar"): "Never appended to a gain."}
    found = conclusions.what_we_found(rows, identical, explanations)
    assert found[0].startswith("5 comparisons against source, each with a 95% ")
    assert "about 0.3 would exclude zero by chance" in found[0]
    assert "80 per-data-set McNemar tests" in found[0] and "about 4.0 by chance" in found[0]
    assert found[1] == ("cnn · **norm** vs source: **clear gain**, mean accuracy 0.400 → 0.590 "
                        "(+0.190, 95% CI +0.166 to +0.215; 320 images × 16 data sets); "
                        "significant on 11 of 16 data sets (better on 11, worse on 0).")
    assert "**eata** is identical to norm on 5,120 of 5,120 images" in found[2]
    assert "gain" not in found[2]  # not a separate gain
    assert "**no detectable change**" in found[3] and found[3].endswith(
        "Its views are right on 0.30 of the images.")
    assert "**loss**" in found[4] and found[4].endswith("It took 2 steps.")
    assert found[5] == ("cnn · **sar** predicts as norm on 5,118 of 5,120 images (16 data "
                        "sets): not a separate result.")
    assert "Never appended" not in conclusions.what_we_found(rows, (), explanations)[5]
    assert conclusions.what_we_found([]) == [
        "Nothing to compare: no method ran beside its baseline."]


def test_limitations_make_one_paragraph_and_need_a_sentence():
    text = conclusions.limitations(["Stand-ins trained here, not the papers' models",
                                    " One seed (0). ", "", "CPU only!"])
    assert text == "Stand-ins trained here, not the papers' models. One seed (0). CPU only!"
    with pytest.raises(ValueError, match="at least one sentence"):
        conclusions.limitations(["", "  "])


def _anchors(**columns):
    base = {"method": ["source", "tent", "memo", "sar"],
            "model": ["ResNet-50"] * 4, "data set": ["ImageNet-C"] * 4,
            "metric": ["error (%)"] * 4,
            "published": ["82.0 (Hendrycks, ICLR 2019, Table 2)", "41.3 (Tent, ICLR 2021)",
                          80.5, 50.0],
            "offline here": ["small-cnn: 60.6 (58.0–63.1, 15 corruptions, clean 8.1); "
                             "small-clip: 50.6",
                             "small-cnn: 41.6 (39.0–44.2, 15 corruptions); small-clip: 50.6",
                             "small-cnn: 61.0; small-clip: 49.0",
                             "not run offline"],
            "note": ["", "", "", "SAR needs batches of 64"]}
    base.update(columns)
    return pd.DataFrame({k: v for k, v in base.items() if v is not None})


def test_anchor_lines_compare_the_direction_of_each_change_over_source():
    lines = conclusions.anchor_lines(_anchors())
    assert lines == [
        "ResNet-50 on ImageNet-C · **tent** (error): published 82.0 → 41.3 (better); "
        "offline small-cnn 60.6 → 41.6, small-clip 50.6 → 50.6: "
        "**same direction on 1 of 2 offline models**.",
        "ResNet-50 on ImageNet-C · **memo** (error): published 82.0 → 80.5 (better); "
        "offline small-cnn 60.6 → 61.0, small-clip 50.6 → 49.0: "
        "**same direction on 1 of 2 offline models**.",
        "ResNet-50 on ImageNet-C · **sar**: not comparable because SAR needs batches of 64."]
    other_data = _anchors(**{"data set": ["ImageNet-C", "ImageNet-A", "ImageNet-C",
                                          "ImageNet-C"]})
    assert "no Source row" in conclusions.anchor_lines(other_data)[0]  # not another data set's
    numeric = _anchors(**{"offline here": [30.0, 20.0, 35.0, None]})
    assert conclusions.anchor_lines(numeric)[:2] == [
        "ResNet-50 on ImageNet-C · **tent** (error): published 82.0 → 41.3 (better); "
        "offline 30.0 → 20.0: **same direction**.",
        "ResNet-50 on ImageNet-C · **memo** (error): published 82.0 → 80.5 (better); "
        "offline 30.0 → 35.0: **opposite**."]
    accuracy = _anchors(metric=["accuracy"] * 4, **{"offline here": [30.0, 20.0, 35.0, 1.0]})
    assert "published 82.0 → 41.3 (worse); offline 30.0 → 20.0: **same direction**" in \
        conclusions.anchor_lines(accuracy)[0]


def test_anchor_lines_prefer_the_numbers_the_table_keeps():
    """``anchors.anchor_table`` keeps the numbers behind its formatted cells in attrs."""
    table = _anchors(published=["—"] * 4, **{"offline here": ["—"] * 4})
    table.attrs["rows"] = [
        {"published": [{"value": v}], "offline here": offline} for v, offline in [
            (82.0, [{"model": "small-clip", "method": "source", "value": 40.0}]),
            (41.3, [{"model": "small-clip", "method": "tent", "value": 41.0}]),
            (80.5, [{"model": "small-clip", "method": "memo (mean)", "value": 39.0}]),
            (None, [])]]
    assert conclusions.anchor_lines(table) == [
        "ResNet-50 on ImageNet-C · **tent** (error): published 82.0 → 41.3 (better); offline "
        "small-clip 40.0 → 41.0: **opposite**.",
        "ResNet-50 on ImageNet-C · **memo** (error): published 82.0 → 80.5 (better); offline "
        "small-clip · memo (mean) 40.0 → 39.0: **same direction**.",
        "ResNet-50 on ImageNet-C · **sar**: not comparable because no published Source and "
        "method number on the same setting."]


def test_anchor_lines_say_why_a_row_is_not_comparable():
    no_source = _anchors().iloc[1:]
    assert conclusions.anchor_lines(no_source)[0] == (
        "ResNet-50 on ImageNet-C · **tent**: not comparable because the table has no Source row "
        "for this model, data set and metric.")
    missing = conclusions.anchor_lines(_anchors(**{"offline here": None}))
    assert missing[0].endswith("not comparable because the anchor table has no 'offline here' "
                               "column.")
    no_published = _anchors(published=[None, 41.3, 80.5, 50.0])
    assert "no published Source and method number" in conclusions.anchor_lines(no_published)[0]
    assert conclusions.anchor_lines(pd.DataFrame()) == [
        "No published number anchors this notebook."]
    assert conclusions.anchor_lines(_anchors().drop(columns="method")) == [
        "Not comparable because the anchor table has no method column."]


def test_show_conclusions_displays_the_three_parts_and_saves_them(tmp_path, capsys):
    run = notebook.start("01_x", {"profile": "smoke", "seed": 0}, tmp_path / "r" / "01_x.json",
                         tmp_path / "f")
    run.show_conclusions(["a finding"], "One seed.", ["tent: same direction."])
    shown = notebook.conclusions_markdown(run.conclusions)
    assert shown.index("### What we found") < shown.index("- a finding") < \
        shown.index("Against the published numbers") < shown.index("- tent: same direction.") \
        < shown.index("### Limitations") < shown.index("One seed.")
    capsys.readouterr()
    assert run.save({}) is None  # the save cell echoes no path
    printed = capsys.readouterr().out
    assert str(tmp_path) not in printed and "r/01_x.json" in printed
    saved = json.loads((tmp_path / "r" / "01_x.json").read_text())
    assert saved["conclusions"] == {"found": ["a finding"], "anchors": ["tent: same direction."],
                                    "limitations": "One seed."}
    import matplotlib.pyplot as plt

    assert run.figure(plt.figure(), "01_x_fig") is None
    assert (tmp_path / "f" / "01_x_fig.png").is_file()


def test_shown_paths_are_relative_to_the_repository():
    from helpers import paths

    assert notebook.shown_path(paths.REPO / "results" / "offline" / "a.json") == \
        "results/offline/a.json"
    assert notebook.shown_path("/tmp/rep3/x/figures") == "x/figures"
    assert notebook.shown_path("figures/offline") == "figures/offline"


def _summary(model, method, data, accuracy, ece=0.1, confidence=0.5, seconds=0.01):
    return {"model": model, "method": method, "data": data, "accuracy": accuracy, "ece": ece,
            "mean_confidence": confidence, "seconds_per_sample": seconds}


def test_equal_methods_need_all_three_measures_equal_on_every_data_set():
    rows = []
    for data, acc in (("clean", 0.9), ("snow", 0.5), ("fog", 0.3)):
        rows += [_summary("cnn", "sar", data, acc + 0.2),  # given before norm: order decides
                 _summary("cnn", "norm", data, acc + 0.2), _summary("cnn", "source", data, acc),
                 _summary("cnn", "eata", data, acc + 0.2 + 0.0001),  # equal to 3 decimals
                 _summary("cnn", "tent", data, acc + 0.2, ece=0.1 + (data == "fog") * 0.01)]
    assert conclusions.equal_methods(rows) == [
        {"model": "cnn", "method": "eata", "same_as": "norm", "tasks": 3},
        {"model": "cnn", "method": "sar", "same_as": "norm", "tasks": 3}]
    assert conclusions.method_order(["ensemble (mean)", "tpt", "x", "source", "sar"]) == \
        ["source", "sar", "tpt", "ensemble (mean)", "x"]


def test_method_table_gives_the_error_over_the_corruptions_and_collapses_equal_methods():
    rows = [_summary("cnn", "source", "clean", 0.9, seconds=0.01),
            _summary("cnn", "source", "snow", 0.5, ece=0.2, seconds=0.03),
            _summary("cnn", "source", "fog", 0.3, ece=0.4, seconds=0.02),
            _summary("cnn", "norm", "snow", 0.6), _summary("cnn", "eata", "snow", 0.6)]
    equal = [{"model": "cnn", "method": "eata", "same_as": "norm", "tasks": 1}]
    source, norm = conclusions.method_table(rows, equal)
    assert source == {"model": "cnn", "method": "source", "error": pytest.approx(60.0),
                      "corruptions": 2, "clean_error": pytest.approx(10.0),
                      "ece": pytest.approx(0.3), "seconds": pytest.approx(0.02),
                      "identical": []}
    assert norm["method"] == "norm" and norm["identical"] == ["eata"]
    assert norm["clean_error"] is None and norm["error"] == pytest.approx(40.0)


def test_anchor_lines_call_no_direction_where_the_offline_intervals_overlap():
    table = _anchors(**{"offline here": [
        "small-cnn: 60.6 (58.0–63.1, 15 corruptions); small-clip: 50.0 (48.0–52.0)",
        "small-cnn: 41.6 (39.0–44.2, 15 corruptions); small-clip: 51.0 (49.0–53.0)",
        "small-cnn: 61.0 (58.5–63.5); small-clip: 50.5 (48.5–52.5)", "not run offline"]})
    tent, memo, _ = conclusions.anchor_lines(table)
    assert tent.endswith("offline small-cnn 60.6 → 41.6, small-clip 50.0 → 51.0: "
                         "**same direction; 1 within the intervals**.")
    assert memo == ("ResNet-50 on ImageNet-C · **memo**: not comparable because the offline "
                    "change (small-cnn 60.6 → 61.0, small-clip 50.0 → 50.5) lies within the "
                    "95% intervals of Source and the method on every model.")
