"""Progress bars: widgets where JupyterLab, Colab or VS Code draws them, text in papermill
kernels (whose executed notebooks the report publishes with the text bars stripped)."""

import nbformat
import pytest

from helpers import batch, progress, report

WIDGET = "application/vnd.jupyter.widget-view+json"


@pytest.mark.parametrize(("environ", "widgets"), [
    ({}, False),
    ({"JPY_SESSION_NAME": "notebooks/05_transfer_cuts_clustering.ipynb"}, True),
    ({"VSCODE_PID": "42"}, True),
    ({"JPY_SESSION_NAME": "x.ipynb", "TTA_PROGRESS": "text"}, False),
    ({"TTA_PROGRESS": "Widgets"}, True),
    ({"TTA_PROGRESS": ""}, False),
])
def test_widgets_only_where_a_frontend_renders_them_or_asked_for(environ, widgets):
    assert progress.widgets_render(environ) is widgets


def test_an_unknown_choice_is_an_error_naming_the_choices():
    with pytest.raises(ValueError, match="TTA_PROGRESS='bars'.*auto, text, widgets"):
        progress.widgets_render({"TTA_PROGRESS": "bars"})


def test_the_batch_runner_asks_its_kernels_for_text_bars():
    assert batch.kernel_environment(local=True)["TTA_PROGRESS"] == "text"


def _bar_outputs(tmp_path, name):
    """Run a notebook that imports the package and draws a tqdm.auto bar in a papermill
    kernel (it inherits this process's environment); the bar cell's outputs."""
    import papermill

    source = tmp_path / f"{name}.ipynb"
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import helpers\nfrom tqdm.auto import tqdm\nfor _ in tqdm(range(3), desc='bar'):\n"
        "    pass")])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    nbformat.write(notebook, source)
    executed = tmp_path / f"{name}.out.ipynb"
    papermill.execute_notebook(str(source), str(executed), kernel_name="python3",
                               progress_bar=False, cwd=str(tmp_path))
    return nbformat.read(executed, as_version=4).cells[0].outputs


def test_a_papermill_kernel_draws_text_bars_that_the_report_strips(tmp_path, monkeypatch):
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.delenv("TTA_PROGRESS", raising=False)
    monkeypatch.delenv("VSCODE_PID", raising=False)
    outputs = _bar_outputs(tmp_path, "text")
    assert outputs and not any(WIDGET in output.get("data", {}) for output in outputs)
    assert "bar: 100%" in "".join(output.get("text", "") for output in outputs)
    assert all(report.is_progress(output) for output in outputs)
    assert not any("IProgress" in output.get("text", "") for output in outputs)


def test_a_kernel_started_by_jupyterlab_draws_widget_bars(tmp_path, monkeypatch):
    pytest.importorskip("ipywidgets", reason="ipywidgets (requirements.txt) draws the widgets")
    monkeypatch.setenv("JPY_SESSION_NAME", str(tmp_path / "widgets.ipynb"))
    monkeypatch.delenv("TTA_PROGRESS", raising=False)
    outputs = _bar_outputs(tmp_path, "widgets")
    assert any(WIDGET in output.get("data", {}) for output in outputs)
