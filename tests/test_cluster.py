"""Dask from a laptop to a cluster (issue 20): experiment grids sent to a LocalCluster of two
worker processes give the in-process results bit for bit and survive a killed worker; which
methods may be split by images; the batch runner's notebooks on worker processes, GPUs as a
worker resource, sweeps, and the SLURM job script. About a minute: two worker processes are
started once for the module, kernels start in the batch tests."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import cloudpickle
import pytest
import torch
import yaml
from test_batch import notebook, write_profile
from test_faults import tiny_clip  # noqa: F401 - a fixture

from helpers import batch, cluster
from helpers.data import ImageTensorDataset
from helpers.ensemble_grid import ensemble_grid
from helpers.evaluate import ResultStore, join_parts, predict
from helpers.grid import Lazy, image_ranges, part_cost, run_grid
from helpers.tta import build_method, method_factories, method_info

# The test's own method factories travel to the workers by value (the workers cannot import
# this module by name).
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def two_workers():
    """A LocalCluster of two worker processes, one thread each (the batch runner's)."""
    started = cluster.local_cluster(2)
    client = cluster.connect(started)
    yield client
    cluster.stop_cluster(client, started)


@pytest.fixture
def one_thread():
    """One CPU thread here and so in the parts (the grid sends its count): two busy workers
    on two cores, not four threads fighting for them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def dataset(n: int, seed: int, size: int = 16) -> ImageTensorDataset:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), generator=generator, dtype=torch.uint8)
    labels = torch.randint(0, 5, (n,), generator=generator)
    return ImageTensorDataset(images, labels, [f"c{i}" for i in range(5)], f"random {seed}",
                              "random images (tests)")


def cnn():
    from helpers.models import Classifier, Preprocess, SmallCnn

    torch.manual_seed(0)
    net = SmallCnn(channels=(4, 8), num_classes=5)
    return Classifier(net, Preprocess(None, (0.5,) * 3, (0.5,) * 3),
                      [f"c{i}" for i in range(5)], "tiny random CNN (tests)").eval()


OPTIONS = {"memo": {"n_views": 4, "lr": 0.01}, "memo_plus": {"n_views": 4, "lr": 0.01},
           "tent": {"lr": 0.01}, "eata": {"fisher_images": None, "e_margin": 10.0, "lr": 0.01},
           "sar": {"e_margin": 10.0, "lr": 0.01},
           "tpt": {"n_views": 7, "selection": 0.3}, "zero": {"n_views": 7, "selection": 0.3},
           "tda": {"n_views": 7, "selection": 0.3}}


def comparable(cells: dict) -> dict:
    """A store's cells (or results) without what depends on where and when they ran, also in
    an ensemble cell's results."""
    def kept(cell):
        return {k: [kept(r) for r in v] if k == "results" else v for k, v in cell.items()
                if k not in ("run", "seconds_per_sample")}

    return {name: kept(cell) for name, cell in cells.items()}


# ---------------------------------------------------------------- which methods split


@pytest.mark.parametrize("method", ["source", "norm", "memo", "memo_plus", "tpt", "zero",
                                    "prompt", "tent", "eata", "sar", "tda"])
def test_shardable_methods_predict_in_parts_as_in_one_run_and_the_others_do_not(
        method, tiny_clip):  # noqa: F811
    """The claim of each method's ``shardable`` flag, checked on the method itself: two parts
    of whole batches give the whole run's predictions bit for bit exactly when it is set;
    the others carry something from batch to batch, so their second part differs."""
    model = tiny_clip if method in ("tpt", "zero", "prompt", "tda") else cnn()
    data = dataset(12, seed=1)
    adapter = build_method(method, model, **OPTIONS.get(method, {}))
    whole = predict(adapter, data, batch_size=4, progress=False)
    parts = [predict(adapter, data, 4, progress=False, start=a, stop=b)
             for a, b in image_ranges(len(data), 4, 2)]
    joined = join_parts(parts)
    same = all(torch.equal(whole[k], joined[k]) for k in ("predictions", "confidences"))
    assert same == method_info(method).shardable, method


def test_a_lazy_model_travels_as_its_recipe_never_built():
    """A worker may hand a model to another while adapting it in place: only the builder is
    sent, and each worker builds its own."""
    lazy = Lazy(cnn)
    model = lazy()
    copy = cloudpickle.loads(cloudpickle.dumps(lazy))
    assert lazy.value is model and copy.value is None
    built = copy()
    assert built is not model and all(torch.equal(a, b) for a, b in zip(
        built.state_dict().values(), model.state_dict().values()))


def test_image_ranges_are_whole_batches_covering_every_image_once():
    assert image_ranges(100, 16, 3) == [(0, 32), (32, 80), (80, 100)]  # 2, 3, 2 batches
    assert image_ranges(10, 16, 4) == [(0, 10)]  # one batch: one part
    assert image_ranges(64, 16, 8) == [(0, 16), (16, 32), (32, 48), (48, 64)]
    for n, b, k in [(1, 1, 1), (97, 8, 5), (1000, 64, 4)]:
        ranges = image_ranges(n, b, k)
        assert ranges[0][0] == 0 and ranges[-1][1] == n and len(ranges) <= k
        assert all(a % b == 0 and a < c for a, c in ranges)
        assert all(r[1] == s[0] for r, s in zip(ranges, ranges[1:]))


def test_a_parts_cost_is_its_images_times_its_methods_passes_per_image():
    """What a grid's parts are handed out by, longest first: views, once more per step; an
    online method a forward and a backward pass; Source one."""
    make = method_factories(["source", "memo", "tent", "tpt", "zero"],
                            {"memo": {"n_views": 8}, "tpt": {"n_views": 7, "steps": 2}})
    costs = {name: part_cost(f, "cnn", 64, 100) for name, f in make.items()}
    assert costs == {"source": 36, "memo": 36 * 17, "tent": 36 * 2, "tpt": 36 * 22,
                     "zero": 36 * 64}  # Zero: its default 63 views, no step
    assert part_cost(lambda model, name: None, "cnn", 0, 10) == 10


def test_jobs_go_out_in_order_one_per_free_worker_thread(two_workers):
    """``cluster.in_order``: never more jobs on the cluster than worker threads (and one
    waiting per worker), each sent to a free worker, in the given order, every one run
    once."""
    import time

    submitted, futures, peak, done = [], [], [], []

    def submit(job, address):
        submitted.append((job, address))
        peak.append(1 + sum(not f.done() for f in futures))  # on the cluster with this one
        futures.append(two_workers.submit(time.sleep, 0.05 * (job % 3), pure=False,
                                          workers=[address], allow_other_workers=True))
        return futures[-1]

    for job, future in cluster.in_order(two_workers, list(range(8)), submit):
        future.result()
        done.append(job)
    assert [job for job, _ in submitted] == list(range(8)) and sorted(done) == list(range(8))
    # two workers of one thread each, and the next job waiting on each
    assert max(peak) == 2 * (1 + cluster.LOOKAHEAD)
    assert {address for _, address in submitted} == set(two_workers.nthreads())
    assert submitted[0][1] != submitted[1][1]  # the two longest start on different workers


# ---------------------------------------------------------------- grids on a cluster


def grid(store, scheduler, clip, methods=("source", "norm", "tent", "memo", "zero", "tda")):
    tasks = {"a": dataset(32, seed=2), "b": dataset(16, seed=3)}
    return run_grid({"cnn": cnn, "clip": lambda: clip}, tasks,
                    method_factories(list(methods), OPTIONS), store, batch_size=8,
                    progress=False, scheduler=scheduler)


def test_grid_on_two_workers_equals_the_grid_in_process_bit_for_bit(
        two_workers, tmp_path, tiny_clip, one_thread):  # noqa: F811
    from distributed import get_task_stream

    here = ResultStore(tmp_path / "here.cells.json", {"seed": 0})
    there = ResultStore(tmp_path / "there.cells.json", {"seed": 0})
    expected = grid(here, None, tiny_clip)
    with get_task_stream(two_workers) as stream:
        results = grid(there, two_workers, tiny_clip)
    assert comparable(dict(enumerate(results))) == comparable(dict(enumerate(expected)))
    ResultStore(tmp_path / "there.cells.json", {"seed": 0})  # folds its journal into the file
    saved = json.loads((tmp_path / "there.cells.json").read_text())
    assert comparable(saved["cells"]) == comparable(here.cells)
    assert len(saved["cells"]) == 2 * 2 * 6 and all(c["run"] for c in saved["cells"].values())
    # Shardable cells went out in parts of whole batches (2 workers: 4 parts), the others
    # whole.
    keys = [str(t["key"]) for t in stream.data]
    memo_a = sorted(k.split(" [")[1].split("]")[0] for k in keys if "cnn / a / memo [" in k)
    assert memo_a == ["0:8", "16:24", "24:32", "8:16"]
    assert [k.split("]")[0] for k in keys if "clip / a / tda [" in k] == ["clip / a / tda [0:32"]
    # A second run finds every cell stored and sends nothing.
    with get_task_stream(two_workers) as stream:
        assert grid(ResultStore(tmp_path / "there.cells.json", {"seed": 0}), two_workers,
                    tiny_clip) == results
    assert not stream.data


def test_ensemble_grid_on_two_workers_equals_the_grid_in_process(two_workers, tmp_path,
                                                                 one_thread):
    tasks = {"a": dataset(16, seed=6), "b": dataset(8, seed=7)}
    members = method_factories(["source", "memo"], OPTIONS)
    stores = [ResultStore(tmp_path / f"{where}.cells.json", {"seed": 0})
              for where in ("here", "there")]
    here = ensemble_grid({"cnn": cnn}, tasks, members, stores[0], batch_size=8, progress=False,
                         held_out=dataset(16, seed=5))
    there = ensemble_grid({"cnn": cnn}, tasks, members, stores[1], batch_size=8,
                          progress=False, scheduler=two_workers, held_out=dataset(16, seed=5))
    assert there[1] == here[1] and len(here[1]) == 2  # one temperature per member
    assert comparable(dict(enumerate(there[0]))) == comparable(dict(enumerate(here[0])))
    assert comparable(stores[1].cells) == comparable(stores[0].cells)
    assert {c["run"]["threads"] for c in stores[1].cells.values()} == {1}


def test_local_workers_compute_on_one_thread_without_dasks_malloc_trimming(two_workers):
    settings = two_workers.run(lambda: (os.environ.get("OMP_NUM_THREADS"),
                                        os.environ.get("MALLOC_TRIM_THRESHOLD_")))
    assert set(settings.values()) == {("1", None)}
    assert "MALLOC_TRIM_THRESHOLD_" not in os.environ  # nor here, where the cluster started


class KillsItsWorker:
    """MEMO that kills its worker process when it reaches image ``victim`` the first time
    (a marker file says it has), logging every part it starts."""

    def __init__(self, folder: Path, victim: int):
        self.folder, self.victim = folder, victim
        self.settings = lambda model_name: {"n_views": 4}
        self.shardable = True

    def __call__(self, model, model_name):
        adapter = build_method("memo", model, n_views=4, lr=0.01)
        forward, folder, victim = adapter.forward, self.folder, self.victim

        def logged(images, keys):
            with open(folder / "parts.log", "a") as log:
                log.write(f"{keys[0]} {os.getpid()}\n")
            if victim in keys and not (folder / "killed").exists():
                (folder / "killed").write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)
            return forward(images, keys)

        adapter.forward = logged
        return adapter


