"""A notebook's closing section, "What we found", computed from its numbers: sentences whose
strength follows the evidence, methods that equal another said to be identical (not counted as
separate gains), the Limitations paragraph, and the comparison with the published anchors.

Why: a conclusion typed by hand does not move with the results and tends to say more than the
intervals allow; these functions word a change by its interval and its per-data-set tests.
"""

from __future__ import annotations

import math
import numbers
import re

from .findings import LEVEL, SIGNIFICANCE, verdict

# A change whose interval excludes zero but is under this (in accuracy, 0 to 1) is "small".
SMALL = 0.01


def identical_pairs(results: list[dict], methods=None, agreement: float = 1.0) -> list[dict]:
    """Per model, each method whose predictions equal an earlier method's (in the order of
    ``methods``, else of first appearance) on every image of every data set both ran:
    ``{"model", "method", "same_as", "images", "total", "tasks"}`` (``images`` equal of
    ``total``), ``same_as`` the first such method (so Source, then NormAdapt, absorbs the
    rest). With ``agreement`` < 1, also a method that agrees on at least that share of the
    images (``images`` < ``total``: the same predictions but for a few). Cells without
    predictions are not compared; a pair sharing no data set is not a pair."""
    order = list(methods or dict.fromkeys(r["method"] for r in results))
    cells: dict = {}
    for r in results:
        if r["method"] in order and "predictions" in r:
            cells.setdefault(r["model"], {}).setdefault(r["method"], {})[r["data"]] = r
    pairs = []
    for model, by_method in cells.items():
        ran = [m for m in order if m in by_method]
        for i, method in enumerate(ran):
            for earlier in ran[:i]:
                same, total, tasks = _same_predictions(by_method[earlier], by_method[method])
                if tasks and same >= agreement * total:
                    pairs.append({"model": model, "method": method, "same_as": earlier,
                                  "images": same, "total": total, "tasks": tasks})
                    break
    return pairs


def _same_predictions(first: dict, second: dict) -> tuple[int, int, int]:
    """(images predicted alike, images, data sets) over the data sets both ran."""
    shared = [t for t in first if t in second]
    same = sum(int(a == b) for t in shared
               for a, b in zip(first[t]["predictions"], second[t]["predictions"]))
    return same, sum(len(first[t]["predictions"]) for t in shared), len(shared)


def strength(row: dict) -> str:
    """How strongly a comparison row (``findings.compare``) supports a change: "no detectable
    change" when its interval holds zero; else "gain"/"loss", called "small" when under
    ``SMALL`` or when no data set's McNemar test finds it on its own, "clear" when at least
    half of them do."""
    kind = verdict(row)
    if kind == "no detectable change":
        return kind
    significant = row["better_on"] if kind == "gain" else row["worse_on"]
    if abs(row["change"]) < SMALL or significant == 0:
        return f"small {kind}"
    if significant * 2 >= row["tasks"]:
        return f"clear {kind}"
    return kind


def what_we_found(rows: list[dict], identical: list[dict] = (),
                  explanations: dict | None = None) -> list[str]:
    """One sentence per comparison row (``findings.compare_all``), led by how many comparisons
    there are (how many intervals would exclude zero by chance). A method that
    ``identical_pairs`` found equal to another is said to be identical, not a separate gain;
    ``explanations[(model, method)]``, a sentence the notebook computes, is appended to a
    null or negative result (and only there)."""
    rows, explanations = list(rows), explanations or {}
    same = {(p["model"], p["method"]): p for p in identical}
    if not rows:
        return ["Nothing to compare: no method ran beside its baseline."]
    found = [_preamble(rows)]
    for row in rows:
        pair = same.get((row["model"], row["method"]))
        if pair:
            found.append(_identical_sentence(row, pair))
            continue
        text = _change_sentence(row)
        explanation = explanations.get((row["model"], row["method"]))
        if explanation and verdict(row) != "gain":
            text += " " + explanation.strip()
        found.append(text)
    return found


def _preamble(rows: list[dict]) -> str:
    n = len(rows)
    tests = sum(r["tasks"] for r in rows)
    chance = (1 - LEVEL) * n
    return (f"{n} comparison{'s' if n > 1 else ''} against "
            f"{', '.join(dict.fromkeys(r['baseline'] for r in rows))}, each with a "
            f"{LEVEL:.0%} paired-bootstrap interval (about {chance:.1f} would exclude zero by "
            f"chance alone) and {tests:,} per-data-set McNemar tests at p < {SIGNIFICANCE} "
            f"(uncorrected: about {SIGNIFICANCE * tests:.1f} by chance).")


