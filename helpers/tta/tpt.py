"""TPT (Shu et al., *Test-Time Prompt Tuning for Zero-Shot Generalization in Vision-Language
Models*, NeurIPS 2022): for each test image, tune CLIP's prompt context so that the most
confident of its augmented views agree, predict the image with the tuned prompt, forget.

Two exact speed-ups over the original loop, each switchable for the tests that prove them:
the image encoder is frozen, so the views' features are computed once per image (the
original's among them) instead of again for the step and the prediction (``cache_features``);
the text encoder is causal and pools at the end-of-text token, so the tokens after a
prompt's end cannot change its feature and are not computed: prompts run in groups of similar
length, each cut to its longest prompt, never longer than the task's longest (``trim``).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..models import CLIP_MEAN, CLIP_STD, Classifier, Preprocess
from ..views import make_views, views_per_image
from .base import ACTIVATIONS, Episodic, Source, images_per_pass, make_optimizer
from .episodic import frozen
from .losses import entropy, marginal_entropy
from .registry import register

CTX_INIT = "a photo of a"
TRIM_GROUPS = 4  # prompt-length groups of the trimmed text encoder


def _tokenize(clip_model, texts: list[str], what: str) -> torch.Tensor:
    """Tokens of ``texts``; text beyond the model's context length is an error that names it."""
    import clip

    context = clip_model.context_length
    lengths = [len(clip.clip._tokenizer.encode(t)) + 2 for t in texts]  # + start and end
    too_long = [t for t, n in zip(texts, lengths) if n > context]
    if too_long:
        raise ValueError(
            f"{len(too_long)} {what} tokenize beyond the context length of {context} tokens "
            f"(e.g. {too_long[0]!r}, {max(lengths)} tokens): shorten those class names or "
            f"use fewer context tokens (n_ctx).")
    return clip.tokenize(texts, context_length=context)


