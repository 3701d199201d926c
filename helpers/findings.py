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


def validation_tasks(dataset, n_corruptions: int, n_images: int, severity: int = 5,
                     seed: int = 0) -> dict:
    """The data of a sweep that chooses (or describes) settings without touching the test
    corruptions: ``n_images`` random images of ``dataset`` (``data.take``, seeded) under up to
    ``n_corruptions`` of ImageNet-C's four held-out validation corruptions, one per family
    (speckle_noise, gaussian_blur, spatter, saturate); {} when ``n_images`` is 0 (no sweep)."""
    from .data import VALIDATION_CORRUPTIONS, corruption_suite

    if not n_images:
        return {}
    names = one_per_family(VALIDATION_CORRUPTIONS, n_corruptions)
    return corruption_suite(dataset, names, severity, n_images, seed, clean=False)


def one_at_a_time(base: dict, sweeps: dict, name: str, relative=()) -> list[dict]:
    """A one-at-a-time sweep around ``base`` settings: for each option of ``sweeps`` (e.g.
    ``{"n_views": [15, 31, 63], "selection": [0.1, 0.3, 1.0]}``) and each of its values,
    ``base`` with that one value changed. Rows ``{"setting", "value", "method",
    "settings", "chosen"}``; ``method`` is ``name`` with the swept options' values, so that
    settings in several sweeps (``base``'s own) have one name and run once; ``chosen`` marks
    ``base``'s own value. The values of an option in ``relative`` are multiples of ``base``'s
    (``lr: [0, 0.1, 1, 10]``: each model's own rate scaled), named ``lr=x0.1``. An empty list
    switches that option's sweep off; an option ``base`` lacks, a value that is not a number
    >= 0, or a relative option whose base is not a positive number is an error naming it."""
    if not isinstance(sweeps, dict):
        raise ValueError(f"a sweep of {name} is a dict of option -> list of values, got "
                         f"{sweeps!r}")
    for option, values in sweeps.items():
        if option not in base:
            raise ValueError(f"sweep of {option!r}: not a setting of {name}; its settings are "
                             f"{', '.join(base)}")
        if not isinstance(values, (list, tuple)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
                for v in values):
            raise ValueError(f"sweep of {name}'s {option}: give a list of numbers >= 0 ([] "
                             f"switches it off), got {values!r}")
        if option in relative and not (isinstance(base[option], (int, float))
                                       and base[option] > 0):
            raise ValueError(f"sweep of {name}'s {option} relative to its chosen value: the "
                             f"chosen {option} must be a number > 0, got {base[option]!r}")

    def shown(option, value):
        return f"{option}=x{value:g}" if option in relative else f"{option}={value}"

    rows = []
    for option, values in sweeps.items():
        for value in values:
            settings = {**base, option: base[option] * value if option in relative else value}
            swept = {key: value if key == option else (1 if key in relative else base[key])
                     for key in sweeps}
            rows.append({"setting": option, "value": value,
                         "method": f"{name} " + ", ".join(shown(k, v) for k, v in swept.items()),
                         "settings": settings, "sweep": name,
                         "chosen": value == (1 if option in relative else base[option])})
    return rows


def same_by_construction(method: str, settings: dict) -> str | None:
    """The method a setting of ``method`` equals by construction, else None: MEMO at
    learning rate 0 without a batch-norm prior is Source (its weights stay the source's and
    it predicts the image alone; with a prior it is the prior alone, a result of its own);
    TPT at learning rate 0 is the fixed prompt it starts from ("prompt")."""
    if settings.get("lr") == 0 and method == "memo" and not settings.get("bn_prior"):
        return "source"
    if settings.get("lr") == 0 and method == "tpt":
        return "prompt"
    return None


def model_sweeps(settings_of, models, sweeps: dict, name: str, relative=()) -> tuple:
    """``one_at_a_time`` around each model's own settings (``settings_of(model)``, e.g. a
    factory's ``settings``) for the grid: (rows, each with its ``model``, and
    ``{method: factory}`` whose factories build each model's setting of that name). A row
    whose setting equals another method by construction (``same_by_construction``) takes that
    method's name and ``same_as``, and gets no factory: it is not run as a result of its own."""
    from .tta import method_factories

    rows, per_model = [], defaultdict(dict)
    for model in models:
        for row in one_at_a_time(settings_of(model), sweeps, name, relative):
            same = same_by_construction(name, row["settings"])
            if same:
                row = {**row, "method": same, "same_as": same}
            else:
                per_model[row["method"]][model] = row["settings"]
            rows.append({**row, "model": model})
    factories = {method: only_on(method_factories([name], {name: {}}, {name: settings})[name],
                                 list(settings))
                 for method, settings in per_model.items()}
    return rows, factories


