"""The experiment grid (model x data set x method): which cells are missing from the results
store, and where they run, in this process or as parts on a Dask cluster's workers.

What a cell computes lives in ``helpers.evaluate`` (``evaluate``, ``predict``) and in the
methods; this module only decides where and when. A cell computed on a cluster equals the
one computed in process bit for bit (``tests/test_cluster.py``), so, like the batch runner
and the Dask plumbing, this module is left out of the results' code fingerprints
(``fingerprint.SCHEDULING``): editing the dispatch recomputes nothing.
"""

from __future__ import annotations

import math
import threading
import uuid

import torch
from tqdm.auto import tqdm

from . import cluster
from .evaluate import ResultStore, cell_code, evaluate, join_parts, measures, predict, run_info

__all__ = ["Lazy", "image_ranges", "part_cost", "run_grid"]


def run_grid(models: dict, tasks: dict, methods: dict, store: ResultStore,
             batch_size: int = 64, progress: bool = True, scheduler=None) -> list[dict]:
    """Evaluate every (model, task, method). ``models`` maps a name to a function that
    builds the classifier (called once, and only if some cell is missing); ``methods`` maps
    a name to ``f(model, model_name) -> Adapter``, or None where the method does not apply
    (see ``tta.method_factories``). Stored cells whose settings or code changed are
    computed again, announced first in one line per method and reason.

    ``scheduler`` (a Dask scheduler's address, a cluster or a client; None: in this process)
    sends the missing cells to the cluster's workers, a method whose predictions for a batch
    depend on that batch alone (``make.shardable``, see ``tta.MethodInfo``) in parts of whole
    batches, and stores each cell here, atomically, as its last part arrives. The results are
    those of the run in process bit for bit (``tests/test_cluster.py``): the workers compute
    with this process's number of CPU threads, since some CPU kernels (a transformer's) sum in
    another order on another number of threads (the sixth decimal of a confidence)."""
    cells = []
    for model_name in models:
        for task_name, dataset in tasks.items():
            for method_name, make in methods.items():
                settings = make.settings(model_name) if hasattr(make, "settings") else None
                code = cell_code(getattr(make, "code_modules", None), dataset)
                cells.append(((model_name, task_name, method_name), settings, code))
    store.announce(cells)
    built = {name: Lazy(build) for name, build in models.items()}
    missing = [cell for cell in cells if store.why_stale(*cell) is not None]
    if scheduler is not None and missing:
        grid_on_cluster(scheduler, missing, built, tasks, methods, store, batch_size,
                        progress=progress)
    results = []
    for key, settings, code in cells:
        model_name, task_name, method_name = key
        make, dataset = methods[method_name], tasks[task_name]
        result = store.run(key, lambda m=built[model_name], make=make, data=dataset, key=key:
                           _evaluate_cell(make, m, key[0], data, batch_size, progress,
                                          " ".join(key)), settings, code)
        if not result.get("not_applicable"):
            results.append({**result, "model": model_name, "data": task_name,
                            "method": method_name})
    return results


class Lazy:
    """Build a model on first use: a grid that resumes with every cell done loads nothing.
    Sent to a cluster's workers, each worker builds it once for all its parts. It travels as
    its recipe, never as the built model: a worker that hands it to another may be adapting
    that model in place at the time (a torn or frozen copy), and a recipe is small."""

    def __init__(self, build):
        self.build, self.value = build, None

    def __call__(self):
        if self.value is None:
            self.value = self.build()
        return self.value

    def __getstate__(self):
        return {"build": self.build, "value": None}


def _evaluate_cell(make, model: Lazy, model_name, dataset, batch_size, progress,
                   desc) -> dict:
    adapter = make(model(), model_name)
    if adapter is None:
        return {"not_applicable": True}
    return evaluate(adapter, dataset, batch_size, progress=progress, desc=desc)


# One part at a time per worker process: the parts of a worker share its models.
ONE_PART_AT_A_TIME = threading.Lock()


