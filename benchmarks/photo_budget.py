"""CPU seconds per test image of each method on the photo classifiers, for sizing the photo
parts of notebooks 01 and 02 in a profile. Run on demand:

    python benchmarks/photo_budget.py [--views 8] [--images 12] [--models efficientnet-lite0,...]

Per EfficientNet-Lite at its own input size, through ``helpers.evaluate.evaluate`` (what the
notebooks run): Source, NormAdapt and Tent (lr 0.001, not episodic) on all 26 photos clean
and under gaussian_noise at severity 5 in batches of 64; MEMO (``--views`` AugMix views, one
SGD step at lr 0.00025, BN prior 16) and MEMO_PLUS (MEMO's settings plus notebook 02's
offline ones: focus 0.5, four kinds of focused views, offline masks, Grad-CAM) on ``--images``
photos, half clean, half noisy. One warm-up image per method first. Prints process CPU
seconds per image (what one idle thread would take: the machine may be shared) and wall
seconds. One thread by default, as the batch runs notebooks.
"""

from __future__ import annotations

import argparse
import time

import torch

from helpers import data
from helpers.evaluate import evaluate
from helpers.models import EFFICIENTNET_LITES, build_classifier
from helpers.tta import method_factories

METHODS = ("source", "norm", "tent", "memo", "memo_plus")
PER_IMAGE = ("memo", "memo_plus")  # one adaptation per image: timed on fewer images


def settings(views: int) -> dict:
    memo = {"n_views": views, "steps": 1, "optimizer": "sgd", "lr": 0.00025, "params": "all",
            "bn_prior": 16}
    focus = {"focus": 0.5, "masks": "offline", "mask_options": {}, "cam_method": "gradcam",
             "kinds": ["crop", "blur-background", "replace-background", "augment-object"],
             "object_recipe": "object", "ordinary_recipe": None}
    return {"memo": memo, "memo_plus": {**memo, **focus}, "tent": {"lr": 0.001, "episodic": False}}


def seconds_per_image(adapter, tasks) -> tuple[float, float]:
    """(CPU, wall) seconds per image over ``tasks``, after a one-image warm-up per task."""
    cpu = wall = count = 0
    for task in tasks:
        evaluate(adapter, task.subset([0], "warm-up"), batch_size=64, progress=False)
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        evaluate(adapter, task, batch_size=64, progress=False)
        cpu += time.process_time() - cpu_start
        wall += time.perf_counter() - wall_start
        count += len(task)
    return cpu / count, wall / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--images", type=int, default=12, help="for MEMO and MEMO_PLUS")
    parser.add_argument("--models", default=",".join(EFFICIENTNET_LITES))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    factories = method_factories(METHODS, settings(args.views))
    print(f"{args.threads} thread(s), MEMO views {args.views}; seconds per image (CPU / wall)")
    for name in args.models.split(","):
        model = build_classifier(name, device="cpu")
        photos = data.sample_photos(model.preprocess.size)
        tasks = [photos, data.corrupted(photos, "gaussian_noise", 5)]
        few = [task.subset(range(args.images // 2), "timing") for task in tasks]
        row = []
        for method in METHODS:
            cpu, wall = seconds_per_image(factories[method](model, name),
                                          few if method in PER_IMAGE else tasks)
            row.append(f"{method} {cpu:.3f} / {wall:.3f}")
        print(f"{name} ({model.preprocess.size} px): " + ", ".join(row), flush=True)


if __name__ == "__main__":
    main()
