"""Time to build the views of one test image from a recipe of named augmentations: (a)
``helpers.augment.RecipeViews`` (each entry applied to its views at once, on tensors) vs
(b) the course code's way, a torchvision (v1) ``Compose`` of PIL transforms applied view by
view in a Python loop, then ``ToTensor`` per view. Same recipe, same strength ranges and
probabilities, same image. Run on demand:

    python benchmarks/views_speed.py [--recipe course] [--views 64] [--size 224] [--repeats 5]

Prints each way's fastest of ``--repeats`` rounds (the usual estimate of a benchmark's cost
without interference; medians too) and (b)/(a); target at least 5 on CPU. (a) and (b) are
timed in turn, so that a change in the machine's load hits both alike. One thread by default
(``--threads``): the PIL loop uses one, and on a shared 2-core machine a second torch thread
makes each parallel kernel wait for a descheduled thread (elementwise ops 10-100x slower).
"""

from __future__ import annotations

import argparse
import random
import statistics

import numpy as np
import torch
from PIL import Image, ImageFilter
from timing import timed_in_turn
from torchvision import transforms as T
from torchvision.transforms import functional as TF1

from helpers.augment import RecipeViews, parse_recipe
from helpers.views import generator_for

# ------------------------------------------------------------------ (b) the course's way


def _noise(fn):
    """A numpy noise on a PIL image, as course code does it: to an array and back."""
    def apply(img, s):
        x = np.asarray(img, dtype=np.float32) / 255
        return Image.fromarray((np.clip(fn(x, s), 0, 1) * 255).round().astype(np.uint8))
    return apply


def _salt_and_pepper(x, s):
    u = np.random.rand(*x.shape[:2], 1)
    return np.where(u < 0.05 * s, 1.0, np.where(u < 0.1 * s, 0.0, x))


def _resized_crop(img, s):
    w0, h0 = img.size
    area, ratio = 1 - 0.9 * s, (4 / 3) ** random.uniform(-s, s)
    w, h = min(w0, round(w0 * (area * ratio) ** 0.5)), min(h0, round(h0 * (area / ratio) ** 0.5))
    top, left = random.randint(0, h0 - h), random.randint(0, w0 - w)
    return TF1.resized_crop(img, top, left, h, w, [h0, w0])


def _sign():
    return random.choice((-1, 1))


def _affine(img, s):
    w, h = img.size
    return TF1.affine(img, angle=random.uniform(-20, 20) * s,
                      translate=[round(random.uniform(-0.1, 0.1) * s * w),
                                 round(random.uniform(-0.1, 0.1) * s * h)],
                      scale=2 ** (random.uniform(-0.25, 0.25) * s),
                      shear=[np.degrees(np.arctan(random.uniform(-0.2, 0.2) * s))])


def _translate(img, s):
    w, h = img.size
    angle = random.uniform(0, 2 * np.pi)
    return TF1.affine(img, angle=0, translate=[round(s * np.cos(angle) * w / 3),
                                               round(s * np.sin(angle) * h / 3)],
                      scale=1, shear=[0.0])


PIL_OPS = {  # name -> fn(PIL image, strength) with the ranges of helpers.augment
    "rotation": lambda img, s: TF1.rotate(img, 30 * s * _sign(), T.InterpolationMode.BILINEAR),
    "zoom": lambda img, s: TF1.affine(img, angle=0, translate=[0, 0], scale=1 + s,
                                      shear=[0.0], interpolation=T.InterpolationMode.BILINEAR),
    "horizontal_flip": lambda img, s: TF1.hflip(img),
    "vertical_flip": lambda img, s: TF1.vflip(img),
    "greyscale": lambda img, s: TF1.to_grayscale(img, 3),
    "inverse": lambda img, s: TF1.invert(img),
    "blur": lambda img, s: img.filter(ImageFilter.BoxBlur(round(4 * s))),
    "crop": _resized_crop,
    "affine": _affine,
    "gamma": lambda img, s: TF1.adjust_gamma(img, 2 ** (_sign() * s)),
    "translation": _translate,
    "elastic_transform": lambda img, s: T.ElasticTransform(alpha=90.0 * s, sigma=5.0)(img),
    "brightness": lambda img, s: TF1.adjust_brightness(img, 1 + s),
    "histogram_equalisation": lambda img, s: TF1.equalize(img),
    "salt_and_pepper": _noise(_salt_and_pepper),
    "gaussian_blur": lambda img, s: TF1.gaussian_blur(
        img, 2 * int(np.ceil(3 * 3.5 * s)) + 1, 3.5 * s) if s > 0 else img,
    "poisson_noise": _noise(lambda x, s: np.random.poisson(x * 30 / s**2) * s**2 / 30),
    "speckle_noise": _noise(lambda x, s: x * (1 + np.random.randn(*x.shape) * 0.4 * s)),
    "contrast": lambda img, s: TF1.adjust_contrast(img, 1 + 0.8 * _sign() * s),
}


class RandomStrength:
    """A v1-style transform: with probability ``p``, one named operation at a strength
    uniform in [lo, hi]."""

    def __init__(self, name, strength, p):
        self.op, self.strength, self.p = PIL_OPS[name], strength, p

    def __call__(self, img):
        if random.random() >= self.p:
            return img
        return self.op(img, random.uniform(*self.strength))


def course_views(recipe, n_views):
    pipeline = T.Compose([RandomStrength(*entry) for entry in parse_recipe(recipe)]
                         + [T.ToTensor()])

    def build(pil_image, seed):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)  # ElasticTransform draws from torch
        return torch.stack([pipeline(pil_image) for _ in range(n_views)])
    return build


# ------------------------------------------------------------------ timing


def test_image(size: int) -> torch.Tensor:
    from skimage import data

    pil = Image.fromarray(data.chelsea()).resize((size, size))
    return torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1).float() / 255


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="course")
    parser.add_argument("--views", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3,
                        help="view sets per round (the same seeds each round), so that the "
                             "luck of which views get the costly entries evens out")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image = test_image(args.size)
    pil_image = TF1.to_pil_image(image)
    ours, course = RecipeViews(args.recipe, args.views), course_views(args.recipe, args.views)
    seeds = range(args.seeds)
    times = timed_in_turn({
        "helpers.augment.RecipeViews": lambda: [ours(image, generator_for(0, seed))
                                                for seed in seeds],
        "per-view PIL loop (v1 Compose)": lambda: [course(pil_image, seed) for seed in seeds]},
        args.repeats)
    print(f"{args.views} views of one {args.size}x{args.size} RGB image, recipe "
          f"{args.recipe!r}, {torch.get_num_threads()} threads, {args.repeats} rounds of "
          f"{args.seeds} view sets; time per view set:")
    for name, values in times.items():
        print(f"  {name:32s} min {min(values) / args.seeds * 1000:8.1f} ms   median "
              f"{statistics.median(values) / args.seeds * 1000:8.1f} ms")
    best = [min(v) for v in times.values()]
    print(f"  speed-up (PIL loop / RecipeViews): {best[1] / best[0]:.1f}x (target >= 5x)")


if __name__ == "__main__":
    main()