def test_a_worker_killed_in_the_middle_of_a_grid_its_parts_rerun_elsewhere(
        two_workers, tmp_path, one_thread):
    tasks = {"a": dataset(64, seed=4)}
    methods = {"memo": KillsItsWorker(tmp_path, victim=40), "source": method_factories(
        ["source"])["source"]}
    store = ResultStore(tmp_path / "killed.cells.json", {"seed": 0})
    results = run_grid({"cnn": cnn}, tasks, methods, store, batch_size=8, progress=False,
                       scheduler=two_workers)
    killed = int((tmp_path / "killed").read_text())
    starts = [line.split() for line in (tmp_path / "parts.log").read_text().splitlines()]
    # The batch holding image 40 started on the killed worker, then again on another.
    at_victim = [pid for first, pid in starts if first == "40"]
    assert at_victim[0] == str(killed) and len(at_victim) == 2 and at_victim[1] != str(killed)
    # Complete, each cell once, each image once, and as computed in process.
    assert [r["method"] for r in results] == ["memo", "source"]
    assert all(r["n"] == 64 for r in results) and len(store.cells) == 2
    expected = ResultStore(tmp_path / "here.cells.json", {"seed": 0})
    (tmp_path / "killed").write_text("already")  # the in-process run must not kill pytest
    run_grid({"cnn": cnn}, tasks, methods, expected, batch_size=8, progress=False)
    assert comparable(store.cells) == comparable(expected.cells)
    two_workers.wait_for_workers(2, timeout=60)  # the nanny restarts it


