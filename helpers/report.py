"""The published report, written from a batch run so that no number in it is typed by hand:

- ``report/``: the executed notebooks of the profile (outputs included, machine paths and
  reprs refused), each also as HTML (plumbing cells collapsed), their results files
  (``report/results/``), the batch summary, and ``report/index.html``, the landing page: the
  synthesis across notebooks first, then each notebook's headline figure, conclusions and
  links, its detailed findings one click away. GitHub renders the notebooks; the HTML opens
  anywhere and loads nothing from the network.
- the README's results block, between two markers: what the report can and cannot show, the
  run times, and per notebook its methods' error over the corruptions beside the published
  anchors, its conclusions and its headline figure, from ``report/results/``.

    python -m helpers.report            # after python -m helpers.batch --profile offline
    python -m helpers.report --readme   # the README block and index.html, from report/
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import os
import re
import sys
from pathlib import Path

import nbformat

from . import paths, synthesis
from .jsonfile import atomic_file

REPORT = paths.REPO / "report"
README = paths.REPO / "README.md"
BEGIN = ("<!-- results:begin (written by `python -m helpers.report`: edit the notebooks, "
         "not this block) -->")
END = "<!-- results:end -->"
# Per-cell metadata that changes with every execution (timestamps, durations) but says nothing
# about the results: dropped, so that a notebook run again with the same outputs is the same file.
VOLATILE_CELL_METADATA = ("execution", "papermill")
# What a published output must not show: the machine's folders and Python reprs.
MACHINE_DIRS = ("/tmp", "/root", "/home")
REPRS = ("PosixPath(", "<helpers.", "object at 0x")
# Cells that are plumbing, not the story: collapsed in the HTML.
PLUMBING_TAGS = ("parameters", "injected-parameters")


def _write_text(path: Path, text: str) -> None:
    """Atomically, and only when the content changes (an unchanged report keeps its files)."""
    if path.is_file() and path.read_text() == text:
        return
    with atomic_file(path) as tmp:
        tmp.write_text(text)


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


# The lab template, with plumbing cells' code (``jupyter.source_hidden``) in a closed
# <details>, so that a reader of the HTML sees the story first.
COLLAPSING_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block extra_css -%}
<style>details.plumbing{margin:.2rem 0 .2rem 4rem;font:13px system-ui,sans-serif;color:#555}
details.plumbing summary{cursor:pointer}</style>
{%- endblock extra_css -%}
{%- block input_group -%}
{%- if cell.metadata.get('jupyter', {}).get('source_hidden') -%}
{%- set tags = cell.metadata.get('tags', []) -%}
{%- if 'injected-parameters' in tags -%}{%- set what = 'Parameters injected by the runner' -%}
{%- elif 'parameters' in tags -%}{%- set what = "Parameters (the notebook's defaults)" -%}
{%- else -%}{%- set what = 'Set-up (Colab only)' -%}{%- endif -%}
<details class="plumbing"><summary>{{ what }}</summary>
{{ super() }}
</details>
{%- else -%}
{{ super() }}
{%- endif -%}
{%- endblock input_group -%}
"""


def _html(notebook, title: str) -> str:
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    notebook.metadata["title"] = title
    exporter = HTMLExporter(extra_loaders=[DictLoader({"collapsing": COLLAPSING_TEMPLATE})],
                            template_file="collapsing")
    body, _ = exporter.from_notebook_node(notebook)
    return body


def is_plumbing(cell) -> bool:
    """Whether a cell is plumbing, not the story: the parameters cells (the defaults and the
    batch runner's) and the Colab set-up cell."""
    tags = cell.get("metadata", {}).get("tags", [])
    return cell.cell_type == "code" and (any(t in PLUMBING_TAGS for t in tags)
                                         or "google.colab" in cell.source)


def _machine_path(repo: Path) -> re.Pattern:
    roots = sorted({str(repo), str(repo.resolve()), *MACHINE_DIRS}, key=len, reverse=True)
    return re.compile(r"(?<![\w.])(?:" + "|".join(re.escape(r) for r in roots)
                      + r")(?=/|\b)[^\s'\"<>:;,()\[\]{}]*")


def scrub(text: str, repo: Path = paths.REPO) -> str:
    """``text`` with the repository's absolute path made relative and other machine paths
    (``MACHINE_DIRS``) cut to their last part: what a published output may show."""
    for root in sorted({str(repo), str(repo.resolve())}, key=len, reverse=True):
        text = text.replace(root + "/", "")
    return _machine_path(repo).sub(lambda m: "…/" + m.group().rstrip("/").rsplit("/", 1)[-1],
                                   text)


