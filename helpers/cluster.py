"""Where tasks run: one Dask scheduler from a laptop to a cluster.

Three set-ups, one interface (a ``distributed.Client``):

- ``local_cluster(workers)``: worker *processes* on this machine, one thread each (a
  ``distributed.LocalCluster``), the default of the batch runner;
- ``connect("tcp://host:8786")``: an existing cluster's scheduler;
- ``slurm_cluster(options)``: workers as SLURM jobs (``dask_jobqueue.SLURMCluster``).

Every worker gets this machine's ``TTA_*`` variables (data, checkpoints, caches, outputs:
``helpers.paths``) before it runs a task, so it finds what the notebook's process finds;
the workers must see the repository, the data and the caches at the same paths (one machine,
or a shared file system). Worker resources: ``notebook`` (one notebook at a time per worker)
and ``GPU`` (on workers that own one), so that a notebook that needs a GPU never shares it.

``distributed`` is imported inside the functions: importing this module costs nothing for a
notebook that runs in process, and a notebook needs none of the runner's packages
(``tta-helpers[runner]``: Dask, papermill, nbconvert) unless it is given a scheduler.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import warnings

# The environment variables that tell a process where data, checkpoints, caches and outputs
# live (helpers.paths); forwarded to every worker.
FORWARDED_PREFIX = "TTA_"
# A worker runs at most one notebook at a time (its kernel has the worker's cores).
NOTEBOOK = "notebook"
GPU = "GPU"
# The SLURMCluster options a `cluster:` section or file must give (dask-jobqueue's names).
SLURM_REQUIRED = ("cores", "memory")

# The packages of the batch runner and of grids on a cluster: ``pip install tta-helpers[runner]``.
RUNNER_PACKAGES = ("dask", "distributed", "dask_jobqueue", "papermill", "nbconvert", "nbformat")


def installed(package: str) -> bool:
    """Whether ``package`` can be imported here (without importing it)."""
    try:
        return importlib.util.find_spec(package) is not None
    except ImportError:  # a finder that refuses it
        return False


def require_runner(what: str) -> None:
    """An error that names the fix when ``what`` (the batch runner, a grid on a cluster) needs
    a runner package this installation lacks: the notebooks' base install has none."""
    missing = [name for name in RUNNER_PACKAGES if not installed(name)]
    if missing:
        raise ModuleNotFoundError(
            f"{what} needs {', '.join(missing)}, which the base package leaves out: "
            f'pip install "tta-helpers[runner]" (or make setup, which installs everything).')


def forwarded_environment() -> dict[str, str]:
    """This process's ``TTA_*`` variables: what a worker needs to find the same files."""
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_PREFIX)}


def worker_setup(environment: dict[str, str], ignore_interrupts: bool = False):
    """A worker plugin that sets ``environment`` in each worker (present and future) before
    its first task; with ``ignore_interrupts`` (workers on this machine) the workers survive
    the terminal's Ctrl-C, so that the batch runner, not a dying worker, stops the kernels
    and writes the summary (a dying worker would orphan its kernel)."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class WorkerSetup(WorkerPlugin):
        name = "tta-worker-setup"

        def setup(self, worker):
            os.environ.update(environment)
            if ignore_interrupts:
                # A Python handler, not SIG_IGN: kernels started later get the default back.
                signal.signal(signal.SIGINT, lambda signum, frame: None)

    return WorkerSetup()


@contextlib.contextmanager
def _environment_kept():
    """Starting a LocalCluster's nannies writes distributed's pre-spawn variables
    (OMP_NUM_THREADS=1, ...) into this process's environment; put it back afterwards."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def local_cluster(workers: int, gpus: int = 0, processes: bool = True):
    """``workers`` local worker processes with one thread each, each offering one
    ``notebook`` slot; the first ``gpus`` of them own one GPU each (``CUDA_VISIBLE_DEVICES``
    and the ``GPU`` resource), the others see none. ``processes=False`` runs the workers as
    threads of this process (for tests that replace papermill in this process)."""
    require_runner("A local Dask cluster")
    import dask
    from distributed import LocalCluster

    class GpuLocalCluster(LocalCluster):
        """A LocalCluster whose first workers own a GPU each."""

        def new_worker_spec(self):
            spec = super().new_worker_spec()
            name, worker = next(iter(spec.items()))
            index = int(name)
            resources = {NOTEBOOK: 1, **({GPU: 1} if index < gpus else {})}
            env = {"CUDA_VISIBLE_DEVICES": str(index) if index < gpus else ""}
            options = {**worker["options"], "resources": resources,
                       **({"env": env} if gpus and processes else {})}
            return {name: {**worker, "options": options}}

    with _environment_kept(), dask.config.set({PRE_SPAWN: worker_environment()}):
        cluster = GpuLocalCluster(n_workers=0, threads_per_worker=1, processes=processes,
                                  dashboard_address=":0", silence_logs=logging.ERROR)
        cluster.scale(workers)
        cluster.wait_for_workers(workers)  # the nannies read PRE_SPAWN as they start
    return cluster


