"""The package as Colab has it, without Colab: installed from a built wheel (not editable) into
a fresh virtual environment, and notebook 05 (the fastest at its defaults, no stand-in to
train) copied to an empty folder outside the repository (Colab's ``/content``) and run there
with papermill by the fresh environment's kernel. Results, figures and caches go where
``helpers.paths`` says (under that folder), and nothing is written into site-packages.

To stay fast, the fresh environment borrows the heavy dependencies (torch, papermill, ...)
from this one through a ``.pth`` file naming its site-packages (a plain path: the editable
install's own ``.pth`` there is not processed), and the wheel installs with ``--no-deps``."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import nbformat
import pytest

from helpers import paths

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "05_transfer_cuts_clustering"

pytestmark = pytest.mark.slow


def run(*command, **kwargs) -> str:
    done = subprocess.run([str(part) for part in command], capture_output=True, text=True,
                          **kwargs)
    assert done.returncode == 0, f"{command}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def build_wheel(tmp_path: Path) -> Path:
    """The package's wheel, built from a copy of its sources (no build/ or egg-info in the
    repository)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "helpers", source / "helpers",
                    ignore=shutil.ignore_patterns("__pycache__"))
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
        "-w", tmp_path / "dist", source)
    return next((tmp_path / "dist").glob("tta_helpers-*.whl"))


def fresh_venv(tmp_path: Path, wheel: Path) -> tuple[Path, Path]:
    """A new virtual environment with the wheel installed and this environment's
    site-packages on its path; its python and its site-packages."""
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
                .strip())
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps",
        "--no-index", wheel)
    return python, site


def files_in(folder: Path) -> dict[str, float]:
    """Every file under ``folder`` but Python's bytecode caches, with its modification time."""
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def test_a_notebook_runs_from_the_wheel_in_a_folder_outside_the_repository(tmp_path):
    python, site = fresh_venv(tmp_path, build_wheel(tmp_path))
    # Colab's environment: no TTA_* variable and no PYTHONPATH; only the data (read) where
    # Debian's package is missing.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTA_") and k != "PYTHONPATH"}
    if not paths.DEBIAN_FASHION_MNIST.is_dir():
        env["TTA_DATA"] = str(paths.DATA)
    content = tmp_path / "content"
    content.mkdir()
    notebook = nbformat.read(ROOT / "notebooks" / f"{NOTEBOOK}.ipynb", as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(  # where the kernel found the package
        "import sys, helpers\nprint(sys.executable, helpers.__file__)"))
    nbformat.write(notebook, content / f"{NOTEBOOK}.ipynb")

    where = run(python, "-c", "import helpers, helpers.paths as p; print(helpers.__file__);"
                " print(p.REPO)", cwd=content, env=env).split()
    assert Path(where[0]).is_relative_to(site), f"helpers imported from {where[0]}"
    assert Path(where[1]) == content
    before = files_in(site)

    run(python, "-m", "papermill", f"{NOTEBOOK}.ipynb", "executed.ipynb", "-k", "python3",
        "--cwd", content, "--no-progress-bar", cwd=content, env=env)

    executed = nbformat.read(content / "executed.ipynb", as_version=4)
    assert not [o for c in executed.cells for o in c.get("outputs", [])
                if o.output_type == "error"]
    kernel, package = executed.cells[-1].outputs[0].text.split()
    assert Path(kernel) == python and Path(package).is_relative_to(site)
    assert (content / "results" / "smoke" / f"{NOTEBOOK}.json").is_file()
    assert list((content / "figures" / "smoke").glob("05_*.png"))
    assert (content / ".cache").is_dir()
    assert files_in(site) == before  # nothing written into site-packages
    assert not (site / "results").exists() and not (site / "figures").exists()
