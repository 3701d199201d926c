"""The synthesis across notebooks that opens the report and the README's results block, from
the published results files alone: one table of every method (error over the corruptions,
ECE, seconds per image; methods equal to another collapsed into its row), what the offline
report shows (computed from the comparisons) and what it cannot (computed from which
profiles were published, the models, seeds and devices). Every number is formatted from the
results files, so the synthesis moves with them.
"""

from __future__ import annotations

from pathlib import Path

from . import conclusions, paths

NOT_COMPUTED = "not yet computed: rerun the notebook"


def method_rows(results_by_name: dict[str, dict]) -> list[dict]:
    """Every notebook's methods (``conclusions.method_table`` of its per-data-set rows),
    methods equal to another to three decimals collapsed, with the interval of the error
    where the notebook's anchor table kept one (``anchors`` key). Notebooks without
    per-data-set rows (another kind of study) have none."""
    out = []
    for name, results in results_by_name.items():
        rows = [r for r in results.get("results") or [] if isinstance(r, dict)
                and {"model", "method", "data"} <= set(r)]
        if not rows:
            continue
        intervals = error_intervals(results)
        for row in conclusions.method_table(rows, conclusions.equal_methods(rows)):
            low, high = intervals.get((row["model"], row["method"]), (None, None))
            out.append({"notebook": name, **row, "ci_low": low, "ci_high": high})
    return out


def error_intervals(results: dict) -> dict:
    """(model, method) -> the 95% interval of the error over the corruptions that the
    notebook's anchor table computed (``anchors.corruption_error``), where it has one."""
    found = {}
    for row in results.get("anchors") or []:
        numbers = row.get("numbers") if isinstance(row, dict) else None
        if not numbers or not str(numbers.get("metric", "error")).startswith("error") or \
                numbers.get("compare_with", "corruptions") != "corruptions":
            continue
        for o in numbers.get("offline here") or []:
            if o.get("ci_low") is not None:
                found[(o["model"], o["method"])] = (o["ci_low"], o["ci_high"])
    return found


def table(rows: list[dict], with_notebook: bool = True) -> list[dict]:
    """``method_rows`` as formatted table rows; a notebook or model that repeats the row
    above is left blank, so that each group reads as one."""
    out, above = [], {}
    for r in rows:
        error = "—" if r["error"] is None else f"{r['error']:.1f}"
        if r["error"] is not None and r.get("ci_low") is not None:
            error += f" ({r['ci_low']:.1f}–{r['ci_high']:.1f})"
        cells = {"notebook": r["notebook"][:2]} if with_notebook else {}
        cells.update({
            "model": r["model"], "method": r["method"],
            "error over the corruptions (%)": error, "corruptions": str(r["corruptions"]),
            "clean error (%)": "—" if r["clean_error"] is None else f"{r['clean_error']:.1f}",
            "ECE": "—" if r["ece"] is None else f"{r['ece']:.3f}",
            "s / image": seconds(r["seconds"]),
            "identical": (f"{', '.join(r['identical'])}: identical to {r['method']}"
                          if r["identical"] else "")})
        shown = dict(cells)
        if above.get("notebook") == cells.get("notebook"):
            if with_notebook:
                shown["notebook"] = ""
            if above.get("model") == cells["model"]:
                shown["model"] = ""
        above = cells
        out.append(shown)
    return out


def seconds(value) -> str:
    """Seconds per image: three decimals, or two significant digits below 0.01."""
    if value is None:
        return "—"
    return f"{value:.3f}" if value == 0 or value >= 0.01 else f"{value:.2g}"


def full_profile_published(report_dir: Path) -> bool:
    """Whether results of the full profile were published (``report/full/results/`` or
    ``report/results/full/``)."""
    return any(any(folder.glob("[0-9]*.json"))
               for folder in (report_dir / "full" / "results", report_dir / "results" / "full")
               if folder.is_dir())


def shows(results_by_name: dict[str, dict]) -> list[str]:
    """What the offline report shows, as three or four sentences computed from the
    notebooks' comparisons (each a method against its baseline with a 95% interval; a method
    equal to another counted once) and from the methods that equal another."""
    same = [(name, e) for name, res in results_by_name.items()
            for e in conclusions.equal_methods(res.get("results") or [])]
    dropped = {(name, e["model"], e["method"]) for name, e in same}
    rows = [{**r, "notebook": name} for name, res in results_by_name.items()
            for r in res.get("comparisons") or []
            if (name, r["model"], r["method"]) not in dropped]
    out = []
    if rows:
        kinds = [conclusions.strength(r) for r in rows]
        gains = [r for r, k in zip(rows, kinds) if k.endswith("gain")]
        losses = [r for r, k in zip(rows, kinds) if k.endswith("loss")]
        clear = sum(k == "clear gain" for k in kinds)
        notebooks = len({r["notebook"] for r in rows})
        out.append(
            f"{len(rows)} comparisons of a method with its baseline on the same test images, "
            f"in {notebooks} notebooks: {len(gains)} gains ({clear} clear: significant on at "
            f"least half the data sets), {len(losses)} losses and "
            f"{len(rows) - len(gains) - len(losses)} without a detectable change (95% "
            f"intervals; about {0.05 * len(rows):.1f} would exclude zero by chance).")
        if gains:
            out.append("Largest gains: " + "; ".join(_changes(
                sorted(gains, key=lambda r: -r["ci_low"]))) + ".")
        if losses:
            out.append("Largest losses: " + "; ".join(_changes(
                sorted(losses, key=lambda r: r["ci_high"]))) + ".")
    if same:
        groups: dict = {}
        for name, e in same:
            groups.setdefault((name, e["same_as"], e["tasks"]), {}).setdefault(
                e["model"], []).append(e["method"])
        merged: dict = {}
        for (name, same_as, tasks), models in groups.items():
            for model, methods in models.items():
                merged.setdefault((name, same_as, tasks, tuple(methods)), []).append(model)
        out.append(f"{len(same)} method rows equal another method to three decimals "
                   f"(accuracy, ECE and mean confidence) on every data set, so each is one "
                   f"row in the table, not a separate gain: " + "; ".join(
                       f"{', '.join(methods)} = {same_as} on {' and '.join(models)} "
                       f"({name[:2]}, {tasks} data sets)"
                       for (name, same_as, tasks, methods), models in merged.items()) + ".")
    return out