def scrub_value(value, repo: Path = paths.REPO):
    """A results file's value with every string ``scrub``bed (a results file may record the
    paths it wrote, e.g. its series' files)."""
    if isinstance(value, str):
        return scrub(value, repo)
    if isinstance(value, list):
        return [scrub_value(v, repo) for v in value]
    if isinstance(value, dict):
        return {k: scrub_value(v, repo) for k, v in value.items()}
    return value


def _texts(output) -> list[tuple[object, str]]:
    """(container, key) of every text of an output (stream text, text data, a traceback)."""
    found = [(output, "text")] if "text" in output else []
    data = output.get("data", {})
    found += [(data, k) for k in data if k.startswith("text/")]
    return found


def _joined(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def is_repr_echo(output) -> bool:
    """Whether an output is only the echo of a cell's last value as a Python repr (a path,
    an object): nothing a reader needs."""
    data = output.get("data", {})
    text = _joined(data.get("text/plain", "")).strip()
    return (output.get("output_type") == "execute_result" and set(data) == {"text/plain"}
            and any(marker in text for marker in REPRS))


def publishable(notebook, repo: Path = paths.REPO) -> nbformat.NotebookNode:
    """``stable_notebook``, then what a published notebook must be: plumbing cells' code
    collapsed (``jupyter.source_hidden``), repr echoes dropped, machine paths scrubbed from
    the outputs and the injected parameters (``scrub``)."""
    notebook = stable_notebook(notebook)
    for cell in notebook.cells:
        if is_plumbing(cell):
            cell.metadata["jupyter"] = {"source_hidden": True}
        if "injected-parameters" in cell.metadata.get("tags", []):
            cell.source = scrub(cell.source, repo)
        if "outputs" not in cell:
            continue
        cell.outputs = [o for o in cell.outputs if not is_repr_echo(o)]
        for output in cell.outputs:
            for container, key in _texts(output):
                container[key] = scrub(_joined(container[key]), repo)
            if "traceback" in output:
                output.traceback = [scrub(line, repo) for line in output.traceback]
    return notebook


def published_problems(notebook, repo: Path = paths.REPO) -> list[str]:
    """What a published notebook still shows that it must not: machine paths and reprs in
    its outputs or its injected parameters, as 'cell N: <the text around it>'."""
    pattern = re.compile("|".join([_machine_path(repo).pattern,
                                   *(re.escape(r) for r in REPRS)]))
    problems = []
    for number, cell in enumerate(notebook.cells):
        texts = [cell.source] if "injected-parameters" in cell.metadata.get("tags", []) else []
        for output in cell.get("outputs", []):
            texts += [_joined(c[k]) for c, k in _texts(output)]
            texts += list(output.get("traceback", []))
        for text in texts:
            for match in pattern.finditer(text):
                around = text[max(0, match.start() - 30):match.end() + 30].replace("\n", " ")
                problems.append(f"cell {number}: ...{around}...")
    return problems


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
    """Copy the profile's finished notebooks (executed, ``publishable``), their results and
    the batch summary into ``report_dir``, with an HTML page per notebook and ``index.html``;
    returns their names. Refuses (ValueError naming notebook, cell and text, before writing
    anything) when a notebook would still show a machine path or a repr. Files of notebooks
    that did not finish are left as they were (an earlier run's)."""
    names = finished(profile)
    notebooks = {name: publishable(nbformat.read(paths.RUNS / profile / f"{name}.ipynb",
                                                 as_version=4)) for name in names}
    problems = [f"{name}, {problem}" for name, notebook in notebooks.items()
                for problem in published_problems(notebook)]
    if problems:
        raise ValueError("The published notebooks must not show machine paths or reprs; fix "
                         "the notebook or helper that prints them (paths relative to the "
                         "repository: notebook.shown_path; a cell's last line must not "
                         "return an object):\n  " + "\n  ".join(problems))
    for name, notebook in notebooks.items():
        _write_text(report_dir / f"{name}.ipynb", nbformat.writes(notebook) + "\n")
        _write_text(report_dir / f"{name}.html", _html(notebook, _title(notebook)))
        results = scrub_value(json.loads((paths.RESULTS / profile / f"{name}.json").read_text()))
        _write_text(report_dir / "results" / f"{name}.json", json.dumps(results, indent=1) + "\n")
    summary = paths.RESULTS / profile / "SUMMARY.md"
    if summary.is_file():
        _write_text(report_dir / "SUMMARY.md", scrub(summary.read_text()))
    write_index(report_dir, profile)
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


PAGE_STYLE = """body{font:15px/1.5 system-ui,sans-serif;max-width:72rem;margin:1.5rem auto;
padding:0 1rem;color:#222}table{border-collapse:collapse;font-size:13px;margin:.5rem 0}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto;border:1px solid #ddd}section{border-top:2px solid #ddd;
margin-top:2rem}details{margin:.5rem 0}summary{cursor:pointer;color:#0645ad}
.missing{color:#8a5a00}nav a{margin-right:1rem}"""


def _md(text: str) -> str:
    """Markdown (a sentence, a list, a paragraph) as HTML; raw HTML in it is escaped."""
    import mistune

    return mistune.create_markdown(escape=True)(text)


def _html_table(rows: list[dict]) -> str:
    """Table rows (already formatted) as an HTML table; number-like cells right-aligned."""
    if not rows:
        return "<p><em>(no rows)</em></p>"
    columns = list(dict.fromkeys(k for row in rows for k in row))

    def cell(value) -> str:
        text = "" if value is None else str(value)
        numeric = re.fullmatch(r"[-+−]?[\d.,]+(?: \(.*\))?%?", text) is not None
        align = ' class="n"' if numeric else ""
        return f"<td{align}>{_md_inline(text)}</td>"

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(cell(row.get(c)) for c in columns) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _md_inline(text: str) -> str:
    """One line of Markdown as inline HTML (no paragraph)."""
    rendered = _md(text).strip()
    return rendered[3:-4] if rendered.startswith("<p>") and rendered.endswith("</p>") \
        else rendered


def _figure_src(results: dict, profile: str, report_dir: Path) -> str | None:
    """The headline figure's path relative to ``report_dir`` (a link, not an embedded
    picture: the page stays small); None when there is none or its file is missing."""
    file = synthesis.figure_file(results, profile)
    if file is None or not file.is_file():
        return None
    return Path(os.path.relpath(file, report_dir)).as_posix()


def _missing(what: str) -> str:
    return f'<p class="missing"><em>{html.escape(what)} {synthesis.NOT_COMPUTED}.</em></p>'


def _notebook_section(report_dir: Path, profile: str, name: str, results: dict) -> str:
    """One notebook on the landing page: title, links and run time, headline figure, its
    conclusions and anchors (or why they are missing), its detailed findings collapsed."""
    title = html.escape(_notebook_title(report_dir, name))
    parts = [f'<section id="{name}"><h2>{title}</h2>',
             f'<p><a href="{name}.html">executed notebook (HTML)</a> · '
             f'<a href="{name}.ipynb">ipynb</a> · <a href="results/{name}.json">results '
             f'(JSON)</a> · {html.escape(run_time(results))}</p>']
    figure = _figure_src(results, profile, report_dir)
    if figure:
        caption = html.escape((results.get("headline") or {}).get("figure", ""))
        parts.append(f'<figure><img src="{html.escape(figure)}" alt="{caption}" '
                     f'loading="lazy"></figure>')
    found = synthesis.conclusions_of(results)
    if found:
        parts += ["<h3>What we found</h3>", _md(_bullets(found["found"]))]
        if found.get("anchors"):
            parts += ["<h4>Against the published numbers</h4>", _md(_bullets(found["anchors"]))]
        parts += ["<h3>Limitations</h3>", _md(found.get("limitations") or "")]
    else:
        parts.append(_missing("Conclusions (What we found, Limitations):"))
    anchors = synthesis.anchor_rows(results)
    parts += (["<h3>Published numbers and ours</h3>", _html_table(anchors)] if anchors
              else [_missing("The comparison with the published numbers:")])
    lines = results.get("findings") or []
    parts.append(f"<details><summary>Detailed findings ({len(lines)})</summary>"
                 f"{_md(_bullets(lines))}</details>")
    if results.get("note"):
        parts.append(f"<details><summary>Models and data</summary>{_md(results['note'])}"
                     f"</details>")
    return "\n".join(parts) + "</section>"


def index_page(report_dir: Path = REPORT, profile: str = "offline") -> str:
    """The landing page (plain HTML, nothing loaded from the network): the synthesis across
    notebooks (every method's error over the corruptions, ECE and seconds per image; what
    the report shows and cannot show; run times), then each notebook's section."""
    results = load_results(report_dir)
    title = f"Test-time adaptation of pretrained vision models: the {profile} report"
    nav = " ".join(f'<a href="#{name}">{html.escape(name[:2])}</a>' for name in results)
    rows = synthesis.method_rows(results)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{PAGE_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Every notebook executed by <code>make report</code> on the <code>{profile}</code> "
        f"profile; everything below is computed from its results files. Notebooks: {nav}</p>",
        '<section id="synthesis"><h2>Synthesis across notebooks</h2>',
        "<h3>What the offline report shows</h3>", _md(_bullets(synthesis.shows(results))),
        "<h3>What it cannot show</h3>",
        _md(_bullets(synthesis.cannot_show(results, report_dir))),
        "<h3>Every method</h3>",
        "<p>Mean top-1 error over the corrupted data sets of each model (clean apart; the "
        "interval, where shown, is the 95% bootstrap interval over test images), mean ECE "
        "over the same data sets and seconds per image on this machine. A method equal to "
        "another to three decimals on every data set is one row.</p>",
        _html_table(synthesis.table(rows)),
        f"<p>{html.escape(synthesis.run_times(results))}</p></section>"]
    parts += [_notebook_section(report_dir, profile, name, res) for name, res in results.items()]
    return "\n".join([*parts, "</body></html>"]) + "\n"


def write_index(report_dir: Path = REPORT, profile: str = "offline") -> None:
    """Write ``index_page`` to ``report_dir/index.html``."""
    _write_text(report_dir / "index.html", index_page(report_dir, profile))


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
             "s / image": synthesis.seconds(r["seconds"])} for r in rows]