PRE_SPAWN = "distributed.nanny.pre-spawn-environ"


def worker_environment() -> dict:
    """Dask's environment for new worker processes without ``MALLOC_TRIM_THRESHOLD_``: at
    Dask's 64 KiB, glibc hands freed memory back after every tensor, and a CPU-bound MEMO
    grid took 1.4x as long (``benchmarks/grid_speed.py``'s grid, in one process with and
    without it: 8.7 vs 6.0 s). One thread per worker (OMP_NUM_THREADS=1 and the like) stays."""
    import dask

    return {k: v for k, v in dask.config.get(PRE_SPAWN).items()
            if k != "MALLOC_TRIM_THRESHOLD_"}


def slurm_options(options: dict, source: str) -> dict:
    """The keyword arguments of ``SLURMCluster`` from a profile's ``cluster:`` section or a
    YAML file (``source`` names it in errors), with this machine's ``TTA_*`` variables
    exported in each job and the worker resources added: ``gpus: 1`` in the options gives each
    worker the ``GPU`` resource (and asks SLURM for it with ``--gres=gpu:1`` unless the
    options' ``job_extra_directives`` already do)."""
    if not isinstance(options, dict):
        raise SystemExit(f"The SLURM options in {source} must be a mapping of SLURMCluster "
                         f"options (cores, memory, queue, walltime, ...), not "
                         f"{type(options).__name__}.")
    missing = [name for name in SLURM_REQUIRED if name not in options]
    if missing:
        raise SystemExit(f"The SLURM options in {source} lack {missing}: give e.g. "
                         f"`cores: 8` and `memory: 32GB` (dask-jobqueue's names).")
    options = dict(options)
    gpus = int(options.pop("gpus", 0) or 0)
    directives = list(options.get("job_extra_directives") or [])
    if gpus and not any("gres" in d or "gpus" in d for d in directives):
        directives.append(f"--gres=gpu:{gpus}")
    resources = f"{NOTEBOOK}=1" + (f",{GPU}={gpus}" if gpus else "")
    exports = [f"export {k}={v}" for k, v in sorted(forwarded_environment().items())]
    return {**options, "job_extra_directives": directives,
            "job_script_prologue": [*(options.get("job_script_prologue") or []), *exports],
            "worker_extra_args": [*(options.get("worker_extra_args") or []),
                                  "--resources", resources]}


def slurm_cluster(options: dict, source: str = "the cluster options"):
    """A ``dask_jobqueue.SLURMCluster`` from ``slurm_options``; no job is submitted until
    ``scale``."""
    from dask_jobqueue import SLURMCluster

    return SLURMCluster(**slurm_options(options, source))


def connect(address_or_client, ignore_interrupts: bool = False, shared: bool = True):
    """A client of the scheduler at ``address_or_client`` (``tcp://host:8786``), of a cluster
    object, or the given client, with the ``TTA_*`` variables forwarded to its workers.
    ``shared`` clients of one address are made once per process and reused (a notebook's
    grids); the batch runner makes its own (``shared=False``) and closes it."""
    require_runner("A grid or batch on a Dask scheduler")
    from distributed import Client

    if isinstance(address_or_client, Client):
        client = address_or_client
    elif not shared:
        client = Client(address_or_client)
    else:
        key = getattr(address_or_client, "scheduler_address", address_or_client)
        client = CLIENTS.get(key)
        if client is None or client.status != "running":
            client = CLIENTS[key] = Client(address_or_client)
    client.register_plugin(worker_setup(forwarded_environment(), ignore_interrupts))
    return client


