"""Run every notebook on a profile with papermill: ``python -m helpers.batch --profile offline``.

Executed notebooks go to ``runs/<profile>/``, results to ``results/<profile>/``, and a
Markdown summary across the profile's notebooks (also those ``--only`` leaves out, from their
earlier results) to ``results/<profile>/SUMMARY.md``. A failing notebook does not stop the
others; ``--resume`` skips notebooks whose results exist for the same
parameters and the same code (the notebook's source and the ``helpers`` modules it imports,
see ``helpers.fingerprint``). The longest start first (``longest_first``). Ctrl-C stops the
running kernels within seconds, writes the summary of what finished and exits with 130.

Notebooks run as tasks on a Dask cluster (``helpers.cluster``): by default ``--jobs N``
local worker processes (a ``LocalCluster``), each running one notebook at a time whose kernel
has its share of the CPU threads (the small models of the offline profile run as fast on one
thread as on two, so two notebooks side by side take about half the time of one after the
other); ``--scheduler tcp://host:8786`` uses an existing cluster, ``--slurm`` starts workers
as SLURM jobs (options from the profile's ``cluster:`` section or a YAML file). Notebooks the
profile lists under ``gpu:`` run on a worker that owns a GPU, one at a time per GPU.
``--sweep seed=0,1 memo.lr=1e-5,1e-4`` runs every combination as its own run (own results,
record and ``--resume``) and compares them in ``results/<profile>/SWEEP.md``.
"""

from __future__ import annotations

import argparse
import ast
import copy
import functools
import hashlib
import itertools
import json
import math
import os
import re
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import NamedTuple

import yaml
from tqdm.auto import tqdm

from . import cluster, fingerprint, params, paths
from .jsonfile import read_json, write_json
from .profile import load_profile, profile_file, profile_names

# Parameters the runner itself gives each notebook that declares them.
RUNNER_PARAMETERS = ("profile", "results_path", "figures_dir")
# Notebook parameters that change where a run computes, never its results: not part of the
# runner's record (a new scheduler address does not make results stale).
PLACEMENT_PARAMETERS = ("scheduler",)



def notebook_parameters(notebook: Path) -> dict:
    """The names and defaults (as source text) of a notebook's ``parameters`` cell, as
    papermill sees them."""
    import papermill

    found = papermill.inspect_notebook(str(notebook))
    return {name: info["default"] for name, info in found.items()}


def parameter_problems(nb: Path, given: dict, declared: dict) -> list[str]:
    """What is wrong with the profile's values for one notebook: a type that does not fit
    the notebook's default, or a count out of range (``helpers.params``)."""
    problems = []
    for name, value in given.items():
        why = params.type_problem(value, declared[name]) if name in declared else None
        if why is None and name in params.COUNTS:
            try:
                params.check_count(name, value, *params.COUNTS[name])
            except params.ParameterError as error:
                why = str(error).split(": ", 1)[1]
        if why:
            problems.append(f"{nb.name}: {name}: {why}")
    return problems


def plan(profile_name: str, notebooks: list[Path]) -> list[tuple[Path, dict]]:
    """Each notebook with the parameters to inject. Errors name the parameter, the notebook
    and the profile file, and are raised before anything runs: unknown names (listing the
    valid ones), a ``defaults:`` entry no notebook declares (a typo), values of the wrong
    type or out of range."""
    profile, file = load_profile(profile_name), profile_file(profile_name)
    stems = {nb.stem for nb in notebooks}
    unknown_nb = sorted((set(profile["notebooks"]) | set(profile["gpu"])) - stems)
    if unknown_nb:
        raise SystemExit(f"Profile file {file} names notebooks that do not exist: "
                         f"{unknown_nb}; notebooks: {sorted(stems)}.")
    jobs, errors, everywhere = [], [], set()
    for nb in notebooks:
        valid = notebook_parameters(nb)
        everywhere |= set(valid)
        given = {k: v for k, v in profile["defaults"].items() if k in valid}
        given.update(profile["notebooks"].get(nb.stem) or {})
        injected = dict(given)
        injected.setdefault("profile", profile_name)
        results_path, figures_dir = paths.notebook_outputs(nb.stem, profile_name)
        injected.setdefault("results_path", repo_relative(results_path))
        injected.setdefault("figures_dir", repo_relative(figures_dir))
        injected = {k: v for k, v in injected.items()
                    if k in valid or k not in RUNNER_PARAMETERS}
        wrong = sorted(set(injected) - set(valid))
        if wrong:
            errors.append(f"{nb.name}: unknown parameter(s) {wrong}; valid: {sorted(valid)}")
        errors += parameter_problems(nb, given, valid)
        jobs.append((nb, injected))
    typos = sorted(set(profile["defaults"]) - everywhere)
    if typos:
        errors.append(f"defaults: {typos} declared by no notebook (a typo?); the notebooks' "
                      f"parameters: {sorted(everywhere)}")
    if errors:
        raise SystemExit(f"Profile file {file} has bad parameters:\n  " + "\n  ".join(errors))
    return jobs


