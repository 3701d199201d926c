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


def test_every_notebook_has_its_script():
    notebooks = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
    assert [n.stem for n in notebooks] == [s.stem for s in SCRIPTS] and len(SCRIPTS) == 6


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
