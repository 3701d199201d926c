"""Calibration building blocks: ECE against a hand-computed case, its bootstrap interval and
the rule for sets too small to bin, the reliability diagram's bins, and what each method's
confidence is."""

import numpy as np
import pytest

from helpers import findings, plots
from helpers.evaluate import (
    calibration_bins,
    ece_text,
    ece_with_interval,
    expected_calibration_error,
    summary_rows,
)

# Four predictions at confidence 0.9 (bin 13 of 15: (0.867, 0.933]), three right; two at 0.3
# (bin 4: (0.267, 0.333]), both right. ECE = 4/6 |0.75 - 0.9| + 2/6 |1 - 0.3| = 1/3.
CONF = [0.9, 0.9, 0.9, 0.9, 0.3, 0.3]
HITS = [1, 1, 1, 0, 1, 1]


def miscalibrated(n, seed=0):
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.3, 1.0, n)
    return conf, (rng.random(n) < conf - 0.15).astype(float)


def test_ece_of_a_hand_computed_case():
    assert expected_calibration_error(CONF, HITS) == pytest.approx(1 / 3)
    bins = calibration_bins(CONF, HITS)
    assert [b["count"] for b in bins] == [0] * 4 + [2] + [0] * 8 + [4, 0]
    assert bins[13]["accuracy"] == 0.75 and bins[13]["confidence"] == pytest.approx(0.9)
    assert bins[4] == {"bin": 4, "lower": 4 / 15, "upper": 5 / 15, "count": 2,
                       "confidence": pytest.approx(0.3), "accuracy": 1.0}
    assert bins[0]["accuracy"] is None and bins[0]["confidence"] is None
    # bins are closed above: 2/15 is in bin 1, 0 in bin 0
    assert [b["count"] for b in calibration_bins([0.0, 2 / 15], [1, 1])][:3] == [1, 1, 0]
    assert ece_with_interval(CONF * 25, HITS * 25)["ece"] == pytest.approx(1 / 3)


def test_ece_interval_contains_the_estimate_and_shrinks_with_n():
    widths = []
    for n in (300, 3000):
        ece = ece_with_interval(*miscalibrated(n))
        assert ece["low"] <= ece["ece"] <= ece["high"] and ece["reason"] is None
        assert ece["ece"] == expected_calibration_error(*miscalibrated(n))
        widths.append(ece["high"] - ece["low"])
    assert widths[1] < widths[0] / 2  # about 1 / sqrt(10) as wide
    assert ece_with_interval(*miscalibrated(300)) == ece_with_interval(*miscalibrated(300))
    nearly_calibrated = ece_with_interval(np.full(400, 0.8), np.arange(400) % 5 != 0)
    assert nearly_calibrated["ece"] == pytest.approx(0.0, abs=1e-12)
    assert nearly_calibrated["low"] == nearly_calibrated["ece"] < nearly_calibrated["high"]


def test_ece_resamples_images_with_all_their_corruptions():
    conf, hits = miscalibrated(300)
    one = ece_with_interval(conf, hits)
    twice = ece_with_interval(np.stack([conf, conf]), np.stack([hits, hits]))
    assert (twice["low"], twice["high"]) == pytest.approx((one["low"], one["high"]), rel=1e-12)
    assert twice["n"] == 600
    as_if_independent = ece_with_interval(np.concatenate([conf, conf]),
                                          np.concatenate([hits, hits]))
    assert as_if_independent["high"] - as_if_independent["low"] < one["high"] - one["low"]
    with pytest.raises(ValueError, match="same shape"):
        ece_with_interval(conf, hits[:10])