def repo_relative(path: Path) -> str:
    """A path to inject into a notebook: relative to the repository when inside it (the
    notebook resolves it against the repository, ``paths.resolve``), so that an executed
    notebook's parameters cell shows no folder of the machine that ran it."""
    path = Path(path)
    inside = path.is_absolute() and path.is_relative_to(paths.REPO)
    return str(path.relative_to(paths.REPO)) if inside else str(path)


def record_file(profile_name: str, nb: Path) -> Path:
    """Where the runner records a notebook's last successful run (parameters, seconds)."""
    return paths.RUNS / profile_name / f"{nb.stem}.done.json"


def record(file: Path, params: dict, seconds: float, code: dict) -> None:
    """Written atomically after a notebook succeeds: an interrupted write is never a record."""
    write_json(file, {"parameters": result_parameters(params), "seconds": round(seconds, 1),
                      "code": code})


def result_parameters(params: dict) -> dict:
    """The parameters that make a notebook's results (all but ``PLACEMENT_PARAMETERS``), as
    JSON has them."""
    return json.loads(json.dumps({k: v for k, v in params.items()
                                  if k not in PLACEMENT_PARAMETERS}))


def _recorded(file: Path) -> dict:
    """A notebook's run record; empty when there is none (a corrupt one is moved aside)."""
    return read_json(file, dict) or {}


def notebook_code(nb: Path) -> dict:
    """The fingerprint of what a notebook runs: its code cells and the ``helpers`` modules
    they import (``helpers.fingerprint``)."""
    import nbformat

    cells = nbformat.read(nb, as_version=4).cells
    source = "\n".join(c.source for c in cells if c.cell_type == "code")
    own = hashlib.sha256(source.encode()).hexdigest()[:16]
    return {f"notebooks/{nb.name}": own, **fingerprint.of_source(source)}


def longest_first(todo: list, profile_name: str, minutes: dict) -> list:
    """The notebooks to run, those expected to take longest first (the last run's seconds on
    this machine, else the profile's ``minutes`` estimate, else name order last), so that
    parallel jobs end together instead of one long notebook starting last."""
    def expected(job):
        nb = job[0]
        return _recorded(record_file(profile_name, nb)).get("seconds") or \
            60 * minutes.get(nb.stem, 0)

    return sorted(todo, key=expected, reverse=True)


def rerun_reason(params: dict, record_path: Path, code: dict) -> str | None:
    """None when the notebook's results file exists and the runner's record of its last
    successful run holds the same injected parameters and code; else why it must run. The
    runner keeps this record itself, since a notebook need not store every parameter it was
    given (paths, for instance). Corrupt files are moved aside (with a warning) and rerun."""
    results = paths.resolve(params["results_path"]) if params.get("results_path") else None
    if results is None or not results.is_file() or read_json(results, dict) is None:
        return "no results file"
    saved = _recorded(record_path)
    if not saved:
        return "no record of a finished run"
    if saved.get("parameters") != result_parameters(params):
        return "other parameters"
    return fingerprint.why_stale(saved.get("code"), code)


def markdown_table(rows: list[dict]) -> str:
    """A list of records as a Markdown table (floats to 3 decimals; "n/a" where a record has
    no value or NaN, e.g. a method that does not apply to a model or a per-channel score of a
    dense layer, so no cell looks forgotten or broken); floats to 3 decimals, or 2 significant
    digits below 0.01."""
    if not rows:
        return "_(no rows)_"
    columns = list(dict.fromkeys(k for row in rows for k in row))

    def cell(v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "n/a"
        if isinstance(v, float):  # small values (a fraction 0.0025, seconds) keep 2 digits
            return f"{v:.3f}" if v == 0 or abs(v) >= 0.01 else f"{v:.2g}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def summary(profile_name: str, jobs, failures: dict, seconds: dict | None = None,
            selected=None, interrupted: list | None = None) -> str:
    """One section per notebook of the whole profile, so that a run of a few (``--only``)
    does not hide the others: its title, its run time, what made the numbers, its summary
    tables. ``selected`` are the notebooks chosen this time (default: all); the others show
    the results of their earlier run, or one line when they have never run. After Ctrl-C,
    ``interrupted`` lists the notebooks that did not start."""
    parts = [f"# Summary of the `{profile_name}` profile", ""]
    if interrupted is not None:
        names = ", ".join(nb.stem for nb in interrupted) or "none"
        parts += [f"**Interrupted** (Ctrl-C); notebooks not started: {names}.", ""]
    seconds = seconds or {}
    selected = {nb for nb, _ in jobs} if selected is None else set(selected)
    for nb, injected in jobs:
        parts.append(f"## {nb.stem}")
        parts += _section(profile_name, nb, paths.resolve(injected["results_path"]),
                          failures, seconds, nb in selected)
    return "\n".join(parts)


