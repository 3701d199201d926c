"""Methods that use the test batch's statistics: NormAdapt (Schneider et al., 2020) and
Tent (Wang et al., ICLR 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Adapter, Episodic
from .episodic import Snapshot, frozen, norm_buffers
from .losses import entropy
from .registry import register


def batchnorm_train_mode(model: nn.Module) -> None:
    """Eval mode everywhere except batch norm, which then normalises with batch statistics
    (Tent, EATA and SAR adapt this way; dropout and the like stay off)."""
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train()


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@register("norm")
class NormAdapt(Adapter):
    """Normalise with the statistics of each test batch instead of the training ones;
    nothing is learned and the source running statistics are kept."""

    name = "norm"
    # Each batch's own statistics, the source ones restored after it: a batch alone decides.
    needs_batchnorm = shardable = online = True

    def __init__(self, model, seed: int = 0):
        if not has_batchnorm(model):
            raise ValueError("NormAdapt needs batch-norm layers; this model has none "
                             "(CLIP's ViT uses layer norm): use Tent or MEMO.")
        super().__init__(model, seed)
        self.snapshot = Snapshot([], norm_buffers(model))

    def forward(self, images, keys):
        batchnorm_train_mode(self.model)
        with torch.inference_mode():
            logits = self.model(images)
        self.snapshot.restore()
        self.model.eval()
        return logits

    def reset(self):
        super().reset()
        self.snapshot.restore()


@register("tent")
class Tent(Episodic):
    """Tent: minimise the mean prediction entropy of each test batch by updating the affine
    parameters of the normalisation layers (batch norm in train mode uses batch
    statistics). ``episodic=True`` resets after every batch; otherwise it adapts online.
    Defaults as in the paper: Adam, lr 1e-3, one step per batch."""

    name = "tent"
    online = True

    def __init__(self, model, episodic: bool = False, steps: int = 1, optimizer: str = "adam",
                 lr: float = 1e-3, params: str = "norm", seed: int = 0):
        super().__init__(model, params, optimizer, lr, seed=seed)
        self.episodic, self.steps = episodic, steps

    def forward(self, images, keys):
        batchnorm_train_mode(self.model)
        for _ in range(self.steps):
            logits = self.model(images)
            if not self.update(entropy(logits).mean()):
                break  # counted; the prediction is the unchanged model's
        self.model.eval()
        if self.episodic:
            self.restore()
        return logits.detach()

    def config(self):
        return {**super().config(), "episodic": self.episodic, "steps": self.steps}


def batch_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of N x C x ... over all but the channels, in
    two passes (mean, then mean squared deviation: as stable as ``torch.var_mean``, whose
    one-pass reduction over these dimensions is 10-15x slower on a CPU thread and was a
    quarter of MEMO's time on EfficientNet-Lite0)."""
    dims = [0, *range(2, x.dim())]
    mean = x.mean(dims, keepdim=True)
    deviation = x - mean
    return mean.flatten(), deviation.mul_(deviation).mean(dims)  # square_ has no vmap rule


class BatchNormPrior:
    """Within ``with``: every batch-norm layer normalises with a mix of its source
    statistics and those of the current input, weighted ``prior : 1`` (MEMO's single-point
    BN adaptation, Schneider et al.'s prior N; the MEMO paper uses N = 16 for CNNs). As in
    MEMO's code, the input's statistics are constants for the gradient, which lets one
    fused batch-norm kernel do the normalisation (half the time of writing it out);
    running statistics stay."""

    def __init__(self, model: nn.Module, prior: float):
        self.layers = [m for m in model.modules()
                       if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.weight = prior / (prior + 1)

    def _forward(self, layer, x):
        with torch.no_grad():
            mean, var = batch_moments(x)
            mean = self.weight * layer.running_mean + (1 - self.weight) * mean
            var = self.weight * layer.running_var + (1 - self.weight) * var
        return F.batch_norm(x, mean, var, layer.weight, layer.bias, False, 0.0, layer.eps)

    def __enter__(self):
        for layer in self.layers:
            layer.forward = lambda x, layer=layer: self._forward(layer, x)
        return self

    def __exit__(self, *exc):
        for layer in self.layers:
            del layer.forward


class OnlineNormAdapter(Episodic):
    """What EATA and SAR share with Tent: per test batch, batch norm on batch statistics, one
    forward whose logits are the prediction (made before this batch's update, as in the
    authors' code), then ``adapt``; gradients only for the adapted parameters."""

    online = True

    def forward(self, images, keys):
        batchnorm_train_mode(self.model)
        with frozen(self.model, keep=self.params):  # no gradients for the other weights
            logits = self.model(images)
            self.adapt(images, logits)
        self.model.eval()
        return logits.detach()

    def adapt(self, images: torch.Tensor, logits: torch.Tensor) -> None:
        raise NotImplementedError
