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
