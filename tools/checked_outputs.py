"""Execute notebooks at their own (smoke) defaults and keep only the outputs nbval compares
(cells marked NBVAL_CHECK_OUTPUT), so that the committed notebooks stay small and their checks
have a reference. The source of a notebook is its percent-format script (notebooks/0N_*.py);
this writes the paired .ipynb from it. Run from the repository root after changing a notebook:

    python tools/checked_outputs.py          # every notebook
    python tools/checked_outputs.py 01 03    # those whose names start with 01 or 03
"""

import sys
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


def refresh(script: Path) -> Path:
    """Execute ``script``'s notebook in notebooks/ and write its .ipynb with checked outputs."""
    notebook = jupytext.read(script)
    notebook.metadata["kernelspec"] = KERNELSPEC
    notebook.metadata["language_info"] = {"name": "python"}
    NotebookClient(notebook, timeout=1800, kernel_name="python3",
                   resources={"metadata": {"path": str(script.parent)}}).execute()
    for number, cell in enumerate(notebook.cells):
        cell.id = f"cell-{number:02d}"  # stable ids: a refresh changes only what changed
        if cell.cell_type == "code" and "NBVAL_CHECK_OUTPUT" not in cell.source:
            cell.outputs, cell.execution_count = [], None
        cell.metadata.pop("execution", None)
    target = script.with_suffix(".ipynb")
    nbformat.write(notebook, target)
    return target


if __name__ == "__main__":
    prefixes = sys.argv[1:]
    for script in sorted(Path("notebooks").glob("[0-9]*.py")):
        if not prefixes or any(script.name.startswith(p) for p in prefixes):
            print(f"wrote {refresh(script)}")
