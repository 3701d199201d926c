"""MEMO (Zhang, Levine and Finn, NeurIPS 2022): for each test image, minimise the entropy
of the model's marginal prediction over augmented views, predict, forget."""

from __future__ import annotations

import contextlib

import torch
from torch.func import functional_call

from ..views import make_views, views_per_image
from .base import Episodic
from .losses import marginal_entropy
from .norm import BatchNormPrior, has_batchnorm


class Memo(Episodic):
    """MEMO. Defaults: the paper's ImageNet setting (64 AugMix views, one SGD step at lr
    0.00025, all parameters); the CLIP notebook uses the course report's (50 views, one
    SGD step at lr 1e-5). The original image is predicted, never adapted on.

    ``bn_prior`` (models with batch norm: CNNs, CLIP's ResNets RN50 and RN101): normalise
    with source statistics mixed with the test input's at weight ``bn_prior : 1`` while
    adapting and predicting, as the paper does for its batch-norm models (N = 16); None keeps
    the source statistics (batch norm in eval mode: its affine weights adapt with the others,
    its running statistics never change).

    ``views``: a view generator or its plain description (``helpers.views.make_views``:
    ``"augmix"``, ``"crop"``, ``{"kind": "augmix", "severity": 1}`` ...), so that a
    profile can choose them; None is AugMix with its defaults.

    ``precision`` (``helpers.precision``): ``"auto"`` runs the views and the prediction under
    float16 autocast on CUDA, in float32 on a CPU; the entropy and the step are float32."""

    name = "memo"

    def __init__(self, model, views=None, n_views: int = 64, steps: int = 1,
                 optimizer: str = "sgd", lr: float = 0.00025, params: str = "all",
                 momentum: float = 0.9, weight_decay: float = 0.0, bn_prior: float | None = None,
                 seed: int = 0, precision: str = "auto"):
        # One SGD step with momentum equals one without: skip the momentum buffer's copy.
        super().__init__(model, params, optimizer, lr, momentum if steps > 1 else 0.0,
                         weight_decay, seed, precision)
        self.momentum = momentum
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        if bn_prior is not None and not has_batchnorm(model):
            raise ValueError("bn_prior needs batch-norm layers; this model has none: "
                             "leave bn_prior=None.")
        self.bn_prior = bn_prior
        self.views = make_views(views, n_views)
        self.steps = steps
        names = {id(p): name for name, p in model.named_parameters()}
        self.param_names = [names[id(p)] for p in self.params]

    @property
    def one_sgd_step(self) -> bool:
        """The paper's and the course's setting, which takes the fast path (not under float16
        loss scaling, which needs the optimizer's step)."""
        return (self.steps == 1 and self.optimizer_name == "sgd"
                and not self.precision.scaled)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The model's logits under the method's autocast (float32 out)."""
        with self.precision.autocast():
            return self.model(images).float()

    def adapt(self, image: torch.Tensor, generator: torch.Generator, views=None) -> None:
        """``steps`` updates on fresh views of ``image`` (the first ones may be given)."""
        for _ in range(self.steps):
            views = views if views is not None else self.views(image, generator)
            loss = marginal_entropy(self.logits(views))
            views = None
            if not self.update(loss):
                self.restore()  # predict with the source model
                return

    def predict_after_one_sgd_step(self, image: torch.Tensor, views: torch.Tensor):
        """One SGD step without writing the source weights: the adapted weights are computed
        beside them (the very operations of ``torch.optim.SGD``'s first step, so the result
        is the same bit for bit) and used for the prediction only. Nothing is restored
        afterwards, which saves a copy of every adapted tensor per image."""
        loss = marginal_entropy(self.logits(views))
        if not torch.isfinite(loss):
            self.counters["skipped_nonfinite"] += 1
            with torch.inference_mode():
                return self.logits(image[None])
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        adapted = {}
        with torch.no_grad():
            for name, param, grad in zip(self.param_names, self.params, grads):
                if grad is None:
                    continue
                if self.weight_decay:
                    grad = grad.add(param, alpha=self.weight_decay)
                adapted[name] = param.add(grad, alpha=-self.lr)
        with torch.inference_mode(), self.precision.autocast():
            return functional_call(self.model, adapted, (image[None],)).float()

    def _prior(self):
        return (BatchNormPrior(self.model, self.bn_prior) if self.bn_prior is not None
                else contextlib.nullcontext())

    @contextlib.contextmanager
    def adapted(self, image: torch.Tensor, key: int = 0):
        """The model adapted to one image as ``forward`` adapts it (batch-norm prior
        included), restored on exit: for looking inside it, e.g. its Grad-CAM."""
        self.model.eval()
        with self._prior():
            self.adapt(image, self.generator(key))
            try:
                yield self.model
            finally:
                self.restore()

    def forward(self, images, keys):
        self.model.eval()
        generators = [self.generator(k) for k in keys]
        out = []
        with self._prior():
            for image, gen, views in zip(images, generators,
                                         views_per_image(self.views, images, generators)):
                if self.one_sgd_step:
                    out.append(self.predict_after_one_sgd_step(image, views))
                    continue
                self.adapt(image, gen, views)
                with torch.inference_mode():
                    out.append(self.logits(image[None]))
                self.restore()
        return torch.cat(out)

    def config(self) -> dict:
        return {**super().config(), "views": repr(self.views), "steps": self.steps,
                "bn_prior": self.bn_prior}
