"""Findings computed from the numbers: how much a method changes accuracy against a baseline on
the same test images, with a 95% paired-bootstrap interval, and on how many data sets the
change is significant by McNemar's exact test.

Notebooks and the README print these rows and sentences instead of prose typed by hand, so
that every claim of the report moves with its results, and a difference of a point can be
told from noise.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
from scipy.stats import binomtest

LEVEL = 0.95
RESAMPLES = 10_000
SIGNIFICANCE = 0.05
# ImageNet-C's corruption families (Hendrycks & Dietterich, ICLR 2019), its four validation
# corruptions included: what a sweep that cannot afford every corruption takes one of each.
CORRUPTION_FAMILIES = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "gaussian_blur"),
    "weather": ("snow", "frost", "fog", "brightness", "spatter"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression", "saturate"),
}
# Online steps per corruption in the EATA and SAR papers' ImageNet-C runs: 50,000 test images
# in batches of 64.
PAPER_IMAGES, PAPER_BATCH = 50_000, 64


def correct_per_image(result: dict) -> np.ndarray:
    """1.0 where a cell's prediction counts as right (a task's acceptable classes included,
    as ``evaluate`` records it), else 0.0. Records without ``correct`` (older results files)
    compare the predictions with the labels."""
    if "correct" in result:
        return np.asarray(result["correct"], dtype=np.float64)
    return (np.asarray(result["predictions"]) == np.asarray(result["labels"])).astype(np.float64)


def paired_bootstrap(groups: list[np.ndarray], level: float = LEVEL,
                     resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float, float]:
    """The mean over tasks of each task's mean paired difference, and its percentile bootstrap
    interval. ``groups`` are arrays (tasks x images) of per-image differences (method minus
    baseline); the tasks of one group hold the same test images (a clean sample and its
    corruptions), so an image is resampled with all its tasks: the corruptions of one image are
    not independent evidence. Groups are resampled independently (strata)."""
    rng = np.random.default_rng(seed)
    n_tasks = sum(len(g) for g in groups)
    estimate = sum(g.mean(1).sum() for g in groups) / n_tasks
    resampled = np.zeros(resamples)
    for group in groups:
        per_image = group.mean(0)
        picks = rng.integers(0, len(per_image), size=(resamples, len(per_image)))
        resampled += per_image[picks].mean(1) * len(group)
    low, high = np.quantile(resampled / n_tasks, [(1 - level) / 2, (1 + level) / 2])
    return float(estimate), float(low), float(high)


def mcnemar_p(baseline: np.ndarray, method: np.ndarray) -> float:
    """Two-sided exact McNemar test on paired right/wrong outcomes: a binomial test of the
    images only one of the two gets right (1.0 when there are none)."""
    gained = int(np.sum((method == 1) & (baseline == 0)))
    lost = int(np.sum((method == 0) & (baseline == 1)))
    return 1.0 if gained + lost == 0 else float(binomtest(gained, gained + lost, 0.5).pvalue)


def proportion_interval(accuracy: float, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The Wilson score interval of an accuracy measured on ``n`` test images (scipy's
    ``binomtest``): how far the same model could land on another sample of the same size."""
    hits = round(accuracy * n)
    interval = binomtest(hits, n).proportion_ci(confidence_level=level, method="wilson")
    return float(interval.low), float(interval.high)


def _image_groups(cells: dict[str, dict]) -> list[list[str]]:
    """Tasks grouped by their label sequence: the corruptions of one sample share it (and its
    images); different samples or data sets almost never do."""
    groups = defaultdict(list)
    for task, cell in cells.items():
        groups[tuple(cell["labels"])].append(task)
    return list(groups.values())



def images_for_half_width(row: dict, half_width: float = 0.02) -> int:
    """About how many test images (per task) a comparison row (``compare``) would need for its
    95% interval to be ``half_width`` wide on either side: an interval shrinks as one over the
    square root of the number of images, so the row's own width scales to the target."""
    measured = (row["ci_high"] - row["ci_low"]) / 2
    if measured <= 0:
        return row["images"]
    return math.ceil(row["images"] * (measured / half_width) ** 2)