# ---------------------------------------------------------------- the batch runner


NOTEBOOK_CODE = """\
import os, time
from helpers.jsonfile import write_json
started = time.time()
time.sleep(sleep)
write_json(results_path, {
    "summary": {"scores": [{"name": "x", "score": seed / 10 + opts["lr"], "n": 5}]},
    "worker": os.getppid(), "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"),
    "threads": os.environ.get("OMP_NUM_THREADS"), "data": os.environ.get("TTA_DATA"),
    "started": started, "ended": time.time()})
"""


@pytest.fixture
def runner(tmp_path, monkeypatch):
    """Three tiny notebooks (seed, a dict parameter ``opts``, a sleep) and a profile."""
    from test_batch import make_repo

    layout = make_repo(tmp_path, monkeypatch)
    for old in layout["notebooks"].glob("0*.ipynb"):
        old.unlink()
    for name in ("01_a", "02_b", "03_c"):
        notebook(layout["notebooks"] / f"{name}.ipynb",
                 'profile = "s"\nresults_path = None\nseed = 0\nopts = {"lr": 0.5}\n'
                 'sleep = 0.0', NOTEBOOK_CODE)
    monkeypatch.setenv("TTA_DATA", str(tmp_path / "data"))
    return layout


def results(layout, profile, name):
    return json.loads((layout["results"] / profile / f"{name}.json").read_text())


