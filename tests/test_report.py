"""The published report (report/) and the README's results block: written from results files,
complete for every notebook, within its size budget, and stable when nothing changed."""

import json
import re
from pathlib import Path

import nbformat
import pytest

from helpers import batch, paths, report

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9]*.py"))
BUDGET_MB = 15


def test_readme_block_is_what_the_report_writes():
    """`python -m helpers.report --readme` rewrites it; edit notebooks, never the block."""
    text = (ROOT / "README.md").read_text()
    block = text[text.index(report.BEGIN):text.index(report.END) + len(report.END)]
    assert block == report.readme_block(ROOT / "report", ROOT)


def test_report_stays_within_its_budget():
    size = sum(f.stat().st_size for f in (ROOT / "report").rglob("*") if f.is_file())
    assert size < BUDGET_MB * 2**20, f"report/ is {size / 2**20:.1f} MB"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_notebook_is_published_with_its_tables_figures_and_findings(name):
    notebook = nbformat.read(ROOT / "report" / f"{name}.ipynb", as_version=4)
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure"
    assert any("<table" in o.get("data", {}).get("text/html", "") for o in outputs), "no table"
    assert any("## Findings" in c.source for c in notebook.cells if c.cell_type == "markdown")
    results = json.loads((ROOT / "report" / "results" / f"{name}.json").read_text())
    assert results["findings"] and results["headline"]["figure"]
    assert (ROOT / "figures" / f"{results['headline']['figure']}.png").is_file()
    assert (ROOT / "report" / f"{name}.html").is_file()
    assert f'href="{name}.html"' in (ROOT / "report" / "index.html").read_text()


@pytest.fixture
def batch_run(tmp_path, monkeypatch):
    """A finished batch run of one notebook in a temporary runs/ and results/."""
    monkeypatch.setattr(paths, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(paths, "RESULTS", tmp_path / "results")
    code = nbformat.v4.new_code_cell("print(1)", outputs=[nbformat.v4.new_output(
        "stream", text="1\n")], metadata={"papermill": {"duration": 1.5},
                                          "execution": {"iopub.execute_input": "2026"}})
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 01 · A test"),
                                               code], metadata={"papermill": {"duration": 3}})
    executed = tmp_path / "runs" / "offline" / "01_test.ipynb"
    executed.parent.mkdir(parents=True)
    nbformat.write(notebook, executed)
    results = {"note": "a note", "findings": ["**memo** vs source: a finding"], "seconds": 120,
               "summary": {"Means": [{"method": "memo", "accuracy": 0.5}]},
               "headline": {"table": "Means", "figure": "01_test_findings"}}
    (tmp_path / "results" / "offline").mkdir(parents=True)
    (tmp_path / "results" / "offline" / "01_test.json").write_text(json.dumps(results))
    (tmp_path / "results" / "offline" / "SUMMARY.md").write_text("# Summary")
    return tmp_path


def test_publish_writes_stable_notebooks_html_results_and_index(batch_run):
    out = batch_run / "report"
    assert report.publish("offline", out) == []  # no run record: the run did not finish
    batch.record_file("offline", Path("01_test.ipynb")).write_text("{}")
    assert report.publish("offline", out) == ["01_test"]
    published = nbformat.read(out / "01_test.ipynb", as_version=4)
    assert published.cells[1].outputs[0].text == "1\n"  # outputs kept
    assert "papermill" not in published.cells[1].metadata and "papermill" not in published.metadata
    assert "execution" not in published.cells[1].metadata
    index = (out / "index.html").read_text()
    assert 'href="01_test.html"' in index and "a finding" in index
    assert (out / "results" / "01_test.json").is_file() and (out / "SUMMARY.md").is_file()
    before = {f: f.stat().st_mtime_ns for f in out.rglob("*") if f.is_file()}
    report.publish("offline", out)  # nothing changed: no file is written again
    assert {f: f.stat().st_mtime_ns for f in out.rglob("*") if f.is_file()} == before


def test_published_notebooks_drop_text_progress_bars_and_keep_other_output():
    """tqdm without widgets writes every redraw to stderr; the report keeps the rest."""
    cell = nbformat.v4.new_code_cell("run()")
    cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text="\r 10%|#  | 1/10"),
                    nbformat.v4.new_output("stream", name="stderr", text=["\r", ""]),
                    nbformat.v4.new_output("stream", name="stderr", text="\n"),  # its end
                    nbformat.v4.new_output("stream", name="stderr", text="UserWarning: x\n"),
                    nbformat.v4.new_output("stream", name="stdout", text="\rkept\n")]
    kept = report.stable_notebook(nbformat.v4.new_notebook(cells=[cell])).cells[0].outputs
    assert [(o.name, o.text) for o in kept] == [("stderr", "UserWarning: x\n"),
                                               ("stdout", "\rkept\n")]