def resolution_line(row: dict, half_width: float = 0.02) -> str:
    """For a comparison that found no detectable change: how many test images per task would
    give a 95% interval of ``half_width`` on either side (``images_for_half_width``), or, where
    the interval is already that narrow, that any difference is smaller than that."""
    measured = (row["ci_high"] - row["ci_low"]) / 2
    head = (f"{row['model']}: {row['method']} vs {row['baseline']} cannot be told apart on "
            f"{row['images']:,} images per task (95% interval ±{measured:.3f})")
    if measured <= half_width:
        return (f"{head}, already within ±{half_width}: a difference between them, if any, is "
                f"smaller than the interval ({row['ci_low']:+.3f} to {row['ci_high']:+.3f}).")
    return (f"{head}; an interval of ±{half_width} would need about "
            f"{images_for_half_width(row, half_width):,}.")


def compare(results: list[dict], method: str, baseline: str = "source", by=("model",),
            seed: int = 0) -> list[dict]:
    """For every value of ``by`` (e.g. each model): ``method`` against ``baseline`` on the tasks
    both ran, as one row: mean accuracies, the change with its 95% paired-bootstrap interval,
    the number of tasks where McNemar's test finds it significant in each direction, ECE and
    seconds per image of both."""
    rows = []
    for key, cells in _by_key(results, by).items():
        base, other = cells.get(baseline, {}), cells.get(method, {})
        tasks = [t for t in base if t in other]
        if tasks:
            rows.append({**dict(zip(by, key)),
                         **_compare_cells({t: base[t] for t in tasks},
                                          {t: other[t] for t in tasks}, method, baseline, seed)})
    return rows


def _by_key(results, by) -> dict:
    """results -> {key: {method: {task: cell}}}."""
    out: dict = defaultdict(lambda: defaultdict(dict))
    for r in results:
        out[tuple(r[k] for k in by)][r["method"]][r["data"]] = r
    return out


def _compare_cells(base: dict, other: dict, method: str, baseline: str, seed: int) -> dict:
    correct = {t: (correct_per_image(base[t]), correct_per_image(other[t])) for t in base}
    groups = _image_groups(base)
    change, low, high = paired_bootstrap(
        [np.stack([correct[t][1] - correct[t][0] for t in g]) for g in groups], seed=seed)
    significant = {t: mcnemar_p(*correct[t]) < SIGNIFICANCE for t in base}
    better = [t for t in base if significant[t] and correct[t][1].mean() > correct[t][0].mean()]
    worse = [t for t in base if significant[t] and correct[t][1].mean() < correct[t][0].mean()]

    def mean(cells, field):
        return float(np.mean([c[field] for c in cells.values()]))

    return {"method": method, "baseline": baseline, "tasks": len(base),
            "images": sum(len(base[g[0]]["labels"]) for g in groups),
            "baseline_accuracy": mean(base, "accuracy"), "accuracy": mean(other, "accuracy"),
            "change": change, "ci_low": low, "ci_high": high,
            "better_on": len(better), "worse_on": len(worse), "better_tasks": better,
            "worse_tasks": worse, "baseline_ece": mean(base, "ece"), "ece": mean(other, "ece"),
            "baseline_seconds": mean(base, "seconds_per_sample"),
            "seconds": mean(other, "seconds_per_sample")}


def compare_all(results: list[dict], baseline: str = "source", methods=None, by=("model",),
                seed: int = 0) -> list[dict]:
    """``compare`` for every method but the baseline, grouped by ``by`` (e.g. one model's rows
    together), methods in the order of ``methods`` (else of first appearance)."""
    methods = methods or list(dict.fromkeys(r["method"] for r in results))
    rows = [row for m in methods if m != baseline for row in compare(results, m, baseline, by,
                                                                     seed)]
    keys = list(dict.fromkeys(tuple(r[k] for k in by) for r in results))
    return sorted(rows, key=lambda row: keys.index(tuple(row[k] for k in by)))  # stable


def verdict(row: dict) -> str:
    """'gain' or 'loss' when the interval excludes zero, else 'no detectable change'."""
    if row["ci_low"] > 0:
        return "gain"
    if row["ci_high"] < 0:
        return "loss"
    return "no detectable change"


