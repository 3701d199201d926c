"""The published numbers this project's results stand beside, and this project's numbers on
the same metric.

``resources/published.yaml`` lists, per method, model and data set, the papers' and the course
project's figures, each with its source (paper, table, setting, metric). ``anchor_table``
puts them beside this project's full profile (when a user has run it) and the offline run,
with a note on how far the two can be compared: the offline run uses stand-in models and
data, so its values are not the papers', only its directions can agree or not.

The papers report corruption robustness as the mean top-1 error over ImageNet-C's 15
corruptions at severity 5, the clean test set apart; ``corruption_error`` computes exactly
that from a grid's cells, with a bootstrap interval over images.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml

from . import findings, paths

PUBLISHED = Path(__file__).resolve().parent / "resources" / "published.yaml"
FIELDS = {"notebook": (str, list), "method": str, "model": str, "dataset": str, "setting": str,
          "metric": str, "value": (float, int), "kind": str, "source": str, "where": str,
          "url": str}
OPTIONAL = {"read_from": str, "finding": str, "paper": str, "compare_with": str,
            "decimals": int, "offline_differs": str}
CHOICES = {"metric": ("error", "accuracy", "parameters"), "kind": ("paper", "course project"),
           "compare_with": ("corruptions", "clean")}
# Methods in the tables' order: Source first, then batch adaptation, single-image adaptation,
# prompts, ensembles, transfer and fine-tuning; a method not named here comes after these.
METHOD_ORDER = ("source", "norm", "tent", "eata", "sar", "memo", "memo_plus", "prompt", "coop",
                "tpt", "zero", "tda", "ensemble", "transfer", "linear", "full", "vpt",
                "vpt-shallow", "vpt-deep")
NOT_RUN = "not run here: needs a GPU and the data"
PAPER_SEVERITY = 5
COLUMNS = ("method", "model", "data set", "metric", "published", "course project",
           "full profile here", "offline here", "note")
# The data sets' names in this project's task names (``<name>/clean`` when a notebook runs
# several data sets, ``clean`` when it runs one).
DATA_NAMES = {"CIFAR-100": "cifar100", "CIFAR-10": "cifar10", "ImageNet-A": "imagenet-a",
              "ImageNet-V2": "imagenet-v2", "MNIST": "mnist", "FashionMNIST": "fashion-mnist"}


def load_published(path=None) -> list[dict]:
    """The entries of the data file (``resources/published.yaml`` unless given), each checked:
    every field of ``FIELDS`` present with its type, ``metric``/``kind`` one of their choices,
    and ``value`` a number, or null with a ``finding`` sentence (a paper that reports a
    figure, not a number). A bad entry is a ValueError naming the entry, the field and the
    file."""
    path = Path(path or PUBLISHED)
    entries = yaml.safe_load(path.read_text())
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list of entries, got {type(entries).__name__}")
    for number, entry in enumerate(entries, 1):
        check_entry(entry, f"entry {number}", path)
    return entries


def check_entry(entry, name: str, path) -> None:
    """Raise a ValueError naming ``name``, the field and ``path`` if ``entry`` is malformed."""
    if not isinstance(entry, dict):
        raise ValueError(f"{path}, {name}: expected a mapping of fields, got {entry!r}")
    name = f"{name} ({entry.get('method', '?')}, {entry.get('model', '?')})"
    for field, kinds in {**FIELDS, **OPTIONAL}.items():
        value = entry.get(field)
        if field not in entry:
            if field in FIELDS:
                raise ValueError(f"{path}, {name}: field '{field}' is missing")
            continue
        if field == "value" and value is None and entry.get("finding"):
            continue
        if isinstance(value, bool) or not isinstance(value, kinds) or value == "":
            raise ValueError(f"{path}, {name}: field '{field}' = {value!r} should be "
                             f"{_kind_names(kinds)}" + (" (or null with a 'finding' sentence)"
                                                        if field == "value" else ""))
        if field in CHOICES and value not in CHOICES[field]:
            raise ValueError(f"{path}, {name}: field '{field}' = {value!r} should be one of "
                             f"{', '.join(CHOICES[field])}")
    unknown = set(entry) - set(FIELDS) - set(OPTIONAL)
    if unknown:
        raise ValueError(f"{path}, {name}: unknown field(s) {', '.join(sorted(unknown))}")


def _kind_names(kinds) -> str:
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    names = {str: "a non-empty string", list: "a list", float: "a number", int: "a number"}
    return " or ".join(dict.fromkeys(names[k] for k in kinds))


def anchors_for(notebook: str, path=None) -> list[dict]:
    """The entries that anchor ``notebook`` (its ``notebook`` field, or one of its list)."""
    return [e for e in load_published(path) if notebook in notebooks_of(e)]


def notebooks_of(entry: dict) -> list[str]:
    """The notebooks an entry anchors (its ``notebook`` field is one name or a list)."""
    names = entry["notebook"]
    return list(names) if isinstance(names, list) else [names]


def corruption_error(results: list[dict], model: str, method: str, tasks=None) -> dict:
    """This project's number on the papers' metric: the mean top-1 error (percent) over the
    corrupted data sets of ``model`` and ``method`` (every task but ``clean`` and those ending
    in ``/clean``; only those of ``tasks`` when given), with a 95% percentile-bootstrap
    interval over test images (``findings.paired_bootstrap``: an image is resampled with all
    its corruptions, which are not independent evidence), and the clean error apart: the task
    ``clean``'s, else the mean over the ``.../clean`` tasks (None when no clean task ran).
    ``results`` are the grid's cells with per-image outcomes."""
    cells = {r["data"]: r for r in results if r["model"] == model and r["method"] == method
             and (tasks is None or r["data"] in tasks)}
    if not cells:
        raise ValueError(f"no cells of model {model!r} and method {method!r} in the results")
    if any("correct" not in c and "predictions" not in c for c in cells.values()):
        raise ValueError("corruption_error needs the grid's cells with per-image outcomes "
                         "('correct', or 'predictions' and 'labels'), not summary rows")
    clean = ([cells["clean"]] if "clean" in cells else
             [c for name, c in cells.items() if is_clean(name)])
    corrupted = {name: c for name, c in cells.items() if not is_clean(name)}
    clean_error = (float(np.mean([100 * (1 - findings.correct_per_image(c).mean())
                                  for c in clean])) if clean else None)
    out = {"error": None, "ci_low": None, "ci_high": None, "clean_error": clean_error,
           "corruptions": len(corrupted),
           "images": {name: len(findings.correct_per_image(c)) for name, c in corrupted.items()}}
    if corrupted:
        groups = [np.stack([100 * (1 - findings.correct_per_image(corrupted[name]))
                            for name in names]) for names in same_images(corrupted)]
        out["error"], out["ci_low"], out["ci_high"] = findings.paired_bootstrap(groups)
    return out


