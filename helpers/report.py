"""The published report, written from a batch run so that no number in it is typed by hand:

- ``report/``: the executed notebooks of the profile (outputs included), each also as HTML,
  their results files (``report/results/``), the batch summary, and ``report/index.html``,
  the summary page linking every notebook. GitHub renders the notebooks; the HTML opens
  anywhere.
- the README's results block, between two markers: per notebook its findings with their
  intervals, its headline table and figure, from ``report/results/``.

    python -m helpers.report            # after python -m helpers.batch --profile offline
    python -m helpers.report --readme   # the README block only, from the committed report/
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import sys
from pathlib import Path

import nbformat

from . import paths

REPORT = paths.REPO / "report"
README = paths.REPO / "README.md"
BEGIN = ("<!-- results:begin (written by `python -m helpers.report`: edit the notebooks, "
         "not this block) -->")
END = "<!-- results:end -->"
# Per-cell metadata that changes with every execution (timestamps, durations) but says nothing
# about the results: dropped, so that a notebook run again with the same outputs is the same file.
VOLATILE_CELL_METADATA = ("execution", "papermill")


def _write_text(path: Path, text: str) -> None:
    """Atomically, and only when the content changes (an unchanged report keeps its files)."""
    if path.is_file() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def is_progress(output) -> bool:
    """Whether an output is a text progress bar's update (tqdm without widgets writes each
    redraw to stderr, starting with a carriage return) or the blank line that closes it: a
    terminal overwrites them, a saved notebook keeps them all (2,800 of them, 380 KB, in
    notebook 01's fresh offline run), and a blank one shows as an empty error box."""
    text = output.get("text", "")
    text = "".join(text) if isinstance(text, list) else text
    return (output.get("output_type") == "stream" and output.get("name") == "stderr"
            and (text.startswith("\r") or not text.strip()))


def stable_notebook(notebook) -> nbformat.NotebookNode:
    """The executed notebook without its run-to-run metadata and progress bars, its figures
    compacted."""
    for cell in notebook.cells:
        for key in VOLATILE_CELL_METADATA:
            cell.metadata.pop(key, None)
        if "outputs" in cell:
            cell.outputs = [output for output in cell.outputs if not is_progress(output)]
        for output in cell.get("outputs", []):
            if "image/png" in output.get("data", {}):
                output.data["image/png"] = compact_png(output.data["image/png"])
    notebook.metadata.pop("papermill", None)
    return notebook


def compact_png(data: str) -> str:
    """A base64 PNG as an optimised 256-colour PNG when that is smaller (about 3x for plots):
    the report is read on GitHub and in browsers, where a palette is indistinguishable, and
    it keeps the published report small. Deterministic: the same figure gives the same bytes;
    a palette PNG is left as it is, so publishing a published notebook again changes nothing."""
    from PIL import Image

    original = base64.b64decode(data)
    image = Image.open(io.BytesIO(original))
    if image.mode == "P":
        return data
    image = image.convert("RGB")
    palette = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                             dither=Image.Dither.NONE)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG", optimize=True)
    smaller = buffer.getvalue() if len(buffer.getvalue()) < len(original) else original
    return base64.b64encode(smaller).decode("ascii")


def _html(notebook, title: str) -> str:
    from nbconvert import HTMLExporter

    notebook.metadata["title"] = title
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(notebook)
    return body


def _title(notebook) -> str:
    """The notebook's first Markdown heading, without its '#'s."""
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            match = re.search(r"^#+\s*(.+)$", cell.source, re.M)
            if match:
                return match.group(1).strip()
    return "notebook"


def finished(profile: str) -> list[str]:
    """The profile's notebooks whose last batch run succeeded and wrote its results file."""
    from .batch import record_file

    names = []
    for executed in sorted((paths.RUNS / profile).glob("[0-9]*.ipynb")):
        record = record_file(profile, executed)
        if record.is_file() and (paths.RESULTS / profile / f"{executed.stem}.json").is_file():
            names.append(executed.stem)
    return names


def publish(profile: str = "offline", report_dir: Path = REPORT) -> list[str]:
    """Copy the profile's finished notebooks (executed), their results and the batch summary
    into ``report_dir``, with an HTML page per notebook and ``index.html``; returns their names.
    Files of notebooks that did not finish are left as they were (an earlier run's)."""
    names = finished(profile)
    for name in names:
        executed = nbformat.read(paths.RUNS / profile / f"{name}.ipynb", as_version=4)
        notebook = stable_notebook(executed)
        _write_text(report_dir / f"{name}.ipynb", nbformat.writes(notebook) + "\n")
        _write_text(report_dir / f"{name}.html", _html(notebook, _title(notebook)))
        results = json.loads((paths.RESULTS / profile / f"{name}.json").read_text())
        _write_text(report_dir / "results" / f"{name}.json", json.dumps(results, indent=1) + "\n")
    summary = paths.RESULTS / profile / "SUMMARY.md"
    if summary.is_file():
        _write_text(report_dir / "SUMMARY.md", summary.read_text())
    _write_text(report_dir / "index.html", _html(_index(report_dir, profile),
                                                  f"Report of the {profile} profile"))
    return names