def test_notebooks_on_two_worker_processes_share_gpus_as_a_resource(runner, monkeypatch):
    """Two local workers, one of them owning the (pretended) GPU: the notebooks listed under
    ``gpu:`` run on that worker one after the other, never on the worker without one; every
    kernel finds the TTA_* variables and the runner's thread settings."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(batch, "local_gpus", lambda: 1)
    write_profile(runner, "g", {"jobs": 2, "gpu": ["01_a", "02_b"],
                                "defaults": {"sleep": 1.0}})
    assert batch.run("g") == 0
    a, b, c = (results(runner, "g", n) for n in ("01_a", "02_b", "03_c"))
    assert a["gpu"] == b["gpu"] == "0" and c["gpu"] == ""
    assert a["worker"] == b["worker"] != c["worker"]  # two worker processes
    assert a["ended"] <= b["started"] or b["ended"] <= a["started"]  # never at once
    assert {r["data"] for r in (a, b, c)} == {os.environ["TTA_DATA"]}
    assert {r["threads"] for r in (a, b, c)} == {"1"}


def test_a_notebook_waits_for_no_busy_worker_while_another_is_idle(runner, monkeypatch):
    """One long notebook and two short ones on two local workers: both short ones run on the
    worker the long one leaves free, the second as soon as the first ends (Dask alone once
    queued notebook 02 behind 01 on one worker while the other stood idle)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    write_profile(runner, "w", {"jobs": 2, "notebooks": {"01_a": {"sleep": 25.0}}})
    assert batch.run("w") == 0
    a, b, c = (results(runner, "w", n) for n in ("01_a", "02_b", "03_c"))
    assert b["worker"] == c["worker"] != a["worker"]
    assert c["ended"] < a["ended"]