def test_readme_block_replaces_only_the_marked_part_and_needs_the_markers(batch_run):
    out = batch_run / "report"
    batch.record_file("offline", Path("01_test.ipynb")).write_text("{}")
    report.publish("offline", out)
    readme = batch_run / "README.md"
    readme.write_text(f"intro\n{report.BEGIN}\nstale\n{report.END}\nend\n")
    assert report.update_readme(readme, out)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("end\n") and "stale" not in text
    assert "### 01 · A test" in text and "- **memo** vs source: a finding" in text
    assert "| memo | 0.500 |" in text  # no comparisons: the finding lines and headline table
    assert "![01_test_findings](figures/01_test_findings.png)" in text
    assert not report.update_readme(readme, out)  # the same block again: unchanged
    readme.write_text("no markers")
    with pytest.raises(SystemExit, match="no results block"):
        report.update_readme(readme, out)


def test_compact_png_keeps_the_picture_and_never_grows_it():
    import base64
    import io

    import numpy as np
    from PIL import Image

    x = np.linspace(0, 1, 200)
    pixels = (np.stack([np.outer(x, x), np.outer(x, 1 - x), np.outer(1 - x, x)], -1) * 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    original = base64.b64encode(buffer.getvalue()).decode()
    compact = report.compact_png(original)
    assert len(compact) < len(original)
    before = np.asarray(Image.open(io.BytesIO(base64.b64decode(original))).convert("RGB"))
    after = np.asarray(Image.open(io.BytesIO(base64.b64decode(compact))).convert("RGB"))
    assert after.shape == before.shape
    assert np.abs(after.astype(int) - before).mean() < 4  # 256 colours: a close picture
    assert report.compact_png(compact) == compact  # already compact: kept as it is


def test_comparisons_show_as_one_table_with_their_intervals():
    row = {"model": "cnn", "method": "memo", "baseline": "source", "baseline_accuracy": 0.5,
           "accuracy": 0.55, "change": 0.05, "ci_low": 0.01, "ci_high": 0.09, "better_on": 2,
           "worse_on": 0, "tasks": 16, "baseline_ece": 0.2, "ece": 0.15, "seconds": 0.0123}
    (table,) = report.comparison_table([row])
    assert table == {"model": "cnn", "method": "memo vs source", "accuracy": "0.500 → 0.550",
                     "change (95% CI)": "+0.050 (+0.010, +0.090)", "verdict": "gain",
                     "data sets better / worse": "2 / 0 of 16", "ECE": "0.200 → 0.150",
                     "s / image": "0.012"}


def test_run_time_says_when_a_resumed_run_reused_cells():
    assert report.run_time({"seconds": 120}) == "run time 2.0 min"
    assert report.run_time({"seconds": 54, "grid_cells": {"cells": 570, "reused": 0}}) == \
        "run time 0.9 min"
    assert report.run_time({"seconds": 54, "grid_cells": {"cells": 570, "reused": 540}}) == (
        "run time 0.9 min (resumed: 540 of its 570 grid cells were computed by an earlier run)")


def test_a_notebook_run_counts_the_cells_an_earlier_run_computed(tmp_path):
    from helpers.notebook import start

    run = start("01_test", {"seed": 0}, tmp_path / "r.json", tmp_path / "figures")
    store = run.store()
    store.put(("m", "d", "old"), {"accuracy": 1.0},
              run={"time": "2020-01-01T00:00:00+0000"})
    store.put(("m", "d", "new"), {"accuracy": 1.0})
    assert run.cells_reused() == {"cells": 2, "reused": 1}
    assert run.save({}) is None  # a notebook's last line echoes no path
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["grid_cells"] == {"cells": 2, "reused": 1}


# ------------------------------------------------------------- what a reader is shown
def _cells(model, method, accuracies, ece=0.1, confidence=0.6):
    return [{"model": model, "method": method, "data": data, "accuracy": acc, "ece": ece,
             "mean_confidence": confidence, "seconds_per_sample": 0.002}
            for data, acc in zip(("clean", "snow", "fog"), accuracies)]


@pytest.fixture
def published(tmp_path, monkeypatch):
    """A published report of two notebooks: 01 with per-data-set rows, conclusions and
    anchors; 02 from before conclusions existed."""
    monkeypatch.setattr(paths, "REPO", tmp_path)
    out = tmp_path / "report"
    (out / "results").mkdir(parents=True)
    (tmp_path / "figures").mkdir()
    for name in ("01_a", "02_b"):
        (tmp_path / "figures" / f"{name}_findings.png").write_bytes(b"png")
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(
            f"# {name[:2]} · Title {name}")]), out / f"{name}.ipynb")
    row = {"model": "cnn", "method": "norm", "baseline": "source", "tasks": 3, "images": 50,
           "baseline_accuracy": 0.5, "accuracy": 0.7, "change": 0.2, "ci_low": 0.1,
           "ci_high": 0.3, "better_on": 2, "worse_on": 0, "baseline_ece": 0.2, "ece": 0.1,
           "baseline_seconds": 0.001, "seconds": 0.002}
    first = {"note": "a note", "seconds": 90, "findings": ["finding one", "finding two"],
             "comparisons": [row], "headline": {"figure": "01_a_findings"},
             "parameters": {"seed": 0}, "run": {"device": "cpu"},
             "results": _cells("cnn", "source", (0.9, 0.5, 0.3))
             + _cells("cnn", "norm", (0.9, 0.7, 0.5)) + _cells("cnn", "eata", (0.9, 0.7, 0.5)),
             "conclusions": {"found": ["**norm** gains, found here."], "anchors": [
                 "tent: same direction."], "limitations": "One seed."},
             "anchors": [{"method": "norm", "offline here": "cnn: 40.0", "numbers": {}}]}
    second = {"note": "", "seconds": 30, "findings": ["only finding"], "comparisons": [],
              "headline": {"figure": "02_b_findings", "table": "T"},
              "summary": {"T": [{"a": 1}]}}
    for name, results in (("01_a", first), ("02_b", second)):
        (out / "results" / f"{name}.json").write_text(json.dumps(results))
    return out