CLIENTS: dict = {}


def held(client, value):
    """A future of ``value`` that the cluster can always recompute: a task returning it,
    not scattered data, which a killed worker may take with it (Dask keeps one copy of
    scattered data; tasks that need lost data are cancelled). A worker that needs it fetches
    it once and keeps it while the tasks that need it run."""
    with warnings.catch_warnings():  # Dask's advice against large task arguments: on purpose
        warnings.filterwarnings("ignore", "Large object", UserWarning)
        return client.submit(same, value, pure=False)


def same(value):
    return value


def total_threads(client) -> int:
    """The threads of all workers the scheduler knows now (at least 1)."""
    return max(1, sum(client.nthreads().values()))


def offered(client, resource: str) -> bool:
    """Whether some worker of the cluster offers ``resource`` now."""
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    return any(resource in (w.get("resources") or {}) for w in workers)


def idle_worker(client, resources: dict, busy) -> str | None:
    """The address of a worker offering ``resources`` that is not in ``busy``, or None; of
    several, one offering the fewest resources not asked for (a CPU notebook leaves the GPU
    worker to the GPU notebooks).

    Why: Dask places a task with resource restrictions on a worker when it is submitted and
    may choose one whose slot is taken (measured: notebook 02 queued behind 01 on one worker
    while the other stood idle), so the batch runner names the worker itself."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    candidates = []
    for address, info in workers.items():
        offers = info.get("resources") or {}
        if address not in busy and all(offers.get(r, 0) >= n for r, n in resources.items()):
            candidates.append((len(set(offers) - set(resources)), address))
    return min(candidates)[1] if candidates else None


# Tasks sent to a worker beyond its threads: the next one waits there, so that a thread never
# idles for the round trip to this process and the scheduler (8 ms a part measured, 4% of a
# grid on 2 workers), and at most one part waits behind another at the end.
LOOKAHEAD = 1


def free_threads(client, in_flight: dict) -> list[str]:
    """One address per free slot (a worker's threads and ``LOOKAHEAD``) that none of
    ``in_flight``'s tasks (task -> the worker it was sent to) takes: the workers the
    scheduler knows now, so that a worker that left gets nothing and one that joined gets its
    share."""
    busy = list(in_flight.values())
    slots = {address: max(0, threads + LOOKAHEAD - busy.count(address))
             for address, threads in client.nthreads().items()}
    # Round robin over the workers: the first jobs (the longest) start on different workers.
    return [address for round_ in range(max(slots.values(), default=0))
            for address, free in slots.items() if free > round_]


def in_order(client, jobs: list, submit):
    """Run ``jobs`` on the cluster in their order, each when a worker thread is free and on
    that worker (``submit(job, address)`` returns its future; it should allow other workers,
    so that a job whose worker dies runs elsewhere); yields ``(job, future)`` as each ends.

    Why not submit them all at once: Dask places a task that depends on data (a model or a
    data set held on the cluster) when it is submitted, on a worker that holds the data, and
    moves it later only by work stealing: on 2 workers one of them idled 0.1-2 s at the end of
    a 9-11 s grid (``benchmarks/grid_speed.py``); handed out a free slot at a time, longest
    first, the workers end within one short part of each other."""
    from distributed import as_completed

    pending, in_flight, job_of = list(jobs), {}, {}
    finished = as_completed()

    def fill():
        free = free_threads(client, in_flight)
        if not free and not in_flight and pending:  # no worker yet (SLURM jobs starting)
            client.wait_for_workers(1)
            free = free_threads(client, in_flight)
        for address in free[:len(pending)]:
            job = pending.pop(0)
            future = submit(job, address)
            in_flight[future] = address
            job_of[future] = job
            finished.add(future)

    fill()
    try:
        for future in finished:
            in_flight.pop(future, None)
            fill()
            yield job_of.pop(future), future
    finally:
        client.cancel(list(in_flight))


def stop_cluster(client, cluster=None) -> None:
    """Close the client and the cluster this process started (never a remote scheduler)."""
    for key in [k for k, c in CLIENTS.items() if c is client]:
        del CLIENTS[key]
    with contextlib.suppress(Exception):
        client.close()
    if cluster is not None:
        with contextlib.suppress(Exception):
            cluster.close()
