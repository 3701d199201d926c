"""Shared by the notebook builders (tools/build_notebook_*.py): write a notebook from its
cells, with stable cell ids, and with ``--execute`` keep only the outputs nbval checks."""

import sys

import nbformat as nbf

md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell


def keep_checked_outputs(notebook):
    """Execute at the smoke defaults and keep only the outputs nbval compares (cells marked
    NBVAL_CHECK_OUTPUT): the committed notebook stays small and its checks have a reference."""
    from nbclient import NotebookClient

    NotebookClient(notebook, timeout=1800, kernel_name="python3",
                   resources={"metadata": {"path": "notebooks"}}).execute()
    for cell in notebook.cells:
        if cell.cell_type == "code" and "NBVAL_CHECK_OUTPUT" not in cell.source:
            cell.outputs, cell.execution_count = [], None  # nbval needs the checked counts
    return notebook


def build(cells, path: str) -> None:
    """Write ``path`` (run from the repository root); ``--execute`` on the command line
    stores the checked outputs."""
    for number, cell in enumerate(cells):  # stable ids: rebuilding changes only what changed
        cell.id = f"cell-{number:02d}"
    notebook = nbf.v4.new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
    })
    if "--execute" in sys.argv:
        notebook = keep_checked_outputs(notebook)
    nbf.write(notebook, path)
