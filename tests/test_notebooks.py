"""The notebooks' sources: each percent-format script (notebooks/0N_*.py) and its .ipynb agree,
every notebook has a papermill parameters cell, opens in Colab from the project's repository
and installs itself there, and imports its code from helpers (no sys.path edits)."""

from pathlib import Path

import jupytext
import pytest
from jupytext.compare import compare_notebooks

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "notebooks").glob("[0-9]*.py"))
REPOSITORY = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]


def test_every_notebook_has_its_script_and_a_number_of_its_own():
    notebooks = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
    assert SCRIPTS and [n.stem for n in notebooks] == [s.stem for s in SCRIPTS]
    numbers = [s.stem[:2] for s in SCRIPTS]
    assert numbers == [f"{i:02d}" for i in range(1, len(SCRIPTS) + 1)], numbers


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_script_and_notebook_agree(script):
    """Edit either side in JupyterLab (jupytext pairs them, notebooks/jupytext.toml) or run
    `make notebooks`; a pair edited on one side only fails here."""
    compare_notebooks(jupytext.read(script.with_suffix(".ipynb")), jupytext.read(script),
                      fmt="py:percent", allow_expected_differences=False)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_notebook_opens_in_colab_and_installs_itself_there(script):
    notebook = jupytext.read(script)
    slug = REPOSITORY.removeprefix("https://github.com/")
    badge = f"https://colab.research.google.com/github/{slug}/blob/main/notebooks/{script.stem}.ipynb"
    assert badge in notebook.cells[0].source
    setup = notebook.cells[1].source
    assert '"google.colab" in sys.modules' in setup and f"git+{REPOSITORY}" in setup
    assert f'colab_setup("{script.stem}")' in setup
    assert "parameters" in notebook.cells[2].metadata.get("tags", [])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_notebook_starts_and_saves_through_helpers(script):
    source = script.read_text()
    assert "sys.path" not in source
    assert f'start("{script.stem}"' in source and "run.save(" in source
    assert "## Findings" in source and "run.show_findings(" in source


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_every_grid_can_go_to_a_cluster_and_sends_recipes_not_models(script):
    """Each call of ``run_grid`` or ``ensemble_grid`` passes the notebook's ``scheduler``
    parameter, and its models as ``partial(build_classifier, ...)`` recipes: a lambda would
    carry the notebook's globals (a built model, the test set) to every worker."""
    import ast

    tree = ast.parse(script.read_text())
    grids = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
             and getattr(node.func, "id", None) in ("run_grid", "ensemble_grid")]
    if grids:
        assert any(isinstance(n, ast.Assign) and n.targets[0].id == "scheduler"
                   for n in tree.body if isinstance(n, ast.Assign)), script.name
    for call in grids:
        assert any(k.arg == "scheduler" for k in call.keywords), (script.name, call.lineno)
    lambdas = [node for node in ast.walk(tree) if isinstance(node, ast.Lambda)
               and any(getattr(n, "id", None) == "build_classifier" for n in ast.walk(node))]
    assert not lambdas, f"{script.name}: build a model through partial(build_classifier, ...)"
