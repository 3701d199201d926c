import matplotlib

matplotlib.use("Agg")

from helpers import plots  # noqa: E402


def _result(model, method, predictions, labels, confidences):
    return {"model": model, "method": method, "predictions": predictions, "labels": labels,
            "confidences": confidences}


def test_confidence_histograms_mark_methods_that_do_not_apply():
    results = [_result("cnn", "source", [0, 1, 1], [0, 1, 0], [0.9, 0.8, 0.6]),
               _result("cnn", "norm", [0, 1, 0], [0, 1, 0], [0.7, 0.6, 0.5]),
               _result("clip", "source", [2, 2], [2, 1], [0.95, 0.4])]  # no norm for clip
    fig = plots.confidence_histograms(results, methods=["source", "norm"], title="t")
    cnn_source, cnn_norm, clip_source, clip_norm = fig.axes  # rows: models, columns: methods
    assert [t.get_text() for t in clip_norm.texts] == ["clip", "does not apply"]  # margin
    assert not clip_norm.patches
    assert sum(p.get_height() for p in cnn_source.patches) == 3  # correct and wrong bars
    # Short titles: the method on top of its column, the model on the right margin.
    assert [cnn_source.get_title(), cnn_norm.get_title()] == ["source", "norm"]
    assert clip_source.get_title() == "" and clip_norm.get_title() == ""
    margin = {t.get_text() for ax in fig.axes for t in ax.texts}
    assert {"cnn", "clip"} <= margin


def test_views_text_names_the_kind_and_its_options():
    assert plots.views_text(None) == "AugMix views"
    assert plots.views_text("augmix") == "AugMix views"
    assert plots.views_text({"kind": "crop", "min_scale": 0.5}) == "crop views (min_scale 0.5)"
    assert plots.views_text({"kind": "augmix", "severity": 1}) == "AugMix views (severity 1)"


def test_model_views_shows_each_model_its_own_views_at_its_own_size():
    import pytest
    import torch

    rows = [{"model": "cnn", "label": "AugMix views", "image": torch.zeros(3, 8, 8),
             "views": torch.ones(5, 3, 8, 8)},
            {"model": "photo", "label": "crop views", "image": torch.zeros(3, 16, 16),
             "views": torch.ones(2, 3, 16, 16)}]
    fig = plots.model_views(rows, show=4)
    assert len(fig.axes) == 2 * 5  # the original and at most 4 views per row
    first, second = fig.axes[:5], fig.axes[5:]
    assert [ax.get_title() for ax in first] == ["original", "view 1", "view 2", "view 3",
                                                "view 4"]
    assert first[0].get_ylabel() == "cnn\nAugMix views"
    assert [len(ax.images) for ax in second] == [1, 1, 1, 0, 0]  # two views, then blank
    assert second[0].images[0].get_array().shape[:2] == (16, 16)
    with pytest.raises(ValueError, match="at least one row"):
        plots.model_views([])


def test_changes_draws_each_interval_coloured_by_its_verdict_on_a_zoomed_axis():
    rows = [{"model": "cnn", "method": m, "baseline": "source", "change": c, "ci_low": lo,
             "ci_high": hi} for m, c, lo, hi in (("tent", 0.2, 0.15, 0.25),
                                                 ("memo", -0.03, -0.05, -0.01),
                                                 ("memo_plus", 0.01, -0.01, 0.03))]
    fig = plots.changes(rows, title="a long title " * 20)
    (ax,) = fig.axes
    ticks = dict(zip(ax.get_yticks(), (t.get_text() for t in ax.get_yticklabels())))
    assert ticks == {2: "tent vs source", 1: "memo vs source", 0: "memo_plus vs source"}
    lines = [line for line in ax.lines if line.get_marker() == "o"]  # the points, not the caps
    colours = {tuple(line.get_xdata()): line.get_color() for line in lines}
    assert colours == {(0.2,): "tab:green", (-0.03,): "tab:red", (0.01,): "tab:grey"}
    low, high = ax.get_xlim()
    assert -0.1 < low < -0.05 and 0.25 < high < 0.35  # zoomed to the intervals, not from 0 to 1
    assert "\n" in fig._suptitle.get_text()  # wrapped, never cut


def test_segment_errors_draws_one_line_per_method_over_the_segments_in_order():
    from helpers import plots as figures

    rows = [{"model": "m", "method": m, "segment": s, "position": p, "error": e,
             "low": e - 0.1, "high": e + 0.1}
            for m, errors in (("source", (0.5, 0.4)), ("tent", (0.3, 0.9)))
            for p, (s, e) in enumerate(zip(("gaussian_noise", "fog"), errors), start=1)]
    fig = figures.segment_errors(rows, title="t", methods=["source", "tent"])
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["source", "tent"]
    assert list(ax.get_lines()[1].get_ydata()) == [0.3, 0.9]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["gaussian noise", "fog"]
    # a method missing from the last panel keeps its colour and its place in the legend
    other = [{**r, "model": "n"} for r in rows if r["method"] == "tent"]
    fig = figures.segment_errors(rows + other, methods=["source", "tent"])
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == ["source", "tent"]
    assert fig.axes[1].get_lines()[0].get_color() == fig.axes[0].get_lines()[1].get_color()
