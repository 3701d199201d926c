"""MEMO (Zhang, Levine and Finn, NeurIPS 2022): for each test image, minimise the entropy
of the model's marginal prediction over augmented views, predict, forget."""

from __future__ import annotations

import contextlib

import torch
from torch.func import functional_call, grad_and_value, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..views import make_views, views_per_image
from .base import ACTIVATIONS, Episodic, functional_step, images_per_pass
from .losses import marginal_entropy
from .norm import BatchNormPrior, has_batchnorm
from .registry import register

# On a CPU, MEMO batches images of at most 64 x 64 pixels (the stand-ins' 28 x 28): above,
# a convolution with per-image weights (grouped) costs more than the loop's per-call overhead.
CPU_PIXELS = 64 * 64


@register("memo")
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
    float16 autocast on CUDA, in float32 on a CPU; the entropy and the step are float32.

    Many test images at once (``forward``): each keeps its own episodic update from the source
    weights, computed for ``chunk`` images in one pass with ``torch.func`` (per-image
    gradients by ``vmap``, per-image weights by ``functional_call``; the optimizer's step
    written out, ``base.functional_step``); ``chunk`` None takes as many as
    ``base.BATCH_BUDGET`` holds, 1 the loop over images. In float32 only: under autocast
    (``amp``, ``bf16``, ``fp16``) the loop (see ``images_per_pass``)."""

    name = "memo"
    shardable = True  # each image from the source weights, its views seeded by its index

    def __init__(self, model, views=None, n_views: int = 64, steps: int = 1,
                 optimizer: str = "sgd", lr: float = 0.00025, params: str = "all",
                 momentum: float = 0.9, weight_decay: float = 0.0, bn_prior: float | None = None,
                 seed: int = 0, precision: str = "auto", chunk: int | None = None):
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
        images_per_pass(1, 1, chunk)  # a bad chunk fails here, not at the first batch
        self.chunk = chunk
        self._used: list[str] | None = None  # the adapted parameters the loss reaches

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
        chunk = self.images_per_pass(images)
        with self._prior():
            views = views_per_image(self.views, images, generators)
            if chunk == 1:
                return torch.cat([self.predict_one(image, gen, next(views))
                                  for image, gen in zip(images, generators)])
            out = []
            for start in range(0, len(images), chunk):
                part = slice(start, start + chunk)
                stacked = torch.stack([next(views) for _ in range(len(images[part]))])
                out.append(self.predict_many(images[part], stacked, generators[part]))
        return torch.cat(out)

    def images_per_pass(self, images: torch.Tensor) -> int:
        """Test images per batched pass (``chunk``, or by ``base.BATCH_BUDGET``: the views'
        rough activations and per image a gradient and adapted weights, two more tensors
        for Adam's moments); 1 (the loop) under autocast (torch.func's backward then meets
        mixed dtypes, torch 2.14) and by default on a CPU for images larger than
        ``CPU_PIXELS``, where per-image weights cost more than the loop's calls
        (``benchmarks/batched_speed.py``: EfficientNet-Lite0, 224 px)."""
        if self.precision.dtype is not None or len(images) == 1:
            return 1
        if (self.chunk is None and self.precision.device_type == "cpu"
                and images[0][0].numel() > CPU_PIXELS):
            return 1
        weights = sum(p.numel() for p in self.params) * (2 if self.optimizer_name == "sgd"
                                                         else 4)
        n_views = getattr(self.views, "n_views", 64)
        return images_per_pass(len(images), n_views * images[0].numel() * ACTIVATIONS + weights,
                               self.chunk)

    def predict_one(self, image: torch.Tensor, generator: torch.Generator, views: torch.Tensor):
        """One test image's logits (1 x classes): adapted from the source weights, then
        restored."""
        if self.one_sgd_step:
            return self.predict_after_one_sgd_step(image, views)
        self.adapt(image, generator, views)
        with torch.inference_mode():
            logits = self.logits(image[None])
        self.restore()
        return logits

    def used_parameters(self, views: torch.Tensor) -> list[str]:
        """Names of the adapted parameters the loss depends on (found once, from two views):
        the optimizer skips the others (no gradient, no weight decay), and so does the
        batched step."""
        if self._used is None:
            grads = torch.autograd.grad(marginal_entropy(self.logits(views[:2])), self.params,
                                        allow_unused=True)
            self._used = [n for n, g in zip(self.param_names, grads) if g is not None]
        return self._used

    def _loss(self, params: dict, views: torch.Tensor) -> torch.Tensor:
        with self.precision.autocast():
            return marginal_entropy(functional_call(self.model, params, (views,)).float())

    def _predict(self, params: dict, image: torch.Tensor) -> torch.Tensor:
        with self.precision.autocast():
            return functional_call(self.model, params, (image[None],)).float()[0]

    def predict_many(self, images: torch.Tensor, views: torch.Tensor, generators) -> torch.Tensor:
        """``predict_one`` for many images (N x C x H x W, their first views N x V x C x H x
        W) in one pass per step: per-image gradients (``vmap``) from the shared source
        weights, then from each image's own; the same optimizer step on each; the prediction
        with each image's weights. An image whose loss is not finite at some step is counted
        and predicted by the source model, as ``update`` and ``restore`` do."""
        names = self.used_parameters(views[0])
        weights = dict(zip(self.param_names, self.params))
        params = {name: weights[name].detach() for name in names}
        state, ok = {}, torch.ones(len(images), dtype=torch.bool)
        for step in range(1, self.steps + 1):
            if step > 1:  # fresh views from each image's generator, as ``adapt`` draws them
                views = torch.stack([self.views(im, g) for im, g in zip(images, generators)])
            shared = None if step == 1 else 0
            with sdpa_kernel(SDPBackend.MATH):  # the attention kernel vmap has a rule for
                grads, losses = vmap(grad_and_value(self._loss), in_dims=(shared, 0))(params,
                                                                                     views)
            finite = torch.isfinite(losses).cpu()
            self.counters["skipped_nonfinite"] += int((ok & ~finite).sum())
            ok &= finite
            params = functional_step(self.optimizer_name, params, grads, state, step, self.lr,
                                     self.momentum if self.steps > 1 else 0.0,
                                     self.weight_decay)
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
            logits = vmap(self._predict)(params, images)
            for i in (~ok).nonzero().flatten().tolist():  # the source model's prediction
                logits[i] = self.logits(images[i][None])[0]
        return logits

    def config(self) -> dict:
        return {**super().config(), "views": repr(self.views), "steps": self.steps,
                "bn_prior": self.bn_prior}