def test_an_idle_worker_is_chosen_by_resources_and_spares_the_gpu():
    """The GPU worker takes a GPU notebook; a CPU notebook goes to a worker without a GPU
    while one is idle, to the GPU worker only when it is the one idle; busy ones never."""
    class Client:
        def scheduler_info(self, n_workers):
            return {"workers": {"tcp://a": {"resources": {"notebook": 1, "GPU": 1}},
                                "tcp://b": {"resources": {"notebook": 1}},
                                "tcp://c": {"resources": {}}}}

    client, cpu, gpu = Client(), {"notebook": 1}, {"notebook": 1, "GPU": 1}
    assert cluster.idle_worker(client, gpu, set()) == "tcp://a"
    assert cluster.idle_worker(client, gpu, {"tcp://a"}) is None
    assert cluster.idle_worker(client, cpu, set()) == "tcp://b"
    assert cluster.idle_worker(client, cpu, {"tcp://b"}) == "tcp://a"
    assert cluster.idle_worker(client, cpu, {"tcp://a", "tcp://b"}) is None


def test_notebooks_on_an_existing_cluster_get_the_cores_of_their_worker(runner, two_workers):
    """``--scheduler``: the notebooks run on the cluster's workers; a kernel there gets the
    cores its worker may use (not this machine's thread settings) and the TTA_* variables."""
    write_profile(runner, "r", {"jobs": 2})
    assert batch.run("r", only=["01", "02"], scheduler=two_workers.scheduler.address) == 0
    a, b = (results(runner, "r", n) for n in ("01_a", "02_b"))
    workers = set(two_workers.run(os.getpid).values())
    assert {a["worker"], b["worker"]} <= workers
    assert a["threads"] == b["threads"] == str(len(os.sched_getaffinity(0)))
    assert a["data"] == os.environ["TTA_DATA"]
    assert len(two_workers.scheduler_info()["workers"]) == 2  # the cluster is not closed


def test_a_profile_naming_an_unknown_gpu_notebook_is_an_error(runner):
    write_profile(runner, "g", {"gpu": ["09_none"]})
    with pytest.raises(SystemExit, match=r"names notebooks that do not exist: \['09_none'\]"):
        batch.run("g")


def test_sweep_runs_every_combination_apart_and_compares_them(runner, capsys):
    write_profile(runner, "s", {"jobs": 2, "notebooks": {"02_b": {"opts": {"lr": 0.5,
                                                                            "other": 1}}}})
    sweep = ["seed=0,1", "opts.lr=1e-1,0.2"]
    assert batch.run("s", only=["02"], sweep=sweep) == 0
    folder = runner["results"] / "s" / "sweep" / "02_b"
    names = sorted(p.name for p in folder.glob("*.json"))
    assert names == [f"seed={s}_opts.lr={lr}.json" for s in (0, 1) for lr in (0.1, 0.2)]
    run = json.loads((folder / "seed=1_opts.lr=0.2.json").read_text())
    assert run["summary"]["scores"][0]["score"] == pytest.approx(0.1 + 0.2)
    executed = runner["runs"] / "s" / "sweep" / "02_b" / "seed=1_opts.lr=0.2.ipynb"
    assert "opts = {\"lr\": 0.2, \"other\": 1}" in executed.read_text().replace("\\", "")
    table = (runner["results"] / "s" / "SWEEP.md").read_text()
    # score over seeds 0 and 1 at lr 0.1: 0.1 and 0.2, mean 0.15, sample sd 0.0707.
    assert "| setting | name | score | n |" in table
    assert "| opts.lr=0.1 | x | 0.150 ± 0.071 | 5 |" in table
    assert "| opts.lr=0.2 | x | 0.250 ± 0.071 | 5 |" in table
    assert not (runner["results"] / "s" / "02_b.json").exists()  # the profile's own run
    capsys.readouterr()
    assert batch.run("s", only=["02"], sweep=sweep, resume=True) == 0
    assert capsys.readouterr().out.count("skip 02_b seed=") == 4


