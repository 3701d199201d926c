"""Ensembles on a grid of (model, data set): every member runs once per data set and the
rules combine their recorded logits (``tta.ensemble``); the temperature rule's temperatures
are fitted on held-out labelled source images, never test images; finished cells are stored
(``evaluate.ResultStore``) and, given a scheduler, computed on a Dask cluster's workers."""

from __future__ import annotations

import torch

from . import cluster
from .data import content_digest, load_dataset
from .evaluate import cell_code, evaluate, run_info
from .grid import ONE_PART_AT_A_TIME, Lazy
from .tta.base import Adapter
from .tta.ensemble import RULES, Ensemble, combine, fit_temperature


class Recorder(Adapter):
    """A member as it is, keeping its logits per test image for the ensemble rules."""

    def __init__(self, member: Adapter):
        super().__init__(member.model, member.seed)
        self.member, self.name, self.logits = member, member.name, {}
        self.counters = member.counters

    def forward(self, images, keys):
        out = self.member(images, keys)
        self.logits.update(zip(keys, out.detach().cpu()))
        return out

    def reset(self):
        super().reset()
        self.member.reset()

    def config(self):
        return self.member.config()


class Replay(Adapter):
    """The ensemble of recorded member logits under one rule."""

    def __init__(self, ensemble: Ensemble, recorders, rule):
        super().__init__(ensemble.model, ensemble.seed)
        self.ensemble, self.recorders, self.rule = ensemble, recorders, rule
        self.name = f"ensemble ({rule})"

    def forward(self, images, keys):
        logits = torch.stack([torch.stack([r.logits[k] for k in keys]) for r in self.recorders])
        return combine(logits, self.rule, self.ensemble.temperatures).to(images.device)

    def config(self):
        return {**self.ensemble.config(), "rule": self.rule, "method": self.name}


def fit_temperatures(ensemble: Ensemble, held_out, batch_size: int = 64,
                     progress: bool = False) -> list[float]:
    """One temperature per member of ``ensemble``, fitted on ``held_out`` (labelled source
    images, none of the test set: ``held_out_set``), each member adapting as it does at test
    time; set on the ensemble. Each member's accuracy on them is kept in its
    ``held_out_accuracy``."""
    ensemble.temperatures, ensemble.held_out_accuracy = [], []
    for name, member in ensemble.members.items():
        recorder = Recorder(member)
        result = evaluate(recorder, held_out, batch_size, progress=progress,
                          desc=f"calibrate {name}")
        logits = torch.stack([recorder.logits[k] for k in range(result["n"])])
        ensemble.temperatures.append(fit_temperature(logits, torch.tensor(result["labels"])))
        ensemble.held_out_accuracy.append(result["accuracy"])
    return ensemble.temperatures


def ensemble_results(ensemble: Ensemble, dataset, rules=RULES, batch_size: int = 64,
                     progress: bool = True, desc: str = "") -> list[dict]:
    """Every member's results and the ensemble's under each rule, from one run of each
    member (the rules only combine the members' logits, which depend on the image alone).
    The ensemble's seconds per sample are its members' summed. ``temperature`` needs
    fitted temperatures (``fit_temperatures``) and is skipped without them."""
    recorders, results = [], []
    for name, member in ensemble.members.items():
        recorder = Recorder(member)
        results.append({**evaluate(recorder, dataset, batch_size, progress=progress,
                                   desc=f"{desc} {name}".strip()), "method": name})
        recorders.append(recorder)
    member_seconds = sum(r["seconds_per_sample"] for r in results)
    for rule in rules:
        if rule == "temperature" and ensemble.temperatures is None:
            continue
        result = evaluate(Replay(ensemble, recorders, rule), dataset, batch_size,
                          progress=False)
        result["seconds_per_sample"] += member_seconds
        results.append(result)
    return results


def image_digests(datasets) -> set[str]:
    """The content digest of every image of ``datasets`` (as uint8, the stored pixels)."""
    return {content_digest([as_uint8(dataset[i][0])]) for dataset in datasets
            for i in range(len(dataset))}