def _section(profile_name: str, nb: Path, file: Path, failures: dict, seconds: dict,
             selected: bool) -> list[str]:
    """A notebook's run time, then its failure or its results; one line if it never ran.
    A failed run shows no earlier run time: its record was invalidated when it started. The
    run time is the results file's (the notebook's own, which the report and the README
    show too), else the runner's measure."""
    if nb in failures:
        return [f"**Failed**: {failures[nb]}", ""]
    earlier = _recorded(record_file(profile_name, nb)).get("seconds")
    rerun = f"`python -m helpers.batch --profile {profile_name} --only {nb.stem}`"
    exists = file.exists()
    if nb not in seconds and earlier is None and not exists:
        return [f"_Not run yet: {rerun}._", ""]
    results = read_json(file, dict) if exists else None  # moves a corrupt file aside
    own = (results or {}).get("seconds")
    lines = []
    if nb in seconds:
        lines += [f"_Ran in {own or seconds[nb]:.0f} s._", ""]
    elif earlier is not None:
        how = "resumed" if selected else "left out by --only"
        lines += [f"_Ran in {own or earlier:.0f} s (an earlier run, {how})._", ""]
    if not exists:
        return lines + ["_(no results file)_", ""]
    if results is None:
        return lines + [f"_(its results file was unreadable and is moved aside; run it again: "
                        f"{rerun})_", ""]
    if results.get("note"):
        lines += [str(results["note"]), ""]
    if results.get("findings"):
        lines += ["### Findings", "", *(f"- {line}" for line in results["findings"]), ""]
    tables = results.get("summary") or {}
    for title, rows in (tables.items() if isinstance(tables, dict) else []):
        readable = isinstance(rows, list) and all(isinstance(r, dict) for r in rows)
        lines += [f"### {title}", "", markdown_table(rows) if readable else
                  "_(not a table: a list of records was expected)_", ""]
    return lines


def execute(nb: Path, params: dict, executed: Path, kernel: str,
            record_path: Path | None = None, env: dict | None = None) -> float:
    """Run one notebook with papermill; its run time in seconds. The record of its earlier
    success (``record_path``) is deleted first, so that a run that fails, is killed or is
    interrupted never leaves a record for ``--resume`` to trust. ``env`` is set first (the
    kernel inherits it; a value None removes the variable)."""
    import papermill

    for name, value in (env or {}).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    if record_path is not None:
        record_path.unlink(missing_ok=True)
    start = time.time()
    papermill.execute_notebook(str(nb), str(executed), parameters=params, kernel_name=kernel,
                               cwd=str(nb.parent), progress_bar=False,
                               kernel_manager_class=quiet_kernel_manager())
    return time.time() - start


# The longest path of a Unix socket (Linux's sun_path holds 108 bytes with the closing zero).
SOCKET_PATH_MAX = 107


@functools.cache
def quiet_kernel_manager() -> type:
    """Jupyter's kernel manager, with which a notebook that succeeds prints nothing of its
    kernel's: the kernel listens on IPC sockets (files in the temporary folder, named per
    kernel and removed at shutdown) instead of local TCP ports, about which ipykernel warns
    "running over TCP without encryption" (TCP all the same on Windows, which has no IPC
    transport, and where the temporary folder's path is too long for a socket's); and a
    kernel is shut down by Jupyter's shutdown request without the SIGINT that jupyter_client
    sends first, which a kernel still inside its last reply logs as "KeyboardInterrupt caught
    in kernel". A kernel that does not stop is still terminated, then killed; interrupts
    asked for otherwise (a timeout's, Ctrl-C's ``stop_kernels``) still reach it."""
    from jupyter_client.manager import AsyncKernelManager

    class QuietKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            socket = os.path.join(tempfile.gettempdir(), f"tta-kernel-{uuid.uuid4().hex[:12]}")
            if os.name == "posix" and len(os.fsencode(socket)) <= SOCKET_PATH_MAX - len("-99"):
                kwargs = {"transport": "ipc", "ip": socket, **kwargs}
            super().__init__(**kwargs)

        async def _async_interrupt_kernel(self):
            if not self.shutting_down:
                await super()._async_interrupt_kernel()

    return QuietKernelManager


