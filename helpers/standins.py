"""Train the stand-ins (the small models trained here) up front, side by side:
``python -m helpers.standins --prepare`` trains every stand-in the offline profile uses, one
process per CPU core, each on one thread, and caches them in ``.cache/models/`` as the
notebooks would. Run before a batch of notebooks: inside a notebook that shares the CPU with
another, the same training takes twice as long and holds the other notebooks waiting.

The small models train as fast on one thread as on two (a CNN step at batch 128 took 46 ms
on one thread, 216 ms on two of a shared machine), so one model per core is the fastest way
to train several.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

from . import models

# Longest first, so that the parallel workers end together: minutes on one idle CPU thread,
# from steps timed on this machine (CLIP 0.30 s per step of 256, 0.85 s with AugMix's three
# batches; CNN 0.046 s per step of 128, 0.19 s with AugMix's) times each recipe's steps (CLIP:
# 4 epochs of 250 steps; CNN: 2 epochs of 468). The offline profile's five: 4.9 + 3.0 on one
# worker, 4.9 + 0.7 + 0.7 on the other, about 8 minutes.
EXPECTED_MINUTES = {"small-clip:augmix": 14.2, "small-clip:standard": 5.0, "small-clip:clip": 4.9,
                    "small-clip:none": 4.9, "small-cnn:augmix": 3.0, "small-cnn:standard": 0.7,
                    "small-cnn:none": 0.7}


def canonical(name: str) -> str:
    """``small-cnn`` -> ``small-cnn:augmix``: one name per trained model."""
    parsed = models.parse_standin(name)
    if parsed is None:
        raise ValueError(f"{name!r} is not a stand-in; valid: {', '.join(models.STANDIN_NAMES)} "
                         "(or a model's name alone for its default recipe)")
    return ":".join(parsed)


def train(name: str) -> dict:
    """Train one stand-in on one thread (or load it from the cache); its training metrics
    and the seconds this call took (near 0 when it was cached)."""
    import torch

    torch.set_num_threads(1)
    start = time.time()
    config = models.standin_config(name)
    if isinstance(config, models.SmallClipConfig):
        metrics = models.small_clip(config, device="cpu", verbose=False).metrics
    else:
        metrics = models.small_cnn_classifier(config, device="cpu", verbose=False).metrics
    return {"name": name, **metrics, "seconds": round(time.time() - start, 1)}


def profile_standins(profile: str = "offline") -> list[str]:
    """The stand-ins a profile's notebooks use: the stand-in names among their ``models`` and
    ``photo_models``, as the profile gives them or, where it does not, as the notebook's
    parameters cell does."""
    import ast

    from . import paths
    from .batch import notebook_parameters, plan

    names = []
    for nb, given in plan(profile, sorted(paths.NOTEBOOKS.glob("[0-9]*.ipynb"))):
        defaults = notebook_parameters(nb)
        for key in ("models", "photo_models"):
            value = given.get(key, ast.literal_eval(defaults.get(key, "[]")))
            names += [name for name in value if models.parse_standin(name)]
    return list(dict.fromkeys(names))


def prepare(names=None, jobs: int | None = None) -> list[dict]:
    """Train ``names`` (default: the offline profile's stand-ins), ``jobs`` at a time
    (default: one per CPU core), and print the minutes each took; returns their records."""
    names = names or profile_standins("offline")
    todo = sorted(dict.fromkeys(canonical(n) for n in names),
                  key=lambda n: -EXPECTED_MINUTES.get(n, 0))
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(todo)))
    start = time.time()
    # Each worker limits itself to one thread before torch starts any work.
    with ProcessPoolExecutor(max_workers=jobs, initializer=os.environ.__setitem__,
                             initargs=("OMP_NUM_THREADS", "1")) as pool:
        records = list(pool.map(train, todo))
    for r in records:
        how = ("cached" if r["seconds"] < 0.5 * r["train_seconds"]
               else f"trained in {r['seconds'] / 60:.1f} min")
        print(f"{r['name']:22s} {how} (training: {r['train_seconds'] / 60:.1f} min, "
              f"{r['steps']} steps)")
    print(f"{len(records)} stand-ins ready in {(time.time() - start) / 60:.1f} min "
          f"({jobs} at a time)")
    return records


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.standins", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepare", action="store_true",
                        help="train (or find cached) the stand-ins")
    parser.add_argument("--profile", default="offline",
                        help="prepare the stand-ins this profile's notebooks use (default: "
                             "offline) when no names are given")
    parser.add_argument("names", nargs="*",
                        help="stand-ins to prepare (default: the profile's); "
                             f"valid: {' '.join(models.STANDIN_NAMES)}")
    parser.add_argument("--jobs", type=int, default=None,
                        help="trainings at once (default: one per CPU core)")
    args = parser.parse_args(argv)
    if not args.prepare:
        parser.print_help()
        return 2
    try:
        prepare(args.names or profile_standins(args.profile), args.jobs)
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