def as_uint8(image: torch.Tensor) -> torch.Tensor:
    """An image as its stored uint8 pixels (what a content digest compares)."""
    return (image * 255).round().to(torch.uint8) if image.is_floating_point() else image


def held_out_set(source, n: int, tests=(), seed: int = 0):
    """``n`` random labelled images of ``source`` (a training split: source data, which a
    test-time method may have), none pixel-identical to an image of the data sets ``tests``:
    what the temperature rule is fitted on. Never labelled test images, which test-time
    adaptation does not have. An error when fewer than ``n`` remain."""
    if n < 1:
        raise ValueError(f"n_held_out = {n}: hold out at least one image, or leave out the "
                         "temperature rule (n_held_out: 0)")
    excluded, kept = image_digests(tests), []
    order = torch.randperm(len(source), generator=torch.Generator().manual_seed(seed + 1))
    for index in order.tolist():
        if content_digest([as_uint8(source[index][0])]) not in excluded:
            kept.append(index)
            if len(kept) == n:
                return source.subset(kept, f"{n:,} random images held out to fit the "
                                           f"temperatures (seed {seed}), none a test image")
    raise ValueError(f"{getattr(source, 'name', 'the source set')} has {len(kept):,} images "
                     f"that are not test images, fewer than n_held_out = {n:,}: lower it")


def source_held_out(name: str, n: int, tests=(), seed: int = 0, split: str = "train",
                    root=None, download: bool = False):
    """``held_out_set`` from the ``split`` split of data set ``name`` (the training split of
    the test set's own data set), or None when ``n`` is 0 (no temperature rule)."""
    if not n:
        return None
    try:
        source = load_dataset(name, split=split, root=root, download=download)
    except ValueError as error:
        raise ValueError(f"{name} has no {split!r} split to fit the temperatures on "
                         f"({error}): set n_held_out: 0 (no temperature rule)") from error
    return held_out_set(source, n, tests, seed)


def build_ensemble(members: dict, model, model_name: str, temperatures=None) -> Ensemble:
    """The ensemble of the members that apply to ``model`` (``members`` maps a name to
    ``f(model, model_name) -> Adapter`` or None), with ``temperatures`` (a dict member ->
    T, from ``temperature_cell``) when given."""
    built = {m: make(model(), model_name) for m, make in members.items()}
    ensemble = Ensemble({m: a for m, a in built.items() if a is not None})
    if temperatures:
        ensemble.temperatures = [temperatures[m] for m in ensemble.members]
    return ensemble


def temperature_cell(members: dict, model: Lazy, model_name: str, held_out,
                     batch_size: int = 64, progress: bool = True) -> dict:
    """Each member's temperature fitted on ``held_out`` (labelled source images, see
    ``held_out_set``), and its accuracy there."""
    ensemble = build_ensemble(members, model, model_name)
    temperatures = fit_temperatures(ensemble, held_out, batch_size, progress)
    return {"temperatures": dict(zip(ensemble.members, temperatures)),
            "accuracy": dict(zip(ensemble.members, ensemble.held_out_accuracy)),
            "images": len(held_out)}


def ensemble_cell(members: dict, model: Lazy, model_name: str, temperatures, test,
                  rules=RULES, batch_size: int = 64, progress: bool = True, desc: str = "",
                  threads: int | None = None) -> dict:
    """One cell of ``ensemble_grid``: build the members, evaluate members and rules on
    ``test`` (the temperature rule with ``temperatures``, a dict member -> T, skipped when
    None); on a worker with ``threads`` CPU threads (the notebook's, so that the numbers are
    the same)."""
    if threads:
        torch.set_num_threads(threads)
    ensemble = build_ensemble(members, model, model_name, temperatures)
    return {"temperatures": ensemble.temperatures, "members": list(ensemble.members),
            "results": ensemble_results(ensemble, test, rules, batch_size, progress, desc)}