def _changes(rows: list[dict], count: int = 3) -> list[str]:
    """The first ``count`` distinct changes of ``rows``; methods with the same change and
    interval on the same model (to three decimals) named together."""
    groups: dict = {}
    for r in rows:
        key = (r["notebook"], r["model"], r["baseline"],
               *(round(r[k], 3) for k in ("change", "ci_low", "ci_high")))
        groups.setdefault(key, []).append(r["method"])
    return [f"{', '.join(conclusions.method_order(methods))} vs {baseline} on {model} "
            f"({notebook[:2]}) {change:+.3f} ({low:+.3f} to {high:+.3f})"
            for (notebook, model, baseline, change, low, high), methods
            in list(groups.items())[:count]]


def cannot_show(results_by_name: dict[str, dict], report_dir: Path) -> list[str]:
    """What the offline report cannot show, computed from what was published: the full
    profile's numbers (unless published), the papers' models (stand-ins trained here), more
    than the seeds run, GPU timings."""
    out = []
    if full_profile_published(report_dir):
        out.append("The full profile's results are published beside these (papers' models "
                   "and data).")
    else:
        out.append("The full profile has not been run here (no full-profile results are "
                   "published): no number in the papers' setting (their models, data sets and "
                   "batch sizes); in each anchor table the column 'full profile here' says "
                   "so, and only the published numbers are at the papers' scale.")
    models = sorted({r["model"] for res in results_by_name.values()
                     for r in res.get("results") or [] if isinstance(r, dict) and "model" in r})
    standins = [m for m in models if m.startswith("small-")]
    if standins:
        out.append(f"{len(standins)} of the {len(models)} models of the method grids are "
                   f"stand-ins trained here ({', '.join(standins)}), not the papers' "
                   f"weights: compare the direction of a change with a paper, not its value.")
    seeds = sorted({str(res.get("parameters", {}).get("seed")) for res in
                    results_by_name.values() if res.get("parameters", {}).get("seed")
                    is not None})
    if seeds:
        out.append(f"{'One seed' if len(seeds) == 1 else f'{len(seeds)} seeds'} "
                   f"({', '.join(seeds)}): the intervals cover the test images drawn, not "
                   f"the randomness of training or adaptation.")
    devices = sorted({str(res.get("run", {}).get("device")) for res in
                      results_by_name.values() if res.get("run", {}).get("device")})
    if devices and all(d.startswith("cpu") for d in devices):
        out.append("Every notebook ran on the CPU: seconds per image are CPU times of these "
                   "models, not the papers' GPU times.")
    return out


def run_times(results_by_name: dict[str, dict]) -> str:
    """The notebooks' run times from their results files (the one source the SUMMARY, the
    README and the report share), and their sum."""
    times = {name: res.get("seconds") for name, res in results_by_name.items()
             if res.get("seconds") is not None}
    if not times:
        return "No run time recorded."
    return ("Run times, from the results files: " + " · ".join(
        f"{name[:2]} {t / 60:.1f} min" for name, t in times.items())
        + f" ({sum(times.values()) / 60:.1f} min of notebook time in all; the batch runs "
          f"notebooks side by side, so the wall-clock time is shorter).")


def conclusions_of(results: dict) -> dict | None:
    """A notebook's conclusions (``NotebookRun.show_conclusions``), or None when its results
    file predates them."""
    found = results.get("conclusions")
    return found if isinstance(found, dict) and found.get("found") else None


def anchor_rows(results: dict) -> list[dict] | None:
    """A notebook's anchor table rows (``NotebookRun.show_anchors``) without the numbers
    behind them, or None when its results file predates them."""
    rows = results.get("anchors")
    if not isinstance(rows, list):
        return None
    return [{k: v for k, v in r.items() if k != "numbers"} for r in rows if isinstance(r, dict)]


def figure_file(results: dict, profile: str = "offline") -> Path | None:
    """The headline figure's file: ``figures/`` for the offline profile (committed), else
    ``FIGURES/<profile>``."""
    name = (results.get("headline") or {}).get("figure")
    if not name:
        return None
    folder = paths.REPO / "figures" if profile == "offline" else paths.FIGURES / profile
    return folder / f"{name}.png"
