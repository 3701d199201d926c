import json

import matplotlib
import torch

matplotlib.use("Agg")

from helpers import notebook  # noqa: E402


def _row(method, change):
    return {"model": "m", "method": method, "baseline": "source", "tasks": 2, "images": 10,
            "baseline_accuracy": 0.5, "accuracy": 0.5 + change, "change": change,
            "ci_low": change - 0.1, "ci_high": change + 0.1, "better_on": 0, "worse_on": 0,
            "better_tasks": [], "worse_tasks": [], "baseline_ece": 0.1, "ece": 0.1,
            "baseline_seconds": 0.0, "seconds": 0.5}


def test_a_run_seeds_shows_its_findings_and_writes_them_with_its_results(tmp_path, capsys):
    run = notebook.start("01_x", {"profile": "smoke", "seed": 3, "n": 1},
                         tmp_path / "r" / "01_x.json", tmp_path / "f")
    first = torch.rand(1)
    torch.manual_seed(3)
    assert torch.equal(first, torch.rand(1))  # start seeded torch with the run's seed
    assert run.device.type in ("cpu", "cuda") and "device:" in capsys.readouterr().out
    lines = run.show_findings([_row("memo", 0.2)], figure="01_x_findings")
    assert len(lines) == 1 and "**memo** vs source" in lines[0]
    assert (tmp_path / "f" / "01_x_findings.png").is_file()
    store = run.store(method_settings=("n",))
    assert store.parameters == {"profile": "smoke", "seed": 3}
    run.save({"Means": [{"a": 1}]}, "a note", headline_table="Means", extra=[1])
    saved = json.loads((tmp_path / "r" / "01_x.json").read_text())
    assert saved["findings"] == lines and saved["comparisons"][0]["change"] == 0.2
    assert "better_tasks" not in saved["comparisons"][0]
    assert saved["headline"] == {"table": "Means", "figure": "01_x_findings"}
    assert saved["parameters"]["n"] == 1 and saved["run"]["seed"] == 3 and saved["extra"] == [1]


def test_text_findings_keep_the_given_headline_figure(tmp_path):
    run = notebook.start("05_x", {"profile": "smoke"}, tmp_path / "05_x.json", tmp_path)
    run.show_findings(lines=["a computed sentence"])
    run.save({}, headline_figure="05_x_gain")
    saved = json.loads((tmp_path / "05_x.json").read_text())
    assert saved["findings"] == ["a computed sentence"] and saved["comparisons"] == []
    assert saved["headline"]["figure"] == "05_x_gain"


def test_start_checks_the_counts_a_notebook_was_given(tmp_path):
    import pytest

    from helpers.params import ParameterError

    with pytest.raises(ParameterError, match="n_images = -1"):
        notebook.start("01_x", {"profile": "smoke", "n_images": -1}, tmp_path / "x.json")


def test_progress_bars_in_a_kernel_without_ipywidgets_print_no_warning(tmp_path):
    """tqdm.auto in a papermill kernel without ipywidgets falls back to text bars and warns
    with its site-packages path, which every published notebook showed; importing the
    package mutes that one warning, and the bars still draw."""
    import nbformat
    import papermill

    from helpers import paths

    cell = nbformat.v4.new_code_cell("import helpers.evaluate\nfrom tqdm.auto import tqdm\n"
                                     "for _ in tqdm(range(3), desc='bar'):\n    pass")
    source = tmp_path / "bars.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[cell], metadata={"kernelspec": {
        "name": "python3", "display_name": "Python 3", "language": "python"}}), source)
    papermill.execute_notebook(str(source), str(tmp_path / "out.ipynb"), progress_bar=False,
                               cwd=str(paths.REPO))
    outputs = nbformat.read(tmp_path / "out.ipynb", as_version=4).cells[0].outputs
    text = "".join(output.get("text", "") for output in outputs)
    assert "bar: 100%" in text and "Warning" not in text