class PromptLearner(nn.Module):
    """CoOp-style prompts: ``[start] ctx_1 .. ctx_n class-name tokens . [end]`` with learnable
    context vectors in token-embedding space, encoded by CLIP's frozen text transformer.

    ``ctx_init`` sets the context from the embedding of a phrase (its token count is the
    context length); None draws it from N(0, 0.02) as CoOp does. ``class_specific`` gives
    each class its own context. ``ctx_file`` loads a learned context (a tensor, or CoOp's
    checkpoint dict with a ``ctx`` entry)."""

    def __init__(self, clip_model, class_names, n_ctx: int = 4, ctx_init: str | None = CTX_INIT,
                 class_specific: bool = False, ctx_file=None, seed: int = 0):
        super().__init__()
        class_names = list(class_names or [])
        if not class_names:
            raise ValueError("The class list is empty: pass the task's class names "
                             "(e.g. class_names=dataset.class_names).")
        if ctx_init is not None:
            n_init = len(_tokenize(clip_model, [ctx_init], "context phrase")[0].nonzero()) - 2
            if n_init != n_ctx:
                raise ValueError(f"ctx_init {ctx_init!r} is {n_init} tokens but n_ctx={n_ctx}: "
                                 f"set n_ctx={n_init} or choose another phrase.")
        prefix = ctx_init if ctx_init is not None else " ".join(["X"] * n_ctx)
        tokens = _tokenize(clip_model, [f"{prefix} {name}." for name in class_names],
                           "class prompts").to(clip_model.token_embedding.weight.device)
        with torch.no_grad():
            embedding = clip_model.token_embedding(tokens).float()
        if ctx_init is not None:
            ctx = embedding[0, 1:1 + n_ctx].clone()
        else:
            gen = torch.Generator().manual_seed(seed)
            ctx = torch.randn(n_ctx, embedding.shape[-1], generator=gen).mul_(0.02).to(embedding)
        if class_specific:
            ctx = ctx.expand(len(class_names), -1, -1).clone()
        self.clip = clip_model  # the text side is used, never changed
        self.class_names, self.n_ctx, self.class_specific = class_names, n_ctx, class_specific
        self.ctx_init = ctx_init
        self.ctx = nn.Parameter(ctx)
        self.register_buffer("prefix", embedding[:, :1], persistent=False)
        self.register_buffer("suffix", embedding[:, 1 + n_ctx:], persistent=False)
        self.register_buffer("eot", tokens.argmax(-1), persistent=False)
        self.length = int(self.eot.max()) + 1  # the longest real prompt, end token included
        if ctx_file is not None:
            self.load_context(ctx_file)

    def load_context(self, file) -> None:
        """A learned context from ``file``; its shape must be this learner's."""
        saved = torch.load(Path(file), map_location="cpu", weights_only=True)
        if isinstance(saved, dict):
            saved = saved.get("state_dict", saved)
            if "ctx" not in saved:
                raise ValueError(f"{file} holds no 'ctx' entry (keys: {sorted(saved)[:5]}); "
                                 "save the context tensor itself, or CoOp's checkpoint.")
            saved = saved["ctx"]
        if tuple(saved.shape) != tuple(self.ctx.shape):
            raise ValueError(
                f"The learned context in {file} has shape {tuple(saved.shape)}, this prompt "
                f"learner needs {tuple(self.ctx.shape)} (n_ctx={self.n_ctx}, class_specific="
                f"{self.class_specific}, {len(self.class_names)} classes, width "
                f"{self.ctx.shape[-1]}): build the learner with the settings the context was "
                "learned with, or learn it for this model and task.")
        with torch.no_grad():
            self.ctx.copy_(saved.to(self.ctx))

    def save_context(self, file) -> Path:
        file = Path(file)
        file.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.ctx.detach().cpu(), file)
        return file

    def _encode(self, x: torch.Tensor, eot: torch.Tensor, length: int) -> torch.Tensor:
        """CLIP's text transformer on prompts ``x`` cut to ``length`` tokens, read at each
        prompt's end token ``eot``."""
        clip_model = self.clip
        x = (x[:, :length] + clip_model.positional_embedding[:length]).to(clip_model.dtype)
        x = clip_model.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        return clip_model.ln_final(x)[torch.arange(len(x)), eot] @ clip_model.text_projection

    def forward(self, trim: bool = True, ctx: torch.Tensor | None = None) -> torch.Tensor:
        """Unit-norm text features per class (classes x embed_dim), or per image and class
        (images x classes x embed_dim) for a context per image (``ctx``: images x the
        context's shape; default: the learner's own, one set). ``trim`` drops the padding
        after each prompt's end, same result since the attention is causal and the features
        are read at the end token: the prompts, sorted by length, run in ``TRIM_GROUPS``
        groups, each cut to its longest prompt (so none is longer than the longest prompt of
        the task); the prompts of all images run together, group by group."""
        n = len(self.class_names)
        single = ctx is None
        ctx = (self.ctx if single else ctx).to(self.prefix.dtype)
        if single:
            ctx = ctx[None]
        if not self.class_specific:
            ctx = ctx[:, None].expand(-1, n, -1, -1)
        m = len(ctx)
        x = torch.cat([self.prefix.expand(m, -1, -1, -1), ctx,
                       self.suffix.expand(m, -1, -1, -1)], 2)  # images x classes x L x width
        groups = [slice(None)] if not trim else self.eot.argsort().chunk(min(TRIM_GROUPS, n))
        parts = []
        for rows in groups:
            eot = self.eot[rows]
            length = x.shape[2] if not trim else int(eot.max()) + 1
            prompts = x[:, rows].flatten(0, 1)
            parts.append(self._encode(prompts, eot.repeat(m), length).view(m, len(eot), -1))
        features = torch.cat(parts, 1)
        if trim:
            features = features[:, self.eot.argsort().argsort()]
        features = F.normalize(features.float(), dim=-1)
        return features[0] if single else features


