"""Time per test image of MEMO: (a) ``helpers``, (b) the course notebook's way, (c) the
compute floor, on the same model, views and image. Run on demand:

    python benchmarks/memo_speed.py [--arch ViT-B/32] [--views 16] [--repeats 3]

(a) helpers.tta.Memo: batched AugMix views on tensors, one SGD step computed beside the
    source weights (nothing to restore).
(b) reference: deep copy of the model per image, a per-view PIL AugMix loop
    (torchvision's AugMix on PIL images, then ToTensor), SGD on the whole model.
(c) floor: one forward+backward over the B views plus one forward of the image.

Prints (a)/(c) (target at most 1.05 with ViT-B/32 and 16 views on CPU) and (b)/(a).
(a), (b) and (c) are timed in turn, ``--repeats`` rounds, so that a change in the machine's
load hits all three alike; each is the fastest of its rounds (the usual estimate of a
benchmark's cost without interference), the medians are printed too.
The CLIP architecture has random weights (no weights can be downloaded here): timing does
not depend on them.
"""

from __future__ import annotations

import argparse
import copy
import statistics

import numpy as np
import torch
from PIL import Image
from timing import timed_in_turn
from torchvision.transforms import v2

from helpers.models import clip_classifier
from helpers.tta import Memo, marginal_entropy
from helpers.views import AugMixViews, generator_for

ARCHS = {  # clip.model.CLIP arguments of the OpenAI architectures
    "ViT-B/32": (512, 224, 12, 768, 32, 77, 49408, 512, 8, 12),
    "ViT-B/16": (512, 224, 12, 768, 16, 77, 49408, 512, 8, 12),
}


def random_clip(arch: str):
    from clip.model import CLIP

    torch.manual_seed(0)
    model = CLIP(*ARCHS[arch]).float().eval()
    model.name = ""  # not cached: random weights
    return model


def test_image(size: int = 224) -> torch.Tensor:
    from skimage import data

    pil = Image.fromarray(data.chelsea()).resize((size, size))
    return torch.from_numpy(np.asarray(pil)).permute(2, 0, 1).float() / 255


def reference_memo(model, image: torch.Tensor, n_views: int, lr: float):
    """The course notebook's loop: copy the model, augment view by view in PIL, adapt."""
    adapted = copy.deepcopy(model)
    optimizer = torch.optim.SGD(adapted.parameters(), lr=lr, momentum=0.9)
    pil = v2.functional.to_pil_image(image)
    augment = v2.Compose([v2.RandomResizedCrop(image.shape[-1]), v2.RandomHorizontalFlip(),
                          v2.AugMix(), v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True)])
    views = torch.stack([augment(pil) for _ in range(n_views)])
    loss = marginal_entropy(adapted(views))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        return adapted(image[None])


def floor(model, views: torch.Tensor, image: torch.Tensor):
    loss = marginal_entropy(model(views))
    loss.backward()
    with torch.inference_mode():
        out = model(image[None])
    model.zero_grad(set_to_none=True)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-B/32", choices=sorted(ARCHS))
    parser.add_argument("--views", type=int, default=16)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    clip_model = random_clip(args.arch)
    model = clip_classifier(clip_model, [f"class {i}" for i in range(args.classes)],
                            cache=False).eval()
    image = test_image()
    views_fn = AugMixViews(args.views)
    memo = Memo(model, views=views_fn, lr=1e-5)
    views = views_fn(image, generator_for(0, 0))

    times = timed_in_turn({
        "a": lambda: memo(image[None]),
        "c": lambda: floor(model, views, image),
        "b": lambda: reference_memo(model, image, args.views, 1e-5),
        "views": lambda: views_fn(image, generator_for(0, 1)),
    }, args.repeats)
    best = {k: min(v) for k, v in times.items()}
    median = {k: statistics.median(v) for k, v in times.items()}
    t_a, t_b, t_c = best["a"], best["b"], best["c"]

    print(f"MEMO, {args.arch} (random weights), {args.views} views, 224 px, {args.classes} "
          f"classes, {torch.get_num_threads()} threads, device cpu")
    print(f"(a) helpers Memo         {t_a:7.3f} s/image")
    print(f"(b) course-style loop    {t_b:7.3f} s/image")
    print(f"(c) compute floor        {t_c:7.3f} s/image")
    print(f"    views alone {best['views']:.3f} s")
    print(f"(a)/(c) = {t_a / t_c:.3f}   (target <= 1.05); medians: {median['a'] / median['c']:.3f}")
    print(f"(b)/(a) = {t_b / t_a:.3f}")


if __name__ == "__main__":
    main()
