import json

import numpy as np
import pytest
import yaml

from helpers import anchors, notebook, paths

ENTRY = {"notebook": "01_x", "method": "tent", "model": "ResNet-50", "dataset": "ImageNet-C",
         "setting": "severity 5, mean over the 15 corruptions", "metric": "error",
         "value": 55.5, "kind": "paper", "source": "A. Author: A Paper, ICLR 2021",
         "paper": "Paper, ICLR 2021", "where": "Table 2", "url": "https://example.org"}


def _write(tmp_path, entries):
    path = tmp_path / "published.yaml"
    path.write_text(yaml.safe_dump(entries))
    return path


def _cell(data, correct, method="source", model="m", labels=(0, 1, 2, 3)):
    return {"model": model, "data": data, "method": method, "correct": list(correct),
            "labels": list(labels), "accuracy": float(np.mean(correct)), "n": len(correct)}


def test_the_data_file_loads_and_every_entry_names_its_source():
    entries = anchors.load_published()
    notebooks = {p.stem for p in paths.NOTEBOOKS.glob("0*.py")}
    assert entries
    for e in entries:
        assert e["source"].strip() and e["url"].startswith("https://") and e["where"].strip()
        assert set(anchors.notebooks_of(e)) <= notebooks, e
        assert e["value"] is not None or e["finding"]
    course = [e for e in anchors.anchors_for("01_memo_cifar100") if e["kind"] == "course project"]
    assert sorted(e["value"] for e in course) == [64.40, 64.60]


@pytest.mark.parametrize("change, message", [
    ({"url": None}, r"entry 2 \(tent, ResNet-50\): field 'url' = None should be a non-empty"),
    ({"value": "high"}, r"entry 2 .*field 'value' = 'high' should be a number"),
    ({"metric": "top-1"}, r"entry 2 .*field 'metric' = 'top-1' should be one of error, acc"),
    ({"colour": "red"}, r"entry 2 .*unknown field\(s\) colour"),
])
def test_a_malformed_entry_is_an_error_naming_entry_field_and_file(tmp_path, change, message):
    bad = {**ENTRY, **change}
    path = _write(tmp_path, [ENTRY, bad])
    with pytest.raises(ValueError, match=message) as error:
        anchors.load_published(path)
    assert str(path) in str(error.value)


def test_a_missing_field_and_a_null_value_without_a_finding_are_errors(tmp_path):
    missing = {k: v for k, v in ENTRY.items() if k != "where"}
    with pytest.raises(ValueError, match=r"entry 1 .*field 'where' is missing"):
        anchors.load_published(_write(tmp_path, [missing]))
    with pytest.raises(ValueError, match="null with a 'finding'"):
        anchors.load_published(_write(tmp_path, [{**ENTRY, "value": None}]))
    figure = {**ENTRY, "value": None, "finding": "transfer falls with the layer cut"}
    assert anchors.load_published(_write(tmp_path, [figure]))[0]["finding"]


def _grid():
    return [_cell("clean", [1, 1, 1, 0]), _cell("a", [1, 0, 0, 0]), _cell("b", [1, 1, 0, 0]),
            _cell("photos/clean", [0, 0]),
            _cell("a", [1, 1, 1, 1], method="tent"), _cell("b", [1, 1, 1, 0], method="tent"),
            _cell("clean", [1, 1, 1, 1], method="tent")]


def test_corruption_error_is_the_mean_error_over_the_corruptions_with_clean_apart():
    score = anchors.corruption_error(_grid(), "m", "source")
    # a: 3 of 4 wrong (75 %), b: 2 of 4 (50 %): mean 62.5; clean: 1 of 4 (25 %), and
    # photos/clean left out of both.
    assert score["error"] == pytest.approx(62.5)
    assert score["clean_error"] == pytest.approx(25.0)
    assert score["corruptions"] == 2 and score["images"] == {"a": 4, "b": 4}
    assert score["ci_low"] <= 62.5 <= score["ci_high"] and score["ci_low"] < score["ci_high"]
    # per-image errors over the two corruptions are 0, 50, 100, 100: nothing outside [0, 100]
    assert score["ci_low"] >= 0 and score["ci_high"] <= 100
    # cells that record predictions and labels instead of ``correct``
    predictions = [{**{k: v for k, v in c.items() if k != "correct"},
                    "predictions": [y if ok else 9 for y, ok in zip(c["labels"], c["correct"])]}
                   for c in _grid()]
    assert anchors.corruption_error(predictions, "m", "tent")["error"] == pytest.approx(12.5)
    with pytest.raises(ValueError, match="no cells of model 'm' and method 'memo'"):
        anchors.corruption_error(_grid(), "m", "memo")
    summary = [{k: v for k, v in c.items() if k not in ("correct", "labels")} for c in _grid()]
    with pytest.raises(ValueError, match="per-image outcomes"):
        anchors.corruption_error(summary, "m", "source")