def only_on(factory, models):
    """A grid factory (``tta.method_factories``) that applies to ``models`` alone (None, not
    applicable, on any other): a sweep's setting of one model is not run on another."""
    def make(model, model_name):
        return factory(model, model_name) if model_name in models else None

    make.settings, make.code_modules = factory.settings, factory.code_modules
    make.shardable, make.passes = factory.shardable, factory.passes
    return make


def accuracy_interval(cells: dict, seed: int = 0) -> tuple[float, float, float]:
    """Mean accuracy over the tasks of ``cells`` (task -> cell of one method) and its 95%
    bootstrap interval over test images, each image resampled with all its tasks
    (``paired_bootstrap`` of the right/wrong outcomes)."""
    return image_interval(cells, correct_per_image, seed)


def confidence_interval(cells: dict, seed: int = 0) -> tuple[float, float, float]:
    """Mean confidence over the tasks of ``cells`` (task -> cell of one method, with its
    per-image ``confidences``) and its 95% bootstrap interval, as ``accuracy_interval``."""
    return image_interval(
        cells, lambda cell: np.asarray(cell["confidences"], dtype=np.float64), seed)


def image_interval(cells: dict, per_image, seed: int = 0) -> tuple[float, float, float]:
    """The mean of ``per_image(cell)`` over the tasks of ``cells`` and its 95% bootstrap
    interval over test images, each image resampled with all its tasks."""
    return paired_bootstrap([np.stack([per_image(cells[t]) for t in group])
                             for group in _image_groups(cells)], seed=seed)


def sweep_rows(results: list[dict], sweep: list[dict], baseline: str,
               seed: int = 0) -> list[dict]:
    """Per model and row of ``sweep`` (``one_at_a_time``, or ``model_sweeps`` whose rows name
    their model): the method's mean accuracy and mean confidence over the sweep's tasks, each
    with its 95% bootstrap interval over images, and its change against ``baseline`` on the
    same images with its 95% paired interval (``compare``); the baseline's own accuracy and
    interval too, for a reference band. ``method`` (the cells' name), ``sweep`` (the swept
    method), ``chosen`` and ``same_as`` come from the sweep's row; no confidence where the
    cells lack per-image ``confidences``."""
    rows = []
    for (model,), cells in _by_key(results, ("model",)).items():
        base = accuracy_interval(cells[baseline], seed) if baseline in cells else None
        for item in sweep:
            if item["method"] not in cells or item.get("model", model) != model:
                continue
            accuracy, low, high = accuracy_interval(cells[item["method"]], seed)
            confidence = {}
            if all("confidences" in c for c in cells[item["method"]].values()):
                mean, low_c, high_c = confidence_interval(cells[item["method"]], seed)
                confidence = {"confidence": mean, "confidence_low": low_c,
                              "confidence_high": high_c}
            change = {}
            if base is not None:
                row = compare([r for r in results if r["model"] == model], item["method"],
                              baseline, seed=seed)
                change = {"change": row[0]["change"] if row else 0.0,
                          "change_low": row[0]["ci_low"] if row else 0.0,
                          "change_high": row[0]["ci_high"] if row else 0.0,
                          "baseline": baseline,
                          "baseline_accuracy": base[0], "baseline_low": base[1],
                          "baseline_high": base[2]}
            some = next(iter(cells[item["method"]].values()))
            rows.append({"model": model, "setting": item["setting"], "value": item["value"],
                         "method": item["method"],
                         "sweep": item.get("sweep", item["method"].split(" ")[0]),
                         "chosen": item.get("chosen", False), "same_as": item.get("same_as"),
                         "accuracy": accuracy, "ci_low": low, "ci_high": high,
                         **confidence, **change,
                         "tasks": len(cells[item["method"]]), "images": len(some["labels"]),
                         "ece": float(np.mean([c["ece"] for c in cells[item["method"]].values()])),
                         "seconds_per_sample": float(np.mean(
                             [c["seconds_per_sample"] for c in cells[item["method"]].values()]))})
    return rows