def sentence(row: dict, subject: str | None = None) -> str:
    """One Markdown line of a finding, every number formatted from the row."""
    who = subject or " · ".join(str(row[k]) for k in row if k in ("model", "recipe", "data"))
    tasks = row["tasks"]
    sets = f"{tasks} data sets" if tasks > 1 else "1 data set"
    return (
        f"**{row['method']}** vs {row['baseline']}{f' ({who})' if who else ''}: mean accuracy "
        f"{row['baseline_accuracy']:.3f} → {row['accuracy']:.3f}, change "
        f"{row['change']:+.3f} (95% CI {row['ci_low']:+.3f} to {row['ci_high']:+.3f}; "
        f"{row['images']:,} test images × {sets}): **{verdict(row)}**. "
        f"Significant on {row['better_on'] + row['worse_on']} of {tasks} (McNemar, "
        f"p < {SIGNIFICANCE}): better on {row['better_on']}, worse on {row['worse_on']}. "
        f"ECE {row['baseline_ece']:.3f} → {row['ece']:.3f}; {row['seconds']:.3f} s per image "
        f"({row['baseline']} {row['baseline_seconds']:.3f} s).")


def lines(rows: list[dict], subject=None) -> list[str]:
    """One sentence per row (``subject(row)`` names what a row is about): what a notebook shows
    as its findings and its results file keeps for the README."""
    return [sentence(r, subject(r) if subject else None) for r in rows]


def markdown(text_lines: list[str]) -> str:
    """Findings as a Markdown list."""
    if not text_lines:
        return "_Nothing to compare: no method ran beside its baseline._"
    return "\n".join(f"- {line}" for line in text_lines)


def intervals(rows: list[dict]) -> list[dict]:
    """The rows as a short table: model, method, change and its interval."""
    return [{k: r.get(k) for k in ("model", "method", "baseline", "change", "ci_low", "ci_high")}
            for r in rows]


def table(rows: list[dict]) -> list[dict]:
    """The rows without their per-task lists, for tables and results files."""
    return [{k: v for k, v in r.items() if not k.endswith("_tasks")} for r in rows]


def steps_lines(results: list[dict], methods, batch_size: int) -> list[str]:
    """Per model and online method in ``methods`` (those that count their ``steps``, EATA and
    SAR): the optimizer steps taken per data set on average, against the batches a data set
    has and against the steps of the papers' ImageNet-C runs. Why: at the paper's learning
    rate, a method that steps a few times cannot move a model as it does over 782 steps, and
    a batch never profits from its own step (a data set of one batch is all Source)."""
    found = []
    for model in dict.fromkeys(r["model"] for r in results):
        for method in methods:
            rows = [r for r in results if r["model"] == model and r["method"] == method]
            if not rows:
                continue
            steps = np.mean([r.get("counters", {}).get("steps", 0) for r in rows])
            images = np.mean([r["n"] for r in rows])
            found.append(
                f"{model} · **{method}** at the paper's learning rate took {steps:.1f} SGD steps "
                f"per data set on average, of {math.ceil(images / batch_size)} batches "
                f"({images:.0f} images, batches of {batch_size}); each batch is predicted "
                f"before its own step, as in the authors' code, so the first batch is always "
                f"the source model's and the last step acts on nothing. The paper's ImageNet-C "
                f"runs take {math.ceil(PAPER_IMAGES / PAPER_BATCH)} steps per corruption "
                f"({PAPER_IMAGES:,} images, batches of {PAPER_BATCH})." + trusted(rows))
    return found


def trusted(rows: list[dict]) -> str:
    """The share of the images an entropy-filtering method trusted (``reliable``: entropy
    below E_0) and used (EATA's ``selected``: also unlike the recent predictions), from its
    counters; ``""`` when it counts neither."""
    images = sum(r["n"] for r in rows)
    counts = {key: sum(r.get("counters", {}).get(key, 0) for r in rows)
              for key in ("reliable", "selected")}
    if not images or not any(counts.values()):
        return ""
    text = f" It trusted {counts['reliable'] / images:.0%} of the images (entropy below E_0)"
    if counts["selected"]:
        text += (f" and used {counts['selected'] / images:.0%} (EATA also drops a sample whose "
                 f"prediction resembles the average of those it used)")
    return text + "."