def evaluate_part(make, model: Lazy, model_name: str, dataset, start: int, stop: int,
                  batch_size: int, threads: int | None = None) -> dict:
    """On a worker: ``predict`` over ``dataset[start:stop]`` (a whole cell when the method is
    not shardable) with ``threads`` CPU threads, with the worker's ``run_info``;
    ``{"not_applicable": True}`` where the method does not apply."""
    with ONE_PART_AT_A_TIME:
        if threads:
            torch.set_num_threads(threads)
        adapter = make(model(), model_name)
        if adapter is None:
            return {"not_applicable": True}
        raw = predict(adapter, dataset, batch_size, progress=False, start=start, stop=stop)
    return {**raw, "run": run_info(adapter.seed)}


def image_ranges(n: int, batch_size: int, pieces: int) -> list[tuple[int, int]]:
    """``[0, n)`` cut into at most ``pieces`` consecutive ranges of whole batches (a batch is
    never split: a method sees the batches of the run in process), sizes as equal as
    possible."""
    n_batches = max(1, math.ceil(n / batch_size))
    pieces = max(1, min(pieces, n_batches))
    bounds = [round(i * n_batches / pieces) * batch_size for i in range(pieces + 1)]
    return [(a, min(b, n)) for a, b in zip(bounds, bounds[1:]) if a < n]


def grid_on_cluster(scheduler, missing: list, built: dict, tasks: dict, methods: dict,
                    store: ResultStore, batch_size: int, pieces: int | None = None,
                    progress: bool = True) -> None:
    """Compute the ``missing`` cells (key, settings, code) of ``run_grid`` on the cluster at
    ``scheduler``; each cell is stored as soon as all its parts are back. Models (their
    builders) and data sets are sent once (``cluster.held``); the parts go out the longest
    first, one per free worker thread (``cluster.in_order``, ``part_cost``); the parts of a
    lost worker run again on another, and a cell is stored once. ``pieces``: parts per
    shardable cell (default: twice the cluster's threads)."""
    client = cluster.connect(scheduler)
    pieces = pieces or 2 * cluster.total_threads(client)
    models = {name: cluster.held(client, built[name]) for name in {k[0] for k, _, _ in missing}}
    datasets = {name: cluster.held(client, tasks[name]) for name in {k[1] for k, _, _ in missing}}
    cells, parts = {}, []
    for key, settings, code in missing:
        make = methods[key[2]]
        ranges = image_ranges(len(tasks[key[1]]), batch_size,
                              pieces if getattr(make, "shardable", False) else 1)
        cells[key] = {"settings": settings, "code": code, "parts": [None] * len(ranges)}
        parts += [(part_cost(make, key[0], start, stop), key, i, start, stop)
                  for i, (start, stop) in enumerate(ranges)]
    parts.sort(key=lambda part: -part[0])

    def submit(part, address):
        _, key, _, start, stop = part
        return client.submit(evaluate_part, methods[key[2]], models[key[0]], key[0],
                             datasets[key[1]], start, stop, batch_size,
                             torch.get_num_threads(), pure=False, workers=[address],
                             allow_other_workers=True,
                             key=f"{store.name(key)} [{start}:{stop}]-{uuid.uuid4().hex}")

    bar = tqdm(total=len(parts), desc=f"{len(cells)} cells on {client.scheduler.address}",
               unit="part", disable=not progress, leave=False)
    try:
        for (_, key, i, _, _), future in cluster.in_order(client, parts, submit):
            cell = cells[key]
            cell["parts"][i] = future.result()
            bar.update()
            if all(p is not None for p in cell["parts"]):
                store.put(key, _joined(cell["parts"], tasks[key[1]]), cell["settings"],
                          cell["code"], cell["parts"][0].get("run"))
    finally:
        bar.close()
        client.cancel(list(models.values()) + list(datasets.values()))


def part_cost(make, model_name: str, start: int, stop: int) -> int:
    """A part's images times its method's passes per image (``tta.passes_per_image``; 1
    for a method that does not say): the order a cluster gets the parts in, longest first,
    so that the last parts are short and the workers end together."""
    passes = make.passes(model_name) if hasattr(make, "passes") else 1
    return passes * (stop - start)


def _joined(parts: list[dict], dataset) -> dict:
    """A cell from its parts (``evaluate_part``)."""
    if parts[0].get("not_applicable"):
        return {"not_applicable": True}
    return measures(join_parts(parts), getattr(dataset, "acceptable", None))