def test_corruption_error_without_corruptions_gives_the_clean_error_only():
    score = anchors.corruption_error([_cell("clean", [1, 0, 0, 0])], "m", "source")
    assert score["error"] is None and score["corruptions"] == 0
    assert score["clean_error"] == pytest.approx(75.0)


def _entries():
    course = {**ENTRY, "method": "memo", "model": "CLIP ViT-B/32", "dataset": "CIFAR-100",
              "metric": "accuracy", "value": 64.6, "kind": "course project",
              "compare_with": "clean", "paper": "course project", "where": "report"}
    return [ENTRY, {**ENTRY, "method": "source", "value": 82.0},
            {**ENTRY, "method": "source", "value": 81.5, "paper": "Other, 2022",
             "where": "Table 1"}, course,
            {**ENTRY, "notebook": ["02_y"], "method": "sar", "value": 40.0}]


def test_anchor_table_without_a_full_profile_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "RESULTS", tmp_path / "results")
    table = anchors.anchor_table("01_x", _grid(), path=_write(tmp_path, _entries()),
                                 here="FashionMNIST-C")
    assert list(table.columns) == list(anchors.COLUMNS)
    assert list(table["method"]) == ["source", "tent", "memo"]  # Source first, sar is 02's
    source = table.iloc[0]
    assert source["published"] == ("82.0 (Paper, ICLR 2021, Table 2); "
                                   "81.5 (Other, 2022, Table 1)")
    assert source["full profile here"] == anchors.NOT_RUN
    assert source["offline here"].startswith("m: 62.5 (") and "clean 25.0" in source["offline here"]
    assert "FashionMNIST-C" in source["note"] and "compare directions" in source["note"]
    assert table.iloc[1]["offline here"].startswith("m: 12.5 (")
    assert table.iloc[2]["offline here"] == "not run offline"
    assert table.iloc[2]["course project"] == "64.6 (course project, report)"
    assert table.attrs["rows"][0]["offline here"][0]["value"] == pytest.approx(62.5)


def test_anchor_table_takes_the_full_profile_from_its_results(tmp_path, monkeypatch):
    full = [{"model": "ViT-B/32", "data": "clean", "method": "memo", "accuracy": 0.646, "n": 10},
            {"model": "RN50", "data": "clean", "method": "memo", "accuracy": 0.5, "n": 10}]
    data = _write(tmp_path, _entries())
    table = anchors.anchor_table("01_x", _grid(), full, full_datasets=["cifar100"], path=data)
    row = table.set_index("method").loc["memo"]
    assert row["full profile here"] == "ViT-B/32: 64.6"  # RN50 is not the anchor's model
    assert row["note"].startswith("full profile: the published model and data set")
    assert table.set_index("method").loc["tent", "full profile here"] == (
        "not in the full profile's results")
    # with no results given, the full profile's results file is read when it exists
    monkeypatch.setattr(paths, "RESULTS", tmp_path / "results")
    (tmp_path / "results" / "full").mkdir(parents=True)
    (tmp_path / "results" / "full" / "01_x.json").write_text(json.dumps(
        {"parameters": {"dataset": "cifar100"}, "results": full}))
    again = anchors.anchor_table("01_x", _grid(), path=data)
    assert again.set_index("method").loc["memo", "full profile here"] == "ViT-B/32: 64.6"