def _identical_sentence(row: dict, pair: dict) -> str:
    total = pair.get("total", pair["images"])
    how = ("is identical to" if pair["images"] == total else
           "predicts as")
    return (f"{row['model']} · **{row['method']}** {how} {pair['same_as']} on "
            f"{pair['images']:,} of {total:,} images ({_sets(pair['tasks'])}): not a "
            f"separate result.")


def _change_sentence(row: dict) -> str:
    kind = strength(row)
    significant = row["better_on"] + row["worse_on"]
    return (f"{row['model']} · **{row['method']}** vs {row['baseline']}: **{kind}**, mean "
            f"accuracy {row['baseline_accuracy']:.3f} → {row['accuracy']:.3f} "
            f"({row['change']:+.3f}, {LEVEL:.0%} CI {row['ci_low']:+.3f} to "
            f"{row['ci_high']:+.3f}; {row['images']:,} images × {_sets(row['tasks'])}); "
            f"significant on {significant} of {row['tasks']} data sets (better on "
            f"{row['better_on']}, worse on {row['worse_on']}).")


def _sets(n: int) -> str:
    return f"{n} data sets" if n != 1 else "1 data set"


def limitations(items: list[str]) -> str:
    """The Limitations paragraph (Markdown): the notebook's sentences (stand-ins, one seed,
    CPU, what the full profile would add), each ended with a full stop, as one paragraph."""
    sentences = [s.strip() for s in items if s and s.strip()]
    if not sentences:
        raise ValueError("limitations() needs at least one sentence: say which stand-ins, "
                         "seeds and device the numbers come from and what the full profile "
                         "would add.")
    return " ".join(s if s[-1] in ".!?" else s + "." for s in sentences)


# Column names an anchor table may use for each field (``anchors.anchor_table``), first found.
COLUMNS = {"method": ("method",), "model": ("model", "model family"),
           "data set": ("data set", "dataset"), "metric": ("metric",),
           "published": ("published", "published value", "value"),
           "offline": ("offline here", "offline"), "note": ("note", "comparability")}


def anchor_lines(table) -> list[str]:
    """For an anchor table (``anchors.anchor_table``: one row per method, model, data set and
    metric, the published number and ours offline), one sentence per method other than Source
    comparing the direction of its change over Source (the same model, data set and metric)
    offline with the published change: "same direction", "opposite", or "not comparable
    because ..." (no Source row, no published or offline number, a missing column). Error is
    lower-is-better, accuracy higher. The numbers come from ``table.attrs["rows"]`` (by the
    table's index, so a filtered table keeps its rows' numbers) when the table keeps them,
    else from the formatted cells."""
    records = table.to_dict("records") if hasattr(table, "to_dict") else list(table)
    if not records:
        return ["No published number anchors this notebook."]
    columns = {field: _column(records[0], names) for field, names in COLUMNS.items()}
    if not columns["method"]:
        return ["Not comparable because the anchor table has no method column."]
    kept = getattr(table, "attrs", {}).get("rows") or []
    index = list(table.index) if hasattr(table, "index") else range(len(records))
    rows = [_anchor_row(r, columns, kept[i] if isinstance(i, int) and i < len(kept) else None)
            for i, r in zip(index, records)]
    return [_anchor_line(row, _source_of(row, rows)) for row in rows
            if row["method"].lower() != "source"]


def _column(record: dict, names) -> str | None:
    lower = {str(k).lower(): k for k in record}
    return next((lower[n] for n in names if n in lower), None)


def _anchor_row(record: dict, columns: dict, numbers: dict | None) -> dict:
    """A row of the anchor table as plain values: the published number (the first paper's),
    the offline numbers by model, and which columns were missing."""
    def cell(field):
        return record.get(columns[field]) if columns[field] else None

    row = {"method": str(cell("method")), "model": str(cell("model") or ""),
           "data set": str(cell("data set") or ""),
           "metric": re.sub(r"\s*\(%\)", "", str(cell("metric") or "error")),
           "note": cell("note"), "missing": [COLUMNS[f][0] for f in ("published", "offline")
                                             if not columns[f]],
           "differs": (numbers or {}).get("offline differs")}
    if numbers:
        published = [p.get("value") for p in numbers.get("published") or []]
        row["published"] = next((_number(v) for v in published if _number(v) is not None),
                                None)
        row["offline"] = {_offline_key(o): (o["value"], o.get("ci_low"), o.get("ci_high"))
                          for o in numbers.get("offline here") or []
                          if o.get("value") is not None}
    else:
        row["published"], row["offline"] = _number(cell("published")), _numbers(
            cell("offline"))
    return row


