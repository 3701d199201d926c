"""EATA (Niu et al., *Efficient Test-Time Model Adaptation without Forgetting*, ICML 2022; the
authors' code: mr-eggplant/EATA, ``eata.py`` and ``main.py``).

Tent's entropy minimisation of the normalisation layers' affine parameters, online, on a
chosen part of each test batch only:

- reliable samples: prediction entropy below E_0 = 0.4 ln C (C classes);
- non-redundant samples: among those, the ones whose probabilities have cosine similarity
  below epsilon = 0.05 (in absolute value) to a moving average of earlier selected samples'
  probabilities (momentum 0.9);
- each selected sample's entropy weighted by exp(E_0 - E), so confident samples count more;
- optionally, an EWC-style anti-forgetting term lambda * sum F (theta - theta_source)^2 with
  the diagonal Fisher information F of the adapted parameters estimated on source-domain
  images (lambda = 2000 on ImageNet). Without those images the method is the paper's ETA.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ..data import batches, content_digest, load_dataset, take
from .losses import entropy
from .norm import OnlineNormAdapter, batchnorm_train_mode, has_batchnorm
from .registry import register

MOVING_AVERAGE = 0.9  # momentum of the probability average (``update_model_probs``)
# The Fisher estimates made in this process, by what they depend on: the model's weights, the
# adapted parameters and the source images with the estimate's settings. A grid builds EATA
# once per data set on the same source model (16 times per model in notebook 01, each 0.4-0.7
# s on one thread for 500 images), and the estimate is the same each time. The most recent
# ``FISHERS_KEPT`` are kept.
FISHERS: OrderedDict = OrderedDict()
FISHERS_KEPT = 8


def entropy_margin(model: nn.Module, e_margin: float | None = None,
                   factor: float = 0.4) -> float:
    """E_0, the reliable-sample threshold of EATA and SAR: ``e_margin`` if given, else 0.4 ln C
    for the model's C classes (their ImageNet setting, ``math.log(1000) * 0.40`` in both
    ``main.py``)."""
    if e_margin is not None:
        return e_margin
    classes = len(getattr(model, "class_names", ()) or ())
    if not classes:
        raise ValueError("The model has no class_names to set E_0 = 0.4 ln C from: pass "
                         "e_margin.")
    return factor * math.log(classes)


def paper_lr(model: nn.Module) -> float:
    """The authors' SGD learning rate at batch size 64: 0.00025 for batch- or group-norm CNNs
    (EATA ``main.py``, ResNet-50), 0.001 for layer-norm transformers (SAR ``main.py``,
    ``(0.001 / 64) * bs`` for ViT-Base, used there for Tent, EATA and SAR alike)."""
    layer_norm = any(isinstance(m, nn.LayerNorm) for m in model.modules())
    return 0.001 if layer_norm and not has_batchnorm(model) else 0.00025


def sample_selection(logits: torch.Tensor, e_margin: float, moving_probs, d_margin: float):
    """EATA's two filters and weights for one batch (``forward_and_adapt_eata``).

    Returns ``(reliable, selected, weights, moving_probs)``: boolean masks over the batch
    (entropy below ``e_margin``; reliable and with |cos(p, moving_probs)| < ``d_margin``, or
    all reliable ones while there is no average yet), the weights exp(E_0 - E) of the selected
    samples, and the updated average of the selected samples' probabilities (the first
    average is that of the reliable samples; unchanged when none is selected)."""
    logits = logits.detach().float()
    entropies, probs = entropy(logits), logits.softmax(-1)
    reliable = entropies < e_margin
    selected = reliable.clone()
    if moving_probs is not None:
        similarity = F.cosine_similarity(moving_probs[None], probs, dim=1)
        selected &= similarity.abs() < d_margin
    chosen = probs[selected]
    if len(chosen):
        moving_probs = (chosen.mean(0) if moving_probs is None else
                        MOVING_AVERAGE * moving_probs + (1 - MOVING_AVERAGE) * chosen.mean(0))
    return reliable, selected, torch.exp(e_margin - entropies[selected]), moving_probs


def fisher_dataset(images, size: int, seed: int = 0):
    """The source-domain images of the Fisher estimate as a data set: a tensor N x 3 x H x W
    in [0, 1], a data set of (image, label) items, or a data set name with an optional split
    (``"fashion-mnist:train"``, for profiles and ``method_factories``, whose settings must be
    plain values). At most ``size`` of them: a random subset (``data.take``) of a data set,
    the first ``size`` of a tensor."""
    if isinstance(images, str):
        name, _, split = images.partition(":")
        images = load_dataset(name, split or "train")
    if isinstance(images, torch.Tensor):
        if images.dim() != 4:
            raise ValueError(f"fisher_images must be N x C x H x W images in [0, 1], got shape "
                             f"{tuple(images.shape)}")
        images = images[:size]
        return torch.utils.data.TensorDataset(images, torch.zeros(len(images), dtype=torch.long))
    if hasattr(images, "subset"):
        return take(images, size, seed)
    return torch.utils.data.Subset(images, range(min(size, len(images))))


def fisher_information(model: nn.Module, params, dataset, batch_size: int = 64):
    """The diagonal Fisher information of ``params`` as EATA's ``main.py`` estimates it: per
    batch of source images, the squared gradient of the cross-entropy against the model's
    own predictions (batch norm on batch statistics, as in adaptation), averaged over the
    batches. Running statistics change on the way; the caller restores them."""
    batchnorm_train_mode(model)
    device = params[0].device
    sums, count = [torch.zeros_like(p) for p in params], 0
    for _, images, _ in batches(dataset, batch_size):
        logits = model(images.to(device))
        loss = F.cross_entropy(logits, logits.argmax(1))
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for total, grad in zip(sums, grads):
            if grad is not None:
                total += grad.square()
        count += 1
    model.eval()
    if not count:
        raise ValueError("No source images for the Fisher estimate: pass some, or "
                         "fisher_images=None for ETA (no anti-forgetting term).")
    return [total / count for total in sums]


def source_key(images, size: int, seed: int):
    """What names the Fisher images: a data set name with the subset's size and seed, or a
    tensor's content; None for a data set object (not cached: it has no name to trust)."""
    if isinstance(images, str):
        return ("name", images, size, seed)
    if isinstance(images, torch.Tensor):
        return ("tensor", content_digest([images]), size)
    return None


