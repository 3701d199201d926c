"""SAR (Niu et al., *Towards Stable Test-Time Adaptation in Dynamic Wild World*, ICLR 2023; the
authors' code: mr-eggplant/SAR, ``sar.py``, ``sam.py`` (from davda54/sam) and ``main.py``).

Entropy minimisation of the normalisation layers' affine parameters, online, made stable by:

- reliable samples only (entropy below E_0 = 0.4 ln C, as EATA);
- a sharpness-aware (SAM) update: climb to w + e(w), e(w) = rho g / ||g|| with g the
  gradient of the reliable samples' mean entropy (rho = 0.05); there, filter the same samples
  again by E_0, take the gradient of their mean entropy, go back to w and let SGD step with
  that gradient;
- model recovery: an exponential moving average (0.9) of the second loss; when it falls
  below 0.2 (a sign of collapse onto few classes) the model goes back to the source weights.

As the authors' code runs (``as_authors=True``, the default), three details differ from what its
comments intend, and are kept so that results compare with the paper's:

- a recovery keeps SGD's momentum: their ``reset`` reloads the state saved at the start from
  the SAM wrapper, whose state holds no momentum (the buffers live in the wrapped SGD);
- a recovery keeps the loss average: ``reset`` sets it to None, then ``SAR.forward`` writes the
  value from before the recovery back, so recovery repeats while the average stays below 0.2;
- a batch with no reliable sample (at the first or the second filter) still lets SGD step: the
  mean of no entropies is NaN (kept out of the average), its gradients are zeros, and the step
  moves the weights by the momentum alone.

``as_authors=False`` gives what the comments intend: a recovery starts a fresh optimizer and
loss average, and a batch without a reliable sample leaves the weights alone.
"""

from __future__ import annotations

import torch
from torch import nn

from .eata import entropy_margin, paper_lr
from .episodic import NORM_LAYERS
from .losses import entropy
from .norm import OnlineNormAdapter
from .registry import register

LOSS_AVERAGE = 0.9  # momentum of the loss average (``update_ema``)
SAM_EPS = 1e-12  # davda54/sam's guard in rho / (||g|| + eps)


def top_layers(model: nn.Module) -> list[str]:
    """Names of the modules whose norm layers SAR leaves alone: the authors skip ResNets'
    ``layer4`` and ViT-Base's blocks 9-11 and final norm (``collect_params``). Generalised
    here as the last quarter (rounded down) of a transformer's ``blocks`` / ``resblocks``
    list and the norm after them in the same module (timm's ``norm``; CLIP's ``ln_post`` is
    not skipped, as the authors' name rule adapts it). Other models (the small CNN,
    EfficientNet-Lite0) adapt every norm layer: the authors give no rule for them."""
    skipped = []
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "layer4":
            skipped.append(name)
        elif leaf in ("blocks", "resblocks") and isinstance(module, (nn.Sequential,
                                                                     nn.ModuleList)):
            top = len(module) - len(module) // 4
            skipped += [f"{name}.{i}" for i in range(top, len(module))]
            owner = name.rpartition(".")[0]
            if isinstance(getattr(model.get_submodule(owner), "norm", None), NORM_LAYERS):
                skipped.append(f"{owner}.norm" if owner else "norm")
    return skipped


