"""Where data, checkpoints, caches, results and figures live.

Everything is relative to the repository (found from this file when installed in
editable mode, else the working directory) and can be moved with environment
variables, so that Colab users can point ``TTA_DATA`` at a mounted drive.
"""

from __future__ import annotations

import os
from pathlib import Path


def _repo_root() -> Path:
    if "TTA_HOME" in os.environ:
        return Path(os.environ["TTA_HOME"]).expanduser().resolve()
    here = Path(__file__).resolve().parents[1]
    if (here / "pyproject.toml").exists() and (here / "notebooks").is_dir():
        return here
    return Path.cwd()


def _dir(env: str, default: Path) -> Path:
    return Path(os.environ.get(env, default)).expanduser()


REPO = _repo_root()
NOTEBOOKS = REPO / "notebooks"
# Shipped inside the package, so that a notebook installed by pip (Colab) finds them too;
# TTA_PROFILES points the batch runner at another folder of profiles (tests, a cluster's own).
PROFILES = _dir("TTA_PROFILES", Path(__file__).resolve().parent / "profiles")
DATA = _dir("TTA_DATA", REPO / "data")
CHECKPOINTS = _dir("TTA_CHECKPOINTS", REPO / "checkpoints")
CACHE = _dir("TTA_CACHE", REPO / ".cache")
RESULTS = _dir("TTA_RESULTS", REPO / "results")
RUNS = _dir("TTA_RUNS", REPO / "runs")
FIGURES = _dir("TTA_FIGURES", REPO / "figures")
# The Debian package ``dataset-fashion-mnist`` installs the original gzip files here.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def resolve(path) -> Path:
    """A path from a profile or a parameter: relative ones are relative to the repository,
    so that notebooks run by papermill (in notebooks/) and by hand agree."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else REPO / path


def checkpoint_places(path) -> list[Path]:
    """Where a checkpoint file is looked for, in order: an absolute path as it is; a relative
    one under ``CHECKPOINTS`` (``$TTA_CHECKPOINTS``, so that a profile can name just the file
    and a Colab user keep the weights on a drive), then under the repository (so that
    ``checkpoints/<file>`` keeps working)."""
    path = Path(path).expanduser()
    if path.is_absolute():
        return [path]
    return list(dict.fromkeys([CHECKPOINTS / path, REPO / path]))


def find_checkpoint(path) -> Path | None:
    """The first of ``checkpoint_places(path)`` that is a file, else None."""
    return next((place for place in checkpoint_places(path) if place.is_file()), None)


def notebook_outputs(notebook: str, profile: str, results_path=None,
                     figures_dir=None) -> tuple[Path, Path]:
    """A notebook run's results file and figures folder: the given ones, else
    ``RESULTS/<profile>/<notebook>.json`` and ``FIGURES/<profile>`` (the batch runner's
    defaults too), so that ``TTA_RESULTS`` and ``TTA_FIGURES`` move a run by hand as well."""
    return (resolve(results_path or RESULTS / profile / f"{notebook}.json"),
            resolve(figures_dir or FIGURES / profile))
