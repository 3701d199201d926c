import json

import pytest
import torch

from helpers.evaluate import ResultStore, pivot, stored_cells, summary_rows, write_json
from helpers.grid import run_grid
from helpers.tta import Source, method_factories


class Labelled(torch.utils.data.Dataset):
    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


def _tasks(images):
    return {"a": Labelled(images, [0, 1, 2, 3, 4, 0]),
            "b": Labelled(images.flip(-1), [4, 3, 2, 1, 0, 4])}


def test_run_grid_covers_every_cell_and_skips_inapplicable_methods(tiny_cnn, images, tmp_path):
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 5))
    models = {"cnn": lambda: tiny_cnn, "linear": lambda: linear}
    methods = method_factories(["source", "norm"])
    store = ResultStore(tmp_path / "cells.json", {"x": 1})
    results = run_grid(models, _tasks(images), methods, store, progress=False)
    cells = {(r["model"], r["data"], r["method"]) for r in results}
    assert cells == {("cnn", "a", "source"), ("cnn", "a", "norm"), ("cnn", "b", "source"),
                     ("cnn", "b", "norm"), ("linear", "a", "source"), ("linear", "b", "source")}
    table = pivot(results, methods=["source", "norm"])
    assert [list(row) for row in table][0] == ["model", "data", "source", "norm"]
    assert next(r for r in table if r["model"] == "linear")["norm"] is None
    direct = Source(tiny_cnn)(images).argmax(1).tolist()
    assert next(r for r in results if r["model"] == "cnn" and r["data"] == "a"
                and r["method"] == "source")["predictions"] == direct


def test_result_store_resumes_only_for_the_same_parameters(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"accuracy": 0.5}

    path = tmp_path / "cells.json"
    first = ResultStore(path, {"n": 10, "seed": 3}).run(("m", "d", "memo"), compute, {"lr": 0.1})
    again = ResultStore(path, {"n": 10, "seed": 3}).run(("m", "d", "memo"), compute, {"lr": 0.1})
    assert again == first and again["accuracy"] == 0.5 and again["settings"] == {"lr": 0.1}
    assert again["run"]["seed"] == 3 and again["run"]["torch"] == torch.__version__
    assert len(calls) == 1  # resumed from the file
    ResultStore(path, {"n": 10, "seed": 3}).run(("m", "d", "memo"), compute, {"lr": 0.2})
    assert len(calls) == 2  # other settings for this cell: recomputed
    ResultStore(path, {"n": 20}).run(("m", "d", "memo"), compute, {"lr": 0.2})
    assert len(calls) == 3  # other parameters: everything recomputed
    assert json.loads(path.read_text())["parameters"] == {"n": 20}


def test_result_store_appends_each_cell_and_rewrites_its_file_rarely(tmp_path, monkeypatch):
    """A finished cell costs one line appended to the journal, not a rewrite of the whole
    store (quadratic over a grid): the file is rewritten when the journal outgrows it, so
    the rewrites over a grid are few, and once more on opening, the journal folded in."""
    from helpers import evaluate

    rewrites, real = [], evaluate.write_json
    monkeypatch.setattr(evaluate, "write_json",
                        lambda path, payload: rewrites.append(len(payload["cells"]))
                        or real(path, payload))
    path, journal = tmp_path / "cells.json", tmp_path / "cells.json.journal"
    store = ResultStore(path, {"n": 1})
    for i in range(64):
        store.put(("m", f"d{i}", "memo"), {"accuracy": i / 64, "predictions": [i] * 50},
                  {"lr": 0.1})
    assert rewrites[0] == 1 and len(rewrites) <= 6  # the first cell, then as the journal grows
    assert all(b >= 2 * a for a, b in zip(rewrites, rewrites[1:]))
    assert journal.exists() and len(journal.read_text().splitlines()) == 64 - rewrites[-1]
    assert stored_cells(path) == store.cells  # a reader of file and journal
    again = ResultStore(path, {"n": 1})
    assert again.cells == store.cells and len(again.cells) == 64
    assert not journal.exists() and json.loads(path.read_text())["cells"] == store.cells
    store.put(("m", "late", "memo"), {"accuracy": 1.0})  # a journal for these parameters
    assert ResultStore(path, {"n": 2}).cells == {}  # another run's journal is never read


def test_write_json_is_atomic_and_leaves_no_temporary_file(tmp_path):
    path = write_json(tmp_path / "sub" / "r.json", {"a": (1, 2), "p": tmp_path})
    assert json.loads(path.read_text()) == {"a": [1, 2], "p": str(tmp_path)}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]
    with pytest.raises(TypeError, match="not JSON serialisable"):
        write_json(tmp_path / "bad.json", {"x": object()})
    assert not (tmp_path / "bad.json").exists()


def test_summary_rows_drop_per_sample_lists_and_count_skips():
    result = {"method": "memo", "accuracy": 0.5, "ece": 0.1, "mean_confidence": 0.6,
              "seconds_per_sample": 0.01, "n": 2, "predictions": [0, 1],
              "counters": {"skipped_nonfinite": 3}, "model": "m", "data": "d"}
    (row,) = summary_rows([result])
    assert "predictions" not in row and row["skipped_nonfinite"] == 3 and row["model"] == "m"


def test_changed_predictions_lists_fixed_and_broken_images_with_acceptable_classes():
    from types import SimpleNamespace

    from helpers.evaluate import changed_predictions
    labels = [0, 1, 2, 3]
    results = [
        {"model": "m", "data": "d", "method": "memo", "predictions": [0, 9, 2, 5],
         "labels": labels},
        {"model": "m", "data": "d", "method": "memo_plus", "predictions": [7, 1, 2, 4],
         "labels": labels},
    ]
    tasks = {"d": SimpleNamespace(acceptable=[[0], [1], [2], [3, 4]])}  # 4 counts for item 3
    records = changed_predictions(results, tasks, "memo", "memo_plus")
    assert [(r["index"], r["outcome"]) for r in records] == [(0, "broken"), (1, "fixed"),
                                                             (3, "fixed")]
    assert records[1] == {"model": "m", "data": "d", "index": 1, "label": 1, "memo": 9,
                          "memo_plus": 1, "outcome": "fixed"}
    assert changed_predictions(results, tasks, "source", "memo_plus") == []
    named = changed_predictions(results, tasks, "memo", "memo_plus", list("abcdefghij"))
    assert named[1] == {"model": "m", "data": "d", "index": 1, "label": "b", "memo": "j",
                        "memo_plus": "b", "outcome": "fixed"}


def test_view_agreement_scores_the_source_each_view_and_their_marginal(tiny_cnn, images):
    from helpers.evaluate import view_agreement

    labels = tiny_cnn(images).argmax(1)  # the source is right on every image by construction
    dataset = Labelled(images, labels.tolist())

    def views(image, generator):  # the image itself, and a flat grey one
        return torch.stack([image, torch.full_like(image, 0.5)])

    grey = tiny_cnn(torch.full((1, 3, 16, 16), 0.5)).argmax(1).item()
    on_grey = (labels == grey).float().mean().item()
    scores = view_agreement(tiny_cnn, dataset, views, batch_size=4)
    assert scores["source"] == 1.0
    assert scores["views"] == pytest.approx((1.0 + on_grey) / 2)
    probs = torch.stack([tiny_cnn(images).softmax(-1),
                         tiny_cnn(torch.full_like(images, 0.5)).softmax(-1)]).mean(0)
    assert scores["marginal"] == pytest.approx((probs.argmax(1) == labels).float().mean().item())
