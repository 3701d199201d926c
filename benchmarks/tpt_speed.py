"""Time per test image of TPT: (a) ``helpers`` against (b) a reference that follows the
original implementation's loop (Shu et al.'s ``test_time_tuning`` and prediction), on the
same model, class names, views and image. Run on demand:

    python benchmarks/tpt_speed.py [--arch ViT-B/16] [--classes 200] [--images 2]

(a) helpers.tta.Tpt: the 64 inputs' image features computed once under no-grad (the
    original's among them), prompts trimmed to the longest real one.
(b) reference: the image encoder run on the 64 inputs for the step and again on the image
    for the prediction (under no-grad, as the original), full 77-token prompts, a fresh
    AdamW per image and the context copied back afterwards.

Both: 63 random-resized-crop views plus the image, the 6 lowest-entropy inputs kept, one
AdamW step at lr 5e-3, 4 context vectors from "a photo of a", ImageNet-A's 200 class
names (the paper's set). The script asserts equal predictions (and prints the largest logit
difference) and prints (a)/(b); target at most 0.4 with ViT-B/16 and 200 classes on CPU.
The CLIP architecture has random weights (no weights can be downloaded here): timing does
not depend on them.
"""

from __future__ import annotations

import argparse
import time

import torch
from memo_speed import ARCHS, random_clip, test_image

from helpers.data import imagenet_a_indices, imagenet_class_names
from helpers.tta import Tpt, confident_views, marginal_entropy
from helpers.tta.tpt import frozen
from helpers.views import CropViews, generator_for


def reference_tpt(tpt: Tpt, image: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    """The original loop, on the same prompt learner and preprocessing as ``tpt``."""
    learner, head, preprocess = tpt.head.prompt, tpt.head, tpt.model.preprocess
    saved = learner.ctx.detach().clone()
    optimizer = torch.optim.AdamW([learner.ctx], lr=tpt.lr, weight_decay=tpt.weight_decay)

    def model(pixels):  # ClipTestTimeTuning.inference: image features under no-grad
        with torch.no_grad():
            features = head.image_features(preprocess(pixels))
        return head.logit_scale * features @ learner(trim=False).t()

    with frozen(learner.clip):
        inputs = torch.cat([image[None], views])
        output = model(inputs)
        loss = marginal_entropy(output[confident_views(output.detach(), tpt.keep)])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            prediction = model(image[None])
    with torch.no_grad():
        learner.ctx.copy_(saved)
    learner.ctx.grad = None
    return prediction


def imagenet_a_names(count: int) -> list:
    """The first ``count`` of ImageNet-A's 200 class names (TPT's and Zero's benchmark set)."""
    names = imagenet_class_names()
    return [names[i] for i in imagenet_a_indices()][:count]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-B/16", choices=sorted(ARCHS))
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--images", type=int, default=2, help="timed images (after one warm-up)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    clip_model = random_clip(args.arch)
    names = imagenet_a_names(args.classes)
    views_fn = CropViews(63)
    tpt = Tpt(clip_model, names, views=views_fn)
    image = test_image()
    keys = list(range(args.images + 1))
    views = {k: views_fn(image, generator_for(tpt.seed, k)) for k in keys}

    times = {"helpers": [], "reference": []}
    outputs = {"helpers": [], "reference": []}
    for k in keys:
        for name, run in (("helpers", lambda k=k: tpt(image[None], keys=[k])),
                          ("reference", lambda k=k: reference_tpt(tpt, image, views[k]))):
            start = time.perf_counter()
            outputs[name].append(run())
            if k:  # the first image warms up
                times[name].append(time.perf_counter() - start)
    a, b = (torch.cat(outputs[n]) for n in ("helpers", "reference"))
    diff = (a - b).abs().max().item()
    assert torch.equal(a.argmax(-1), b.argmax(-1)), "helpers and reference predict differently"
    t_a = sum(times["helpers"]) / len(times["helpers"])
    t_b = sum(times["reference"]) / len(times["reference"])

    print(f"TPT, {args.arch} (random weights), {len(names)} classes, 63 views + the image, "
          f"224 px, {torch.get_num_threads()} threads, device cpu, {args.images} timed images")
    print(f"prompt length: {tpt.head.prompt.length} tokens (trimmed) vs "
          f"{clip_model.context_length}")
    print(f"(a) helpers Tpt          {t_a:7.2f} s/image")
    print(f"(b) original-style loop  {t_b:7.2f} s/image")
    print(f"same predictions; largest logit difference {diff:.2e}")
    print(f"(a)/(b) = {t_a / t_b:.3f}   (target <= 0.4)")


if __name__ == "__main__":
    main()
