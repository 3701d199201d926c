"""Notebook 01's offline grid sharded over local Dask workers: 2 worker processes against 1.
Run on demand:

    python benchmarks/grid_speed.py [--images 200] [--corruptions 3] [--views 8]

The grid is a slice of notebook 01's offline profile: MEMO (8 AugMix views, one SGD step, the
notebook's per-model learning rates and the CNN's batch-norm prior) and Source on the small
CLIP and the small CNN trained here, FashionMNIST clean and under the first corruptions at
severity 5. Each cell goes to the workers in parts of whole batches (``grid.run_grid``
with a scheduler); this process and every worker compute on one CPU thread (the batch's
setting on 2 cores), and the store is fresh for every run. Also timed: the same grid in this
process, and the start of a LocalCluster (the batch runner's overhead over its thread pool).

Prints seconds per run and the ratio 1 worker / 2 workers (target at least 1.7 on 2 cores),
with the load average before and after and the cores each run kept busy (its computing
processes' CPU seconds over its wall seconds), and the machine's own ceiling: two copies of
the grid in two processes at once, without Dask, against one. Each set-up runs alone on a
fresh cluster after a warm-up run (an idle LocalCluster beside it takes 3-6% of a core);
set-ups are taken in turn (``--repeats`` rounds), the fastest of each reported, medians too.

Measured 2026-12-05 13:16 on 2 quiet cores (5 rounds), with the free slots taken round robin
over the workers and the grid's recipes holding class names only: in process 14.5 s, 1 worker
16.2 s, 2 workers 9.0 s (fastest; medians 15.5, 17.2, 9.3): **1.79x fastest, 1.85x medians**,
the 2 workers kept 1.87 cores busy; the machine's ceiling 1.98x (medians), Dask reaching 93%
of it. The run before (13:02), whose recipes were lambdas over the whole test set (22.5 MiB
sent with every grid), read 1.65x fastest, 1.77x medians.

Measured 2026-12-05 10:07 on 2 quiet cores (3 rounds), after the parts were handed out the
longest first, one per free worker thread (``cluster.in_order``): in process 14.7 s, 1 worker
16.0 s, 2 workers 9.0 s (fastest): **1.78x fastest, 1.68x medians**; the 2 workers kept 1.83
cores busy (1.67-1.72 before). The machine's ceiling: 2.02x (2.00-2.10; two processes do not
slow each other down), so Dask's 2 workers reach 83% of it; the rest is Dask's own CPU on the
2 cores (the scheduler's and client's event loop in this process, 0.7-0.9 CPU-s per 9 s run;
each worker building both models) and 8 ms a part of dispatch, the in process / 1 worker
0.92x. A run of the same code at 09:57 read 1.61x fastest, 1.65x medians: the target is met on
the better rounds only. Before the change the parts were all submitted at once and Dask
placed each on a worker holding its data, so one worker idled at the end for 0.1-2 s of a
9-11 s grid (task streams, ``distributed.get_task_stream``); priorities alone did not help.

Measured 2026-12-05 04:39 on 2 quiet cores (load 0.1 before, default settings, 2 rounds):
in process 14.9 s, 1 worker 14.7 s, 2 workers 9.3 s (fastest): **1.58x** (1.60x medians), the
target 1.7x not met; the 2 workers kept 1.67 cores busy, in process / 1 worker 1.01x.

Measured 2026-12-05 06:37 with ``--images 400`` (notebook 01's count per task, quiet cores):
1 worker 30.2 s, 2 workers 19.1 s, **1.58x** again (1.60x medians); the 2 workers kept 1.72
cores busy and used 8% more CPU seconds than one (32.9 vs 30.5), so neither the grid's size
nor building the models (0.1-0.4 s each) is what is missing. Replicating the held recipes and
data sets on every worker (``client.replicate``, so that parts need not follow the data) made
it worse: 1.46x (08:00, default settings); not kept.

Measured 2026-12-05 (200 images per task, 3 corruptions + clean, 2 or 3 rounds) while other
engineers' test suites kept the 2 cores busy (load average 3-6.5): 1 worker / 2 workers
0.94x, 1.15x and 1.05x (fastest rounds), the **1.7x target not met**, since the two workers
together kept only 0.72-1.01 cores busy (the 1-worker runs 0.64-0.86): there was no second
core to take. The CPU seconds of the grid were the same on 1 and 2 workers (16.0 vs 16.4 s in
the run at load 3-4), so the parts split without extra work; the ratio on 2 idle cores is
still to be measured. On 1 worker the grid took 0.96x and 1.25x the in-process time in two
runs once Dask's ``MALLOC_TRIM_THRESHOLD_`` was dropped (1.37x before, see
``cluster.worker_environment``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import psutil
import torch

from helpers import cluster, data
from helpers.evaluate import ResultStore
from helpers.grid import run_grid
from helpers.models import build_classifier
from helpers.tta import method_factories

MEMO = {"n_views": 8, "steps": 1, "optimizer": "sgd", "lr": 1e-5, "params": "all"}
MEMO_PER_MODEL = {"small-clip": {"lr": 0.001}, "small-cnn": {"lr": 0.001, "bn_prior": 16}}


def grid_inputs(images: int, corruptions: int):
    test_set = data.load_dataset("fashion-mnist")
    names = list(data.corruption_names("all"))[:corruptions]
    tasks = data.corruption_suite(test_set, names, 5, images, 0, True)
    # Recipes that hold the class names only, as notebook 01's: a lambda over ``test_set``
    # would send its 10,000 images with every grid (22.5 MiB, Dask's "large graph" warning).
    models = {name: partial(build_classifier, name, test_set.class_names, "cpu")
              for name in ("small-clip", "small-cnn")}
    methods = method_factories(["source", "memo"], {"memo": MEMO}, {"memo": MEMO_PER_MODEL})
    return models, tasks, methods


def cpu_seconds(client) -> float:
    """CPU seconds (user + system) used so far by this process, or by the client's workers."""
    def used():
        times = psutil.Process().cpu_times()
        return times.user + times.system

    return used() if client is None else sum(client.run(used).values())


