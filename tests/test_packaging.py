"""requirements.txt (pinned, what `make setup` and conda install), pyproject.toml (what the
package needs, for `pip install -e .` alone) and environment.yml must agree."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower()


def test_requirements_and_pyproject_name_the_same_packages():
    pinned = {_name(line) for line in (ROOT / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"]}
    extras = {extra: {_name(r) for r in requirements}
              for extra, requirements in project["optional-dependencies"].items()}
    assert declared | set().union(*extras.values()) == pinned
    assert not any(declared & names for names in extras.values())


def test_jupyterlab_comes_as_an_extra_not_with_the_package():
    """`pip install tta-helpers` (Colab) stays slim; `tta-helpers[lab]` brings JupyterLab,
    the jupytext extension that opens the .py sources as notebooks, and widget bars."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lab = {_name(r) for r in project["optional-dependencies"]["lab"]}
    assert lab == {"jupyterlab", "ipywidgets", "jupytext"}


def test_conda_environment_installs_the_requirements_and_the_package():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip == ["-r requirements.txt", "-e ."]


# The runner's packages hidden from a notebook's process: importing one fails as if absent.
HIDE_RUNNER = """
import runpy, sys
from importlib.abc import MetaPathFinder
from helpers.cluster import RUNNER_PACKAGES

class Absent(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in RUNNER_PACKAGES:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, Absent())
runpy.run_path(sys.argv[1], run_name="__main__")
print("runner modules loaded:", sorted(m for m in sys.modules
                                       if m.split(".")[0] in RUNNER_PACKAGES))
"""


def test_the_runner_comes_as_an_extra_and_a_notebook_needs_none_of_it(tmp_path):
    """`pip install tta-helpers` (what Colab's first cell installs) leaves out the batch
    runner's packages; notebook 04 (a grid of every kind of method, ensembles, the findings,
    its results and figures) runs at its defaults with them hidden, and a runner entry point
    says what to install."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"]}
    runner = {_name(r) for r in project["optional-dependencies"]["runner"]}
    assert runner == {"papermill", "nbformat", "nbconvert", "dask", "distributed",
                      "dask-jobqueue"} and not declared & runner
    env = {**os.environ, "MPLBACKEND": "Agg", "TTA_RESULTS": str(tmp_path / "results"),
           "TTA_FIGURES": str(tmp_path / "figures"), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", HIDE_RUNNER,
                           str(ROOT / "notebooks" / "04_ensemble.py")],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "runner modules loaded: []" in done.stdout
    assert list((tmp_path / "results").rglob("04_ensemble.json"))
    probe = HIDE_RUNNER.replace("runpy.run_path(sys.argv[1], run_name=\"__main__\")",
                                "from helpers.batch import main; main(['--only', 'none'])")
    done = subprocess.run([sys.executable, "-c", probe, ""], capture_output=True, text=True,
                          env=env, cwd=tmp_path)
    assert 'pip install "tta-helpers[runner]"' in done.stderr