def mean_view_agreement(classifier, tasks: dict, views, n_images: int, seed: int = 0) -> dict:
    """``evaluate.view_agreement`` over ``n_images`` of each corrupted data set of ``tasks``
    (clean left out), averaged: the accuracy of the image, of each view and of the views'
    average, without adaptation. The evidence for why a method that trusts the model on its
    views (MEMO, TPT, Zero) helps one model and hurts another."""
    from .data import take
    from .evaluate import view_agreement

    scores = [view_agreement(classifier, take(task, n_images, seed), views, seed)
              for name, task in tasks.items() if name != "clean"]
    return {key: round(float(np.mean([s[key] for s in scores])), 4) for key in scores[0]}


def agreement_line(model: str, whose: str, score: dict, n_images: int) -> str:
    """``mean_view_agreement``'s numbers as a sentence of the findings."""
    return (f"{model}, {whose} views without adaptation (mean over the corruptions, "
            f"{n_images} images each): a single view is right on {score['views']:.3f} of the "
            f"images, the average over the views on {score['marginal']:.3f}, the image itself "
            f"on {score['source']:.3f} (average minus image "
            f"{score['marginal'] - score['source']:+.3f}).")


# ---------------------------------------------------------------- calibration

def _calibration_cells(results: list[dict], model: str | None, methods, exclude) -> tuple:
    """(model, methods in order, {method: cells}) of one model's results on the data sets
    not in ``exclude``; an unnamed model is the only one the results hold."""
    models = list(dict.fromkeys(r["model"] for r in results))
    if model is None and len(models) == 1:
        model = models[0]
    if model not in models:
        raise ValueError(f"model {model!r} is not in the results; choose one of {models}")
    cells = defaultdict(list)
    for r in results:
        if r["model"] == model and r["data"] not in exclude:
            cells[r["method"]].append(r)
    order = [m for m in (methods or cells) if m in cells]
    if not order:
        raise ValueError(f"none of the methods {list(methods)} ran on {model}; these did: "
                         f"{list(cells)}")
    return model, order, cells


def _pooled(cells: list[dict], field: str) -> list[np.ndarray]:
    """A method's per-image values over its data sets as tasks x images arrays, one per group
    of data sets sharing their images (``_image_groups``)."""
    by_task = {r["data"]: r for r in cells}
    values = {t: (correct_per_image(r) if field == "correct" else
                  np.asarray(r[field], dtype=np.float64)) for t, r in by_task.items()}
    return [np.stack([values[t] for t in group]) for group in _image_groups(by_task)]


def calibration(results: list[dict], model: str | None = None, methods=None,
                exclude=("clean",), n_bins: int = 15, seed: int = 0) -> list[dict]:
    """Per method of one model, pooled over its data sets but those in ``exclude`` (the
    corrupted ones): ECE with its 95% bootstrap interval (``evaluate.ece_with_interval``,
    images resampled with all their corruptions), its printable ``text`` and the reliability
    ``bins`` (``evaluate.calibration_bins``). Methods in the order of ``methods``."""
    from .evaluate import calibration_bins, ece_text, ece_with_interval

    model, order, cells = _calibration_cells(results, model, methods, exclude)
    rows = []
    for method in order:
        confidences, correct = _pooled(cells[method], "confidences"), _pooled(
            cells[method], "correct")
        ece = ece_with_interval(confidences, correct, n_bins, seed=seed)
        rows.append({"model": model, "method": method, "data_sets": len(cells[method]),
                     **ece, "text": ece_text(ece),
                     "bins": calibration_bins(np.concatenate([c.ravel() for c in confidences]),
                                              np.concatenate([c.ravel() for c in correct]),
                                              n_bins)})
    return rows


def ece_line(row: dict) -> str:
    """A ``calibration`` row as a sentence: ``**tent** (ResNet): ECE 0.107 (95% CI 0.090 to
    0.120; 1,300 predictions over 13 data sets)``, or why it is not reported."""
    where = f"{row['n']:,} predictions over {row['data_sets']} data sets"
    if row["ece"] is None:
        return f"**{row['method']}** ({row['model']}): ECE n/a, {row['reason']} ({where})."
    return (f"**{row['method']}** ({row['model']}): ECE {row['ece']:.3f} (95% CI "
            f"{row['low']:.3f} to {row['high']:.3f}; {where}).")