def is_clean(task: str) -> bool:
    """Whether a task name is a clean test set (``clean``, ``photos/clean``, ...)."""
    return task == "clean" or task.endswith("/clean")


def same_images(cells: dict[str, dict]) -> list[list[str]]:
    """Task names grouped by the test images they hold, told by their label sequences and the
    prefix of their names (``photos/...``): the corruptions of one sample."""
    groups = defaultdict(list)
    for name, cell in cells.items():
        labels = cell.get("labels")
        key = (len(findings.correct_per_image(cell)),) if labels is None else tuple(
            np.asarray(labels).tolist())
        groups[(name.rpartition("/")[0], key)].append(name)
    return list(groups.values())


def load_full(notebook: str) -> dict | None:
    """The full profile's results file of ``notebook`` (``RESULTS/full/<notebook>.json``),
    or None when nobody ran it here."""
    import json

    path = paths.RESULTS / "full" / f"{notebook}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def anchor_table(notebook: str, results: list[dict], full_results: list[dict] | None = None,
                 here: str = "the offline stand-in data", full_datasets=None, path=None):
    """One row per (method, model, data set, metric) of ``notebook``'s anchors, in
    ``METHOD_ORDER``: the published values with their short sources, the course project's,
    this project's full profile (from ``full_results``, else from ``RESULTS/full/`` when a
    user ran it there, else ``NOT_RUN``), the offline run (``results``: the same metric, with
    its interval and the clean error apart, per model that ran the method) and a note on
    what can be compared. ``here`` names the offline data in the notes; ``full_datasets``
    the data sets of a full profile that ran one (its tasks say ``clean``). The numbers
    behind each row are kept in ``table.attrs["rows"]`` (for sentences and results files)."""
    import pandas as pd

    if full_results is None:
        saved = load_full(notebook)
        if saved is not None:
            full_results = saved.get("results", [])
            parameters = saved.get("parameters", {})
            full_datasets = full_datasets or parameters.get("datasets") or [
                parameters.get("dataset")]
    rows, numbers, scores = [], [], {}  # scores: one bootstrap per (model, method, tasks)
    for key, entries in group_entries(anchors_for(notebook, path)).items():
        row, number = table_row(key, entries, results, full_results, here, full_datasets,
                                scores)
        rows.append(row)
        numbers.append(number)
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    table.attrs["rows"] = numbers
    return table