def sar_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The affine parameters of the norm layers outside ``top_layers`` (the authors' choice)."""
    skipped = top_layers(model)
    return [p for name, m in model.named_modules() if isinstance(m, NORM_LAYERS)
            and not any(name == s or name.startswith(s + ".") for s in skipped)
            for p in m.parameters(recurse=False)]


@register("sar")
class Sar(OnlineNormAdapter):
    """SAR with the paper's defaults: E_0 = 0.4 ln C, SAM radius rho = 0.05, recovery when the
    loss average falls below 0.2, SGD with momentum 0.9 at the authors' learning rate for the
    architecture (``eata.paper_lr``: 0.00025 for batch/group-norm CNNs, 0.001 for ViTs, at
    batch size 64), one two-step update per test batch, online. ``params="sar"`` (default) is
    the authors' choice of norm layers (``sar_parameters``); ``"norm"`` or ``"all"`` as for
    Tent. ``counters`` count reliable samples, steps taken with a loss (``steps``), steps on
    the momentum alone (``momentum_steps``, batches without a reliable sample) and recoveries.
    ``lr_scale`` multiplies the learning rate, as for EATA. ``as_authors`` (default True):
    recovery and batches without a reliable sample as the authors' code runs them (see the
    module's docstring); False for what its comments intend."""

    name = "sar"

    def __init__(self, model, e_margin: float | None = None, rho: float = 0.05,
                 reset_threshold: float = 0.2, lr: float | None = None, momentum: float = 0.9,
                 params: str = "sar", seed: int = 0, lr_scale: float = 1.0,
                 as_authors: bool = True):
        chosen = sar_parameters(model) if params == "sar" else params
        super().__init__(model, chosen, "sgd", lr_scale * (paper_lr(model) if lr is None
                                                            else lr), momentum, seed=seed)
        self.params_choice = params
        self.e_margin = entropy_margin(model, e_margin)
        self.rho, self.reset_threshold = rho, reset_threshold
        self.as_authors = as_authors
        self.loss_average = None

    @torch.no_grad()
    def climb(self) -> list[torch.Tensor]:
        """SAM's first step: w <- w + rho g / (||g|| + 1e-12), ||g|| the norm over all adapted
        parameters' gradients; returns the weights to come back to."""
        grads = [p.grad for p in self.params if p.grad is not None]
        scale = self.rho / (torch.stack([g.norm(p=2) for g in grads]).norm(p=2) + SAM_EPS)
        saved = [p.clone() for p in self.params]
        for p in self.params:
            if p.grad is not None:
                p.add_(p.grad * scale.to(p))
        return saved

    def adapt(self, images: torch.Tensor, logits: torch.Tensor) -> None:
        """One SAR update from the batch's first forward (``forward_and_adapt_sar``)."""
        entropies = entropy(logits)
        reliable = entropies < self.e_margin
        self.counters["reliable"] += int(reliable.sum())
        self.optimizer.zero_grad(set_to_none=True)
        if reliable.any():
            self.sam_step(images, entropies, reliable)
        elif self.as_authors:
            self.momentum_step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.loss_average is not None and self.loss_average < self.reset_threshold:
            self.recover()

    def sam_step(self, images: torch.Tensor, entropies: torch.Tensor,
                 reliable: torch.Tensor) -> None:
        """Climb to w + e(w), take the gradient of the samples still reliable there, come back
        to w and step with it; with none still reliable, step on the momentum (as_authors) or
        not at all."""
        entropies[reliable].mean().backward()
        saved = self.climb()
        self.optimizer.zero_grad(set_to_none=True)
        second = entropy(self.model(images))[reliable]
        second = second[second < self.e_margin]
        if len(second):
            loss = second.mean()
            value = float(loss.detach())
            self.loss_average = value if self.loss_average is None else (
                LOSS_AVERAGE * self.loss_average + (1 - LOSS_AVERAGE) * value)
            loss.backward()
        with torch.no_grad():
            for p, w in zip(self.params, saved):
                p.copy_(w)  # back to w, then step with the gradient taken at w + e(w)
        if len(second):
            self.optimizer.step()
            self.counters["steps"] += 1
        elif self.as_authors:
            self.momentum_step()

    def momentum_step(self) -> None:
        """SGD's step on zero gradients: w <- w - lr * momentum * buffer (nothing before the
        first real step), as the authors' code does with the NaN loss of no reliable sample."""
        for p in self.params:
            p.grad = torch.zeros_like(p)
        self.optimizer.step()
        self.counters["momentum_steps"] += 1

    def recover(self) -> None:
        """Back to the source weights (the authors' ``reset``). As the authors' code runs, SGD's
        momentum and the loss average carry over; otherwise both start afresh."""
        kept = dict(self.optimizer.state) if self.as_authors else {}
        self.restore()
        self.optimizer.state.update(kept)
        if not self.as_authors:
            self.loss_average = None
        self.counters["recoveries"] += 1

    def reset(self) -> None:
        super().reset()
        self.loss_average = None

    def config(self) -> dict:
        return {**super().config(), "params": self.params_choice
                if isinstance(self.params_choice, str) else "given", "rho": self.rho,
                "e_margin": self.e_margin, "reset_threshold": self.reset_threshold,
                "as_authors": self.as_authors}