def confidence_definitions(methods) -> dict[str, str]:
    """What each method's recorded confidence is, one sentence per method name of the results
    (``ensemble (vote)`` and the like included): its class's ``confidence``, else the
    default, a softmax maximum of the predicted logits."""
    from .tta import Adapter
    from .tta.ensemble import RULE_CONFIDENCE
    from .tta.registry import REGISTRY

    found = {}
    for name in methods:
        rule = name[len("ensemble ("):-1] if name.startswith("ensemble (") else None
        if rule in RULE_CONFIDENCE:
            found[name] = RULE_CONFIDENCE[rule]
        else:
            found[name] = getattr(REGISTRY[name].adapter if name in REGISTRY else None,
                                 "confidence", Adapter.confidence)
    return found


def family_of(task: str) -> str | None:
    """The ImageNet-C family of a task name ("snow", "fashion-mnist/snow", "snow/5"), else
    None (clean data, a natural-shift set)."""
    for part in task.split("/"):
        for family, names in CORRUPTION_FAMILIES.items():
            if part in names:
                return family
    return None


def one_per_family(names, limit: int = 4) -> list[str]:
    """Of the task ``names``, the first of each ImageNet-C family present, in the order of
    ``names``, at most ``limit``. Where none is a corruption (natural-shift sets such as
    ImageNet-A), the first ``limit`` names."""
    if limit < 1:
        raise ValueError(f"sweep_corruptions = {limit}: give a whole number >= 1")
    chosen = {}
    for name in names:
        family = family_of(name)
        if family is not None and family not in chosen:
            chosen[family] = name
    return list(chosen.values())[:limit] or list(names)[:limit]


def sweep_tasks(tasks: dict, n_corruptions: int, n_images: int, seed: int = 0) -> dict:
    """The data of a settings sweep that cannot afford every task: ``n_images`` random test
    images (``data.take``: the same images under every corruption of one sample) of up to
    ``n_corruptions`` tasks, one per ImageNet-C family (``one_per_family``); {} when
    ``n_images`` is 0 (no sweep)."""
    from .data import take

    if not n_images:
        return {}
    return {name: take(tasks[name], n_images, seed)
            for name in one_per_family(list(tasks), n_corruptions)}


def one_at_a_time(base: dict, sweeps: dict, name: str) -> list[dict]:
    """A one-at-a-time sweep around ``base`` settings: for each option of ``sweeps`` (e.g.
    ``{"n_views": [15, 31, 63], "selection": [0.1, 0.3, 1.0]}``) and each of its values,
    ``base`` with that one value changed. Rows ``{"setting", "value", "method",
    "settings"}``; ``method`` is ``name`` with the swept options' values, so that settings
    in several sweeps (``base``'s own) have one name and run once."""
    rows = []
    for option, values in sweeps.items():
        for value in values:
            settings = {**base, option: value}
            label = ", ".join(f"{key}={settings[key]}" for key in sweeps)
            rows.append({"setting": option, "value": value, "method": f"{name} {label}",
                         "settings": settings})
    return rows


def accuracy_interval(cells: dict, seed: int = 0) -> tuple[float, float, float]:
    """Mean accuracy over the tasks of ``cells`` (task -> cell of one method) and its 95%
    bootstrap interval over test images, each image resampled with all its tasks
    (``paired_bootstrap`` of the right/wrong outcomes)."""
    groups = _image_groups(cells)
    return paired_bootstrap([np.stack([correct_per_image(cells[t]) for t in g])
                             for g in groups], seed=seed)