def execute_on_worker(*args, **kwargs) -> float:
    """``execute`` as a Dask task: the worker's thread is given back while the kernel (another
    process) computes, so that the cluster may run a notebook's grid tasks there (its
    ``notebook`` slot stays taken). A kernel told to use ``"auto"`` threads gets the cores
    this worker may use."""
    from distributed import secede

    env = dict(kwargs.pop("env", None) or {})
    if env.get("OMP_NUM_THREADS") == "auto":
        env["OMP_NUM_THREADS"] = str(len(os.sched_getaffinity(0)) if hasattr(
            os, "sched_getaffinity") else os.cpu_count() or 1)
    secede()
    return execute(*args, env=env, **kwargs)


def share_threads(jobs: int) -> None:
    """Give each of ``jobs`` kernels its share of the cores (kernels inherit the
    environment), unless the user set the thread count."""
    if jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))


# Thread settings a kernel takes from the runner's process on this machine (Dask's workers set
# them to 1 for themselves; a kernel gets what it would get without Dask).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def kernel_environment(local: bool) -> dict:
    """What each kernel's environment gets: the ``TTA_*`` variables, and on this machine the
    runner's thread settings (None: unset, as here); on other machines all the cores its
    worker may use (a worker runs one notebook at a time); and text progress bars, since no
    frontend renders widgets in an executed notebook (``helpers.progress``)."""
    threads = ({name: os.environ.get(name) for name in THREAD_VARIABLES} if local
               else {"OMP_NUM_THREADS": "auto"})
    return {**cluster.forwarded_environment(), **threads, "TTA_PROGRESS": "text"}


def select(planned: list, only: list[str] | None) -> list:
    """The planned notebooks whose names start with one of the ``--only`` prefixes (all
    without prefixes). A prefix that matches nothing is a typo, not an empty run: an error
    that lists the notebooks, raised before anything runs."""
    if not only:
        return planned
    names = [nb.stem for nb, _ in planned]
    unmatched = [o for o in only if not any(name.startswith(o) for name in names)]
    if unmatched:
        raise SystemExit(f"--only {' '.join(unmatched)} matches no notebook; give a prefix of "
                         f"one of: {', '.join(names)}.")
    return [(nb, p) for nb, p in planned if any(nb.stem.startswith(o) for o in only)]


def stop_kernels(grace: float = 5.0) -> int:
    """Interrupt every process this one started (the kernels, and theirs) with SIGINT, as
    Jupyter's interrupt button does, and kill those still running after ``grace`` seconds;
    returns how many there were. Needed because jupyter_client starts each kernel in a
    session of its own, where the terminal's Ctrl-C never reaches it. Run in each Dask
    worker (``Client.run``), where the kernels are the worker's children."""
    import psutil

    kernels = psutil.Process().children(recursive=True)
    for process in kernels:
        try:
            process.send_signal(signal.SIGINT)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(kernels, timeout=grace)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace)
    return len(kernels)


class Job(NamedTuple):
    """One notebook run: the notebook, its parameters, its code's fingerprint, its run record
    and executed notebook, and its key in the results of ``run_all`` (the notebook; for a
    sweep, the notebook and its setting's label)."""

    nb: Path
    params: dict
    code: dict
    record: Path
    executed: Path
    key: object

    @property
    def title(self) -> str:
        return self.executed.name if self.key == self.nb else f"{self.nb.stem} {self.key[1]}"


def _outcome(job: Job, future, interrupted: bool) -> str | None:
    """None if the notebook ran, else the one-line reason it failed."""
    error = future.exception()
    if error is None:
        return None
    last_line = (str(error).strip().splitlines() or [""])[-1]  # may be empty
    why = f"{type(error).__name__}: {last_line} (executed notebook: {job.executed})"
    return f"interrupted by Ctrl-C ({why})" if interrupted else why


