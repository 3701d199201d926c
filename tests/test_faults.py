"""Bad inputs and faults (issue 18): each test asserts the message a user sees and that
nothing already computed is lost or silently stale. Tiny models and notebooks: seconds,
except the Ctrl-C test of the batch runner (real kernels, about 20 s)."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from test_evaluate import Labelled

from helpers import evaluate, fingerprint, models, paths
from helpers.evaluate import ResultStore, RunLog, run_grid
from helpers.jsonfile import CorruptFileWarning
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
    model = models._build_small_clip(config).float().eval()
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

    monkeypatch.setattr(evaluate, "evaluate", counted)
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
    first = models._cached_training("toy", Config(), train, verbose=True)
    assert models._cached_training("toy", Config(), train, verbose=True) == first
    assert len(calls) == 1
    edit(module)
    capsys.readouterr()
    second = models._cached_training("toy", Config(), train, verbose=True)
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


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-o", "addopts="]))
