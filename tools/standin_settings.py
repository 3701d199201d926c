"""Choose MEMO's and TPT's settings for the stand-ins on ImageNet-C's four held-out
corruptions, then measure the chosen settings on the 15 test corruptions.

    python tools/standin_settings.py select    # the grid on the validation corruptions
    python tools/standin_settings.py measure   # chosen settings on the test corruptions
    python tools/standin_settings.py intervals # paired-bootstrap intervals of measure's cells

``select`` never sees a test corruption: it runs a small grid of settings per stand-in on
speckle noise, Gaussian blur, spatter and saturate (severity 5) on FashionMNIST test images
that no notebook tests on (the last ``--n-images`` of the seed-0 order whose first ones
``data.take`` draws), prints the grid, and writes the settings with the best mean accuracy
to ``tools/standin_settings.json``. ``measure`` reads that file and runs Source, NormAdapt,
Tent, MEMO (and TPT for the small CLIP) on clean images and the 15 test corruptions through
``grid.run_grid``, printing the mean accuracy per (model, method) and how many
corruptions MEMO and TPT win or lose against Source. Both resume from their cells under
``results/standin_settings/`` and run one model per CPU core (one thread each).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from helpers import data, paths  # noqa: E402
from helpers.evaluate import ResultStore, stored_cells  # noqa: E402
from helpers.grid import run_grid  # noqa: E402
from helpers.models import build_classifier, parse_standin  # noqa: E402
from helpers.tta import method_factories  # noqa: E402

SETTINGS_FILE = REPO / "tools" / "standin_settings.json"
STORE_DIR = paths.RESULTS / "standin_settings"
MODELS = ("small-clip", "small-clip:none", "small-cnn", "small-cnn:standard", "small-cnn:none")
SEVERITY = 5

# The candidates. MEMO: one SGD step on all parameters; its views for 28-pixel images are
# AugMix at AugMix's severity 3 or at the severity 1 of MEMO's own CIFAR code (pad-and-crop
# and flip first), or pad-and-crop and flip alone; batch-norm models also try the prior
# N = 16 of the MEMO paper against none. lr 0 is a diagnostic (the BN prior alone), never
# chosen. TPT: one AdamW step on the prompt, 63 views, the kept share, the learning rate
# and AugMix or resized crops (area 50-100%, the small CLIP's training crops).
MEMO_VIEWS = {"augmix": {"kind": "augmix"}, "augmix-mild": {"kind": "augmix", "severity": 1},
              "pad-crop": {"kind": "crop", "crop": "pad"}}
CLIP_MEMO_VIEWS = {"augmix": MEMO_VIEWS["augmix"], "augmix-mild": MEMO_VIEWS["augmix-mild"],
                   "resized-crop": {"kind": "crop", "min_scale": 0.5}}
MEMO_BASE = {"n_views": 8, "steps": 1, "optimizer": "sgd", "params": "all"}
TPT_VIEWS = {"augmix": "augmix", "resized-crop": {"kind": "crop", "min_scale": 0.5}}
TPT_BASE = {"n_views": 63, "steps": 1}
TENT = {"lr": 0.001, "episodic": False}


def memo_grid(cnn: bool) -> dict:
    views = MEMO_VIEWS if cnn else CLIP_MEMO_VIEWS
    rates = (0.0, 0.00025, 0.001, 0.005) if cnn else (0.0001, 0.001, 0.005, 0.02)
    priors = (16, None) if cnn else (None,)
    grid = {}
    for (view_name, spec), lr, prior in itertools.product(views.items(), rates, priors):
        if lr == 0 and (view_name != "augmix" or prior is None):
            continue  # the BN prior alone: once (it does not depend on the views)
        name = f"memo views={view_name} lr={lr:g}" + (f" bn_prior={prior}" if cnn else "")
        grid[name] = {**MEMO_BASE, "views": spec, "lr": lr,
                      **({"bn_prior": prior} if prior else {})}
    return grid


def tpt_grid() -> dict:
    return {f"tpt views={view_name} lr={lr:g} selection={sel:g}":
            {**TPT_BASE, "views": spec, "lr": lr, "selection": sel}
            for (view_name, spec), lr, sel in itertools.product(
                TPT_VIEWS.items(), (0.005, 0.05), (0.1, 0.3))}


def validation_images(n: int):
    """FashionMNIST test images no notebook tests on: ``data.take`` draws the first ones of
    the seed-0 permutation, this the last ``n``."""
    import torch

    test_set = data.fashion_mnist("test")
    order = torch.randperm(len(test_set), generator=torch.Generator().manual_seed(0))
    return test_set.subset(order[-n:], f"last {n} of the seed-0 order (validation)")


def _evaluate(model: str, tasks: dict, methods: dict, store_name: str) -> list[dict]:
    """One model's cells, on one thread (a worker process of its own). ``methods`` maps a
    row's name to (method, settings)."""
    import torch

    torch.set_num_threads(1)
    grid = {name: method_factories([method], {method: settings})[method]
            for name, (method, settings) in methods.items()}
    store = ResultStore(STORE_DIR / f"{store_name}-{model.replace(':', '_')}.cells.json",
                        {"tasks": sorted(tasks), "n": len(next(iter(tasks.values()))),
                         "severity": SEVERITY})
    classes = next(iter(tasks.values())).class_names
    results = run_grid({model: lambda: build_classifier(model, classes, "cpu")}, tasks, grid,
                       store, batch_size=64, progress=False)
    return [{k: r[k] for k in ("model", "data", "method", "accuracy", "seconds_per_sample")}
            for r in results]


