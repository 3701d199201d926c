"""Bad inputs and faults (issue 18): each test asserts the message a user sees and that
nothing already computed is lost or silently stale. Tiny models and notebooks: seconds,
except the Ctrl-C test of the batch runner (real kernels, about 20 s)."""

from __future__ import annotations

import ast
import functools
import gzip
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import papermill
import psutil
import pytest
import torch
import yaml
from PIL import Image
from test_batch import make_repo, notebook, notebooks, write_profile
from test_evaluate import Labelled

from helpers import batch, data, evaluate, fingerprint, grid, models, paths
from helpers.evaluate import ResultStore, RunLog
from helpers.grid import run_grid
from helpers.jsonfile import CorruptFileWarning, write_json
from helpers.models import SmallClipConfig, clip_classifier
from helpers.tta import method_factories


@pytest.fixture
def package_copy(tmp_path, monkeypatch):
    """A copy of the helpers package whose sources the tests may edit: fingerprints are
    taken from it (the code that runs is the real package's)."""
    root = tmp_path / "pkg" / "helpers"
    shutil.copytree(fingerprint.PACKAGE_ROOT, root,
                    ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(fingerprint, "PACKAGE_ROOT", root)
    fingerprint.forget()
    yield root
    fingerprint.forget()


def edit(file: Path) -> None:
    """A change to a module's source that does not change what it computes."""
    file.write_text(file.read_text() + "\n# edited by a test\n")
    fingerprint.forget()


@pytest.fixture(scope="module")
def tiny_clip():
    torch.manual_seed(0)
    config = SmallClipConfig(embed_dim=16, vision_layers=1, vision_width=64,
                             transformer_width=64, transformer_layers=1)
    model = models.build_small_clip(config).float().eval()
    model.name = ""
    return clip_classifier(model, [f"c{i}" for i in range(5)], cache=False)


# ---------------------------------------------------------------- stale results


def _grids(tiny_cnn, tiny_clip, images, store, monkeypatch):
    """The CNN methods on a CNN and TPT on a CLIP, into one store; the cells computed."""
    computed = []
    real = evaluate.evaluate

    def counted(adapter, dataset, *args, desc=None, **kwargs):
        computed.append(desc)
        return real(adapter, dataset, *args, desc=desc, **kwargs)

    monkeypatch.setattr(grid, "evaluate", counted)
    task = {"t": Labelled(images[:3], [0, 1, 2])}
    options = {"memo": {"n_views": 2}, "memo_plus": {"n_views": 2}, "tent": {"lr": 1e-3},
               "tpt": {"n_views": 3, "keep": 1}}
    results = run_grid({"cnn": lambda: tiny_cnn}, task, method_factories(
        ["source", "tent", "memo", "memo_plus"], options), store, progress=False)
    results += run_grid({"clip": lambda: tiny_clip}, task, method_factories(["tpt"], options),
                        store, progress=False)
    return sorted(computed), results


def test_editing_a_methods_source_recomputes_only_its_cells(package_copy, tiny_cnn, tiny_clip,
                                                            images, tmp_path, monkeypatch,
                                                            capsys):
    path = tmp_path / "r.cells.json"
    computed, first = _grids(tiny_cnn, tiny_clip, images, ResultStore(path, {"n": 3}),
                             monkeypatch)
    assert computed == ["clip t tpt", "cnn t memo", "cnn t memo_plus", "cnn t source",
                        "cnn t tent"]
    computed, again = _grids(tiny_cnn, tiny_clip, images, ResultStore(path, {"n": 3}),
                             monkeypatch)
    assert computed == [] and again == first and "recomputing" not in capsys.readouterr().out

    edit(package_copy / "tta" / "memo.py")  # memo_plus imports memo; TPT and Tent do not
    computed, third = _grids(tiny_cnn, tiny_clip, images, ResultStore(path, {"n": 3}),
                             monkeypatch)
    assert computed == ["cnn t memo", "cnn t memo_plus"]
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "r.cells.json: recomputing 1 cell(s) of memo (cnn / t): code changed: "
        "helpers/tta/memo.py",
        "r.cells.json: recomputing 1 cell(s) of memo_plus (cnn / t): code changed: "
        "helpers/tta/memo.py"]
    kept = [(r, s) for r, s in zip(first, third) if r["method"] not in ("memo", "memo_plus")]
    assert len(kept) == 3 and all(r == s for r, s in kept)  # the others: as stored

    edit(package_copy / "evaluate.py")  # the evaluation loop: every cell
    computed, _ = _grids(tiny_cnn, tiny_clip, images, ResultStore(path, {"n": 3}), monkeypatch)
    assert len(computed) == 5
    assert "code changed: helpers/evaluate.py" in capsys.readouterr().out