def sweep_rows(results: list[dict], sweep: list[dict], baseline: str,
               seed: int = 0) -> list[dict]:
    """Per model and row of ``sweep`` (``one_at_a_time``): the method's mean accuracy over
    the sweep's tasks with its 95% bootstrap interval over images, and its change against
    ``baseline`` on the same images with its 95% paired interval (``compare``); the
    baseline's own accuracy and interval too, for a reference band."""
    rows = []
    for (model,), cells in _by_key(results, ("model",)).items():
        base = accuracy_interval(cells[baseline], seed) if baseline in cells else None
        for item in sweep:
            if item["method"] not in cells:
                continue
            accuracy, low, high = accuracy_interval(cells[item["method"]], seed)
            change = {}
            if base is not None:
                row = compare([r for r in results if r["model"] == model], item["method"],
                              baseline, seed=seed)[0]
                change = {"change": row["change"], "change_low": row["ci_low"],
                          "change_high": row["ci_high"], "baseline": baseline,
                          "baseline_accuracy": base[0], "baseline_low": base[1],
                          "baseline_high": base[2]}
            some = next(iter(cells[item["method"]].values()))
            rows.append({"model": model, "setting": item["setting"], "value": item["value"],
                         "accuracy": accuracy, "ci_low": low, "ci_high": high, **change,
                         "tasks": len(cells[item["method"]]), "images": len(some["labels"]),
                         "ece": float(np.mean([c["ece"] for c in cells[item["method"]].values()])),
                         "seconds_per_sample": float(np.mean(
                             [c["seconds_per_sample"] for c in cells[item["method"]].values()]))})
    return rows


def sweep_lines(rows: list[dict], labels: dict | None = None) -> list[str]:
    """``sweep_rows`` as sentences, per model and swept setting: the range of mean
    accuracies, whether the intervals of its lowest and highest values overlap (then the
    sweep does not tell the settings apart), and at which values the change against the
    baseline on the same images excludes zero."""
    found = []
    for model in dict.fromkeys(r["model"] for r in rows):
        for setting in dict.fromkeys(r["setting"] for r in rows if r["model"] == model):
            part = [r for r in rows if r["model"] == model and r["setting"] == setting]
            low, high = min(part, key=lambda r: r["accuracy"]), max(
                part, key=lambda r: r["accuracy"])
            apart = low["ci_high"] < high["ci_low"]
            name = (labels or {}).get(setting, setting)
            text = (f"{model}, {name}: mean accuracy from {low['accuracy']:.3f} (at "
                    f"{low['value']:g}) to {high['accuracy']:.3f} (at {high['value']:g}) over "
                    f"{part[0]['tasks']} data sets of {part[0]['images']} images; the two "
                    f"intervals {'do not overlap' if apart else 'overlap'}"
                    f"{'' if apart else ': the sweep does not tell these settings apart'}.")
            if "change" in part[0]:
                gains = [f"{r['value']:g}" for r in part if r["change_low"] > 0]
                losses = [f"{r['value']:g}" for r in part if r["change_high"] < 0]
                text += (f" Against {part[0]['baseline']} on the same images "
                         f"({part[0]['baseline_accuracy']:.3f}): a gain whose interval "
                         f"excludes zero at {', '.join(gains) or 'no value'}, a loss at "
                         f"{', '.join(losses) or 'no value'}.")
            found.append(text)
    return found


def calibration_lines(results: list[dict], baseline: str = "source", methods=None,
                      rise: float = 0.02) -> list[str]:
    """Per model, the methods whose mean ECE over the data sets exceeds the baseline's by
    more than ``rise``, with their mean confidence against their accuracy: a rise with
    confidence above accuracy is overconfidence, one with confidence below it
    underconfidence."""
    found = []
    by_key = _by_key(results, ("model",))
    for (model,), cells in by_key.items():
        if baseline not in cells:
            continue

        def mean(method, field, cells=cells):
            return float(np.mean([c[field] for c in cells[method].values()]))

        base = mean(baseline, "ece")
        risen = [m for m in (methods or cells) if m in cells and m != baseline
                 and mean(m, "ece") > base + rise]
        if not risen:
            found.append(f"{model}: no method's ECE exceeds {baseline}'s ({base:.3f}) by more "
                         f"than {rise:.2f}.")
            continue
        parts = [f"{m} {mean(m, 'ece'):.3f} (mean confidence {mean(m, 'mean_confidence'):.3f} "
                 f"for accuracy {mean(m, 'accuracy'):.3f}: "
                 f"{'over' if mean(m, 'mean_confidence') > mean(m, 'accuracy') else 'under'}"
                 f"confident by {abs(mean(m, 'mean_confidence') - mean(m, 'accuracy')):.3f})"
                 for m in risen]
        found.append(f"{model}: ECE rises from {base:.3f} ({baseline}, mean confidence "
                     f"{mean(baseline, 'mean_confidence'):.3f} for accuracy "
                     f"{mean(baseline, 'accuracy'):.3f}) to " + "; ".join(parts) + ".")
    return found