def test_the_landing_page_opens_with_the_synthesis_then_each_notebooks_figure(published):
    page = report.index_page(published)
    synthesis_at, first, second = (page.index('id="synthesis"'), page.index('id="01_a"'),
                                   page.index('id="02_b"'))
    assert page.index("<h1>") < synthesis_at < first < second
    assert page.count("<img ") == 2 and 'src="../figures/01_a_findings.png"' in page
    for name in ("01_a", "02_b"):
        assert f'href="{name}.html"' in page and f'href="{name}.ipynb"' in page
    # the synthesis: one row per method, eata collapsed into norm; error over the corruptions
    synthesis = page[synthesis_at:first]
    assert "eata: identical to norm" in synthesis and ">eata<" not in synthesis
    assert "<td class=\"n\">60.0</td>" in synthesis  # source: mean error over snow and fog
    assert "The full profile has not been run here" in synthesis
    assert "One seed (0)" in synthesis and "ran on the CPU" in synthesis
    # 01 shows its conclusions and anchors, 02 says they are missing; findings collapsed
    assert "<strong>norm</strong> gains, found here." in page[first:second]
    assert "Against the published numbers" in page[first:second]
    assert "not yet computed: rerun the notebook" in page[second:]
    assert "<details><summary>Detailed findings (2)</summary>" in page
    # plain HTML: nothing from the network, no machine path
    assert "<script" not in page and "http" not in page and str(published) not in page


def test_the_readme_block_shows_the_error_beside_the_anchors_and_the_conclusions(published):
    block = report.readme_block(published, published.parent)
    first, second = block.index("### 01 · Title 01_a"), block.index("### 02 · Title 02_b")
    section = block[first:second]
    assert section.index("**Published numbers and ours**") < section.index(
        "**Every method**") < section.index("**What we found**")
    assert "| norm | 40.0 (" not in section and "eata: identical to norm" in section
    assert "**Limitations.** One seed." in section
    assert "<details><summary>All 1 comparisons</summary>" in section
    assert "Conclusions: not yet computed: rerun the notebook" in block[second:]
    assert "| 1 |" in block[second:]  # no per-data-set rows: its headline table
    assert "01 1.5 min · 02 0.5 min (2.0 min of notebook time in all" in block


def _notebook_with(*outputs, injected="results_path = 'results/offline/01_x.json'"):
    cells = [nbformat.v4.new_markdown_cell("# 01 · X"),
             nbformat.v4.new_code_cell("import sys\nif 'google.colab' in sys.modules: pass"),
             nbformat.v4.new_code_cell("profile = 'smoke'", metadata={"tags": ["parameters"]}),
             nbformat.v4.new_code_cell(injected, metadata={"tags": ["injected-parameters"]}),
             nbformat.v4.new_code_cell("run.save()", outputs=list(outputs))]
    return nbformat.v4.new_notebook(cells=cells)