def test_changed_settings_recompute_only_that_method_and_say_which(tmp_path, capsys):
    store = ResultStore(tmp_path / "s.json", {"n": 1})
    store.run(("m", "d", "memo"), lambda: {"accuracy": 0.5}, {"lr": 0.1, "n_views": 8})
    store.run(("m", "d", "tent"), lambda: {"accuracy": 0.4}, {"lr": 0.1})
    capsys.readouterr()
    again = ResultStore(tmp_path / "s.json", {"n": 1})
    assert again.why_stale(("m", "d", "tent"), {"lr": 0.1}) is None
    again.run(("m", "d", "memo"), lambda: {"accuracy": 0.6}, {"lr": 0.2, "n_views": 8})
    assert capsys.readouterr().out == ("s.json: recomputing 1 cell(s) of memo (m / d): "
                                       "settings changed (lr 0.1 -> 0.2)\n")


def test_trained_models_are_trained_again_when_their_code_changes(package_copy, tmp_path,
                                                                  monkeypatch, capsys):
    module = package_copy / "toy_training.py"
    module.write_text("# the training code of a toy model\n")
    calls = []

    @dataclass
    class Config:
        width: int = 2

    def train(config):
        calls.append(config)
        return {"w": torch.full((config.width,), float(len(calls)))}, {"steps": len(calls)}

    train.__module__ = "helpers.toy_training"
    monkeypatch.setattr(paths, "CACHE", tmp_path / "cache")
    first = models.cached_training("toy", Config(), train, verbose=True)
    assert models.cached_training("toy", Config(), train, verbose=True) == first
    assert len(calls) == 1
    edit(module)
    capsys.readouterr()
    second = models.cached_training("toy", Config(), train, verbose=True)
    assert len(calls) == 2 and second != first and first.exists()
    assert f"trained again since {first.name}: code changed: helpers/toy_training.py" in \
        capsys.readouterr().out
    saved = torch.load(second, weights_only=True)
    assert saved["metrics"] == {"steps": 2} and saved["code"] == fingerprint.closure(
        "helpers.toy_training")


def test_run_log_drops_runs_of_other_code_and_says_why(package_copy, tmp_path, capsys):
    path = tmp_path / "series.json"
    code = fingerprint.closure("helpers.transfer.study")
    RunLog(path, {"a": 1}, ("r",), code).add([{"r": 0, "acc": 0.5}])
    assert RunLog(path, {"a": 1}, ("r",), code).has(r=0)
    edit(package_copy / "transfer" / "network.py")
    log = RunLog(path, {"a": 1}, ("r",), fingerprint.closure("helpers.transfer.study"))
    assert not log.has(r=0) and log.runs == []
    assert capsys.readouterr().out == ("series.json: recomputing its 1 run(s): code changed: "
                                       "helpers/transfer/network.py\n")


def test_fingerprints_follow_imports_statically():
    memo = fingerprint.closure("helpers.tta.memo")
    assert {"helpers.tta.memo", "helpers.tta.losses", "helpers.tta.base",
            "helpers.views"} <= set(memo)
    assert "helpers.tta.tpt" not in memo and "helpers.tta" not in memo  # no parent __init__
    assert "helpers.tta.memo" not in fingerprint.closure("helpers.tta.tpt")
    assert "helpers.data" in fingerprint.closure("helpers.models")  # a lazy import
    assert set(fingerprint.of_source("%matplotlib inline\nfrom helpers import paths, data\n"
                                     "from helpers.tta import memo")) == set(
        fingerprint.closure("helpers.paths", "helpers.data", "helpers.tta.memo"))
    assert fingerprint.closure("numpy", "tests.test_faults") == {}