def run_all(client, todo: list[Job], profile_name: str, kernel: str, jobs: int,
            env: dict | None = None, gpu: tuple = (), offered: frozenset = frozenset()):
    """Run ``todo`` on the cluster of ``client``, ``jobs`` at a time in the given order,
    recording each success; returns (failures, seconds, not started or None), keyed by
    ``Job.key``. Where the workers ``offered`` the resources, each notebook takes a worker's
    ``notebook`` slot and those in ``gpu`` its GPU. On Ctrl-C the running kernels are stopped
    (``stop_kernels`` in the workers running them), the queued notebooks dropped, and the
    third value lists those that never started."""
    from distributed import wait
    from distributed.client import FIRST_COMPLETED

    failures, seconds, not_started = {}, {}, None
    bar = tqdm(total=len(todo), desc=f"profile {profile_name}", unit="notebook")
    slots = {cluster.NOTEBOOK: 1} if cluster.NOTEBOOK in offered else {}
    gpus = cluster.GPU in offered
    if gpu and not gpus and any(job.nb.stem in gpu for job in todo):
        tqdm.write(f"No worker offers a GPU: {', '.join(sorted(gpu))} run on the CPU.")
    queue, running, placed = list(todo), {}, {}

    def resources(job: Job) -> dict:
        return {**slots, **({cluster.GPU: 1} if job.nb.stem in gpu and gpus else {})}

    def next_placement() -> tuple[Job | None, str | None]:
        """The first queued notebook that an idle worker can take, and that worker; with
        nothing running and no such worker (SLURM jobs still starting), the first notebook
        for Dask to place; (None, None) while every queued one waits for a busy worker."""
        if not slots:
            return queue[0], None
        for job in queue:
            worker = cluster.idle_worker(client, resources(job), set(placed.values()))
            if worker:
                return job, worker
        return (queue[0], None) if not running else (None, None)

    def submit(job: Job, worker: str | None):
        queue.remove(job)
        future = client.submit(execute_on_worker, job.nb, job.params, job.executed, kernel,
                               job.record, env=env, resources=resources(job) or None,
                               pure=False,
                               key=f"notebook {job.title}-{time.time_ns()}",
                               workers=[worker] if worker else None,
                               allow_other_workers=bool(worker))  # elsewhere if it dies
        running[future] = job
        placed[future] = worker

    def handle(future, interrupted=False):
        job = running.pop(future)
        placed.pop(future, None)
        why = _outcome(job, future, interrupted)
        if why is None:
            seconds[job.key] = future.result()
            record(job.record, job.params, seconds[job.key], job.code)
            tqdm.write(f"ok   {job.title} in {seconds[job.key]:.0f} s")
        else:
            failures[job.key] = why
            tqdm.write(f"FAIL {job.title}: {why}")
        bar.update()

    try:
        while queue or running:
            while queue and len(running) < jobs:
                job, worker = next_placement()
                if job is None:
                    break
                submit(job, worker)
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in done:
                handle(future)
    except KeyboardInterrupt:
        tqdm.write("Ctrl-C: stopping the running notebooks ...")
        not_started = [job.key for job in queue]
        ours = {future.key for future in running}
        workers = [w for w, keys in client.processing().items() if ours & set(keys)]
        client.run(stop_kernels, workers=workers or None)
        wait(list(running), timeout=15)
        for future in list(running):
            if future.done():
                handle(future, interrupted=True)
            else:
                failures[running.pop(future).key] = ("interrupted by Ctrl-C; its kernel did not "
                                                     "stop")
    bar.close()
    return failures, seconds, not_started


def start_cluster(jobs: int, scheduler: str | None = None, slurm=None, gpu: tuple = (),
                  processes: bool = True):
    """(client, cluster this process started or None, whether the workers are on this
    machine, the resources the workers offer): a ``LocalCluster`` of ``jobs`` workers (the
    first ones owning a GPU each when the profile lists notebooks under ``gpu:`` and this
    machine has GPUs), the cluster at ``scheduler`` (once it has a worker), or SLURM jobs
    (``slurm``: the options and their source, see ``cluster.slurm_options``) scaled to
    ``jobs`` workers."""
    if scheduler is not None:
        client = cluster.connect(scheduler, shared=False)
        client.wait_for_workers(1, timeout=WORKER_TIMEOUT)
        offered = {r for r in (cluster.NOTEBOOK, cluster.GPU) if cluster.offered(client, r)}
        return client, None, False, frozenset(offered)
    if slurm is not None:
        started = cluster.slurm_cluster(*slurm)
        started.scale(jobs)
        gpus = int(slurm[0].get("gpus", 0) or 0)
        return (cluster.connect(started, shared=False), started, False,
                frozenset({cluster.NOTEBOOK, *([cluster.GPU] if gpus else [])}))
    gpus = min(local_gpus() if gpu else 0, jobs)
    started = cluster.local_cluster(jobs, gpus=gpus, processes=processes)
    return (cluster.connect(started, ignore_interrupts=processes, shared=False), started, True,
            frozenset({cluster.NOTEBOOK, *([cluster.GPU] if gpus else [])}))