def ensemble_grid(models: dict, tasks: dict, members: dict, store, rules=RULES,
                  batch_size: int = 64, progress: bool = True, scheduler=None, held_out=None):
    """``grid.run_grid`` for ensembles: for every model, fit each member's temperature on
    ``held_out`` (labelled source images, ``held_out_set``; None: no temperature rule), then
    for every (model, task) build the members (``members`` maps a name to
    ``f(model, model_name) -> Adapter``, None where it does not apply) and evaluate members
    and rules on the task (``tasks`` map a name to a test set). Returns the results and one
    row per (model, member): its temperature and its accuracy on the held-out images.
    A cell is kept for the same members' settings, temperatures and code
    (``evaluate.ResultStore``). ``scheduler`` (a Dask scheduler's address, cluster or client)
    computes the missing task cells on its workers, each cell whole, stored here as each
    arrives; the temperatures are fitted here first."""
    built = {name: Lazy(build) for name, build in models.items()}
    settings = {model_name: {m: make.settings(model_name) for m, make in members.items()
                             if hasattr(make, "settings")} for model_name in models}
    modules = [__name__, *(m for make in members.values()
                           for m in getattr(make, "code_modules", ["helpers.tta"]))]
    fitted = {}
    if held_out is not None:
        for model_name in models:
            fitted[model_name] = store.run(
                (model_name, held_out.name, "temperatures"),
                lambda m=built[model_name], n=model_name: temperature_cell(
                    members, m, n, held_out, batch_size, progress),
                {**settings[model_name], "held_out": held_out.description},
                cell_code(modules, held_out))
    cells = [((model_name, task_name, "ensemble"),
              {**settings[model_name], "temperatures": fitted_temperatures(fitted, model_name)},
              cell_code(modules, test))
             for model_name in models for task_name, test in tasks.items()]
    missing = [cell for cell in cells if store.why_stale(*cell) is not None]
    if scheduler is not None and missing:
        cells_on_cluster(scheduler, missing, built, tasks, members, store, rules, batch_size)
    results = []
    for key, cell_settings, code in cells:
        model_name, task_name, _ = key
        cell = store.run(key, lambda m=built[model_name], n=model_name, t=tasks[task_name],
                         temps=cell_settings["temperatures"], desc=f"{model_name} {task_name}":
                         ensemble_cell(members, m, n, temps, t, rules, batch_size, progress,
                                       desc),
                         cell_settings, code)
        results += [{**r, "model": model_name, "data": task_name} for r in cell["results"]]
    rows = [{"model": model_name, "member": member, "temperature": t,
             "held_out_accuracy": cell["accuracy"][member], "held_out_images": cell["images"]}
            for model_name, cell in fitted.items() for member, t in cell["temperatures"].items()]
    return results, rows


def fitted_temperatures(fitted: dict, model_name: str) -> dict | None:
    cell = fitted.get(model_name)
    return dict(cell["temperatures"]) if cell else None


def cells_on_cluster(scheduler, missing, built, tasks, members, store, rules, batch_size):
    """The ``missing`` cells of ``ensemble_grid`` as tasks of the cluster at ``scheduler``,
    each stored as it arrives (with the worker's ``run_info``)."""
    from distributed import as_completed

    client = cluster.connect(scheduler)
    models = {name: cluster.held(client, built[name]) for name in {k[0] for k, _, _ in missing}}
    futures = {}
    for key, settings, code in missing:
        future = client.submit(worker_cell, members, models[key[0]], key[0],
                               settings["temperatures"], tasks[key[1]], rules, batch_size,
                               torch.get_num_threads(), pure=False)
        futures[future] = (key, settings, code)
    try:
        for future in as_completed(futures):
            key, settings, code = futures[future]
            cell = future.result()
            store.put(key, {k: v for k, v in cell.items() if k != "run"}, settings, code,
                      cell["run"])
    finally:
        client.cancel(list(futures) + list(models.values()))


def worker_cell(members, model, model_name, temperatures, test, rules, batch_size,
                 threads) -> dict:
    """``ensemble_cell`` on a worker, one at a time, with the worker's ``run_info``."""
    with ONE_PART_AT_A_TIME:
        cell = ensemble_cell(members, model, model_name, temperatures, test, rules,
                             batch_size, progress=False, threads=threads)
    return {**cell, "run": run_info()}