class PromptHead(nn.Module):
    """CLIP's image encoder against the prompt learner's text features, at CLIP's scale."""

    def __init__(self, prompt: PromptLearner, trim: bool = True):
        super().__init__()
        self.prompt, self.trim = prompt, trim
        self.visual = prompt.clip.visual
        self.logit_scale = float(prompt.clip.logit_scale.detach().exp())

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(pixels.to(self.visual.conv1.weight.dtype)).float(), dim=-1)

    def logits(self, image_features: torch.Tensor, ctx: torch.Tensor | None = None
               ) -> torch.Tensor:
        """Logits of image features (views x width) against the prompt's classes; with a
        context per image (``ctx``, images first), of each image's features (images x views x
        width) against its own prompts (images x views x classes)."""
        if ctx is None:
            return self.logit_scale * image_features @ self.prompt(self.trim).t()
        return self.logit_scale * image_features @ self.prompt(self.trim, ctx).transpose(1, 2)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.logits(self.image_features(pixels))


def prompt_classifier(clip_model, class_names, trim: bool = True, **prompt_options) -> Classifier:
    """A classifier (images in [0, 1] -> logits, as ``clip_classifier``) whose text side is a
    prompt learner: zero-shot with "a photo of a", CoOp with a learned ``ctx_file``."""
    prompt = PromptLearner(clip_model, class_names, **prompt_options)
    name = getattr(clip_model, "name", "") or "CLIP"
    text = (f"CLIP {name}, prompt context from {prompt_options['ctx_file']}"
            if prompt_options.get("ctx_file") else f"CLIP {name}, prompt '{prompt.ctx_init}'")
    return Classifier(PromptHead(prompt, trim), Preprocess(clip_model.visual.input_resolution,
                                                           CLIP_MEAN, CLIP_STD),
                      class_names, text).to(clip_model.logit_scale.device)