def run_once(models, tasks, methods, scheduler) -> tuple[float, float]:
    """Wall seconds of one grid from a fresh store, and the cores it kept busy on average
    (CPU seconds of whoever computed it / wall seconds)."""
    with tempfile.TemporaryDirectory() as folder:
        store = ResultStore(Path(folder) / "cells.json", {"seed": 0})
        cpu, start = cpu_seconds(scheduler), time.perf_counter()
        run_grid(models, tasks, methods, store, batch_size=64, progress=False,
                 scheduler=scheduler)
        wall = time.perf_counter() - start
        return wall, (cpu_seconds(scheduler) - cpu) / wall


def grid_alone(images: int, corruptions: int, queue) -> None:
    """In a process of its own: the grid in process after a warm-up; puts its wall seconds."""
    torch.set_num_threads(1)
    models, tasks, methods = grid_inputs(images, corruptions)
    run_once(models, tasks, methods, None)
    queue.put(run_once(models, tasks, methods, None)[0])


def two_processes(images: int, corruptions: int) -> float:
    """The machine's own ceiling for 2 workers: the grid's throughput with two copies of it
    in two processes at once (no Dask, nothing shared) over one copy alone, 2 x alone /
    slower of the two (measured 1.96-2.01x: the 2 cores do not slow each other down)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()

    def run(copies: int) -> float:
        processes = [context.Process(target=grid_alone, args=(images, corruptions, queue))
                     for _ in range(copies)]
        for process in processes:
            process.start()
        for process in processes:
            process.join()
        return max(queue.get() for _ in processes)

    return 2 * run(1) / run(2)


def timed_runs(models, tasks, methods, workers: int | None) -> tuple[float, float, float]:
    """(wall seconds, cores kept busy, start seconds) of one grid on a fresh LocalCluster of
    ``workers`` (None: in this process), after a warm-up run (the workers import torch and
    build the models), the cluster closed afterwards: only one set-up exists at a time, as on
    a user's machine (an idle LocalCluster of 2 workers takes 0.5-0.65 CPU-s per 10 s)."""
    if workers is None:
        run_once(models, tasks, methods, None)
        return (*run_once(models, tasks, methods, None), 0.0)
    begin = time.perf_counter()
    started = cluster.local_cluster(workers)
    client = cluster.connect(started)
    start = time.perf_counter() - begin
    try:
        run_once(models, tasks, methods, client)
        return (*run_once(models, tasks, methods, client), start)
    finally:
        cluster.stop_cluster(client, started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200, help="test images per task")
    parser.add_argument("--corruptions", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    models, tasks, methods = grid_inputs(args.images, args.corruptions)
    for build in models.values():  # trained and cached before anything is timed
        build()
    print(f"grid: 2 models x {len(tasks)} tasks x 2 methods, {args.images} images per task, "
          f"MEMO {MEMO['n_views']} views; {os.cpu_count()} cores")
    print(f"load average before: {os.getloadavg()}")
    runs = {"in process": None, "1 worker": 1, "2 workers": 2}
    times, cores, starts = ({name: [] for name in runs} for _ in range(3))
    ceilings = []
    for _ in range(args.repeats):  # in turn, so that a slower spell of the machine hits all
        for name, workers in runs.items():
            wall, busy, start = timed_runs(models, tasks, methods, workers)
            times[name].append(wall)
            cores[name].append(busy)
            starts[name].append(start)
        ceilings.append(two_processes(args.images, args.corruptions))
    print(f"load average after: {os.getloadavg()}")
    print(f"LocalCluster start: {statistics.median(starts['1 worker']):.1f} s, "
          f"{statistics.median(starts['2 workers']):.1f} s (1 and 2 workers, medians)")
    for name, values in times.items():
        print(f"{name:12s} fastest {min(values):6.1f} s, median {statistics.median(values):6.1f} s"
              f", cores kept busy {statistics.median(cores[name]):.2f} (median)")
    best = {name: min(values) for name, values in times.items()}
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"1 worker / 2 workers: {best['1 worker'] / best['2 workers']:.2f}x fastest, "
          f"{medians['1 worker'] / medians['2 workers']:.2f}x medians (target >= 1.7)")
    ratio = medians['1 worker'] / medians['2 workers']
    ceiling = statistics.median(ceilings)
    print(f"the machine's ceiling (two copies in two processes at once, no Dask): "
          f"{ceiling:.2f}x (median of {', '.join(f'{c:.2f}' for c in ceilings)}); Dask's "
          f"2 workers reach {ratio / ceiling:.0%} of it (medians)")
    print(f"in process / 1 worker: {best['in process'] / best['1 worker']:.2f}x "
          f"(the cost of sending the grid to a worker)")


if __name__ == "__main__":  # the ceiling's processes import this file: no work on import
    main()
