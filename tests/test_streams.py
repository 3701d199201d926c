import numpy as np
import pytest
import torch

from helpers import streams
from helpers.data import ImageTensorDataset


def _set(labels, value, name="c"):
    """A set whose every image is filled with ``value`` (which set an image came from) and
    whose image i's first pixel is i (which image it is)."""
    labels = np.asarray(labels)
    images = torch.full((len(labels), 3, 4, 4), value, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(len(labels), dtype=torch.uint8)
    return ImageTensorDataset(images, labels, [str(k) for k in range(10)], name, "test set")


@pytest.fixture
def suite():
    labels = np.arange(20) % 10
    return {name: _set(labels, value, name) for value, name in
            enumerate(["gaussian_noise", "shot_noise", "impulse_noise"], start=1)}


def test_continual_keeps_the_corruptions_in_the_given_order_with_their_segments(suite):
    order = ["shot_noise", "gaussian_noise", "impulse_noise"]
    stream = streams.continual(suite, order)
    assert stream.segments == [("shot_noise", 0, 20), ("gaussian_noise", 20, 40),
                               ("impulse_noise", 40, 60)]
    assert stream.images[:, 1, 0, 0].tolist() == [2] * 20 + [1] * 20 + [3] * 20
    assert stream.labels.tolist() == suite["shot_noise"].labels.tolist() * 3
    assert stream.origins[25] == "gaussian_noise"


def test_mixed_holds_each_image_once_per_corruption_shuffled_by_its_seed(suite):
    names = list(suite)
    stream = streams.mixed(suite, names, seed=3)
    pairs = sorted(zip(stream.images[:, 1, 0, 0].tolist(), stream.images[:, 0, 0, 0].tolist()))
    assert pairs == sorted((v, i) for v in (1, 2, 3) for i in range(20))  # each once
    assert stream.images[:20, 1, 0, 0].unique().numel() > 1  # not in corruption order
    again, other = streams.mixed(suite, names, seed=3), streams.mixed(suite, names, seed=4)
    assert torch.equal(again.images, stream.images)
    assert not torch.equal(other.images, stream.images)
    value = {name: v for v, name in enumerate(names, start=1)}
    assert [value[o] for o in stream.origins] == stream.images[:, 1, 0, 0].tolist()
    assert stream.labels.tolist() == [i % 10 for i in stream.images[:, 0, 0, 0].tolist()]


def test_label_shifted_is_a_permutation_with_longer_label_runs_than_iid():
    rng = np.random.default_rng(0)
    base = _set(rng.permutation(np.arange(400) % 10), 1)
    stream = streams.label_shifted(base, alpha=0.1, seed=0)
    assert sorted(stream.images[:, 0, 0, 0].tolist()) == sorted(base.images[:, 0, 0, 0].tolist())
    assert sorted(stream.labels.tolist()) == sorted(base.labels.tolist())
    iid = streams.label_runs(base.labels)
    assert iid < 1.3  # about 10/9 for 10 balanced classes
    assert streams.label_runs(stream.labels) > 3 * iid
    # larger alpha: closer to i.i.d.
    assert streams.label_runs(streams.label_shifted(base, alpha=100.0).labels) < \
        streams.label_runs(stream.labels)
    assert torch.equal(streams.label_shifted(base, 0.1, seed=0).labels, stream.labels)


def test_label_runs_on_hand_made_sequences():
    assert streams.label_runs([0, 0, 0, 1, 1, 2]) == 2.0
    assert streams.label_runs([1, 2, 1, 2]) == 1.0
    assert streams.label_runs([5] * 7) == 7.0


def test_segment_errors_against_a_hand_computed_case():
    result = {"model": "m", "method": "tent", "correct": [1, 1, 0, 0, 0, 1, 0, 0, 0, 0]}
    rows = streams.segment_errors(result, [("a", 0, 4), ("b", 4, 6), ("c", 6, 10)])
    assert [r["error"] for r in rows] == [0.5, 0.5, 1.0]
    assert [r["position"] for r in rows] == [1, 2, 3]
    assert rows[0]["low"] < 0.5 < rows[0]["high"] and rows[2]["high"] == pytest.approx(1.0)


def test_segment_cells_cut_a_stream_cell_per_segment():
    result = {"model": "m", "method": "tent", "data": "continual", "correct": [1, 0, 0, 1, 1],
              "labels": [0, 1, 2, 3, 4], "predictions": [0, 2, 0, 3, 4]}
    cells = streams.segment_cells(result, [("fog", 0, 2), ("snow", 2, 5)])
    assert [(c["data"], c["n"], c["accuracy"]) for c in cells] == [("fog", 2, 0.5),
                                                                   ("snow", 3, 2 / 3)]
    assert cells[1]["labels"] == [2, 3, 4] and cells[1]["model"] == "m"


def test_collapse_rule_finds_the_window_where_one_class_takes_over_and_accuracy_is_chance():
    labels = list(np.arange(40) % 10)
    predictions = labels[:20] + [3] * 20  # right for 20 images, then class 3 throughout
    result = {"predictions": predictions, "labels": labels,
              "correct": [int(p == y) for p, y in zip(predictions, labels)]}
    assert streams.collapsed_windows(result, classes=10, window=10) == [20, 30]
    assert streams.collapse_point(result, classes=10, window=10) == 20
    healthy = {**result, "predictions": labels, "correct": [1] * 40}
    assert streams.collapse_point(healthy, classes=10, window=10) is None
    # one class predicted and right (a label-shifted window): not a collapse
    shifted = {"predictions": [3] * 10, "labels": [3] * 10, "correct": [1] * 10}
    assert streams.collapse_point(shifted, classes=10, window=10) is None


def test_collapse_rows_name_the_segment_and_leave_out_windows_where_source_collapses(suite):
    stream = streams.continual(suite, list(suite))
    labels = stream.labels.tolist()
    bad = labels[:20] + [3] * 40  # collapses from image 20 (second segment)
    source = labels[:40] + [3] * 20  # the source collapses on the third segment itself
    cells = [{"model": "m", "data": "s", "method": m, "predictions": p, "labels": labels,
              "correct": [int(a == b) for a, b in zip(p, labels)]}
             for m, p in (("source", source), ("tent", bad), ("norm", labels))]
    rows = streams.collapse_rows(cells, {"s": stream}, classes=10, window=20)
    assert rows == [{"model": "m", "data": "s", "method": "tent", "image": 20, "window": 20,
                     "segment": "shot_noise", "windows": 1, "of": 3}]
    # An episodic method's windows are its images' failures, not a collapse: left out.
    memo = {**cells[1], "method": "memo"}
    assert streams.collapse_rows(cells[:1] + [memo], {"s": stream}, classes=10, window=20,
                                 methods=("norm", "tent", "eata", "sar")) == []


def test_stream_errors_pool_the_images_and_sum_the_counters_in_method_order():
    cells = [{"model": "m", "data": d, "setting": "b4", "method": m, "correct": c,
              "counters": n} for d in ("x", "y") for m, c, n in (
        ("sar", [1, 1, 1, 0], {"reliable": 3, "steps": 1, "recoveries": 0}),
        ("source", [1, 0, 0, 0] if d == "x" else [1, 1, 0, 0], {}))]
    rows = streams.stream_errors(cells, ["source", "sar"], by=("model", "setting"))
    assert [r["method"] for r in rows] == ["source", "sar"]
    assert rows[0]["error"] == pytest.approx(5 / 8) and rows[0]["n"] == 8
    assert rows[1]["error"] == 0.25 and rows[1]["reliable"] == 6 and rows[1]["steps"] == 2
    assert "reliable" not in rows[0] and rows[1]["low"] < 0.25 < rows[1]["high"]


def test_carried_puts_an_episodic_methods_predictions_in_stream_order(suite):
    stream = streams.mixed(suite, list(suite), seed=1)
    cells = {name: {"method": "memo", "predictions": [10 * v + i % 10 for i in range(20)],
                    "labels": task.labels.tolist(), "confidences": [0.5] * 20,
                    "correct": [int(i < 10) for i in range(20)], "seconds_per_sample": 0.1}
             for v, (name, task) in enumerate(suite.items())}
    cell = streams.carried(cells, stream)
    index = stream.images[:, 0, 0, 0].tolist()
    value = {name: v for v, name in enumerate(suite)}
    assert cell["predictions"] == [10 * value[o] + i % 10 for o, i in zip(stream.origins, index)]
    assert cell["labels"] == stream.labels.tolist()
    assert cell["accuracy"] == 0.5 and cell["n"] == 60
    with pytest.raises(ValueError, match="run the method on the stream's sets first"):
        streams.carried({"shot_noise": cells["shot_noise"]}, stream)


def test_bad_input_names_the_fix(suite):
    with pytest.raises(ValueError, match="choose from"):
        streams.continual(suite, ["fog"])
    with pytest.raises(ValueError, match="alpha must be > 0"):
        streams.label_shifted(suite["shot_noise"], alpha=0)
    with pytest.raises(ValueError, match="use more images"):
        streams.label_shifted(suite["shot_noise"], alpha=0.1, min_chunk=5)
    with pytest.raises(ValueError, match="positive integers"):
        streams.by_batch_size(suite, [0, 4])
    with pytest.raises(ValueError, match="pass the segments"):
        streams.segment_errors({"correct": [1, 0]}, [("a", 0, 4)])
    with pytest.raises(ValueError, match="window must be"):
        streams.collapse_point({"predictions": [0], "correct": [1]}, classes=10, window=0)


def test_by_batch_size_names_each_task_with_its_batch_size(suite):
    keyed = streams.by_batch_size({"a": suite["shot_noise"]}, [1, 16])
    assert list(keyed) == [1, 16] and list(keyed[16]) == ["a · batch 16"]
    assert keyed[1]["a · batch 1"] is suite["shot_noise"]


def test_collapse_and_separation_lines_word_the_rows():
    rows = [{"model": "m", "data": d, "method": "tent", "image": i, "window": 8,
             "segment": seg, "windows": 2, "of": 5}
            for d, i, seg in (("continual stream", 40, "snow"), ("mixed stream", 0, None))]
    lines = streams.collapse_lines(rows, ["continual stream"], 8, 10)
    assert lines[0] == ("m · **tent** collapses on continual stream from image 40 (snow), 2 of "
                        "its 5 windows; mixed stream from image 0, 2 of its 5 windows.")
    assert "at most 1.5 times chance (0.15)" in lines[1]
    assert streams.collapse_lines([], ["s"], 8, 10)[0].startswith("No method collapsed on s.")
    row = {"model": "m", "method": "sar", "baseline": "tent", "baseline_accuracy": 0.5,
           "accuracy": 0.45, "change": -0.05, "ci_low": -0.08, "ci_high": -0.02}
    assert "differs from tent beyond its interval" in streams.separation_lines([row], [])[0]
    none = streams.separation_lines([{**row, "ci_high": 0.01}], [
        {"model": "m", "method": "sar", "n": 200, "reliable": 50, "steps": 3, "recoveries": 1}])
    assert none == ["In no setting do EATA or SAR differ from NormAdapt or Tent beyond the 95% "
                    "interval. What they used: m · sar used 50 of 200 samples (25%), 3 steps, "
                    "1 recoveries."]