def group_entries(entries: list[dict]) -> dict:
    """Entries by (method, model, data set, metric), in ``METHOD_ORDER`` (Source first)."""
    groups = defaultdict(list)
    for e in entries:
        groups[(e["method"], e["model"], e["dataset"], e["metric"])].append(e)

    def order(key):
        rank = METHOD_ORDER.index(key[0]) if key[0] in METHOD_ORDER else len(METHOD_ORDER)
        return rank, key[0], key[1], key[2], key[3]

    return {key: groups[key] for key in sorted(groups, key=order)}


def table_row(key, entries, results, full_results, here, full_datasets,
              scores=None) -> tuple[dict, dict]:
    """One row of ``anchor_table`` (strings) and the numbers behind it; ``scores`` caches the
    offline ``corruption_error``s that rows of the same method share."""
    method, model, dataset, metric = key
    published = [e for e in entries if e["kind"] == "paper"]
    course = [e for e in entries if e["kind"] == "course project"]
    compare_with = next((e["compare_with"] for e in entries if "compare_with" in e),
                        "corruptions")
    scored = metric in ("error", "accuracy")  # a share of parameters is not a grid's number
    offline = offline_numbers(results, method, metric, compare_with, scores) if scored else []
    full = None if full_results is None else []
    if scored and full_results is not None:
        full = full_numbers(full_results, method, model, dataset, metric, full_datasets)
    row = {"method": method, "model": model, "data set": dataset, "metric": f"{metric} (%)",
           "published": "; ".join(published_text(e) for e in published) or "—",
           "course project": "; ".join(published_text(e) for e in course) or "—",
           "full profile here": full_text(full),
           "offline here": offline_text(offline, compare_with),
           "note": note(model, dataset, offline, full, here, compare_with)}
    differs = next((e["offline_differs"] for e in entries if "offline_differs" in e), None)
    if differs:  # a setting the offline runs do not have: their numbers stand apart
        row["note"] = f"offline runs differ in kind: {differs}"
    number = {**{k: row[k] for k in ("method", "model", "data set", "metric")},
              "published": [entry_numbers(e) for e in published],
              "course project": [entry_numbers(e) for e in course],
              "full profile here": full, "offline here": offline, "compare_with": compare_with,
              "offline differs": differs}
    return row, number


def entry_numbers(entry: dict) -> dict:
    """What a table keeps of an entry: its value and where it comes from."""
    return {k: entry.get(k) for k in ("value", "decimals", "setting", "paper", "source",
                                      "where", "url", "finding")}


def published_text(entry: dict) -> str:
    """``"<value> (<paper>, <where>)"``, the value as its source prints it; an entry without
    a number gives its finding in words instead."""
    value = (entry["finding"] if entry["value"] is None else
             format_value(entry["value"], entry.get("decimals")))
    return f"{value} ({entry.get('paper', entry['source'])}, {entry['where']})"