def sweep_lines(rows: list[dict], labels: dict | None = None) -> list[str]:
    """``sweep_rows`` as sentences, per model, swept method and setting: the range of mean
    accuracies, whether the intervals of its lowest and highest values overlap (then the
    sweep does not tell the settings apart), and at which values the change against the
    baseline on the same images excludes zero; a value that equals another method by
    construction is said to be that method."""
    found = []
    for model, sweep, setting in dict.fromkeys((r["model"], r.get("sweep", ""), r["setting"])
                                               for r in rows):
        part = [r for r in rows if (r["model"], r.get("sweep", ""), r["setting"])
                == (model, sweep, setting)]
        low, high = min(part, key=lambda r: r["accuracy"]), max(
            part, key=lambda r: r["accuracy"])
        apart = low["ci_high"] < high["ci_low"]
        name = (labels or {}).get(setting, setting)
        who = f"{model}, {sweep}" if sweep else model
        text = (f"{who}, {name}: mean accuracy from {low['accuracy']:.3f} (at "
                f"{low['value']:g}) to {high['accuracy']:.3f} (at {high['value']:g}) over "
                f"{part[0]['tasks']} data sets of {part[0]['images']} images; the two "
                f"intervals {'do not overlap' if apart else 'overlap'}"
                f"{'' if apart else ': the sweep does not tell these settings apart'}.")
        text += "".join(f" At {r['value']:g}, {sweep} is {r['same_as']} by construction (its "
                        f"cells, not a run of its own)." for r in part if r.get("same_as"))
        if "change" in part[0]:
            gains = [f"{r['value']:g}" for r in part if r["change_low"] > 0]
            losses = [f"{r['value']:g}" for r in part if r["change_high"] < 0]
            text += (f" Against {part[0]['baseline']} on the same images "
                     f"({part[0]['baseline_accuracy']:.3f}): a gain whose interval "
                     f"excludes zero at {', '.join(gains) or 'no value'}, a loss at "
                     f"{', '.join(losses) or 'no value'}.")
        found.append(text)
    return found


def sweep_optima(results: list[dict], rows: list[dict], seed: int = 0) -> list[dict]:
    """Per model, swept method and setting of ``sweep_rows``: the value of highest mean
    accuracy (the first of equals) with its interval, against the model's chosen value
    (``chosen``) on the same images (``compare``: the change and its 95% paired interval;
    ``apart`` when it excludes zero), and the mean confidence minus the mean accuracy at the
    lowest and the highest value (above 0: over-confident). None of it where no value is the
    chosen one."""
    found = []
    for key in dict.fromkeys((r["model"], r["sweep"], r["setting"]) for r in rows):
        part = sorted((r for r in rows if (r["model"], r["sweep"], r["setting"]) == key),
                      key=lambda r: r["value"])
        chosen = next((r for r in part if r["chosen"]), None)
        if chosen is None:
            continue
        best = max(part, key=lambda r: r["accuracy"])
        on_model = [r for r in results if r["model"] == key[0]]
        paired = compare(on_model, best["method"], chosen["method"], seed=seed)
        change = paired[0] if paired and best is not chosen else {
            "change": 0.0, "ci_low": 0.0, "ci_high": 0.0}
        found.append({
            "model": key[0], "sweep": key[1], "setting": key[2], "best": best["value"],
            "accuracy": best["accuracy"], "ci_low": best["ci_low"], "ci_high": best["ci_high"],
            "best_same_as": best.get("same_as"),
            "chosen": chosen["value"], "chosen_accuracy": chosen["accuracy"],
            "change": change["change"], "change_low": change["ci_low"],
            "change_high": change["ci_high"],
            "apart": change["ci_low"] > 0 or change["ci_high"] < 0,
            "values": [r["value"] for r in part],
            "confidence": [r["confidence"] for r in part],
            "confidence_low": [r["confidence_low"] for r in part],
            "confidence_high": [r["confidence_high"] for r in part],
            "gap": [r["confidence"] - r["accuracy"] for r in part],
            "accuracy_low": [r["ci_low"] for r in part],
            "accuracy_high": [r["ci_high"] for r in part],
            "tasks": best["tasks"], "images": best["images"]})
    return found