def run_models(models, tasks: dict, methods_for, store_name: str, jobs: int) -> list[dict]:
    """Every model's grid, one model per process."""
    with ProcessPoolExecutor(max_workers=max(1, min(jobs, len(models))),
                             initializer=os.environ.__setitem__,
                             initargs=("OMP_NUM_THREADS", "1")) as pool:
        parts = pool.map(_evaluate, models, itertools.repeat(tasks),
                         [methods_for(m) for m in models], itertools.repeat(store_name))
        return [r for part in parts for r in part]


def selection_methods(model: str) -> dict:
    cnn = parse_standin(model)[0] == "small-cnn"
    methods = {"source": ("source", {})}
    methods.update({name: ("memo", s) for name, s in memo_grid(cnn).items()})
    if not cnn:
        methods.update({name: ("tpt", s) for name, s in tpt_grid().items()})
    return methods


def mean_by(results, keys=("model", "method")) -> dict:
    table: dict = {}
    for r in results:
        table.setdefault(tuple(r[k] for k in keys), []).append(r["accuracy"])
    return {k: float(np.mean(v)) for k, v in table.items()}


def select(args) -> int:
    tasks = data.corruption_suite(validation_images(args.n_images), "validation", SEVERITY,
                                  clean=False)
    start = time.time()
    results = run_models(args.models, tasks, selection_methods, "select", args.jobs)
    means = mean_by(results)
    per_task = {(r["model"], r["method"], r["data"]): r["accuracy"] for r in results}
    chosen = {}
    print(f"Validation corruptions {', '.join(tasks)} at severity {SEVERITY}, "
          f"{args.n_images} images each; mean accuracy, change against Source")
    for model in args.models:
        source = means[(model, "source")]
        print(f"\n{model}: source {source:.3f}  "
              + "  ".join(f"{t} {per_task[(model, 'source', t)]:.3f}" for t in tasks))
        rows = sorted(((m, a) for (mm, m), a in means.items() if mm == model and m != "source"),
                      key=lambda row: -row[1])
        for method, acc in rows:
            cells = " ".join(f"{per_task[(model, method, t)] - per_task[(model, 'source', t)]:+.3f}"
                             for t in tasks)
            print(f"  {acc:.3f} ({acc - source:+.3f})  [{cells}]  {method}")
        methods = selection_methods(model)
        chosen[model] = {}
        for kind in ("memo", "tpt"):
            candidates = [(a, m) for m, a in rows if methods[m][0] == kind
                          and methods[m][1].get("lr", 1) > 0]
            if candidates:
                acc, best = max(candidates, key=lambda c: c[0])  # ties: first in the grid
                chosen[model][kind] = {"settings": methods[best][1], "name": best,
                                       "validation_accuracy": round(acc, 4),
                                       "validation_source": round(source, 4)}
    payload = {"about": "MEMO's and TPT's settings per stand-in, chosen on ImageNet-C's held-out "
                        "validation corruptions by tools/standin_settings.py select",
               "corruptions": list(tasks), "severity": SEVERITY, "n_images": args.n_images,
               # a rerun reuses the cells in its store: then only the missing ones count here
               "minutes_this_run": round((time.time() - start) / 60, 1), "chosen": chosen}
    SETTINGS_FILE.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"\nChosen (written to {SETTINGS_FILE}):")
    for model, kinds in chosen.items():
        for kind, c in kinds.items():
            print(f"  {model} {kind}: {c['name']} (validation {c['validation_accuracy']:.3f}, "
                  f"source {c['validation_source']:.3f})")
    print(f"{(time.time() - start) / 60:.1f} min")
    return 0


def measurement_methods(model: str) -> dict:
    chosen = json.loads(SETTINGS_FILE.read_text())["chosen"][model]
    cnn = parse_standin(model)[0] == "small-cnn"
    methods = {"source": ("source", {}), "tent": ("tent", TENT),
               "memo": ("memo", chosen["memo"]["settings"])}
    if cnn:
        methods["norm"] = ("norm", {})
    else:
        methods["tpt"] = ("tpt", chosen["tpt"]["settings"])
    return methods