def readme_block(report_dir: Path = REPORT, relative_to: Path = paths.REPO) -> str:
    """The README's results section: what the report cannot show (computed) and the run
    times, then per published notebook its links, its methods' error over the corruptions
    beside the published anchors, its conclusions (or why they are missing), its headline
    figure, and its comparisons or findings one click away (all from ``report/results/``)."""
    base = report_dir.relative_to(relative_to) if report_dir.is_relative_to(relative_to) \
        else report_dir
    results_by_name = load_results(report_dir)
    parts = [BEGIN, "",
             f"The synthesis across notebooks (every method's error over the corruptions, ECE, "
             f"seconds per image; what the report shows) opens "
             f"[{base}/index.html]({base}/index.html).", "",
             *(f"- {line}" for line in synthesis.cannot_show(results_by_name, report_dir)), "",
             synthesis.run_times(results_by_name), ""]
    for name, results in results_by_name.items():
        parts += _readme_section(report_dir, base, name, results)
    return "\n".join([*parts, END])


def _readme_section(report_dir: Path, base: Path, name: str, results: dict) -> list[str]:
    headline = results.get("headline") or {}
    parts = [f"### {_notebook_title(report_dir, name)}", "",
             f"[Executed notebook]({base}/{name}.ipynb) · [HTML]({base}/{name}.html) · "
             + run_time(results), ""]
    anchors = synthesis.anchor_rows(results)
    parts += (["**Published numbers and ours**", "", _table(anchors), ""] if anchors else
              [f"_The comparison with the published numbers: {synthesis.NOT_COMPUTED}._", ""])
    methods = synthesis.method_rows({name: results})
    table = (results.get("summary") or {}).get(headline.get("table"))
    if methods:
        parts += ["**Every method** (error over the corruptions, clean apart)", "",
                  _table(synthesis.table(methods, with_notebook=False)), ""]
    elif table:
        parts += [f"**{headline['table']}**", "", _table(table), ""]
    found = synthesis.conclusions_of(results)
    if found:
        parts += ["**What we found**", "", _bullets(found["found"]), ""]
        if found.get("anchors"):
            parts += ["**Against the published numbers**", "", _bullets(found["anchors"]), ""]
        parts += [f"**Limitations.** {found.get('limitations') or ''}", ""]
    else:
        parts += [f"_Conclusions: {synthesis.NOT_COMPUTED}._", ""]
    if headline.get("figure"):
        parts += [f"![{headline['figure']}](figures/{headline['figure']}.png)", ""]
    comparisons = results.get("comparisons")
    detail = (_table(comparison_table(comparisons)) if comparisons
              else _bullets(results.get("findings")))
    count = len(comparisons) if comparisons else len(results.get("findings") or [])
    what = "comparisons" if comparisons else "findings"
    parts += [f"<details><summary>All {count} {what}</summary>", "", detail, "",
              "</details>", ""]
    return parts


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
                        help="only rewrite the README block and report/index.html from the "
                             "published report")
    args = parser.parse_args(argv)
    # The offline profile's report is the published one; others go beside it, uncommitted.
    report_dir = REPORT if args.profile == "offline" else REPORT / args.profile
    if not args.readme:
        names = publish(args.profile, report_dir)
        print(f"report: {len(names)} notebooks in {report_dir}: {', '.join(names)}")
    if report_dir != REPORT:
        return 0
    if args.readme:
        write_index(report_dir, args.profile)
    changed = update_readme()
    print(f"README results block {'rewritten' if changed else 'unchanged'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