def estimated_fisher(model: nn.Module, params, choice: str, images, size: int, seed: int,
                     batch_size: int):
    """``(fishers, count)``: the Fisher information of ``params`` (the model's ``choice`` of
    parameters) on at most ``size`` of the source ``images``, estimated once per model
    weights and source (``FISHERS``) and then reused, bit for bit the same. Copies: the
    caller may keep them."""
    source = source_key(images, size, seed)
    if source is None:  # a data set object: estimated anew each time
        data = fisher_dataset(images, size, seed)
        return fisher_information(model, params, data, batch_size), len(data)
    key = (content_digest(model.state_dict().values()), choice, source, batch_size)
    if key not in FISHERS:
        data = fisher_dataset(images, size, seed)
        FISHERS[key] = (fisher_information(model, params, data, batch_size), len(data))
        while len(FISHERS) > FISHERS_KEPT:
            FISHERS.popitem(last=False)
    FISHERS.move_to_end(key)
    fishers, count = FISHERS[key]
    return [f.clone() for f in fishers], count


@register("eata")
class Eata(OnlineNormAdapter):
    """EATA with the paper's ImageNet defaults: E_0 = 0.4 ln C, epsilon 0.05, Fisher weight
    lambda 2000 on 2,000 source images (``fisher_size``, in batches of 64), SGD with momentum
    0.9 at the authors' learning rate for the architecture (``paper_lr``), one step per test
    batch, online; the affine parameters of the normalisation layers (batch norm on batch
    statistics; layer norm for CLIP's ViT). ``lr_scale`` multiplies the learning rate (the
    paper's rate is set for 50,000 test images; notebook 01 asks what a few hundred need).

    ``fisher_images`` (see ``fisher_dataset``): source-domain images, such as clean training
    images of the model's task. None gives ETA, EATA without the anti-forgetting term; the
    config says which. ``counters`` count the reliable and the selected samples (the authors'
    ``num_samples_update_1`` and ``_2``) and the steps taken."""

    name = "eata"

    def __init__(self, model, fisher_images=None, fisher_size: int = 2000,
                 fisher_alpha: float = 2000.0, e_margin: float | None = None,
                 d_margin: float = 0.05, lr: float | None = None, momentum: float = 0.9,
                 params: str = "norm", fisher_batch_size: int = 64, seed: int = 0,
                 lr_scale: float = 1.0):
        super().__init__(model, params, "sgd", lr_scale * (paper_lr(model) if lr is None
                                                            else lr), momentum, seed=seed)
        self.e_margin = entropy_margin(model, e_margin)
        self.d_margin, self.fisher_alpha = d_margin, fisher_alpha
        self.fisher_source, self.fisher_size = fisher_images, fisher_size
        self.moving_probs = None
        self.fishers, self.anchors = None, [p.detach().clone() for p in self.params]
        if fisher_images is not None:
            self.fishers, self.fisher_count = estimated_fisher(
                model, self.params, params, fisher_images, fisher_size, seed, fisher_batch_size)
            self.restore()  # an estimate runs batch norm in train mode: running stats moved

    def anti_forgetting(self) -> torch.Tensor:
        """lambda * sum F (theta - theta_source)^2 over the adapted parameters."""
        return self.fisher_alpha * sum((f * (p - p0).square()).sum()
                                       for f, p, p0 in zip(self.fishers, self.params,
                                                           self.anchors))

    def adapt(self, images, logits):
        reliable, selected, weights, self.moving_probs = sample_selection(
            logits, self.e_margin, self.moving_probs, self.d_margin)
        self.counters["reliable"] += int(reliable.sum())
        self.counters["selected"] += int(selected.sum())
        if selected.any():  # the authors skip the step when no sample is selected
            loss = (entropy(logits[selected]) * weights).mean()
            if self.fishers is not None:
                loss = loss + self.anti_forgetting()
            self.counters["steps"] += self.update(loss)

    def reset(self) -> None:
        super().reset()
        self.moving_probs = None

    def config(self) -> dict:
        fisher = ({"fisher_images": self.fisher_source if isinstance(self.fisher_source, str)
                   else type(self.fisher_source).__name__, "fisher_count": self.fisher_count,
                   "fisher_alpha": self.fisher_alpha}
                  if self.fishers is not None else {"fisher_images": None})
        return {**super().config(), "variant": "EATA" if self.fishers is not None else
                "ETA (no Fisher regulariser: no source images given)",
                "e_margin": self.e_margin, "d_margin": self.d_margin, **fisher}