# Seconds to wait for a remote scheduler's first worker.
WORKER_TIMEOUT = 120


def local_gpus() -> int:
    """How many CUDA devices this machine has (imports torch, so asked only when needed)."""
    import torch

    return torch.cuda.device_count()


def slurm_settings(value, profile: dict, profile_name: str) -> tuple[dict, str]:
    """(options, where they come from) for ``--slurm``: the YAML file given, else the
    profile's ``cluster:`` section; neither is an error naming both ways."""
    if isinstance(value, str):
        file = Path(value)
        if not file.is_file():
            raise SystemExit(f"--slurm {value}: no such file; give a YAML file of SLURMCluster "
                             f"options (cores, memory, queue, walltime, ...).")
        with open(file) as stream:
            return yaml.safe_load(stream) or {}, str(file)
    if not profile.get("cluster"):
        raise SystemExit(f"--slurm needs SLURMCluster options: a `cluster:` section in "
                         f"{profile_file(profile_name)} (cores, memory, queue, walltime, ...) "
                         f"or a YAML file: --slurm cluster.yaml")
    return profile["cluster"], f"`cluster:` of {profile_file(profile_name)}"


# ---------------------------------------------------------------- sweeps


def parse_sweep(items: list[str]) -> dict[str, list]:
    """``["seed=0,1", "memo.lr=1e-5,1e-4"]`` as ``{"seed": [0, 1], "memo.lr": [1e-05,
    0.0001]}``; values are read as YAML, with numbers in any float notation."""
    sweep = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not name or not values:
            raise SystemExit(f"--sweep {item!r}: write name=value,value,... "
                             f"(e.g. seed=0,1,2 or memo.lr=1e-5,1e-4)")
        sweep[name] = [_value(v) for v in values.split(",")]
    return sweep


def _value(text: str):
    try:
        return float(text) if re.fullmatch(r"[-+]?[\d.]+e[-+]?\d+", text.strip(), re.I) \
            else yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def sweep_label(setting: dict) -> str:
    """A file-name-safe label of one combination: ``seed=0_memo.lr=1e-05``."""
    text = "_".join(f"{name}={value}" for name, value in setting.items())
    return re.sub(r"[^\w.=+-]", "-", text)


def with_setting(nb: Path, injected: dict, setting: dict, declared: dict) -> dict:
    """The parameters of one sweep run: ``injected`` with each swept value set, a dotted
    name setting one key inside a dict parameter (the profile's, else the notebook's
    default)."""
    run = copy.deepcopy(injected)
    for name, value in setting.items():
        base, *keys = name.split(".")
        if not keys:
            run[base] = value
            continue
        inner = run.get(base, ast.literal_eval(declared[base]) if base in declared else None)
        if not isinstance(inner, dict):
            raise SystemExit(f"--sweep {name}: {nb.stem}'s parameter {base!r} is not a dict "
                             f"({inner!r}); a dotted name sets a key inside a dict parameter.")
        target = run[base] = copy.deepcopy(inner)
        for key in keys[:-1]:
            target = target.setdefault(key, {})
        target[keys[-1]] = value
    return run


def sweep_jobs(profile_name: str, selected: list, sweep: dict[str, list]) -> list[Job]:
    """One job per selected notebook that declares every swept parameter and per combination
    of the values, with its own results file, figures folder, executed notebook and record
    under ``.../sweep/<notebook>/<label>``; notebooks that lack a swept parameter are left
    out, saying so. Values are checked as a profile's are, before anything runs."""
    jobs, problems = [], []
    for nb, injected in selected:
        declared = notebook_parameters(nb)
        lacking = sorted({name.split(".")[0] for name in sweep} - set(declared))
        if lacking:
            tqdm.write(f"sweep: {nb.stem} left out (no parameter {', '.join(lacking)})")
            continue
        code = notebook_code(nb)
        for values in itertools.product(*sweep.values()):
            setting = dict(zip(sweep, values))
            label = sweep_label(setting)
            run_params = with_setting(nb, injected, setting, declared)
            problems += parameter_problems(nb, {k: run_params[k] for k in {
                n.split(".")[0] for n in sweep}}, declared)
            folder = f"sweep/{nb.stem}"
            run_params.update(
                results_path=str(paths.RESULTS / profile_name / folder / f"{label}.json"),
                figures_dir=str(paths.FIGURES / profile_name / folder / label))
            runs = paths.RUNS / profile_name / folder
            jobs.append(Job(nb, run_params, code, runs / f"{label}.done.json",
                            runs / f"{label}.ipynb", (nb, label)))
    if problems:
        raise SystemExit("--sweep has bad values:\n  " + "\n  ".join(sorted(set(problems))))
    if not jobs:
        raise SystemExit(f"--sweep {' '.join(sweep)}: no selected notebook declares all of "
                         f"them; the notebooks' parameters are in their parameters cells.")
    return jobs