def test_too_few_images_to_bin_give_no_number_but_the_reason():
    small = ece_with_interval(*miscalibrated(149))
    assert small == {"ece": None, "low": None, "high": None, "n": 149,
                     "reason": "149 images are too few to bin (fewer than 150)"}
    assert ece_text(small) == "n/a: 149 images are too few to bin (fewer than 150)"
    enough = ece_with_interval(*miscalibrated(150))
    assert isinstance(enough["ece"], float)
    assert ece_text(enough) == f"{enough['ece']:.3f} ({enough['low']:.3f}–{enough['high']:.3f})"
    assert ece_with_interval([0.5], [1])["reason"].startswith("1 image is too few")


def cell(model, data, method, conf, hits):
    return {"model": model, "data": data, "method": method, "accuracy": float(np.mean(hits)),
            "ece": expected_calibration_error(conf, hits), "mean_confidence": float(np.mean(conf)),
            "seconds_per_sample": 0.1, "n": len(conf), "counters": {},
            "confidences": list(conf), "correct": list(hits), "labels": list(range(len(conf))),
            "predictions": [0] * len(conf)}


def test_summary_rows_carry_the_printable_ece():
    rows = summary_rows([cell("m", "fog", "source", CONF, HITS),
                         cell("m", "fog", "tent", *miscalibrated(200))])
    assert rows[0]["ece"] == pytest.approx(1 / 3)  # the point estimate stays, for the means
    assert rows[0]["ece_text"] == "n/a: 6 images are too few to bin (fewer than 150)"
    assert rows[0]["ece_low"] is None and rows[1]["ece_low"] <= rows[1]["ece"]
    assert rows[1]["ece_text"].startswith(f"{rows[1]['ece']:.3f} (")
    assert "ece_text" not in summary_rows([cell("m", "fog", "source", CONF, HITS)],
                                          ece_interval=False)[0]


def test_reliability_bins_pool_the_corrupted_data_sets():
    results = [cell("cnn", "fog", "source", [0.9, 0.9], [1, 0]),
               cell("cnn", "snow", "source", [0.9, 0.3], [1, 1]),
               cell("cnn", "clean", "source", [0.1, 0.1], [1, 1]),  # left out
               cell("cnn", "fog", "tent", [0.5, 0.5], [0, 1]),
               cell("vit", "fog", "source", [0.5, 0.5], [1, 1])]
    results[3]["labels"] = results[0]["labels"] = [3, 4]  # fog and snow: other images
    rows = findings.calibration(results, model="cnn", methods=["source", "tent"])
    assert [r["method"] for r in rows] == ["source", "tent"]
    source = rows[0]
    assert source["data_sets"] == 2 and source["n"] == 4
    counts = {b["bin"]: (b["count"], b["accuracy"]) for b in source["bins"] if b["count"]}
    assert counts == {13: (3, pytest.approx(2 / 3)), 4: (1, 1.0)}  # 0.9: 2 of 3; 0.3: 1 of 1
    assert source["ece"] is None and source["text"].startswith("n/a: 4 images")
    assert findings.ece_line(source) == ("**source** (cnn): ECE n/a, 4 images are too few to "
                                         "bin (fewer than 150) (4 predictions over 2 data sets).")
    with pytest.raises(ValueError, match="choose one of"):
        findings.calibration(results, model="rn50")
    with pytest.raises(ValueError, match="choose one of"):
        findings.calibration(results)  # two models: name one
    fig = plots.reliability_diagram(results, methods=["source", "tent", "memo"], model="cnn")
    assert fig._suptitle.get_text().count("\n") <= 1
    assert [ax.get_title().split("\n")[0] for ax in fig.axes[::2]] == ["source", "tent"]


def test_every_confidence_that_is_not_a_plain_softmax_maximum_is_defined():
    said = findings.confidence_definitions(["source", "zero", "tda", "ensemble (vote)", "sar"])
    assert said["source"] == said["sar"] == ("the highest softmax probability of the logits it "
                                             "predicts the image with")
    assert "vote" in said["zero"] and "kept (most confident) views" in said["zero"]
    assert "positive cache" in said["tda"]
    assert said["ensemble (vote)"].startswith("the predicted class's (votes + members' mean")