def test_published_notebooks_lose_machine_paths_and_repr_echoes_and_collapse_plumbing():
    repo = paths.REPO
    notebook = _notebook_with(
        nbformat.v4.new_output("stream", text=f"results: {repo}/results/offline/01_x.json\n"
                                              "figures: /tmp/rep3/figures\n"),
        nbformat.v4.new_output("execute_result", data={
            "text/plain": "PosixPath('/tmp/rep3/results/offline/01_x.json')"}),
        nbformat.v4.new_output("stream", name="stderr",
                               text="/root/.venv/lib/site.py:3: UserWarning: w\n"),
        injected=f"results_path = '{repo}/results/offline/01_x.json'\nx = '/home/u/a b'")
    clean = report.publishable(notebook, repo)
    outputs = clean.cells[4].outputs
    assert [o.output_type for o in outputs] == ["stream", "stream"]  # the repr echo dropped
    assert outputs[0].text == "results: results/offline/01_x.json\nfigures: …/figures\n"
    assert outputs[1].text == "…/site.py:3: UserWarning: w\n"
    assert clean.cells[3].source == "results_path = 'results/offline/01_x.json'\nx = '…/a b'"
    assert report.published_problems(clean, repo) == []
    assert report.scrub_value({"files": [f"{repo}/results/a.json", "/tmp/x/b.json", 3]},
                              repo) == {"files": ["results/a.json", "…/b.json", 3]}
    hidden = [c.metadata.get("jupyter", {}).get("source_hidden", False) for c in clean.cells]
    assert hidden == [False, True, True, True, False]  # Colab and both parameters cells
    page = report._html(clean, "X")
    assert page.count('<details class="plumbing">') == 3
    assert "<summary>Parameters injected by the runner</summary>" in page
    assert "<summary>Set-up (Colab only)</summary>" in page


def test_publish_refuses_a_notebook_that_shows_a_repr(batch_run):
    out = batch_run / "report"
    batch.record_file("offline", Path("01_test.ipynb")).write_text("{}")
    executed = batch_run / "runs" / "offline" / "01_test.ipynb"
    notebook = nbformat.read(executed, as_version=4)
    notebook.cells[1].outputs.append(nbformat.v4.new_output(
        "stream", text="model: <helpers.models.Net object at 0x7f3a>\n"))
    nbformat.write(notebook, executed)
    with pytest.raises(ValueError, match=r"01_test, cell 1: .*<helpers\.models\.Net object"):
        report.publish("offline", out)
    assert not out.exists()  # nothing written


def test_the_runner_injects_paths_relative_to_the_repository(tmp_path, monkeypatch):
    from test_batch import make_repo

    layout = make_repo(tmp_path, monkeypatch)
    monkeypatch.setattr(paths, "REPO", tmp_path)
    notebooks = sorted(layout["notebooks"].glob("0*.ipynb"))
    injected = dict(batch.plan("smoke", notebooks))[notebooks[1]]
    assert injected["results_path"] == "results/smoke/02_good.json"
    assert injected["figures_dir"] == "figures/smoke"
    assert batch.repo_relative(Path("/elsewhere/r.json")) == "/elsewhere/r.json"
    # the summary's run time is the results file's (what the report shows), not the runner's
    (layout["results"] / "smoke").mkdir(parents=True)
    (layout["results"] / "smoke" / "02_good.json").write_text(json.dumps({"seconds": 61.4}))
    text = batch.summary("smoke", [(notebooks[1], injected)], {}, {notebooks[1]: 75.0})
    assert "## 02_good\n_Ran in 61 s._" in text


# Marked: the committed report/ predates this check until the merger regenerates it (make
# report); its results files then carry the 'conclusions' key that NotebookRun.save writes.
REGENERATED = all("conclusions" in results for results in report.load_results(ROOT / "report")
                  .values())


@pytest.mark.xfail(not REGENERATED, strict=True,
                   reason="report/ was published before machine paths and reprs were refused: "
                          "regenerate it with make report")
def test_the_committed_report_shows_no_machine_path_or_repr():
    pattern = re.compile("|".join([*(re.escape(d) + "/" for d in report.MACHINE_DIRS),
                                   re.escape(str(ROOT)), *(re.escape(r) for r in report.REPRS)]))
    found = [f"{f.relative_to(ROOT)}: {m.group()}" for f in sorted((ROOT / "report").rglob("*"))
             if f.is_file() and f.suffix in (".ipynb", ".html", ".json", ".md")
             for m in pattern.finditer(f.read_text())]
    assert not found, found[:10]


def test_the_committed_landing_page_opens_with_the_synthesis_and_each_notebooks_figure():
    page = (ROOT / "report" / "index.html").read_text()
    results = report.load_results(ROOT / "report")
    assert page.index('id="synthesis"') < min(page.index(f'id="{n}"') for n in results)
    figures = [r["headline"]["figure"] for r in results.values() if r["headline"].get("figure")]
    assert page.count("<img ") == len(figures)
    assert all(f'href="{name}.html"' in page for name in results)
    assert "<script" not in page and len(page) < 200_000