def optimum_lines(optima: list[dict], labels: dict | None = None, where: str = "") -> list[str]:
    """``sweep_optima`` as sentences: the best value with its interval, whether it can be told
    apart from the chosen value on the same images, and how mean confidence and its excess
    over accuracy move from the lowest to the highest value."""
    found = []
    for o in optima:
        name = (labels or {}).get(o["setting"], o["setting"])
        if o["best"] == o["chosen"]:
            verdict_text = "the chosen value itself"
        elif o["apart"]:
            verdict_text = (f"better than the chosen {o['chosen']:g} "
                            f"({o['chosen_accuracy']:.3f}) on the same images by "
                            f"{o['change']:+.3f} (95% CI {o['change_low']:+.3f} to "
                            f"{o['change_high']:+.3f})")
        else:
            verdict_text = (f"not told apart from the chosen {o['chosen']:g} "
                            f"({o['chosen_accuracy']:.3f}) on the same images: "
                            f"{o['change']:+.3f} (95% CI {o['change_low']:+.3f} to "
                            f"{o['change_high']:+.3f})")
        gap, conf = o["gap"], o["confidence"]
        apart = (o["confidence_high"][0] < o["confidence_low"][-1]
                 or o["confidence_high"][-1] < o["confidence_low"][0])
        moves = (("rises" if conf[-1] > conf[0] else "falls") if apart else
                 "does not move beyond its intervals")
        if conf[-1] > o["accuracy_high"][-1]:
            calibration = "over-confident there: confidence above accuracy's interval"
        elif conf[-1] < o["accuracy_low"][-1]:
            calibration = "under-confident there: confidence below accuracy's interval"
        else:
            calibration = "within accuracy's interval there: no detectable miscalibration"
        found.append(
            f"{o['model']}, {o['sweep']} {name}{where}: the highest mean accuracy is at "
            f"{o['best']:g}"
            + (f" (where {o['sweep']} is {o['best_same_as']} by construction)"
               if o.get("best_same_as") else "")
            + f", {o['accuracy']:.3f} (95% CI {o['ci_low']:.3f} to "
            f"{o['ci_high']:.3f}; {o['tasks']} data set{'s' * (o['tasks'] > 1)} of "
            f"{o['images']} images), {verdict_text}. Mean confidence {moves} from "
            f"{conf[0]:.3f} ({o['confidence_low'][0]:.3f} to {o['confidence_high'][0]:.3f}) "
            f"at {o['values'][0]:g} to {conf[-1]:.3f} ({o['confidence_low'][-1]:.3f} to "
            f"{o['confidence_high'][-1]:.3f}) at {o['values'][-1]:g}; confidence minus "
            f"accuracy {gap[0]:+.3f} at {o['values'][0]:g}, {gap[-1]:+.3f} at the largest "
            f"value ({calibration}).")
    return found


def severity_of(task: str) -> int | None:
    """The severity of a ``data.severity_suite`` task name ("snow/3" -> 3), else None."""
    head, _, tail = task.rpartition("/")
    return int(tail) if head and tail.isdigit() else None


def severity_rows(results: list[dict], methods, baseline: str = "source",
                  seed: int = 0) -> list[dict]:
    """Per model, method of ``methods`` (in that order) and severity of the
    ``data.severity_suite`` tasks: the mean error over the corruptions at that severity with
    its 95% bootstrap interval over images, and the change in accuracy against ``baseline`` on
    the same images with its 95% paired interval (0 for the baseline itself)."""
    rows = []
    for (model,), cells in _by_key(results, ("model",)).items():
        for method in [m for m in methods if m in cells]:
            for severity in sorted({severity_of(t) for t in cells[method]} - {None}):
                at = [r for r in results if r["model"] == model and
                      severity_of(r["data"]) == severity]
                mine = {t: c for t, c in cells[method].items() if severity_of(t) == severity}
                accuracy, low, high = accuracy_interval(mine, seed)
                paired = compare(at, method, baseline, seed=seed) if method != baseline else []
                rows.append({"model": model, "method": method, "severity": severity,
                             "error": 1 - accuracy, "error_low": 1 - high,
                             "error_high": 1 - low, "tasks": len(mine),
                             "images": len(next(iter(mine.values()))["labels"]),
                             "change": paired[0]["change"] if paired else 0.0,
                             "change_low": paired[0]["ci_low"] if paired else 0.0,
                             "change_high": paired[0]["ci_high"] if paired else 0.0})
    return rows


def severity_lines(rows: list[dict], baseline: str = "source") -> list[str]:
    """Per model and method of ``severity_rows``: its change over ``baseline`` at the lowest
    and the highest severity with their intervals, and whether the gain grows or shrinks with
    severity, said only where the two intervals do not overlap."""
    found = []
    for model, method in dict.fromkeys((r["model"], r["method"]) for r in rows):
        if method == baseline:
            continue
        part = sorted((r for r in rows if (r["model"], r["method"]) == (model, method)),
                      key=lambda r: r["severity"])
        first, last = part[0], part[-1]
        each = "; ".join(f"severity {r['severity']} {r['change']:+.3f} ({r['change_low']:+.3f} "
                         f"to {r['change_high']:+.3f})" for r in (first, last))
        if len(part) < 2:
            trend = "one severity only"
        elif first["change_high"] < last["change_low"]:
            trend = (f"its change over {baseline} grows with severity (the two intervals do "
                     "not overlap)")
        elif last["change_high"] < first["change_low"]:
            trend = (f"its change over {baseline} shrinks with severity (the two intervals do "
                     "not overlap)")
        else:
            trend = ("the two intervals overlap: this run cannot tell whether its change over "
                     f"{baseline} depends on severity")
        found.append(f"{model} · **{method}** against {baseline} on the same images "
                     f"({first['tasks']} corruption{'s' * (first['tasks'] > 1)} of "
                     f"{first['images']} images per "
                     f"severity), change in accuracy: {each}; {trend}.")
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
