"""The package's layers (pyproject.toml's import-linter contract): each layer imports only
the layers below it, and every module of the package has its place in them."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LINT, "--config", folder / "pyproject.toml", "--no-cache"],
                          capture_output=True, text=True, cwd=folder,
                          env={"PYTHONPATH": str(folder), "PATH": str(LINT.parent)})


def layers() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return config["contracts"][0]["layers"]


def test_the_package_keeps_its_layers():
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "1 kept, 0 broken" in done.stdout


def test_every_module_of_the_package_has_a_layer():
    """A new module must be placed in the contract, or the contract says nothing of it."""
    placed = {name.strip() for layer in layers() for name in layer.split("|")}
    modules = {f"helpers.{p.stem if p.is_file() else p.name}"
               for p in (ROOT / "helpers").iterdir()
               if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert modules - placed == set() and placed - modules == set()


def test_an_import_that_runs_up_the_layers_breaks_the_contract(tmp_path):
    """The methods may not use the experiment grid (it runs them)."""
    shutil.copytree(ROOT / "helpers", tmp_path / "helpers",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    base = tmp_path / "helpers" / "tta" / "base.py"
    base.write_text(base.read_text() + "\nfrom ..grid import run_grid  # noqa\n")
    done = lint(tmp_path)
    assert done.returncode != 0 and "helpers.tta.base -> helpers.grid" in done.stdout