def _view_agreement(model: str, tasks: dict, n: int) -> dict:
    """Why MEMO helps or not (``evaluate.view_agreement``) on ``n`` images (seeded) of each
    task, with the model's chosen MEMO views, without adapting anything."""
    import torch

    from helpers.evaluate import view_agreement
    from helpers.views import make_views

    torch.set_num_threads(1)
    settings = json.loads(SETTINGS_FILE.read_text())["chosen"][model]["memo"]["settings"]
    views = make_views(settings["views"], settings["n_views"])
    classifier = build_classifier(model, next(iter(tasks.values())).class_names, "cpu")
    return {name: view_agreement(classifier, data.take(task, n, seed=0), views)
            for name, task in tasks.items()}


def measure(args) -> int:
    test_set = data.fashion_mnist("test")
    tasks = data.corruption_suite(test_set, "all", SEVERITY, args.n_images, seed=0)
    start = time.time()
    results = run_models(args.models, tasks, measurement_methods, "measure", args.jobs)
    means = mean_by([r for r in results if r["data"] != "clean"])
    clean = {(r["model"], r["method"]): r["accuracy"] for r in results if r["data"] == "clean"}
    acc = {(r["model"], r["method"], r["data"]): r["accuracy"] for r in results}
    print(f"15 test corruptions at severity {SEVERITY}, {args.n_images} images each (and clean)")
    print("model                method  mean-C  (vs source)  clean   wins/losses/ties")
    for model in args.models:
        source = means[(model, "source")]
        for method in ("source", "norm", "tent", "memo", "tpt"):
            if (model, method) not in means:
                continue
            diffs = [acc[(model, method, t)] - acc[(model, "source", t)]
                     for t in tasks if t != "clean"]
            counts = (f"{sum(d > 0 for d in diffs)}/{sum(d < 0 for d in diffs)}/"
                      f"{sum(d == 0 for d in diffs)}")
            print(f"{model:20s} {method:6s}  {means[(model, method)]:.3f}  "
                  f"({means[(model, method)] - source:+.3f})     "
                  f"{clean[(model, method)]:.3f}   {counts}")
        for method in ("memo", "tpt"):
            if (model, method) in means:
                print(f"  {method} per corruption: " + ", ".join(
                    f"{t} {acc[(model, method, t)] - acc[(model, 'source', t)]:+.3f}"
                    for t in tasks if t != "clean"))
    print("\nMEMO's views without adaptation (first 100 images per task): accuracy of the "
          "source on the originals, on the views, and of the marginal over the views")
    with ProcessPoolExecutor(max_workers=max(1, min(args.jobs, len(args.models))),
                             initializer=os.environ.__setitem__,
                             initargs=("OMP_NUM_THREADS", "1")) as pool:
        agreements = dict(zip(args.models, pool.map(_view_agreement, args.models,
                                                     itertools.repeat(tasks),
                                                     itertools.repeat(100))))
    for model, per_task in agreements.items():
        corrupted = [v for t, v in per_task.items() if t != "clean"]
        mean = {k: np.mean([v[k] for v in corrupted]) for k in ("source", "views", "marginal")}
        print(f"{model:20s} mean over corruptions: source {mean['source']:.3f}, views "
              f"{mean['views']:.3f}, marginal {mean['marginal']:.3f}")
        print("  marginal - source per task: " + ", ".join(
            f"{t} {v['marginal'] - v['source']:+.2f}" for t, v in per_task.items()))
    print(f"{(time.time() - start) / 60:.1f} min")
    return 0


def intervals(args) -> int:
    """Paired bootstrap of ``measure``'s cells: per model and method, the change of the mean
    accuracy over the 15 corruptions against Source, with a 95% interval from resampling
    the test images (the same images under every corruption, so one draw serves all)."""
    rng = np.random.default_rng(0)
    for model in args.models:
        file = STORE_DIR / f"measure-{model.replace(':', '_')}.cells.json"
        hits: dict = {}
        for key, cell in stored_cells(file).items():
            _, task, method = key.split(" / ")
            if task != "clean" and not cell.get("not_applicable"):
                hits.setdefault(method, {})[task] = (np.array(cell["predictions"])
                                                     == np.array(cell["labels"]))
        tasks = sorted(hits["source"])
        source = np.stack([hits["source"][t] for t in tasks])
        draws = rng.integers(0, source.shape[1], (args.resamples, source.shape[1]))
        for method, per_task in hits.items():
            if method == "source":
                continue
            per_image = (np.stack([per_task[t] for t in tasks]) - source.astype(float)).mean(0)
            low, high = np.percentile(per_image[draws].mean(1), [2.5, 97.5])
            print(f"{model:20s} {method:5s} {per_image.mean():+.4f}  95% [{low:+.4f}, {high:+.4f}]")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("select", "measure", "intervals"))
    parser.add_argument("--resamples", type=int, default=2000, help="intervals: bootstrap draws")
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--n-images", type=int, default=None,
                        help="images per corruption (select: 150, measure: 500)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    for model in args.models:
        if parse_standin(model) is None:
            parser.error(f"{model!r} is not a stand-in")
    if args.command == "select":
        args.n_images = args.n_images or 150
        return select(args)
    if args.command == "intervals":
        return intervals(args)
    args.n_images = args.n_images or 500
    return measure(args)


if __name__ == "__main__":
    sys.exit(main())
