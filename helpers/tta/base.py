"""The interface every method shares: ``logits = adapter(images)``, ``adapter.reset()``."""

from __future__ import annotations

import math
from collections import Counter

import torch
from torch import nn

from ..precision import Precision, model_device
from ..views import generator_for
from .episodic import Snapshot, norm_buffers, select_parameters
from .registry import register

# Floats of per-image tensors (inputs, their rough activations, adapted weights) that one
# batched pass over many test images may hold: 512 MB. ``images_per_pass`` cuts by it.
BATCH_BUDGET = 2**27
ACTIVATIONS = 64  # a rough count of activation floats per input float, for the budget


def images_per_pass(n_images: int, floats_per_image: int, chunk: int | None = None,
                    budget: int = BATCH_BUDGET) -> int:
    """How many test images one batched pass of a per-image method takes: ``chunk`` if given
    (1: one image at a time, the original loop), else as many as ``budget`` floats hold at
    ``floats_per_image`` each, at least one and at most ``n_images``. Results do not depend on
    it (each image's randomness is keyed by the image): only time and memory do."""
    if chunk is not None:
        if chunk < 1:
            raise ValueError(f"chunk (images per batched pass) must be at least 1 or None "
                             f"(by memory), got {chunk}")
        return max(1, min(chunk, n_images))
    return max(1, min(n_images, budget // max(1, floats_per_image)))


def make_optimizer(params, name: str = "sgd", lr: float = 1e-3, momentum: float = 0.9,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """SGD (with momentum) or AdamW, the two optimizers of the papers."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name in ("adamw", "adam"):
        cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
        return cls(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'sgd', 'adam' or 'adamw', not {name!r}")


ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch's defaults, which make_optimizer keeps


@torch.no_grad()
def functional_step(name: str, params: dict, grads: dict, state: dict, step: int, lr: float,
                    momentum: float = 0.0, weight_decay: float = 0.0) -> dict:
    """One step of ``make_optimizer(name, ...)`` written out on tensors, for many test
    images at once: ``params`` may be shared (the source weights, on the first step) or carry
    a leading image dimension, ``grads`` carry it; ``state`` (empty before the first step,
    ``step`` counting from 1) is updated in place. The operations are those of torch's
    single-tensor SGD, Adam and AdamW, so each image's weights are the optimizer's."""
    new = {}
    for key, grad in grads.items():
        param, slot = params[key], state.setdefault(key, {})
        if name == "sgd":
            d_p = grad.add(param, alpha=weight_decay) if weight_decay else grad
            if momentum:
                slot["buf"] = (d_p.clone() if step == 1
                               else slot["buf"].mul_(momentum).add_(d_p))
                d_p = slot["buf"]
            new[key] = param.add(d_p, alpha=-lr)
            continue
        if name == "adamw":
            param = param.mul(1 - lr * weight_decay)
        elif weight_decay:
            grad = grad.add(param, alpha=weight_decay)
        beta1, beta2 = ADAM_BETAS
        if step == 1:
            slot["avg"], slot["sq"] = torch.zeros_like(grad), torch.zeros_like(grad)
        slot["avg"].lerp_(grad, 1 - beta1)
        slot["sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (slot["sq"].sqrt() / math.sqrt(1 - beta2 ** step)).add_(ADAM_EPS)
        new[key] = param.addcdiv(slot["avg"], denom, value=-lr / (1 - beta1 ** step))
    return new


class Adapter:
    """A test-time method around a classifier (images in [0, 1] -> logits).

    ``counters`` records events the results should show, such as updates skipped for a
    non-finite loss. ``keys`` name the test images (their dataset indices) so that random
    views depend on the image, not on the order of the evaluation.
    """

    name = "adapter"
    confidence = "the highest softmax probability of the logits it predicts the image with"
    # What the method needs and does (``registry.MethodInfo``), declared by each method.
    needs_text = needs_batchnorm = shardable = online = False

    def __init__(self, model: nn.Module, seed: int = 0):
        self.model = model
        self.seed = seed
        self.counters: Counter = Counter()
        self._seen = 0

    def __call__(self, images: torch.Tensor, keys=None) -> torch.Tensor:
        if keys is None:
            keys = range(self._seen, self._seen + len(images))
        self._seen += len(images)
        return self.forward(images, [int(k) for k in keys])

    def forward(self, images: torch.Tensor, keys: list[int]) -> torch.Tensor:
        raise NotImplementedError

    def reset(self) -> None:
        """Back to the source model, exactly."""
        self.counters.clear()
        self._seen = 0

    def generator(self, key: int) -> torch.Generator:
        return generator_for(self.seed, key)

    def config(self) -> dict:
        """The settings that made the results, for the results file."""
        return {"method": self.name}


@register("source")
class Source(Adapter):
    """No adaptation: the pretrained model as it is."""

    name = "source"
    shardable = True

    def forward(self, images, keys):
        self.model.eval()
        with torch.inference_mode():
            return self.model(images)


class Episodic(Adapter):
    """A method that changes some parameters (and perhaps batch-norm buffers) with an
    optimizer, and can go back to the source state at any time. ``params`` names a kind of
    parameters of the model (``all``, ``norm``) or lists the tensors to adapt (TPT's
    prompt context, which is not a weight of the classifier's image side). ``precision``
    (``helpers.precision``) is the autocast of the method's forward passes and the loss
    scaling of its steps; the methods that offer it default to ``"auto"``."""

    def __init__(self, model, params: str = "all", optimizer: str = "sgd", lr: float = 1e-3,
                 momentum: float = 0.9, weight_decay: float = 0.0, seed: int = 0,
                 precision: str = "fp32"):
        super().__init__(model, seed)
        self.precision = Precision(precision, model_device(model))
        self.params_choice, self.optimizer_name, self.lr = params, optimizer, lr
        self.momentum, self.weight_decay = momentum, weight_decay
        self.params = (select_parameters(model, params) if isinstance(params, str)
                       else list(params))
        if not self.params:
            raise ValueError(f"The model has no parameters of kind {params!r} to adapt; "
                             "choose params='all'.")
        self.optimizer = make_optimizer(self.params, optimizer, lr, momentum, weight_decay)
        self.snapshot = Snapshot(self.params, norm_buffers(model), self.optimizer)

    def restore(self) -> None:
        self.snapshot.restore()

    def reset(self) -> None:
        super().reset()
        self.restore()

    def update(self, loss: torch.Tensor) -> bool:
        """One optimizer step; a non-finite loss (or, under float16 loss scaling, a gradient
        that overflowed) skips it, counts it, returns False."""
        if not torch.isfinite(loss):
            self.counters["skipped_nonfinite"] += 1
            return False
        self.optimizer.zero_grad(set_to_none=True)
        if not self.precision.step(loss, self.optimizer):
            self.counters["skipped_overflow"] += 1
            return False
        return True

    def config(self) -> dict:
        return {"method": self.name, "params": self.params_choice,
                "optimizer": self.optimizer_name, "lr": self.lr, "momentum": self.momentum,
                "weight_decay": self.weight_decay, "seed": self.seed,
                "precision": self.precision.describe()}