def format_value(value: float, decimals: int | None = None) -> str:
    """A published value as its source prints it: with ``decimals`` digits when the entry
    says (64.40), else one, or two where one would round it."""
    if decimals is None:
        decimals = 1 if round(value, 1) == value else 2
    return f"{value:.{decimals}f}"


def methods_of(results: list[dict], method: str) -> list[str]:
    """The project's methods that ``method`` names: itself, or its variants
    (``ensemble (mean)`` for ``ensemble``)."""
    names = dict.fromkeys(r["method"] for r in results)
    return [m for m in names if m == method or m.startswith(f"{method} (")]


def offline_numbers(results, method: str, metric: str, compare_with: str,
                    scores=None) -> list[dict]:
    """Per model (and variant) of ``results`` that ran ``method`` and per data family it ran
    (``paper_tasks``): ``corruption_error`` in the row's metric (accuracy = 100 - error);
    with ``compare_with="clean"`` the clean number is the value. ``scores`` (a dict) keeps
    each ``corruption_error`` for the next row that needs it."""
    scores = {} if scores is None else scores
    out = []
    for name in methods_of(results, method):
        for model in dict.fromkeys(r["model"] for r in results if r["method"] == name):
            families = paper_tasks(r["data"] for r in results
                                   if r["model"] == model and r["method"] == name)
            for family, tasks in families.items():
                key = (model, name, tuple(tasks))
                if key not in scores:
                    scores[key] = corruption_error(results, model, name, tasks)
                score = scores[key]
                out.append({"model": model, "method": name, "family": family,
                            **in_metric(score, metric, compare_with)})
    return out


def paper_tasks(names) -> dict[str, list[str]]:
    """Task names by data family (``""`` for the notebook's data set, ``photos`` for
    ``photos/...``), each family's clean task and its corruptions at the papers' severity:
    a name ending in ``/<n>`` is kept only when n is ``PAPER_SEVERITY``."""
    families = defaultdict(list)
    for name in dict.fromkeys(names):
        parts = name.split("/")
        severity = int(parts.pop()) if len(parts) > 1 and parts[-1].isdigit() else None
        family = parts[0] if len(parts) > 1 else ""
        if severity in (None, PAPER_SEVERITY):
            families[family].append(name)
    return dict(families)


def in_metric(score: dict, metric: str, compare_with: str) -> dict:
    """A ``corruption_error`` score as the row's value: error or accuracy (100 - error,
    interval flipped), of the corruptions or of the clean set."""
    value = score["clean_error"] if compare_with == "clean" else score["error"]
    low, high = (None, None) if compare_with == "clean" else (score["ci_low"], score["ci_high"])
    clean = score["clean_error"]
    if metric == "accuracy":
        value, clean = [None if v is None else 100 - v for v in (value, clean)]
        low, high = [None if v is None else 100 - v for v in (high, low)]
    return {"value": value, "ci_low": low, "ci_high": high, "clean": clean,
            "corruptions": score["corruptions"],
            "images": max(score["images"].values(), default=0)}


def offline_text(offline: list[dict], compare_with: str) -> str:
    """Per model: ``"<model>: <value> (<low>–<high>, <n> corruptions, clean <value>)"``, or
    ``"<model>: <value> (clean)"`` for a clean anchor; ``not run offline`` when none ran."""
    parts = []
    for o in offline:
        who = f"{o['model']} · {o['method']}" if "(" in o["method"] else o["model"]
        who += f" ({o['family']})" if o.get("family") else ""
        if o["value"] is None:
            parts.append(f"{who}: no corrupted data set (clean {o['clean']:.1f})"
                         if o["clean"] is not None else f"{who}: —")
        elif compare_with == "clean":
            parts.append(f"{who}: {o['value']:.1f} (clean)")
        else:
            clean = "" if o["clean"] is None else f", clean {o['clean']:.1f}"
            count = f"{o['corruptions']} corruption{'s' * (o['corruptions'] != 1)}"
            parts.append(f"{who}: {o['value']:.1f} ({o['ci_low']:.1f}–{o['ci_high']:.1f}, "
                         f"{count}{clean})")
    return "; ".join(parts) or "not run offline"


