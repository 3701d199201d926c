"""The published report (report/) and the README's results block: written from results files,
complete for every notebook, within its size budget, and stable when nothing changed."""

import json
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
