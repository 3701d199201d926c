"""A timm ViT with visual prompts (VPT, Jia et al., ECCV 2022), a switch between eager and
scaled-dot-product attention, and gradient checkpointing of its blocks.

One class, :class:`PromptedViT`, builds every tuning mode of the comparison, so that the
modes differ only in which tensors train: ``linear`` (the head), ``full`` (everything),
``vpt-shallow`` (prompt tokens at the input, and the head) and ``vpt-deep`` (fresh prompt
tokens at every block, and the head).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .. import paths
from ..models import checkpoint_file
from ..precision import Precision

MODES = ("linear", "full", "vpt-shallow", "vpt-deep")
ATTENTION = ("eager", "sdpa")
VIT_B16 = "vit_base_patch16_224"
# Where real ViT-B/16 weights come from; the message of a missing file names them.
WEIGHT_SOURCES = (
    "the timm / Hugging Face hub model 'timm/vit_base_patch16_224.augreg2_in21k_ft_in1k' "
    "(its model.safetensors), or the original VPT backbone, Google's ViT-B/16 ImageNet-21k "
    "checkpoint 'imagenet21k_ViT-B_16.npz' (https://storage.googleapis.com/vit_models/"
    "imagenet21k/ViT-B_16.npz)")


def build_vit(arch: str = VIT_B16, num_classes: int = 10, weights_path=None, **overrides):
    """A timm VisionTransformer of architecture ``arch`` (``overrides`` change its sizes,
    e.g. ``img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2`` for tests).

    Random weights unless ``weights_path`` names a local file; ``model.weights`` says which,
    so that tables and notes can state it."""
    import timm

    model = timm.create_model(arch, pretrained=False, num_classes=num_classes, **overrides)
    model.weights = "random initialisation (no pretrained weights)"
    if weights_path is not None:
        load_backbone_weights(model, weights_path)
    return model


def load_backbone_weights(model, weights_path) -> None:
    """Load a local timm state dict (.pth/.bin/.safetensors) or a Google/VPT .npz into
    ``model``; the classification head is kept new when its number of classes differs.
    ``weights_path``: absolute, or relative to TTA_CHECKPOINTS, then the repository."""
    from timm.models import load_state_dict
    from timm.models.vision_transformer import checkpoint_filter_fn

    path = checkpoint_file(
        weights_path, "ViT weights",
        f"Get {WEIGHT_SOURCES}, put the file under {paths.CHECKPOINTS} (or set TTA_CHECKPOINTS) "
        "and pass weights_path=<its name>; weights_path=None runs with random weights.")
    if path.suffix == ".npz":
        model.load_pretrained(str(path))  # timm's loader for the original JAX checkpoints
    else:
        state = checkpoint_filter_fn(load_state_dict(str(path)), model)
        own = model.state_dict()
        state = {k: v for k, v in state.items() if not (k.startswith("head.")
                                                        and v.shape != own[k].shape)}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("head.") for k in missing):
            raise ValueError(f"{path} does not fit {type(model).__name__}: missing "
                             f"{missing[:5]}, unexpected {unexpected[:5]}")
    model.weights = f"pretrained weights from {path.name}"


def attention_modules(vit) -> list[nn.Module]:
    """timm's Attention modules: each has ``fused_attn`` (True: F.scaled_dot_product_attention,
    False: softmax(QK^T / sqrt(d)) V spelled out, keeping the N x N matrix for backward)."""
    found = [m for m in vit.modules() if hasattr(m, "fused_attn")]
    if not found:
        raise TypeError(f"{type(vit).__name__} has no timm Attention module with fused_attn")
    return found


class PromptedViT(nn.Module):
    """A timm ViT tuned in one of :data:`MODES`, with ``n_prompts`` learnable tokens placed
    after the class token (VPT), ``attention`` in :data:`ATTENTION` and optional gradient
    checkpointing of blocks (recompute their activations in backward instead of keeping
    them: the memory of one block instead of all, for one more forward pass).

    ``checkpointing``: False; True for every block but the last (backward starts with the
    last block, so recomputing it would only repeat the forward pass and save nothing); or
    the number of blocks, from the first, to checkpoint (fewer: faster, more memory)."""

    def __init__(self, vit, mode: str = "vpt-deep", n_prompts: int = 10,
                 prompt_dropout: float = 0.0, attention: str = "sdpa",
                 checkpointing: bool | int = False):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
        if mode in ("linear", "full") and n_prompts:
            raise ValueError(f"mode {mode!r} has no prompts; set n_prompts=0 or use a vpt mode")
        self.vit, self.mode, self.n_prompts = vit, mode, n_prompts
        self.attention = attention
        self.checkpointing = checkpointing
        dim, depth = vit.embed_dim, len(vit.blocks)
        layers = depth if mode == "vpt-deep" else 1
        self.prompts = nn.Parameter(torch.zeros(layers, n_prompts, dim)) if n_prompts else None
        if self.prompts is not None:
            # VPT's initialisation: Xavier-uniform as if prompts were patch embeddings.
            patch = math.prod(vit.patch_embed.patch_size)
            bound = math.sqrt(6.0 / (3 * patch + dim))
            nn.init.uniform_(self.prompts, -bound, bound)
        self.prompt_dropout = nn.Dropout(prompt_dropout)
        for name, parameter in vit.named_parameters():
            parameter.requires_grad_(mode == "full" or name.startswith("head."))

    @property
    def attention(self) -> str:
        return "sdpa" if attention_modules(self.vit)[0].fused_attn else "eager"

    @attention.setter
    def attention(self, value: str) -> None:
        if value not in ATTENTION:
            raise ValueError(f"unknown attention {value!r}; valid: {', '.join(ATTENTION)}")
        for module in attention_modules(self.vit):
            module.fused_attn = value == "sdpa"

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def total_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def tokens(self, image_size: int | None = None) -> int:
        """Tokens each block sees: prefix (class) tokens, prompts and patches."""
        size = image_size or self.vit.patch_embed.img_size[0]
        patches = (size // self.vit.patch_embed.patch_size[0]) ** 2
        return self.vit.num_prefix_tokens + self.n_prompts + patches

    def _with_prompts(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """Insert the prompts after the prefix tokens (layer 0), or replace the previous
        layer's prompts with this layer's (VPT-deep)."""
        start = self.vit.num_prefix_tokens
        prompts = self.prompt_dropout(self.prompts[layer]).expand(len(x), -1, -1)
        rest = x[:, start:] if layer == 0 else x[:, start + self.n_prompts:]
        return torch.cat([x[:, :start], prompts.to(x.dtype), rest], dim=1)

    def checkpointed_blocks(self) -> int:
        depth = len(self.vit.blocks)
        if self.checkpointing is True:
            return depth - 1
        if not 0 <= int(self.checkpointing) <= depth:
            raise ValueError(f"checkpointing={self.checkpointing}: give True, False or a number "
                             f"of blocks from 0 to {depth}")
        return int(self.checkpointing)

    def _block(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        block = self.vit.blocks[layer]
        if layer < self.checkpointed_blocks() and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        vit = self.vit
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(images))))
        for layer in range(len(vit.blocks)):
            if self.prompts is not None and (layer == 0 or self.mode == "vpt-deep"):
                x = self._with_prompts(x, layer)
            x = self._block(layer, x)
        return vit.norm(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.vit.forward_head(self.forward_features(images))

    def describe(self) -> str:
        prompts = f", {self.n_prompts} prompts" if self.n_prompts else ""
        blocks = self.checkpointed_blocks()
        return (f"{self.mode}{prompts}, {self.attention} attention"
                f"{f', {blocks} checkpointed blocks' if blocks else ''}")


def prompted_vit(mode: str = "vpt-deep", n_prompts: int = 10, arch: str = VIT_B16,
                 num_classes: int = 10, weights_path=None, prompt_dropout: float = 0.0,
                 attention: str = "sdpa", checkpointing: bool | int = False, **overrides):
    """Build the backbone (see :func:`build_vit`) and wrap it for ``mode``."""
    vit = build_vit(arch, num_classes, weights_path, **overrides)
    n_prompts = n_prompts if mode.startswith("vpt") else 0
    return PromptedViT(vit, mode, n_prompts, prompt_dropout, attention, checkpointing)


def expected_trainable(mode: str, n_prompts: int, dim: int, depth: int, num_classes: int,
                       total: int) -> int:
    """The trainable parameter count of each mode, by formula (``total``: the whole ViT)."""
    head = dim * num_classes + num_classes
    return {"linear": head, "full": total, "vpt-shallow": n_prompts * dim + head,
            "vpt-deep": depth * n_prompts * dim + head}[mode]


def train_step(model: nn.Module, optimizer, images: torch.Tensor, labels: torch.Tensor,
               precision: Precision | None = None) -> float:
    """One optimisation step of cross-entropy; returns the loss. ``precision``
    (``helpers.precision.Precision``, None: float32): the forward under its autocast, the
    cross-entropy and the step on float32 weights (under float16 loss scaling, a step whose
    gradients overflowed is skipped, as torch's GradScaler does)."""
    precision = precision or Precision("fp32")
    with precision.autocast():
        logits = model(images)
    loss = nn.functional.cross_entropy(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    precision.step(loss, optimizer)
    return loss.item()