def test_sweep_errors_name_the_fix(runner):
    write_profile(runner, "e", {})
    with pytest.raises(SystemExit, match="write name=value,value"):
        batch.run("e", sweep=["seed"])
    with pytest.raises(SystemExit, match="no selected notebook declares all of them"):
        batch.run("e", sweep=["nothing=1,2"])
    with pytest.raises(SystemExit, match="'seed' is not a dict"):
        batch.run("e", sweep=["seed.x=1,2"])
    with pytest.raises(SystemExit, match="--sweep has bad values:\n  01_a.ipynb: seed"):
        batch.run("e", sweep=["seed=a,b"])
    assert not runner["runs"].exists() or not any(runner["runs"].rglob("*.ipynb"))


# ---------------------------------------------------------------- SLURM


def test_slurm_job_script_from_the_profiles_cluster_section(runner, monkeypatch):
    monkeypatch.setenv("TTA_CHECKPOINTS", "/shared/checkpoints")
    options = {"cores": 8, "memory": "32GB", "queue": "gpu", "walltime": "02:00:00",
               "gpus": 1, "job_extra_directives": ["--constraint=a100"]}
    settings = batch.slurm_settings(True, {"cluster": options}, "p")
    started = cluster.slurm_cluster(*settings)
    try:
        script = started.job_script()
    finally:
        started.close()
    assert "#SBATCH -p gpu" in script and "#SBATCH -t 02:00:00" in script
    assert "#SBATCH --cpus-per-task=8" in script and "#SBATCH --mem=30G" in script
    assert "#SBATCH --constraint=a100" in script and "#SBATCH --gres=gpu:1" in script
    assert "export TTA_CHECKPOINTS=/shared/checkpoints" in script
    assert f"export TTA_DATA={os.environ['TTA_DATA']}" in script
    assert "--resources notebook=1,GPU=1" in script and "distributed.cli.dask_worker" in script


def test_slurm_options_missing_or_incomplete_say_how(runner, tmp_path):
    write_profile(runner, "e", {})
    with pytest.raises(SystemExit, match="needs SLURMCluster options: a `cluster:` section"):
        batch.run("e", slurm=True)
    file = tmp_path / "cluster.yaml"
    file.write_text(yaml.safe_dump({"queue": "gpu"}))
    with pytest.raises(SystemExit, match=r"lack \['cores', 'memory'\]"):
        batch.run("e", slurm=str(file))
    with pytest.raises(SystemExit, match="no such file"):
        batch.run("e", slurm=str(tmp_path / "missing.yaml"))


def test_placement_parameters_do_not_make_results_stale(tmp_path):
    results_file, record = tmp_path / "r.json", tmp_path / "r.done.json"
    results_file.write_text("{}")
    params, code = {"x": 1, "results_path": str(results_file)}, {"m": "1"}
    batch.record(record, {**params, "scheduler": "tcp://a:8786"}, 1.0, code)
    assert batch.rerun_reason({**params, "scheduler": "tcp://b:8786"}, record, code) is None
    assert batch.rerun_reason({**params, "x": 2}, record, code) == "other parameters"


def test_only_the_tta_variables_are_forwarded(monkeypatch):
    monkeypatch.setenv("TTA_CACHE", "/c")
    forwarded = cluster.forwarded_environment()
    assert forwarded["TTA_CACHE"] == "/c" and "PATH" not in forwarded
    assert all(name.startswith("TTA_") for name in forwarded)
