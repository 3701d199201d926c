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


def identical_pairs(results: list[dict], methods=None) -> list[dict]:
    """Per model, each method whose predictions equal an earlier method's (in the order of
    ``methods``, else of first appearance) on every image of every data set both ran:
    ``{"model", "method", "same_as", "images", "tasks"}``, ``same_as`` the first such method
    (so Source, then NormAdapt, absorbs the rest). Cells without predictions are not compared;
    a pair sharing no data set is not identical."""
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
                images, tasks = _same_predictions(by_method[earlier], by_method[method])
                if tasks:
                    pairs.append({"model": model, "method": method, "same_as": earlier,
                                  "images": images, "tasks": tasks})
                    break
    return pairs


def _same_predictions(first: dict, second: dict) -> tuple[int, int]:
    """(images, data sets) over the data sets both ran when every prediction agrees, else
    (0, 0)."""
    shared = [t for t in first if t in second]
    for task in shared:
        if list(first[task]["predictions"]) != list(second[task]["predictions"]):
            return 0, 0
    return sum(len(first[t]["predictions"]) for t in shared), len(shared)


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
    return (f"{row['model']} · **{row['method']}** is identical to {pair['same_as']} on "
            f"{pair['images']:,} of {pair['images']:,} images ({_sets(pair['tasks'])}, every "
            f"prediction the same): not a separate result.")


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
COLUMNS = {"method": ("method",), "model": ("model family", "model"),
           "metric": ("metric",), "published": ("published", "published value", "value"),
           "offline": ("offline here", "offline", "this project offline"),
           "note": ("comparability", "note", "comparable")}


def anchor_lines(table) -> list[str]:
    """For an anchor table (``anchors.anchor_table``: one row per method and model family, the
    published number and ours offline), one sentence per method other than Source comparing the
    direction of its change over Source offline with the published change: "same direction",
    "opposite", or "not comparable because ..." (no published or offline Source number, a
    missing column, no offline run). Error is lower-is-better, accuracy higher. A missing
    column makes every row "not comparable", naming the column."""
    records = table.to_dict("records") if hasattr(table, "to_dict") else list(table)
    if not records:
        return ["No published number anchors this notebook."]
    columns = {field: _column(records[0], names) for field, names in COLUMNS.items()}
    if not columns["method"]:
        return ["Not comparable because the anchor table has no method column."]
    lines = []
    for row in records:
        method = str(row[columns["method"]])
        if method.lower() == "source":
            continue
        source = _source_row(records, row, columns)
        lines.append(_anchor_line(row, source, columns))
    return lines


def _column(record: dict, names) -> str | None:
    lower = {str(k).lower(): k for k in record}
    return next((lower[n] for n in names if n in lower), None)


def _source_row(records, row, columns) -> dict | None:
    model = columns["model"]
    for other in records:
        if str(other[columns["method"]]).lower() == "source" and (
                not model or other[model] == row[model]):
            return other
    return None


def _anchor_line(row: dict, source: dict | None, columns: dict) -> str:
    method, model = row[columns["method"]], row.get(columns["model"], "") if columns["model"] \
        else ""
    who = f"{model} · **{method}**" if model else f"**{method}**"
    metric = str(row.get(columns["metric"], "error")) if columns["metric"] else "error"
    lower_better = "acc" not in metric.lower()
    reason = _not_comparable(row, source, columns)
    if reason:
        return f"{who}: not comparable because {reason}."
    published = _number(row[columns["published"]]), _number(source[columns["published"]])
    offline = _numbers(row[columns["offline"]]), _numbers(source[columns["offline"]])
    paper = _direction(published[0] - published[1], lower_better)
    ours = {k: _direction(v - offline[1][k], lower_better)
            for k, v in offline[0].items() if k in offline[1]}
    if not ours:
        return f"{who}: not comparable because no offline model ran both it and Source."
    agree = [k for k, d in ours.items() if d == paper]
    verdict_text = ("same direction" if len(agree) == len(ours) else
                    "opposite" if not agree else
                    f"same direction on {len(agree)} of {len(ours)} offline models")
    change = ", ".join(f"{_label(k)}{offline[1][k]:.1f} → {v:.1f}"
                       for k, v in offline[0].items() if k in offline[1])
    return (f"{who} ({metric}): published {published[1]:.1f} → {published[0]:.1f} "
            f"({paper}); offline {change}: **{verdict_text}**.")


def _not_comparable(row, source, columns) -> str | None:
    for field in ("published", "offline"):
        if not columns[field]:
            return f"the anchor table has no '{COLUMNS[field][0]}' column"
    if source is None:
        return "the table has no Source row for this model"
    if _number(row[columns["published"]]) is None or _number(
            source[columns["published"]]) is None:
        return "no published Source and method number on the same setting"
    if not _numbers(row[columns["offline"]]) or not _numbers(source[columns["offline"]]):
        note = row.get(columns["note"]) if columns["note"] else None
        return (str(note).rstrip(".") if note else
                "this project did not run it offline")
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
    """Offline numbers by model: ``{None: x}`` for a number, ``{model: x}`` for a string of
    "model: x (interval)" parts separated by ';' or newlines, ``{}`` for none."""
    if isinstance(value, dict):
        return {k: float(v) for k, v in value.items() if _number(v) is not None}
    if not isinstance(value, str):
        number = _number(value)
        return {} if number is None else {None: number}
    parts = [p for p in re.split(r"[;\n]", value) if p.strip()]
    out = {}
    for part in parts:
        named = re.match(rf"\s*([A-Za-z][^:]*?):\s*({NUMBER})", part)
        if named:
            out[named.group(1).strip()] = float(named.group(2))
        elif _number(part) is not None and len(parts) == 1:
            out[None] = _number(part)
    return out