def sweep_summary(profile_name: str, sweep: dict[str, list], jobs: list[Job],
                  failures: dict) -> str:
    """The runs of a sweep side by side: for each notebook and each of its summary tables,
    each row once per setting of the swept parameters other than ``seed``, and in each column
    the mean over the seeds and their sample standard deviation (``0.812 ± 0.004``), or the
    value where all seeds agree (labels, counts); text that differs between seeds reads
    ``a / b``. A failed run is left out and named."""
    settings = [name for name in sweep if name != "seed"]
    parts = [f"# Sweep of the `{profile_name}` profile over "
             f"{', '.join(f'{k} = {v}' for k, v in sweep.items())}", "",
             "Each table is a notebook's summary table, one row per row of the table and "
             "setting of " + (", ".join(settings) or "(none)") + "; "
             + ("numbers that differ between the seeds are their mean ± sample standard "
                f"deviation over {len(sweep['seed'])} seeds." if "seed" in sweep else
                "one run per setting."), ""]
    for nb in dict.fromkeys(job.nb for job in jobs):
        parts += [f"## {nb.stem}", ""]
        groups: dict[str, list] = {}
        for job in (j for j in jobs if j.nb == nb):
            if job.key in failures:
                parts += [f"- **Failed** ({job.key[1]}): {failures[job.key]}"]
                continue
            results = read_json(Path(job.params["results_path"]), dict) or {}
            label = sweep_label({k: _setting_value(job.params, k) for k in settings}) or "all"
            groups.setdefault(label, []).append(results.get("summary") or {})
        parts += [""] + _sweep_tables(groups)
    return "\n".join(parts)


def _setting_value(params: dict, name: str):
    value = params
    for key in name.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _sweep_tables(groups: dict[str, list]) -> list[str]:
    """Markdown of ``groups`` (setting label -> the summaries of its seeds)."""
    titles = dict.fromkeys(t for summaries in groups.values() for s in summaries for t in s)
    lines = []
    for title in titles:
        rows = []
        for label, summaries in groups.items():
            tables = [s.get(title) or [] for s in summaries]
            if len({len(t) for t in tables}) > 1:
                rows.append({"setting": label, "note": "the seeds' tables differ in length"})
                continue
            for cells in zip(*tables):
                columns = dict.fromkeys(k for row in cells for k in row)
                rows.append({"setting": label, **{c: spread([r.get(c) for r in cells])
                                                  for c in columns}})
        lines += [f"### {title}", "", markdown_table(rows), ""]
    return lines


def spread(values: list):
    """One column's values over the seeds: the value where they agree, else mean ± sample
    standard deviation of numbers, else the values joined by " / ". A number that is not
    finite (NaN: a measure undefined for that run) is left out of the mean and counted
    (``0.812 ± 0.004 (1 of 3 n/a)``); with at most one finite number left, that number or
    ``n/a``."""
    if all(v == values[0] for v in values):
        return values[0]
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(numbers) != len(values):
        return " / ".join(str(v) for v in values)
    finite = [v for v in numbers if math.isfinite(v)]
    missing = f" ({len(numbers) - len(finite)} of {len(numbers)} n/a)" if len(finite) < len(
        numbers) else ""
    if not finite:
        return "n/a"
    if len(finite) == 1:
        return f"{finite[0]:.3f}{missing}"
    return f"{statistics.fmean(finite):.3f} ± {statistics.stdev(finite):.3f}{missing}"


# ---------------------------------------------------------------- run