def test_show_anchors_keeps_the_table_for_the_results_file(tmp_path):
    run = notebook.start("01_x", {"profile": "smoke"}, tmp_path / "01_x.json", tmp_path)
    table = anchors.anchor_table("01_x", _grid(), [], path=_write(tmp_path, _entries()))
    run.show_anchors(table)
    run.save({})
    saved = json.loads((tmp_path / "01_x.json").read_text())["anchors"]
    assert [r["method"] for r in saved] == ["source", "tent", "memo"]
    assert saved[0]["offline here"] == table.iloc[0]["offline here"]
    assert saved[0]["numbers"]["published"][0]["value"] == 82.0
    assert saved[1]["numbers"]["offline here"][0]["value"] == pytest.approx(12.5)
    run.show_anchors(table[table["method"] != "source"])  # a filtered table keeps its numbers
    assert [r["numbers"]["method"] for r in run.anchors] == ["tent", "memo"]


def test_published_values_print_as_their_source_prints_them_and_findings_in_words(tmp_path):
    assert anchors.format_value(64.4, 2) == "64.40" and anchors.format_value(54.7) == "54.7"
    assert anchors.format_value(23.24) == "23.24"
    figure = {**ENTRY, "method": "transfer", "value": None, "where": "Abstract",
              "finding": "transfer falls with the layer cut"}
    table = anchors.anchor_table("01_x", [], [], path=_write(tmp_path, [figure]))
    assert table.iloc[0]["published"] == ("transfer falls with the layer cut "
                                          "(Paper, ICLR 2021, Abstract)")
    assert table.iloc[0]["offline here"] == "not run offline"


def test_the_offline_column_keeps_severity_5_and_each_data_family_apart(tmp_path):
    assert anchors.paper_tasks(["clean", "fog/3", "fog/5", "photos/clean", "photos/fog", "a"]) \
        == {"": ["clean", "fog/5", "a"], "photos": ["photos/clean", "photos/fog"]}
    grid = [_cell("clean", [1, 1, 1, 1]), _cell("fog/3", [1, 1, 1, 1]),
            _cell("fog/5", [1, 1, 0, 0]), _cell("photos/clean", [1, 0], labels=(5, 6)),
            _cell("photos/fog", [0, 0], labels=(5, 6))]
    table = anchors.anchor_table("01_x", grid, [], path=_write(tmp_path, [
        {**ENTRY, "method": "source"}]))
    # fog at severity 3 is left out (50.0, not 25.0); the photos are their own family
    assert table.iloc[0]["offline here"] == ("m: 50.0 (0.0–100.0, 1 corruption, clean 0.0); "
                                             "m (photos): 100.0 (100.0–100.0, 1 corruption, "
                                             "clean 50.0)")


def test_a_share_of_parameters_is_not_scored_from_the_grid(tmp_path):
    share = {**ENTRY, "method": "source", "metric": "parameters", "value": None,
             "finding": "less than 1% of the parameters are tuned"}
    table = anchors.anchor_table("01_x", _grid(), [], path=_write(tmp_path, [share]))
    assert table.iloc[0]["offline here"] == "not run offline"
    assert table.iloc[0]["full profile here"] == "not in the full profile's results"


def test_an_anchor_in_a_setting_the_offline_runs_lack_is_not_compared(tmp_path, monkeypatch):
    """An entry whose stream the offline profile does not run (``offline_differs``: label
    shift, say) keeps its offline numbers beside it, but its line says why no direction is
    read from them."""
    from helpers import conclusions

    monkeypatch.setattr(paths, "RESULTS", tmp_path / "results")
    why = "the papers' stream is label-imbalanced; the offline streams are i.i.d."
    entries = [{**ENTRY, "method": "source", "value": 82.0}, ENTRY]
    plain = anchors.anchor_table("01_x", _grid(), path=_write(tmp_path, entries))
    assert why not in conclusions.anchor_lines(plain)[0]
    differs = anchors.anchor_table("01_x", _grid(), path=_write(
        tmp_path, [{**e, "offline_differs": why} for e in entries]))
    assert differs.iloc[1]["note"] == f"offline runs differ in kind: {why}"
    assert differs.iloc[1]["offline here"].startswith("m: 12.5 (")
    assert conclusions.anchor_lines(differs) == [
        f"ResNet-50 on ImageNet-C · **tent**: not comparable because {why}"]  # one stop
