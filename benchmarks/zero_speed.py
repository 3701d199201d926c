"""Seconds per test image of Zero against TPT on the same views, model and classes. Run on
demand:

    python benchmarks/zero_speed.py [--arch ViT-B/16] [--classes 200] [--repeats 2]

(a) helpers.tta.Zero: the image and its 63 views through the image encoder once (no
    gradient), the 6 lowest-entropy inputs vote; the class text features are fixed
    ("a photo of a {}.", computed once when the classifier is built, outside the timing).
(b) helpers.tta.Tpt: the same 64 inputs' image features once, then one AdamW step on the
    prompt context through the text encoder (forward and backward over every class prompt,
    trimmed to the longest real prompt), then the prediction (text encoder forward again).
(c) TPT with both speed-ups off (``cache_features=False, trim=False``): the original loop,
    image features again for the step and the prediction, full 77-token prompts.

All three: random-resized-crop views from the same seed and image key (identical views),
ImageNet-A's 200 class names (the paper's set), CLIP's architecture with random weights (no
weights can be downloaded here: timing does not depend on them). Timed in turns, ``--repeats``
rounds after a warm-up, fastest of the rounds (medians printed too). Prints (b)/(a) and
(c)/(a): the issue's target is at least 5x; the paper reports about 10x against TPT on a GPU.

Where the time goes (printed, FLOPs counted by ``torch.utils.flop_counter``, ViT-B/16 and 200
ImageNet-A classes): Zero's cost is the image encoder over the 64 inputs, 2.16 TFLOPs. TPT
adds the text encoder over the 200 class prompts, forward, backward and forward again for the
prediction: 3.49 TFLOPs at CLIP's full 77 tokens (the original loop, which also runs the image
encoder once more for the prediction), 0.45 TFLOPs with this project's prompts trimmed to the
longest real one (14 tokens). So on the same views Zero can be at most ~1.2x faster than this
project's TPT and ~2.6x faster than the original loop by FLOPs: what Zero saves is the text
encoder, and both methods pay for the 64 image-encoder passes. The paper's ~10x was measured
on a GPU with fp16 autocast, which cannot be checked here.

The class count decides the ratio: the text encoder's FLOPs grow with the number of class
prompts, the image encoder's do not. The script also prints the FLOP ratios at 1000 classes
(ImageNet and ImageNet-V2, the sets of the paper's headline runs), scaled from the counts at
200: (b)/(a) ~ 2.0 and (c)/(a) ~ 9.1, the paper's ~10x against the original loop. So the
issue's "5x on ImageNet-A's 200 classes" asks of Zero more than the original TPT loop costs
(~2.6x by FLOPs, 3.17x measured), and twice what this project's TPT costs at 1000 classes.

Measured (2026-12-04, one thread, machine shared with other jobs, load 7-8 on 2 cores,
``--threads 1 --repeats 2``): (a) 49.5 s, (b) 61.8 s, (c) 156.9 s per image; (b)/(a) = 1.25,
(c)/(a) = 3.17. The issue's 5x is not reached on the same views in float32 against either.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from memo_speed import ARCHS, random_clip, test_image
from timing import timed_in_turn
from torch.utils.flop_counter import FlopCounterMode
from tpt_speed import imagenet_a_names

from helpers.models import clip_classifier
from helpers.tta import Tpt, Zero
from helpers.tta.episodic import frozen
from helpers.views import CropViews, generator_for


def flops(fn) -> float:
    """TFLOPs of one call of ``fn`` (matrix products and convolutions, forward and backward)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops() / 1e12


def text_step(tpt: Tpt, trim: bool):
    """The text side of one TPT step and prediction: prompts forward, backward, forward."""
    def run():
        with frozen(tpt.head.prompt.clip):
            tpt.head.prompt(trim).sum().backward()
            with torch.no_grad():
                tpt.head.prompt(trim)
        tpt.head.prompt.ctx.grad = None
    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-B/16", choices=sorted(ARCHS))
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds after a warm-up")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    clip_model = random_clip(args.arch)
    names = imagenet_a_names(args.classes)
    views = CropViews(63)
    zero = Zero(clip_classifier(clip_model, names, cache=False), views=views)
    tpt = Tpt(clip_model, names, views=views)
    original = Tpt(clip_model, names, views=views, cache_features=False, trim=False)
    image = test_image()[None]
    assert torch.equal(views(image[0], zero.generator(0)), views(image[0], tpt.generator(0)))

    times = timed_in_turn({"zero": lambda: zero(image, keys=[0]),
                           "tpt": lambda: tpt(image, keys=[0]),
                           "original": lambda: original(image, keys=[0])}, args.repeats)
    best = {k: min(v) for k, v in times.items()}
    median = {k: statistics.median(v) for k, v in times.items()}

    batch = torch.cat([image, views(image[0], generator_for(0, 0))])
    with torch.no_grad():
        image_tf = flops(lambda: zero.model(batch))
    text_trim, text_full = flops(text_step(tpt, True)), flops(text_step(tpt, False))

    print(f"Zero vs TPT, {args.arch} (random weights), {len(names)} classes, 63 views + the "
          f"image, 224 px, {torch.get_num_threads()} threads, device cpu, fastest of "
          f"{args.repeats} rounds")
    print(f"(a) Zero                     {best['zero']:7.2f} s/image (median "
          f"{median['zero']:.2f})")
    print(f"(b) TPT, this project's      {best['tpt']:7.2f} s/image (median {median['tpt']:.2f})")
    print(f"(c) TPT, original loop       {best['original']:7.2f} s/image (median "
          f"{median['original']:.2f})")
    print(f"(b)/(a) = {best['tpt'] / best['zero']:.2f}   (c)/(a) = "
          f"{best['original'] / best['zero']:.2f}   (target >= 5)")
    print(f"TFLOPs: image encoder over the 64 inputs {image_tf:.2f}; text encoder forward + "
          f"backward + forward over {len(names)} prompts: {text_trim:.2f} trimmed to "
          f"{tpt.head.prompt.length} tokens, {text_full:.2f} at {clip_model.context_length}")
    print(f"FLOP ratios: (b)/(a) ~ {(image_tf + text_trim) / image_tf:.2f}, (c)/(a) ~ "
          f"{(image_tf * (1 + 1 / 64) + text_full) / image_tf:.2f}")
    for classes in (200, 1000):
        ratios = flop_ratios(image_tf, text_trim, text_full, len(names), classes)
        print(f"at {classes} classes: {ratios}")


def flop_ratios(image_tf: float, text_trim: float, text_full: float, counted: int,
                classes: int) -> str:
    """(b)/(a) and (c)/(a) by FLOPs for ``classes`` class prompts, from the counts made with
    ``counted`` prompts: the text encoder's FLOPs are proportional to the number of prompts
    (each prompt is its own sequence), the image encoder's do not depend on it. 1000 classes
    is ImageNet and ImageNet-V2, where the paper reports its speed-up."""
    scale = classes / counted
    trimmed = (image_tf + scale * text_trim) / image_tf
    original = (image_tf * (1 + 1 / 64) + scale * text_full) / image_tf
    return f"(b)/(a) ~ {trimmed:.2f}, (c)/(a) ~ {original:.2f}"


if __name__ == "__main__":
    main()