def run(profile_name: str, resume: bool = False, only: list[str] | None = None,
        kernel: str = "python3", jobs: int | None = None, scheduler: str | None = None,
        slurm=None, sweep: list[str] | None = None, processes: bool = True) -> int:
    """Run the profile's notebooks, ``jobs`` at a time (default: the profile's ``jobs``,
    else 1) on a local cluster of that many workers, or on the cluster at ``scheduler``, or
    on SLURM (``slurm``: True for the profile's ``cluster:`` section, or a YAML file);
    ``sweep`` as ``--sweep`` gives it. Returns the exit code: 1 when a notebook failed, 130
    after Ctrl-C. ``processes=False`` runs the local workers as threads of this process."""
    profile = load_profile(profile_name)
    slurm_config = slurm_settings(slurm, profile, profile_name) if slurm else None
    if slurm_config:
        cluster.slurm_options(*slurm_config)  # checked before anything runs
    # The whole profile is checked (it may name notebooks --only leaves out), then filtered.
    planned = plan(profile_name, sorted(paths.NOTEBOOKS.glob("[0-9]*.ipynb")))
    selected = select(planned, only)
    swept = parse_sweep(sweep) if sweep else None
    jobs = max(1, jobs or profile.get("jobs") or 1)
    out_dir = paths.RUNS / profile_name
    out_dir.mkdir(parents=True, exist_ok=True)
    candidates = (sweep_jobs(profile_name, selected, swept) if swept else
                  [Job(nb, injected, notebook_code(nb), record_file(profile_name, nb),
                       out_dir / nb.name, nb) for nb, injected in selected])
    todo = []
    for job in candidates:
        why = rerun_reason(job.params, job.record, job.code) if resume else None
        if resume and why is None:
            tqdm.write(f"skip {job.title}: results exist for these parameters and this code")
            continue
        if why and why not in ("no results file", "no record of a finished run"):
            tqdm.write(f"run  {job.title} again: {why}")
        job.executed.parent.mkdir(parents=True, exist_ok=True)
        todo.append(job)
    if jobs > 1:
        todo = longest_first(todo, profile_name, profile.get("minutes") or {})
    failures, seconds, not_started = {}, {}, None
    if todo:
        share_threads(jobs)
        client, started, local, offered = start_cluster(jobs, scheduler, slurm_config,
                                                        tuple(profile["gpu"]), processes)
        try:
            failures, seconds, not_started = run_all(
                client, todo, profile_name, kernel, jobs, kernel_environment(local),
                tuple(profile["gpu"]), offered)
        finally:
            cluster.stop_cluster(client, started)
    if swept:
        text = sweep_summary(profile_name, swept, candidates, failures)
        summary_file = paths.RESULTS / profile_name / "SWEEP.md"
    else:
        text = summary(profile_name, planned, failures, seconds, [nb for nb, _ in selected],
                       not_started)
        summary_file = paths.RESULTS / profile_name / "SUMMARY.md"
    summary_file.parent.mkdir(parents=True, exist_ok=True)
    summary_file.write_text(text)
    print(text)
    print(f"\nSummary written to {summary_file}")
    if failures:
        print(f"{len(failures)} notebook(s) failed:", file=sys.stderr)
        for key, why in failures.items():
            name = key.name if isinstance(key, Path) else f"{key[0].stem} {key[1]}"
            print(f"  {name}: {why}", file=sys.stderr)
    if not_started is not None:
        return 130
    return 1 if failures else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.batch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="offline",
                        help=f"one of: {', '.join(profile_names())} (default: offline)")
    parser.add_argument("--resume", action="store_true",
                        help="skip notebooks whose results exist for the same parameters "
                             "and code")
    parser.add_argument("--only", nargs="*", help="notebook name prefixes, e.g. 01 03")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel name")
    parser.add_argument("--jobs", type=int, default=None,
                        help="notebooks run at once: local worker processes, or SLURM "
                             "workers (default: the profile's 'jobs', else 1)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="run on the Dask cluster at ADDRESS (tcp://host:8786) instead of "
                            "local workers")
    where.add_argument("--slurm", nargs="?", const=True, metavar="FILE",
                       help="run on SLURM workers (dask-jobqueue), with the SLURMCluster "
                            "options of the profile's `cluster:` section or of FILE (YAML)")
    parser.add_argument("--sweep", nargs="+", metavar="NAME=VALUES",
                        help="run every combination, e.g. seed=0,1,2 memo.lr=1e-5,1e-4; "
                             "compared in results/<profile>/SWEEP.md")
    args = parser.parse_args(argv)
    cluster.require_runner("The batch runner (python -m helpers.batch)")
    try:
        return run(args.profile, args.resume, args.only, args.kernel, args.jobs,
                   args.scheduler, args.slurm, args.sweep)
    except KeyboardInterrupt:  # before any notebook ran: nothing to stop or summarise
        print("Interrupted before any notebook ran.", file=sys.stderr)
        return 130


def _exit(code: int) -> None:
    """Exit with ``code``; after Ctrl-C without waiting for a papermill thread still
    attached to a kernel that would not stop (the summary is written by then)."""
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    _exit(main())
