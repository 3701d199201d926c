"""The corruptions of ``helpers.data`` (imagecorruptions 1.1.2 with local versions of
gaussian_blur, glass_blur, fog, frost and impulse_noise) against (a) the package's own
glass_blur, for speed, and (b) ``corrupt_tta`` (PyPI), a rewrite of ImageNet-C for current
NumPy / scikit-image, for sameness of outputs. Run on demand:

    python benchmarks/corruptions.py [--images 4] [--size 224] [--repeats 3]

(a) times both glass_blurs in turn on the same photos (fastest of ``--repeats`` rounds per
severity, one thread) and checks they give the same pixels; the package's needs
``multichannel`` put back into skimage's gaussian, which is done here as in the tests.
(b) runs only where ``corrupt_tta`` is installed (``pip install corrupt-tta==0.1.7``; the
project does not depend on it): per corruption and severity, with the same per-image seeds,
the share of identical pixels, the mean absolute difference between the two (grey levels)
beside the difference between two seeds of ours (what randomness alone gives), the mean
change from the clean image of each, and milliseconds per image.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image
from timing import timed_in_turn

from helpers import data


def package_glass_blur():
    """imagecorruptions' glass_blur, made to run on scikit-image >= 0.19."""
    from skimage.filters import gaussian
    corruptions = data._imagecorruptions()
    corruptions.gaussian = lambda image, sigma, multichannel=False, **kw: gaussian(
        image, sigma=sigma, channel_axis=-1 if multichannel else None, **kw)
    return corruptions.glass_blur


def compare_glass_blur(images: np.ndarray, repeats: int) -> None:
    original = package_glass_blur()
    print("glass_blur, ms per image: helpers.data vs imagecorruptions' loop (same pixels?)")
    for severity in range(1, 6):
        def run(fn, severity=severity):
            outputs = []
            for index, image in enumerate(images):
                np.random.seed([0, index])
                outputs.append(np.uint8(fn(Image.fromarray(image), severity)))
            return np.stack(outputs)

        times = timed_in_turn({"ours": lambda: run(data.glass_blur),
                               "package": lambda: run(original)}, repeats)
        ours, theirs = (1000 * min(times[k]) / len(images) for k in ("ours", "package"))
        same = np.array_equal(run(data.glass_blur), run(original))
        print(f"  severity {severity}: {ours:6.1f} vs {theirs:7.1f}  ({theirs / ours:4.1f}x)  "
              f"same pixels: {same}")


def corrupt_tta_images(images: torch.Tensor, name: str, severity: int, seed: int = 0):
    """corrupt_tta per image, seeded from (seed, index) as ``data.corrupt_images`` does."""
    import corrupt_tta
    out = []
    for index, image in enumerate(images.permute(0, 2, 3, 1).numpy()):
        np.random.seed([seed, index])
        out.append(np.uint8(np.clip(corrupt_tta.corrupt(image, severity, name), 0, 255)))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


def compare_corrupt_tta(images: torch.Tensor) -> None:
    import time

    clean = images.float()
    print("\nhelpers.data vs corrupt_tta, same seeds; MAD in grey levels (0-255)")
    print(f"{'corruption':18s} sev  identical  MAD(ours,tta)  MAD(seed 0,1)  change ours/tta"
          "   ms ours/tta")
    for name in data.CORRUPTIONS + data.VALIDATION_CORRUPTIONS:
        for severity in range(1, 6):
            start = time.perf_counter()
            ours = data.corrupt_images(images, name, severity).float()
            middle = time.perf_counter()
            theirs = corrupt_tta_images(images, name, severity).float()
            end = time.perf_counter()
            reseeded = data.corrupt_images(images, name, severity, seed=1).float()
            ms = [1000 * t / len(images) for t in (middle - start, end - middle)]
            print(f"{name:18s} {severity}    {(ours == theirs).float().mean():.3f}   "
                  f"{(ours - theirs).abs().mean():10.2f}   {(ours - reseeded).abs().mean():10.2f}"
                  f"   {(ours - clean).abs().mean():7.1f}/{(theirs - clean).abs().mean():5.1f}"
                  f"   {ms[0]:6.1f}/{ms[1]:6.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    photos = data.take(data.sample_photos(args.size), args.images, seed=0)
    print(photos.description)
    compare_glass_blur(photos.images.permute(0, 2, 3, 1).numpy(), args.repeats)
    try:
        import corrupt_tta  # noqa: F401
    except ImportError:
        print("\ncorrupt_tta is not installed: pip install corrupt-tta==0.1.7 to compare it")
        return
    compare_corrupt_tta(photos.images)


if __name__ == "__main__":
    main()