def _offline_key(number: dict) -> str:
    """How ``anchors.offline_text`` names an offline number: the model, with the method's
    variant when it has one (``ensemble (mean)``)."""
    method = number.get("method", "")
    return f"{number['model']} · {method}" if "(" in method else number["model"]


def _source_of(row: dict, rows: list[dict]) -> dict | None:
    return next((r for r in rows if r["method"].lower() == "source" and all(
        r[k] == row[k] for k in ("model", "data set", "metric"))), None)


def _anchor_line(row: dict, source: dict | None) -> str:
    where = " on ".join(x for x in (row["model"], row["data set"]) if x)
    who = f"{where} · **{row['method']}**" if where else f"**{row['method']}**"
    reason = _not_comparable(row, source)
    if reason:
        return f"{who}: not comparable because {reason.rstrip('.')}."
    lower_better = "acc" not in row["metric"].lower()
    paper = _direction(row["published"] - source["published"], lower_better)
    pairs = {k: (source["offline"].get(k) or source["offline"][k.split(" · ")[0]], v)
             for k, v in row["offline"].items()
             if k in source["offline"] or k.split(" · ")[0] in source["offline"]}
    if not pairs:
        return f"{who}: not comparable because no offline model ran both it and Source."
    ours = {k: _direction(after[0] - before[0], lower_better) for k, (before, after)
            in pairs.items() if not _overlap(before, after)}
    change = ", ".join(f"{_label(k)}{before[0]:.1f} → {after[0]:.1f}"
                       for k, (before, after) in pairs.items())
    if not ours:
        return (f"{who}: not comparable because the offline change ({change}) lies within the "
                f"95% intervals of Source and the method on every model.")
    agree = sum(d == paper for d in ours.values())
    verdict_text = ("same direction" if agree == len(ours) else "opposite" if not agree else
                    f"same direction on {agree} of {len(ours)} offline models")
    unclear = len(pairs) - len(ours)
    if unclear:
        verdict_text += f"; {unclear} within the intervals"
    return (f"{who} ({row['metric']}): published {source['published']:.1f} → "
            f"{row['published']:.1f} ({paper}); offline {change}: **{verdict_text}**.")


def _overlap(first: tuple, second: tuple) -> bool:
    """Whether two (value, low, high) numbers' intervals overlap (False when either has
    none): an offline change whose intervals overlap is not called a direction."""
    if None in (*first[1:], *second[1:]):
        return False
    return first[1] <= second[2] and second[1] <= first[2]


def _not_comparable(row: dict, source: dict | None) -> str | None:
    if row["missing"]:
        return f"the anchor table has no '{row['missing'][0]}' column"
    if row.get("differs"):
        return row["differs"]
    if source is None:
        return "the table has no Source row for this model, data set and metric"
    if row["published"] is None or source["published"] is None:
        return "no published Source and method number on the same setting"
    if not row["offline"] or not source["offline"]:
        note = str(row["note"] or "").strip().rstrip(".")
        return note or "this project did not run it and Source offline"
    return None


def _direction(delta: float, lower_better: bool) -> str:
    if delta == 0:
        return "no change"
    return "better" if (delta < 0) == lower_better else "worse"


def _label(key) -> str:
    return f"{key} " if key else ""


NUMBER = r"[-+]?\d+(?:\.\d+)?"