def test_fingerprints_leave_out_the_scheduling_modules():
    """Editing the runner, the Dask plumbing or the grid's dispatch recomputes nothing: the
    ensemble grid imports the grid (its cells go to a cluster too), the grid imports the
    evaluation loop and the cluster, yet no cell's fingerprint names the grid or the cluster,
    and the evaluation loop is still in it."""
    ensemble = fingerprint.module_file("helpers.ensemble_grid").read_text()
    assert "helpers.grid" in fingerprint.imports_in(ast.parse(ensemble), "helpers.ensemble_grid")
    grid = fingerprint.module_file("helpers.grid").read_text()
    assert {"helpers.cluster", "helpers.evaluate"} <= set(
        fingerprint.imports_in(ast.parse(grid), "helpers.grid"))
    code = fingerprint.closure("helpers.ensemble_grid", "helpers.evaluate", "helpers.batch",
                               "helpers.notebook")
    assert not {"helpers.cluster", "helpers.batch", "helpers.grid"} & set(code)
    assert "helpers.evaluate" in code
    assert set(fingerprint.of_source("from helpers import batch, cluster, grid, paths")) == {
        "helpers.paths"}


# ---------------------------------------------------------------- corrupt files


def _truncate(path: Path) -> bytes:
    whole = path.read_bytes()
    path.write_bytes(whole[:len(whole) // 2])
    return whole[:len(whole) // 2]


def test_truncated_cells_store_is_moved_aside_and_recomputed(tmp_path):
    path = tmp_path / "r.cells.json"
    ResultStore(path, {"n": 1}).run(("m", "d", "source"), lambda: {"accuracy": 0.5})
    broken = _truncate(path)
    with pytest.warns(CorruptFileWarning, match=rf"{path} is unreadable \(JSONDecodeError.*"
                                                r"moved aside to r\.cells\.json\.corrupt-1"):
        store = ResultStore(path, {"n": 1})
    assert store.cells == {} and (tmp_path / "r.cells.json.corrupt-1").read_bytes() == broken
    assert store.run(("m", "d", "source"), lambda: {"accuracy": 0.7})["accuracy"] == 0.7
    assert json.loads(path.read_text())["cells"]["m / d / source"]["accuracy"] == 0.7
    path.write_text('[1, 2]')  # valid JSON, not a store
    with pytest.warns(CorruptFileWarning, match="a JSON list where a dict belongs"):
        assert ResultStore(path, {"n": 1}).cells == {}
    assert (tmp_path / "r.cells.json.corrupt-2").read_text() == "[1, 2]"


def test_a_journal_line_cut_short_loses_that_cell_alone(tmp_path):
    """A crash in the middle of appending a finished cell to the store's journal: the cells
    before it are kept, that one is computed again, with a warning naming the line."""
    path, journal = tmp_path / "r.cells.json", tmp_path / "r.cells.json.journal"
    store = ResultStore(path, {"n": 1})
    for i in range(3):
        store.put(("m", f"d{i}", "source"), {"accuracy": i / 10})
    text = journal.read_text()
    assert len(text.splitlines()) == 2  # the first cell wrote the file, the others a line each
    journal.write_text(text[:-10])
    with pytest.warns(CorruptFileWarning, match=r"r\.cells\.json\.journal: line 2 is unread"):
        again = ResultStore(path, {"n": 1})
    assert sorted(again.cells) == ["m / d0 / source", "m / d1 / source"]
    assert again.cells["m / d1 / source"] == store.cells["m / d1 / source"]
    assert not journal.exists()  # folded into the file


def test_truncated_run_log_is_moved_aside_and_the_series_resumes_from_scratch(tmp_path):
    path = tmp_path / "series.json"
    RunLog(path, {"a": 1}, ("r",)).add([{"r": 0}, {"r": 1}])
    _truncate(path)
    with pytest.warns(CorruptFileWarning, match="series.json is unreadable"):
        log = RunLog(path, {"a": 1}, ("r",))
    assert log.runs == [] and (tmp_path / "series.json.corrupt-1").exists()
    log.add([{"r": 0}])
    assert RunLog(path, {"a": 1}, ("r",)).has(r=0)
    path.write_text('[{"parameters": {"a": 1}}, 3]')
    with pytest.warns(CorruptFileWarning, match="records are not JSON objects"):
        assert RunLog(path, {"a": 1}, ("r",)).runs == []


# ---------------------------------------------------------------- batch runner


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """test_batch's fake repository of tiny notebooks (01 fails on purpose, 02 succeeds),
    run without kernels: papermill is replaced by what 02 writes (its results file) and
    01's failure (the batch runner's own code runs as it is)."""
    def execute_notebook(source, executed, parameters, **kwargs):
        if "broken" in source:
            raise RuntimeError("broken on purpose")
        write_json(parameters["results_path"], {"summary": {"table": [{"a": parameters["x"]}]}})

    monkeypatch.setattr(papermill, "execute_notebook", execute_notebook)
    # The Dask workers as threads of this process, where papermill is replaced.
    monkeypatch.setattr(batch, "run", functools.partial(batch.run, processes=False))
    return make_repo(tmp_path, monkeypatch)


def test_corrupt_results_and_records_are_moved_aside_and_rerun(repo, capsys):
    assert batch.run("smoke", only=["02"]) == 0
    results = repo["results"] / "smoke" / "02_good.json"
    record = repo["runs"] / "smoke" / "02_good.done.json"
    _truncate(results)
    with pytest.warns(CorruptFileWarning, match="02_good.json is unreadable"):
        assert batch.run("smoke", only=["01"]) == 1  # the summary reads 02's broken file
    summary = (repo["results"] / "smoke" / "SUMMARY.md").read_text()
    assert "## 02_good\n_Ran in" in summary and "results file was unreadable" in summary
    assert "--only 02_good" in summary and (results.parent / "02_good.json.corrupt-1").exists()
    capsys.readouterr()
    assert batch.run("smoke", resume=True, only=["02"]) == 0  # rerun, not skipped
    assert json.loads(results.read_text())["summary"] == {"table": [{"a": 2}]}
    _truncate(record)
    with pytest.warns(CorruptFileWarning, match="02_good.done.json is unreadable"):
        assert batch.run("smoke", resume=True, only=["02"]) == 0
    assert "skip 02_good" not in capsys.readouterr().out
    assert json.loads(record.read_text())["parameters"]["x"] == 2


def test_a_failed_run_invalidates_the_earlier_success(repo, monkeypatch, capsys):
    assert batch.run("smoke", only=["02"]) == 0
    record = repo["runs"] / "smoke" / "02_good.done.json"
    assert record.exists()

    def killed(*args, **kwargs):
        raise RuntimeError("Kernel died before replying to kernel_info")

    real = papermill.execute_notebook
    monkeypatch.setattr(papermill, "execute_notebook", killed)
    assert batch.run("smoke", only=["02"]) == 1
    summary = (repo["results"] / "smoke" / "SUMMARY.md").read_text()
    assert summary.split("## 02_good\n")[1].startswith(
        "**Failed**: RuntimeError: Kernel died")  # not "Ran in ... (an earlier run)"
    assert not record.exists()
    monkeypatch.setattr(papermill, "execute_notebook", real)
    capsys.readouterr()
    assert batch.run("smoke", resume=True, only=["02"]) == 0
    assert "skip" not in capsys.readouterr().out and record.exists()


def test_resume_reruns_a_notebook_whose_code_changed(repo, capsys):
    assert batch.run("smoke", only=["02"]) == 0
    assert batch.run("smoke", resume=True, only=["02"]) == 0
    assert "skip 02_good.ipynb" in capsys.readouterr().out
    nb = repo["notebooks"] / "02_good.ipynb"
    notebook(nb, 'profile = "smoke"\nresults_path = None\nfigures_dir = None\nx = 1',
             GOOD_CODE_V2)
    assert batch.run("smoke", resume=True, only=["02"]) == 0
    out = capsys.readouterr().out
    assert "run  02_good.ipynb again: code changed: notebooks/02_good.ipynb" in out
    record = json.loads((repo["runs"] / "smoke" / "02_good.done.json").read_text())
    assert record["code"] == batch.notebook_code(nb)
    assert {"helpers.evaluate", "helpers.jsonfile"} <= set(record["code"])


GOOD_CODE_V2 = """\
from helpers.evaluate import write_json
write_json(results_path, {"summary": {"table": [{"a": x, "version": 2}]}})
"""


@pytest.mark.parametrize("profile, message", [
    ({"defaults": {"n_imagez": 3}},
     r"defaults: \['n_imagez'\] declared by no notebook \(a typo\?\); the notebooks' "
     r"parameters: \['figures_dir', 'n_images', 'profile', 'results_path', 'x'\]"),
    ({"notebooks": ["02_good"]},
     r"`notebooks:` in profile file .*bad.yaml must be a dict, not a list\. Write it as a "
     r"mapping of notebook names to their parameters"),
    ({"notebooks": {"02_good": {"x": "abc"}}},
     r"02_good.ipynb: x: a str \('abc'\) where the notebook takes a int \(its default: 1\)"),
    ({"notebooks": {"03_count": {"n_images": -1}}},
     r"03_count.ipynb: n_images: give a whole number >= 1 or None \(all\)"),
    ({"notebooks": {"03_count": {"n_images": "abc"}}},
     r"03_count.ipynb: n_images: a str \('abc'\) where the notebook takes a int"),
    ({"notebooks": {"02_good": {"x": True}}}, r"x: a bool \(True\) where the notebook"),
    ({"jobs": "two"}, r"`jobs:` in profile file .*bad.yaml must be a int"),
    ({"notebok": {}}, r"unknown entries \['notebok'\]"),
])
def test_profile_errors_name_the_parameter_notebook_and_file(repo, profile, message):
    notebook(repo["notebooks"] / "03_count.ipynb", "n_images = 48", "pass")
    write_profile(repo, "bad", profile)
    with pytest.raises(SystemExit, match=message) as error:
        batch.run("bad")
    assert str(repo["profiles"] / "bad.yaml") in str(error.value)
    assert not (repo["runs"] / "bad").exists()  # nothing ran


def test_profile_values_that_fit_the_notebooks_defaults_pass(repo):
    notebook(repo["notebooks"] / "03_count.ipynb", "n_images = 48\nnames = ['a']", "pass")
    write_profile(repo, "ok", {"defaults": {"n_images": None},
                               "notebooks": {"03_count": {"n_images": 5, "names": "all"}}})
    planned = dict(batch.plan("ok", notebooks(repo)))
    assert planned[repo["notebooks"] / "03_count.ipynb"]["names"] == "all"


def test_notebook_side_checks_of_counts(tiny_cnn):
    from helpers import data
    from helpers.params import ParameterError, check_counts

    photos = data.ImageTensorDataset(torch.zeros(6, 3, 4, 4, dtype=torch.uint8), range(6),
                                     list("abcdef"), "six", "six images")
    for n in (-1, 0, "abc", 2.5, True):
        with pytest.raises(ParameterError, match=rf"n = {n!r}: give a whole number >= 1 or "
                                                 r"None \(all\)"):
            data.take(photos, n)
    assert len(data.take(photos, None)) == 6 and len(data.take(photos, 4)) == 4
    parameters = {"n_images": None, "n_held_out": 0, "batch_size": 64, "seed": -3}
    assert check_counts(parameters) is parameters
    with pytest.raises(ParameterError, match=r"n_held_out = -2: give a whole number >= 0\."):
        check_counts({**parameters, "n_held_out": -2})


def test_yaml_syntax_error_names_the_profile_file(repo):
    (repo["profiles"] / "broken.yaml").write_text("defaults:\n  x: [1, 2\nnotebooks: {}\n")
    with pytest.raises(SystemExit) as error:
        batch.plan("broken", notebooks(repo))
    message = str(error.value)
    assert message.startswith(f"Profile file {repo['profiles'] / 'broken.yaml'} is not valid "
                              "YAML") and "<unicode string>" not in message
    assert f'in "{repo["profiles"] / "broken.yaml"}", line' in message


SLEEPER = """\
import os, time
from pathlib import Path
Path("02_sleep.pid").write_text(str(os.getpid()))
for _ in range(1200):
    if Path("stop").exists():
        break
    time.sleep(0.05)
from helpers.jsonfile import write_json
from helpers.paths import resolve  # the runner injects paths relative to the repository
write_json(resolve(results_path), {"summary": {"slept": [{"done": 1}]}})
"""


def _batch(root: Path, *args) -> subprocess.Popen:
    env = {**os.environ, "TTA_HOME": str(root), "OMP_NUM_THREADS": "1",
           "TTA_PROFILES": str(root / "notebooks" / "profiles"),
           "PYTHONPATH": os.pathsep.join([str(Path(batch.__file__).parents[1]),
                                          os.environ.get("PYTHONPATH", "")])}
    for name in ("TTA_RESULTS", "TTA_RUNS", "TTA_FIGURES"):
        env.pop(name, None)
    return subprocess.Popen([sys.executable, "-m", "helpers.batch", "--profile", "p", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_ctrl_c_stops_the_kernels_writes_the_summary_and_exits_130(tmp_path):
    nbs = tmp_path / "notebooks"
    (nbs / "profiles").mkdir(parents=True)
    notebook(nbs / "01_quick.ipynb", 'profile = "s"\nresults_path = None',
             "from helpers.jsonfile import write_json\nfrom helpers.paths import resolve\n"
             "write_json(resolve(results_path), {'summary': {'quick': [{'a': 1}]}})")
    notebook(nbs / "02_sleep.ipynb", 'profile = "s"\nresults_path = None', SLEEPER)
    (nbs / "profiles" / "p.yaml").write_text(yaml.safe_dump({"jobs": 1}))
    records = {name: tmp_path / "runs" / "p" / f"{name}.done.json"
               for name in ("01_quick", "02_sleep")}
    (nbs / "stop").touch()
    assert _batch(tmp_path).wait(120) == 0 and all(r.exists() for r in records.values())

    (nbs / "stop").unlink()
    (nbs / "02_sleep.pid").unlink()
    process = _batch(tmp_path)
    deadline = time.time() + 120
    while not (nbs / "02_sleep.pid").exists() and time.time() < deadline:
        time.sleep(0.1)
    kernel = psutil.Process(int((nbs / "02_sleep.pid").read_text()))
    start = time.time()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130 and time.time() - start < 10, (out, err)
    assert not kernel.is_running() or kernel.status() == psutil.STATUS_ZOMBIE
    summary = (tmp_path / "results" / "p" / "SUMMARY.md").read_text()
    assert summary.startswith("# Summary of the `p` profile\n\n**Interrupted** (Ctrl-C)")
    assert "## 01_quick\n_Ran in" in summary and "| 1 |" in summary
    assert "## 02_sleep\n**Failed**: interrupted by Ctrl-C" in summary
    assert records["01_quick"].exists() and not records["02_sleep"].exists()

    (nbs / "stop").touch()  # --resume: what finished is kept, the interrupted one reruns
    process = _batch(tmp_path, "--resume")
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 0 and "skip 01_quick.ipynb" in out
    assert "02_sleep.ipynb" not in out.split("skip")[-1] or "ok   02_sleep" in out
    assert records["02_sleep"].exists()


# ---------------------------------------------------------------- data


def _image(path: Path, pixels) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def _rgb(seed: int):
    return np.random.default_rng(seed).integers(0, 256, (12, 12, 3), dtype=np.uint8)


def test_16_bit_greyscale_png_is_scaled_not_clipped(tmp_path):
    grey = np.random.default_rng(0).integers(0, 65536, (40, 40)).astype(np.uint16)
    _image(tmp_path / "imagenet-a" / "n01498041" / "g16.png", grey)
    with Image.open(tmp_path / "imagenet-a" / "n01498041" / "g16.png") as image:
        assert image.mode == "I;16"
    image, _ = data.imagenet_a(root=tmp_path, size=40)[0]
    expected = torch.from_numpy(np.round(grey / 257)).float() / 255
    assert abs(image.mean().item() - grey.mean() / 65535) < 0.005  # was 0.998 (clipped)
    assert (image[0] - expected).abs().max() < 0.02 and torch.equal(image[0], image[2])


def test_dropped_inputs_are_counted_named_and_described(tmp_path):
    root = tmp_path / "imagenetv2-matched-frequency-format-val"
    _image(root / "2" / "a.jpeg", _rgb(0))
    (root / "2" / "broken.jpeg").write_bytes(b"not an image")
    for folder in ("1000", "007", "9999"):
        _image(root / folder / "x.jpeg", _rgb(1))
    _image(root / "loose.jpeg", _rgb(2))
    (root / "README.txt").write_text("not an input")
    with pytest.warns(UserWarning) as caught:
        ds = data.imagenet_v2(root=tmp_path, size=8)
    message = str(caught[0].message)
    assert message == (
        f"{root}: skipped 5 image file(s): 1 unreadable (2/broken.jpeg); 3 in folders that "
        "name no class (007/x.jpeg, 1000/x.jpeg, 9999/x.jpeg); 1 loose in the root "
        "(loose.jpeg)")
    assert len(ds) == 1 and ds.labels.tolist() == [2] and ds.skipped == 5
    assert [p.name for p in ds.dropped["in folders that name no class"]] == ["x.jpeg"] * 3
    assert "(5 image files skipped: 1 unreadable (2/broken.jpeg); 3 in folders that name no " \
           "class (007/x.jpeg, 1000/x.jpeg, 9999/x.jpeg); 1 loose in the root (loose.jpeg))" \
           in ds.description


def test_imagenet_a_folder_of_bad_files_says_so_not_missing(tmp_path):
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / "imagenet-a" / "n01498041").mkdir(parents=True, exist_ok=True)
        (tmp_path / "imagenet-a" / "n01498041" / name).write_bytes(b"\xff\xd8 cut short")
    with pytest.warns(UserWarning, match="skipped 2"), \
            pytest.raises(data.DatasetNotFoundError) as error:
        data.imagenet_a(root=tmp_path)
    assert str(error.value).startswith(
        f"ImageNet-A at {tmp_path / 'imagenet-a'} holds no usable image (2 image file(s) "
        "skipped: 2 unreadable (n01498041/a.jpg, n01498041/b.jpg)). Delete the folder, then "
        "get it with `wget https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar")
    assert "not found" not in str(error.value)


def _idx(path: Path, array: np.ndarray, gz: bool = True) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path.read_bytes()


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_idx_file_names_the_file_and_the_fix(tmp_path, gz):
    suffix = ".gz" if gz else ""
    images = tmp_path / f"t10k-images-idx3-ubyte{suffix}"
    whole = _idx(images, np.zeros((4, 28, 28)), gz)
    _idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", np.arange(4), gz)
    assert len(data.fashion_mnist(root=tmp_path)) == 4
    images.write_bytes(whole[:len(whole) - 40])
    with pytest.raises(data.DatasetCorruptError) as error:
        data.fashion_mnist(root=tmp_path)
    message = str(error.value)
    assert message.startswith(f"{images} is truncated or corrupt (")
    assert "Delete it and call with download=True" in message
    assert images.read_bytes() == whole[:len(whole) - 40]  # left for the user to look at


def _offline(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(urllib.request, "urlopen", offline)


def test_download_offline_names_url_target_and_manual_fix(tmp_path, monkeypatch):
    _offline(monkeypatch)
    with pytest.raises(data.DownloadError) as error:
        data.imagenet_a(root=tmp_path, download=True)
    assert str(error.value).startswith(
        f"Could not download {data.IMAGENET_A_URL} to {tmp_path / 'imagenet-a.tar'} "
        "(<urlopen error offline (test)>). On a machine with internet, download it and put it "
        f"at {tmp_path / 'imagenet-a.tar'}, then `tar -xf imagenet-a.tar -C {tmp_path}`")
    with pytest.raises(data.DownloadError, match=r"Could not download http://.*/train-images"
                                                 r"-idx3-ubyte\.gz to .*/fashion/train-images"):
        data.fashion_mnist(root=tmp_path / "fashion", download=True)
    with pytest.raises(data.DownloadError, match=r"Could not download https://.*cifar-10-python"
                                                 r"\.tar\.gz to .*cifar-10-batches-py .*extract "
                                                 r"it into"):
        data.cifar10(root=tmp_path / "cifar", download=True)
    assert not (tmp_path / "imagenet-a").exists()


def test_archives_are_checked_by_sha256(tmp_path, monkeypatch):
    import tarfile

    import torchvision.datasets.utils as tv_utils

    source = tmp_path / "src"
    _image(source / "imagenet-a" / "n01498041" / "a.png", _rgb(0))
    archive_bytes = tmp_path / "built.tar"
    with tarfile.open(archive_bytes, "w") as tar:
        tar.add(source / "imagenet-a", arcname="imagenet-a")
    fetched = []

    def fake_download(url, root, filename=None, md5=None):
        fetched.append(url)
        shutil.copy(archive_bytes, Path(root) / filename)

    monkeypatch.setattr(tv_utils, "download_url", fake_download)
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(data.DownloadError) as error:
        data.imagenet_a(root=root, download=True)
    published = data.ARCHIVE_SHA256[data.IMAGENET_A_URL]
    assert str(error.value).startswith(
        f"{root / 'imagenet-a.tar'} (from {data.IMAGENET_A_URL}) does not match its "
        f"published SHA-256: expected {published}, got ")
    assert not (root / "imagenet-a.tar").exists() and not (root / "imagenet-a").exists()
    digest = hashlib.sha256(archive_bytes.read_bytes()).hexdigest()
    monkeypatch.setitem(data.ARCHIVE_SHA256, data.IMAGENET_A_URL, digest)
    ds = data.imagenet_a(root=root, size=8, download=True)
    assert len(ds) == 1 and fetched == [data.IMAGENET_A_URL] * 2
    assert not (root / "imagenet-a.tar").exists()  # unpacked, then removed
    assert set(data.ARCHIVE_SHA256) == {data.IMAGENET_A_URL, *(
        "https://huggingface.co/datasets/vaishaal/ImageNetV2/resolve/main/"
        f"imagenetv2-{v}.tar.gz" for v in data.IMAGENET_V2_VARIANTS)}


# ---------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("content", [b"<html>404 Not Found</html>", "state dict of another"])
def test_a_junk_clip_checkpoint_says_so(tmp_path, content):
    file = tmp_path / "ViT-B-32.pt"
    if isinstance(content, bytes):
        file.write_bytes(content)
    else:
        torch.save({"fc.weight": torch.zeros(2, 2)}, file)
    with pytest.raises(models.NotACheckpointError) as error:
        models.load_clip(str(file), device="cpu")
    message = str(error.value)
    assert message.startswith(f"not a CLIP checkpoint: {file} (") and "ViT-B/32" in message
    assert "weights_only" not in message


def test_a_junk_sam_checkpoint_says_so(tmp_path):
    from helpers.masks import SamMasks

    file = tmp_path / "sam_vit_b_01ec64.pth"
    file.write_bytes(b"\x00" * 100)
    with pytest.raises(models.NotACheckpointError) as error:
        SamMasks(checkpoint=file, model_type="vit_b", device="cpu")
    message = str(error.value)
    assert message.startswith(f"not a SAM checkpoint: {file} (") and "weights_only" not in message
    assert "masks='offline'" in message


def test_official_clip_file_with_a_wrong_checksum_offline_says_the_checksum(tmp_path,
                                                                           monkeypatch):
    import clip

    _offline(monkeypatch)
    target = tmp_path / "ViT-B-32.pt"
    target.write_bytes(b"the first megabytes of a download cut short")
    with pytest.warns(UserWarning, match="checksum does not"), \
            pytest.raises(models.CheckpointNotFoundError) as error:
        models.load_clip("ViT-B/32", device="cpu", download_root=str(tmp_path))
    message = str(error.value)
    sha = clip.clip._MODELS["ViT-B/32"].split("/")[-2]
    assert message.startswith(f"CLIP ViT-B/32 at {target} does not match its published "
                              f"SHA-256 ({sha}): the file is incomplete or altered")
    assert "Delete it" in message and "is not at" not in message
    assert target.read_bytes().startswith(b"the first megabytes")  # not deleted behind the user
