"""Episodic adaptation without copying the model: keep copies of only the tensors a
method changes, and write them back in place after each test image or batch."""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def norm_buffers(model: nn.Module) -> list[torch.Tensor]:
    """Running statistics of batch-norm layers: the buffers a forward pass in train mode
    changes."""
    return [b for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for b in m.buffers()]


def select_parameters(model: nn.Module, which: str = "all") -> list[nn.Parameter]:
    """The parameters a method adapts: ``all`` of them, or the affine weights of the
    normalisation layers only (``norm``, Tent's choice)."""
    if which == "all":
        return [p for p in model.parameters() if p.requires_grad]
    if which == "norm":
        return [p for m in model.modules() if isinstance(m, NORM_LAYERS)
                for p in m.parameters(recurse=False)]
    raise ValueError(f"which parameters to adapt: 'all' or 'norm', not {which!r}")


class Snapshot:
    """The adapted parameters, the batch-norm buffers and the optimizer state as they were
    at creation. ``restore`` brings them back bit for bit, in place: about 5x cheaper than
    a deep copy of the model per image, and references to the parameters stay valid."""

    def __init__(self, params, buffers=(), optimizer: torch.optim.Optimizer | None = None):
        self.params = list(params)
        self.saved = [t.detach().clone() for t in self.params + list(buffers)]
        self.tensors = self.params + list(buffers)
        self.optimizer = optimizer
        self.optimizer_state = copy.deepcopy(optimizer.state_dict()) if optimizer else None

    @torch.no_grad()
    def restore(self) -> None:
        for tensor, saved in zip(self.tensors, self.saved):
            tensor.copy_(saved)
        for p in self.params:
            p.grad = None
        if self.optimizer is not None:
            self.optimizer.state.clear()
            self.optimizer.load_state_dict(copy.deepcopy(self.optimizer_state))


@contextlib.contextmanager
def frozen(module: nn.Module, keep=()):
    """Within ``with``: no gradient for ``module``'s parameters except those in ``keep``
    (CLIP's encoders while TPT tunes the prompt; all but the norm layers' affine weights
    while EATA and SAR adapt), restored afterwards, since another method may adapt the same
    model. Backward passes then compute no weight gradients that nothing uses."""
    kept = {id(p) for p in keep}
    flags = [(p, p.requires_grad) for p in module.parameters() if id(p) not in kept]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