def _number(value) -> float | None:
    """A float from a number or the first number of a string ("41.3 (Wang et al.)")."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return None if math.isnan(value) else float(value)
    match = re.search(NUMBER, str(value)) if isinstance(value, str) else None
    return float(match.group()) if match else None


def _numbers(value) -> dict:
    """Offline numbers by model, each (value, low, high): ``{None: (x, None, None)}`` for a
    number; for a string of "model: x (low–high, ...)" parts separated by ';' or newlines
    (``anchors.offline_text``), ``{model: (x, low, high)}``; ``{}`` for none."""
    if not isinstance(value, str):
        number = _number(value)
        return {} if number is None else {None: (number, None, None)}
    parts = [p for p in re.split(r"[;\n]", value) if p.strip()]
    out = {}
    for part in parts:
        named = re.match(rf"\s*([A-Za-z][^:]*?):\s*({NUMBER})", part)
        interval = re.search(rf"\(\s*({NUMBER})\s*[–-]\s*({NUMBER})", part)
        low, high = (float(interval.group(1)), float(interval.group(2))) if interval \
            else (None, None)
        if named:
            out[named.group(1).strip()] = (float(named.group(2)), low, high)
        elif _number(part) is not None and len(parts) == 1:
            out[None] = (_number(part), low, high)
    return out


# The report's fixed order of methods (Source first), as the anchor tables order them; a
# variant ("ensemble (mean)") ranks with its method, unknown methods last in given order.
METHOD_ORDER = ("source", "norm", "tent", "eata", "sar", "memo", "memo_plus", "prompt", "coop",
                "tpt", "zero", "tda", "ensemble", "transfer", "linear", "full", "vpt-shallow",
                "vpt-deep")
MEASURES = ("accuracy", "ece", "mean_confidence")


def method_order(methods) -> list[str]:
    """``methods`` (each once) in ``METHOD_ORDER``."""
    methods = list(dict.fromkeys(methods))

    def rank(method):
        base = method.split(" (")[0]
        return METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER)

    return sorted(methods, key=lambda m: (rank(m), methods.index(m)))


def is_clean(task: str) -> bool:
    """Whether a task is a clean test set (``clean``, ``photos/clean``), not a corruption."""
    return task == "clean" or task.endswith("/clean")


def equal_methods(rows: list[dict], decimals: int = 3) -> list[dict]:
    """For results files' per-data-set rows (model, data, method, accuracy, ece,
    mean_confidence; no per-image predictions): per model, each method whose accuracy, ECE and
    mean confidence equal an earlier method's (``METHOD_ORDER``) to ``decimals`` on every data
    set both ran: ``{"model", "method", "same_as", "tasks"}``. What the report collapses into
    one row; ``identical_pairs`` is the per-image test where predictions are at hand."""
    table: dict = {}
    for r in rows:
        if all(r.get(k) is not None for k in MEASURES):
            key = tuple(round(float(r[k]), decimals) for k in MEASURES)
            table.setdefault(r["model"], {}).setdefault(r["method"], {})[r["data"]] = key
    found = []
    for model, by_method in table.items():
        ran = method_order(by_method)
        for i, method in enumerate(ran):
            for earlier in ran[:i]:
                shared = [t for t in by_method[method] if t in by_method[earlier]]
                if shared and all(by_method[method][t] == by_method[earlier][t] for t in shared):
                    found.append({"model": model, "method": method, "same_as": earlier,
                                  "tasks": len(shared)})
                    break
    return found


def method_table(rows: list[dict], equal: list[dict] = ()) -> list[dict]:
    """One row per model and method of results files' per-data-set rows, methods in
    ``METHOD_ORDER``: the mean top-1 error in percent over the corrupted data sets (clean ones
    apart) and their count, the clean error, the mean ECE over the corrupted data sets and
    the mean seconds per image over all; a method of ``equal`` is left out and named in its
    ``same_as`` row's ``identical`` list."""
    merged = {(e["model"], e["same_as"]): [] for e in equal}
    for e in equal:
        merged[(e["model"], e["same_as"])].append(e["method"])
    dropped = {(e["model"], e["method"]) for e in equal}
    models = list(dict.fromkeys(r["model"] for r in rows))
    out = []
    for model in models:
        mine = [r for r in rows if r["model"] == model]
        for method in method_order(r["method"] for r in mine):
            if (model, method) in dropped:
                continue
            cells = [r for r in mine if r["method"] == method and r.get("accuracy") is not None]
            out.append({"model": model, "method": method, **_errors(cells),
                        "identical": merged.get((model, method), [])})
    return out


def _errors(cells: list[dict]) -> dict:
    corrupted = [c for c in cells if not is_clean(c["data"])]
    clean = [c for c in cells if is_clean(c["data"])]

    def mean(chosen, field, scale=1.0, offset=0.0):
        values = [offset + scale * c[field] for c in chosen if c.get(field) is not None]
        return float(sum(values) / len(values)) if values else None

    return {"error": mean(corrupted, "accuracy", -100, 100), "corruptions": len(corrupted),
            "clean_error": mean(clean, "accuracy", -100, 100),
            "ece": mean(corrupted or clean, "ece"),
            "seconds": mean(cells, "seconds_per_sample")}