def full_numbers(full_results, method, model, dataset, metric, full_datasets) -> list[dict]:
    """The full profile's value per model of ``full_results`` that is the anchor's model
    (``ViT-B/16`` is ``CLIP ViT-B/16``) and ran ``method``: the mean over the corrupted data
    sets at the papers' severity for a corruption benchmark (``...-C``), else the accuracy
    on ``dataset``'s clean test set; from the saved summary rows (accuracies), so without an
    interval."""
    out = []
    for name in methods_of(full_results, method):
        for m in dict.fromkeys(r["model"] for r in full_results if r["method"] == name):
            if model not in (m, f"CLIP {m}"):
                continue
            cells = [r for r in full_results if r["model"] == m and r["method"] == name]
            if dataset.endswith("-C"):
                kept = paper_tasks(c["data"] for c in cells).get("", [])
                chosen = [c for c in cells if c["data"] in kept and not is_clean(c["data"])]
            else:
                slug = DATA_NAMES.get(dataset, dataset.lower())
                chosen = [c for c in cells if c["data"] == f"{slug}/clean" or
                          (c["data"] == "clean" and slug in (full_datasets or ()))]
            if chosen:
                error = float(np.mean([100 * (1 - c["accuracy"]) for c in chosen]))
                out.append({"model": m, "method": name, "tasks": len(chosen),
                            "value": error if metric == "error" else 100 - error})
    return out


def full_text(full: list[dict] | None) -> str:
    """The full profile's column: its values, or why there are none."""
    if full is None:
        return NOT_RUN
    if not full:
        return "not in the full profile's results"
    return "; ".join(f"{f['model']}: {f['value']:.1f}" for f in full)


def note(model, dataset, offline, full, here, compare_with) -> str:
    """How far the row's numbers can be compared."""
    parts = []
    if full:
        parts.append("full profile: the published model and data set, values comparable "
                     "where the settings agree")
    if offline:
        models = ", ".join(dict.fromkeys(o["model"] for o in offline))
        shift = "clean test set" if compare_with == "clean" else "corruptions, clean apart"
        parts.append(f"offline: different model and data ({models} on {here}, {shift}) vs "
                     f"{model} on {dataset}; compare directions, not values")
    return "; ".join(parts) or "nothing of ours to compare"


def direction(agrees, significant) -> str:
    """"same direction" / "opposite" / "not comparable"; when the evidence is cells with
    intervals and none of them excludes zero, says so."""
    if agrees is None:
        return "not comparable"
    text = "same direction" if agrees else "opposite"
    return text + (" (no interval excludes zero)" if significant == 0 else "")


def finding_table(entries: list[dict], evidence: dict, key, note: str):
    """Published findings in words (entries with a ``finding``, no number) with a study's own
    evidence beside each: ``evidence[key(entry)]`` is ``(agrees, text, significant)`` (None
    where the study measured nothing for it), ``note`` what differs from the paper's setting.
    For the studies (05, 06) whose papers state findings, not a number on a test set."""
    import pandas as pd

    rows = []
    for entry in entries:
        found = evidence.get(key(entry))
        rows.append({
            "method": entry["method"], "model": entry["model"], "data set": entry["dataset"],
            "setting": entry["setting"],
            "published": f"{entry.get('finding') or entry['value']} "
                         f"({entry.get('paper', entry['source'])}, {entry['where']})",
            "offline here": found[1] if found else "not measured here",
            "direction": direction(*found[::2]) if found else "not comparable",
            "note": note})
    return pd.DataFrame(rows)


def finding_lines(table) -> list[str]:
    """One sentence per row of :func:`finding_table`: the paper's setting, our numbers and
    whether they point the paper's way."""
    return [f"{row['setting'].capitalize()}: {row['offline here']}: **{row['direction']}**."
            for row in table.to_dict("records")]