def run_time(results: dict) -> str:
    """The notebook's run time, and how many of its grid cells an earlier run computed (a
    resumed run takes minutes less than its numbers did)."""
    text = f"run time {results.get('seconds', 0) / 60:.1f} min"
    cells = results.get("grid_cells") or {}
    if cells.get("reused"):
        text += (f" (resumed: {cells['reused']:,} of its {cells['cells']:,} grid cells were "
                 f"computed by an earlier run)")
    return text


def _index(report_dir: Path, profile: str):
    """The summary page: per notebook its title, links, note and findings."""
    parts = [f"# Test-time adaptation of pretrained vision models: the `{profile}` report",
             "Every notebook executed by `make report` on this profile, with its outputs. "
             "The findings below are computed from the results files."]
    for name, results in load_results(report_dir).items():
        parts += [f"## {_notebook_title(report_dir, name)}",
                  f"[executed notebook (HTML)]({name}.html) · [ipynb]({name}.ipynb) · "
                  + run_time(results), results.get("note", ""),
                  _bullets(results.get("findings"))]
    cell = nbformat.v4.new_markdown_cell("\n\n".join(parts))
    cell.id = "summary"  # a fixed id: the same summary gives the same page
    return nbformat.v4.new_notebook(cells=[cell])


def load_results(report_dir: Path = REPORT) -> dict[str, dict]:
    """The published results files, by notebook name, in notebook order."""
    return {f.stem: json.loads(f.read_text())
            for f in sorted((report_dir / "results").glob("[0-9]*.json"))}


def _notebook_title(report_dir: Path, name: str) -> str:
    source = report_dir / f"{name}.ipynb"
    return _title(nbformat.read(source, as_version=4)) if source.is_file() else name


def _bullets(lines) -> str:
    return "\n".join(f"- {line}" for line in lines or []) or "_No findings recorded._"


def _table(rows: list[dict]) -> str:
    from .batch import markdown_table

    return markdown_table(rows)


def comparison_table(rows: list[dict]) -> list[dict]:
    """Comparison rows (``findings.compare``) as compact table rows: what changes, from what
    to what, with its interval, on how many data sets significantly, and at what cost."""
    from .findings import verdict

    return [{"model": r["model"], "method": f"{r['method']} vs {r['baseline']}",
             "accuracy": f"{r['baseline_accuracy']:.3f} → {r['accuracy']:.3f}",
             "change (95% CI)": f"{r['change']:+.3f} ({r['ci_low']:+.3f}, {r['ci_high']:+.3f})",
             "verdict": verdict(r),
             "data sets better / worse": f"{r['better_on']} / {r['worse_on']} of {r['tasks']}",
             "ECE": f"{r['baseline_ece']:.3f} → {r['ece']:.3f}",
             "s / image": f"{r['seconds']:.3f}"} for r in rows]


def readme_block(report_dir: Path = REPORT, relative_to: Path = paths.REPO) -> str:
    """The README's results section: per published notebook its links and note, its
    findings (the comparisons with their intervals as one table, or the finding sentences),
    its headline table where it has no comparisons, and its headline figure (all from
    ``report/results/``)."""
    base = report_dir.relative_to(relative_to) if report_dir.is_relative_to(relative_to) \
        else report_dir
    parts = [BEGIN, ""]
    for name, results in load_results(report_dir).items():
        headline = results.get("headline") or {}
        parts += [f"### {_notebook_title(report_dir, name)}", "",
                  f"[Executed notebook]({base}/{name}.ipynb) · [HTML]({base}/{name}.html) · "
                  + run_time(results), "",
                  results.get("note", ""), ""]
        comparisons = results.get("comparisons")
        table = (results.get("summary") or {}).get(headline.get("table"))
        if comparisons:
            parts += [_table(comparison_table(comparisons)), ""]
        else:
            parts += [_bullets(results.get("findings")), ""]
        if table and not comparisons:
            parts += [f"**{headline['table']}**", "", _table(table), ""]
        if headline.get("figure"):
            parts += [f"![{headline['figure']}](figures/{headline['figure']}.png)", ""]
    return "\n".join([*parts, END])


def update_readme(readme: Path = README, report_dir: Path = REPORT) -> bool:
    """Replace the README's results block (between the markers) by ``readme_block``; True if
    the README changed."""
    text = readme.read_text()
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"{readme} has no results block: put the two lines\n{BEGIN}\n{END}\n"
                         "where the results should go.")
    new = text[:start] + readme_block(report_dir) + text[end + len(END):]
    _write_text(readme, new)
    return new != text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="offline")
    parser.add_argument("--readme", action="store_true",
                        help="only rewrite the README block from the published report")
    args = parser.parse_args(argv)
    # The offline profile's report is the published one; others go beside it, uncommitted.
    report_dir = REPORT if args.profile == "offline" else REPORT / args.profile
    if not args.readme:
        names = publish(args.profile, report_dir)
        print(f"report: {len(names)} notebooks in {report_dir}: {', '.join(names)}")
    if report_dir != REPORT:
        return 0
    changed = update_readme()
    print(f"README results block {'rewritten' if changed else 'unchanged'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