def confident_views(logits: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the ``keep`` views with the lowest prediction entropy (TPT's confidence
    selection), most confident first."""
    return entropy(logits).argsort()[:keep]


def tpt_views(kind, n_views: int, image_size: int):
    """TPT's views: random resized crops and flips for ImageNet-like sets, AugMix-style views
    for the others (the paper's fine-grained sets); ``auto`` decides by image size (64 px).
    Any other ``kind`` is a view generator or its description (``views.make_views``:
    ``"crop"``, ``"augmix"``, ``{"kind": "crop", "min_scale": 0.3}`` ...)."""
    if kind == "auto":
        kind = "crop" if image_size >= 64 else "augmix"
    try:
        return make_views(kind, n_views)
    except (ValueError, TypeError) as error:
        raise ValueError(f"views must be 'auto', 'crop', 'augmix', a dict such as "
                         f"{{'kind': 'crop', 'min_scale': 0.3}} or a view generator, not "
                         f"{kind!r} ({error})") from error


def view_selection(views, n_views: int, selection: float, keep: int | None) -> tuple[int, int]:
    """(augmented views per image, views kept) of TPT's confidence selection over the image
    and its views: ``keep`` if given, else ``int(selection * (views + 1))`` as in TPT's code
    (6 of 64). ``views`` may be a view generator, which then sets the count."""
    n_views = getattr(views, "n_views", n_views) if callable(views) else n_views
    total = n_views + 1
    keep = keep if keep is not None else int(total * selection)
    if not 1 <= keep <= total:
        raise ValueError(
            f"The selection keeps {keep} of {total} views (the original and "
            f"{total - 1} augmented): raise n_views, or set selection/keep so that at "
            "least one and at most all views are kept.")
    return n_views, keep


def views_for(views, n_views: int, images: torch.Tensor):
    """The view generator for ``images``: the given one, or TPT's choice by image size."""
    return views or tpt_views("auto", n_views, min(images.shape[-2:]))


class Tpt(Episodic):
    """TPT with the paper's defaults: 63 views plus the original, keep the 10% (``int``, as
    the original code: 6 of 64) with the lowest entropy, minimise the entropy of their
    averaged prediction with one AdamW step at lr 5e-3 (torch's default weight decay 0.01,
    as the original), predict the original image, restore the context and the optimizer.

    ``keep`` (a count) overrides ``selection`` (a ratio). With ``steps > 1`` every step
    minimises the entropy of the views selected on the first step, as the original's
    ``test_time_tuning`` does. ``cache_features`` and ``trim`` switch the exact speed-ups
    (see the module); off, this is the original loop. ``precision`` (``helpers.precision``):
    ``"auto"`` is the original's float16 autocast with loss scaling on CUDA, float32 on a
    CPU; the entropy and the AdamW step are float32 either way.

    Many test images at once (``forward``): ``chunk`` images (None: by
    ``base.BATCH_BUDGET``; 1: the loop) are tuned together, each with its own context
    (``adapt_and_predict_many``), as each would be alone."""

    name = "tpt"
    needs_text = shardable = True

    def __init__(self, clip_model, class_names, views="auto", n_views: int = 63,
                 selection: float = 0.1, keep: int | None = None, steps: int = 1,
                 lr: float = 5e-3, optimizer: str = "adamw", weight_decay: float = 0.01,
                 n_ctx: int = 4, ctx_init: str | None = CTX_INIT, class_specific: bool = False,
                 ctx_file=None, cache_features: bool = True, trim: bool = True, seed: int = 0,
                 precision: str = "auto", chunk: int | None = None):
        model = prompt_classifier(clip_model, class_names, trim, n_ctx=n_ctx, ctx_init=ctx_init,
                                  class_specific=class_specific, ctx_file=ctx_file, seed=seed)
        self.head: PromptHead = model.backbone
        super().__init__(model, [self.head.prompt.ctx], optimizer, lr, 0.0, weight_decay, seed,
                         precision)
        self.n_views, self.keep = view_selection(views, n_views, selection, keep)
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        self.views_kind, self.steps = views, steps
        self.selection, self.cache_features = selection, cache_features
        self.views = None if views == "auto" else tpt_views(views, self.n_views, 0)
        images_per_pass(1, 1, chunk)  # a bad chunk fails here
        self.chunk = chunk

    def _views_for(self, images):
        return views_for(self.views, self.n_views, images)

    def loss(self, logits: torch.Tensor) -> torch.Tensor:
        """Entropy of the averaged prediction of the most confident views (of one step;
        ``adapt_and_predict`` keeps the first step's selection for later steps)."""
        return marginal_entropy(logits[confident_views(logits.detach(), self.keep)])

    def adapt_and_predict(self, image: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        batch = torch.cat([image[None], views])  # the original first, as in TPT
        if self.cache_features:
            with torch.no_grad(), self.precision.autocast():
                features = self.head.image_features(self.model.preprocess(batch))
            logits_of, predict = self.head.logits, lambda: self.head.logits(features[:1])
        else:  # the original loop: image features again for the step and the prediction
            features, logits_of = batch, self.model
            predict = lambda: self.model(image[None])  # noqa: E731
        selected = None
        for _ in range(self.steps):
            with self.precision.autocast():
                logits = logits_of(features).float()
            if selected is None:  # chosen on the first step and kept, as the original does
                selected = confident_views(logits.detach(), self.keep)
            if not self.update(marginal_entropy(logits[selected])):
                self.restore()  # predict with the initial prompt
                break
        with torch.inference_mode(), self.precision.autocast():
            return predict().float()

    def forward(self, images, keys):
        self.model.eval()
        generators = [self.generator(k) for k in keys]
        views = views_per_image(self._views_for(images), images, generators)
        chunk = self.images_per_pass(images)
        out = []
        with frozen(self.head.prompt.clip):
            for start in range(0, len(images), chunk):
                part = images[start:start + chunk]
                if chunk == 1:
                    out.append(self.adapt_and_predict(part[0], next(views)))
                    self.restore()
                    continue
                out.append(self.adapt_and_predict_many(part, torch.stack(
                    [next(views) for _ in range(len(part))])))
        return torch.cat(out)

    def images_per_pass(self, images: torch.Tensor) -> int:
        """Test images tuned together (``chunk``, or by ``base.BATCH_BUDGET``: each image's
        views and its prompts' rough activations); 1 (the loop) under float16 loss scaling
        (one scale for the whole stream) and without ``cache_features``."""
        if self.precision.scaled or not self.cache_features or len(images) == 1:
            return 1
        prompt = self.head.prompt
        text = len(prompt.class_names) * prompt.length * prompt.prefix.shape[-1]
        per_image = ((self.n_views + 1) * images[0].numel() + text) * ACTIVATIONS
        return images_per_pass(len(images), per_image, self.chunk)

    def adapt_and_predict_many(self, images: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """``adapt_and_predict`` for many images (N x C x H x W, their views N x V x C x H x
        W) at once: the features of all images and views in one pass, a context per image
        (a copy of the initial one) tuned by one optimizer over all of them (its steps are
        elementwise, so each image's context moves as alone; the summed losses give each
        context its own gradient), the text encoder over images x classes in one pass. An
        image whose loss is not finite is counted and predicted with the initial prompt."""
        batch = torch.cat([images[:, None], views], 1)  # the original first, as in TPT
        with torch.no_grad(), self.precision.autocast():
            features = self.head.image_features(self.model.preprocess(batch.flatten(0, 1)))
        features = features.view(*batch.shape[:2], -1)
        initial = self.head.prompt.ctx.detach()
        ctx = initial.expand(len(images), *initial.shape).clone().requires_grad_()
        optimizer = make_optimizer([ctx], self.optimizer_name, self.lr, 0.0, self.weight_decay)
        selected, ok = None, torch.ones(len(images), dtype=torch.bool)
        for _ in range(self.steps):
            with self.precision.autocast():
                logits = self.head.logits(features, ctx).float()
            if selected is None:  # per image, chosen on the first step and kept
                selected = [confident_views(one.detach(), self.keep) for one in logits]
            losses = torch.stack([marginal_entropy(one[s]) for one, s in zip(logits, selected)])
            finite = torch.isfinite(losses.detach()).cpu()
            self.counters["skipped_nonfinite"] += int((ok & ~finite).sum())
            ok &= finite
            if not ok.any():
                break
            optimizer.zero_grad(set_to_none=True)
            losses[ok.to(losses.device)].sum().backward()
            optimizer.step()
        with torch.no_grad():
            ctx[~ok.to(ctx.device)] = initial  # as ``restore`` before the prediction
        with torch.inference_mode(), self.precision.autocast():
            return self.head.logits(features[:, :1], ctx.detach()).float()[:, 0]

    @torch.no_grad()
    def selection_of(self, image: torch.Tensor, key: int = 0):
        """For figures: the original and its views, their entropies under the initial
        prompt, and the indices TPT keeps."""
        views = self._views_for(image[None])(image, self.generator(key))
        batch = torch.cat([image[None], views])
        logits = self.model(batch)
        return batch, entropy(logits), confident_views(logits, self.keep)

    def config(self) -> dict:
        prompt = self.head.prompt
        return {**super().config(), "params": "prompt context", "views": repr(self.views)
                if self.views else f"auto ({self.n_views})", "n_views": self.n_views,
                "keep": self.keep, "steps": self.steps, "n_ctx": prompt.n_ctx,
                "ctx_init": prompt.ctx_init, "class_specific": prompt.class_specific,
                "cache_features": self.cache_features, "trim": self.head.trim}


def clip_of(model):
    """The CLIP model behind a classifier; an error that names the fix for one without a text
    side."""
    clip_model = getattr(model, "clip_model", None)
    if clip_model is None:
        raise ValueError("TPT and fixed prompts need a CLIP classifier (from clip_classifier "
                         "or build_classifier with a CLIP name); this model has no text side.")
    return clip_model


@register("tpt", adapter=Tpt)
def tpt(model, **options) -> Tpt:
    """TPT on a CLIP classifier's model and classes."""
    return Tpt(clip_of(model), model.class_names, **options)


@register("prompt", adapter=Source, needs_text=True)
def prompt(model, **options) -> Source:
    """A CLIP classifier with a fixed prompt context: TPT's starting point ("a photo of a")
    or a learned CoOp context (``ctx_file``), without test-time adaptation."""
    adapter = Source(prompt_classifier(clip_of(model), model.class_names, **options))
    adapter.name = "prompt"
    return adapter
