import ast
import functools
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import paths
from helpers.models import Classifier, Preprocess, SmallClipConfig, SmallCnn, build_small_clip

# The stand-ins the slow tests and the notebooks' defaults (nbval) load.
TESTED_STANDINS = ("small-clip", "small-cnn")
BACKGROUND = {}


def needs_standins(item) -> bool:
    """Whether a test loads the trained stand-ins: the slow tests, and the notebooks (nbval)
    whose default models name one (01, 03, 04; 02, 05 and 06 can run while they train)."""
    if item.path.suffix == ".ipynb":
        return notebook_uses_standins(item.path)
    return bool(item.get_closest_marker("slow"))


@functools.cache
def notebook_uses_standins(notebook: Path) -> bool:
    from helpers.batch import notebook_parameters
    from helpers.models import parse_standin

    defaults = notebook_parameters(notebook)
    names = [name for key in ("models", "photo_models")
             for name in ast.literal_eval(defaults.get(key, "[]"))]
    return any(parse_standin(name) for name in names)


@pytest.hookimpl(trylast=True)  # after -m and -k deselected: only the tests that will run
def pytest_collection_modifyitems(session, config, items):
    """When a slow test or a notebook is to run, train the stand-ins they load in the
    background from the start, one process of one thread each (``helpers.standins``, as
    ``make report`` trains them), while the other tests run; a test that needs one waits on
    its cache lock (``models.cached_training``) instead of training it on its own. Why: in
    the test process, one after the other on the process's threads, they took ~8 of
    ``make test``'s minutes and held up every test after them; side by side, while the
    other tests run, the CLIP's 7 minutes are the whole wait. Nothing is trained when both
    are cached (``prepare`` loads them)."""
    if not any(map(needs_standins, items)):
        return
    # The tests that wait for them last, and this process on one thread: the cores go to
    # the trainings and the other tests, not to threads that wait for each other.
    items.sort(key=needs_standins)
    torch.set_num_threads(1)
    log = paths.CACHE / "models" / "tests-standins.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    BACKGROUND["log"] = log.open("w")
    BACKGROUND["process"] = subprocess.Popen(
        [sys.executable, "-m", "helpers.standins", "--prepare", *TESTED_STANDINS,
         "--jobs", str(min(len(TESTED_STANDINS), os.cpu_count() or 1))],
        stdout=BACKGROUND["log"], stderr=subprocess.STDOUT, cwd=paths.REPO,
        start_new_session=True)  # its own process group: its pool's workers stop with it


def pytest_sessionfinish(session, exitstatus):
    """Stop a training still running (a run of a few tests), its pool's worker processes
    with it (terminating the trainer alone left them training); its model is not cached."""
    process = BACKGROUND.pop("process", None)
    if process is not None and process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)  # the trainer and its pool's workers
        process.wait(timeout=30)
    if "log" in BACKGROUND:
        BACKGROUND.pop("log").close()


@pytest.fixture
def tiny_cnn():
    """A random batch-norm CNN classifier over 5 classes, small enough for unit tests."""
    torch.manual_seed(0)
    net = SmallCnn(channels=(4, 8), num_classes=5)
    model = Classifier(net, Preprocess(None, (0.5,) * 3, (0.5,) * 3),
                       [f"c{i}" for i in range(5)], "tiny random CNN (tests)")
    # Non-trivial running statistics, so restoring them is observable.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(16, 3, 16, 16))
    return model.eval()


@pytest.fixture
def images():
    return torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def small_clip():
    """A random-weight small CLIP (OpenAI architecture), the same in every module that asks."""
    torch.manual_seed(0)
    model = build_small_clip(SmallClipConfig()).float().eval()
    model.name = ""
    return model
