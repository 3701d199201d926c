"""requirements.txt (pinned, what `make setup` and conda install), pyproject.toml (what the
package needs, for `pip install -e .` alone) and environment.yml must agree."""

import re
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
