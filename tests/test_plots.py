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
    axes = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    empty = axes["model = clip | method = norm"]
    assert [t.get_text() for t in empty.texts] == ["does not apply"]
    assert not empty.axison and not empty.patches
    counts = sum(p.get_height() for p in axes["model = cnn | method = source"].patches)
    assert counts == 3  # three predictions in the histogram bars (correct and wrong)


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
