"""Grad-CAM heat-maps through the ``grad-cam`` package, for the classifiers of ``models``.

Where to look inside each model is decided here once (``target_layer``), including CLIP's
vision transformer, whose tokens run sequence-first and need a reshape back to the patch
grid. The package's CAM objects hook the model; ``heat_maps`` and ``cam_session`` always
release the hooks, even on an error, so that a model adapted afterwards runs unhooked.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "layercam": LayerCAM,
           "eigencam": EigenCAM}


def vit_reshape(grid: tuple[int, int]):
    """CLIP's ViT blocks output (tokens, batch, width) with the class token first; Grad-CAM
    wants (batch, width, rows, cols) over the patch grid."""
    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[1:].permute(1, 2, 0)  # batch, width, patches
        return patches.reshape(*patches.shape[:2], *grid)
    return reshape


def _last(model: nn.Module, kinds) -> nn.Module | None:
    found = [m for m in model.modules() if isinstance(m, kinds)]
    return found[-1] if found else None


def target_layer(model: nn.Module):
    """(layer, reshape transform) where Grad-CAM reads a classifier: CLIP ViT, the last
    block's first layer norm (the grad-cam authors' choice for ViTs); CLIP ResNet, its last
    stage; EfficientNet, the head's batch norm before pooling; any other CNN, its last
    batch-norm (or convolution) layer."""
    backbone = getattr(model, "backbone", model)
    visual = getattr(backbone, "visual", None)
    if visual is not None and hasattr(visual, "transformer"):
        patch = visual.conv1.kernel_size[0]
        side = visual.input_resolution // patch
        return visual.transformer.resblocks[-1].ln_1, vit_reshape((side, side))
    if visual is not None and hasattr(visual, "layer4"):
        return visual.layer4, None
    if hasattr(backbone, "_bn1") and hasattr(backbone, "_conv_head"):
        return backbone._bn1, None
    layer = _last(backbone, nn.BatchNorm2d) or _last(backbone, nn.Conv2d)
    if layer is None:
        raise ValueError(f"No convolutional or ViT layer found in {type(backbone).__name__} "
                         "for Grad-CAM: pass target=(layer, reshape_transform).")
    return layer, None


@contextlib.contextmanager
def cam_session(model: nn.Module, method: str = "gradcam", target=None):
    """A ``grad-cam`` CAM object on ``model``, its hooks released and the model's train/eval
    mode restored on exit (the package puts the model in eval mode). The parameters are
    frozen meanwhile, so a heat-map never leaves gradients on them for an optimizer (an
    adapter such as MEMO_PLUS asks for heat-maps between its own updates)."""
    if method not in METHODS:
        raise ValueError(f"Unknown CAM method {method!r}; valid: {sorted(METHODS)}")
    layer, reshape = target or target_layer(model)
    was_training = model.training
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    cam = METHODS[method](model=model, target_layers=[layer], reshape_transform=reshape)
    try:
        with torch.enable_grad():
            yield cam
    finally:
        cam.activations_and_grads.release()
        model.train(was_training)
        for p in trainable:
            p.requires_grad_(True)


def heat_maps(model: nn.Module, images: torch.Tensor, classes=None, method: str = "gradcam",
              target=None) -> np.ndarray:
    """Heat-maps (N, H, W) in [0, 1] at the images' size, for ``classes`` (one per image;
    None: each image's predicted class). ``images`` are the classifier's inputs in [0, 1]."""
    if images.ndim != 4:
        raise ValueError(f"images must be N x C x H x W, got shape {tuple(images.shape)}")
    targets = None if classes is None else [ClassifierOutputTarget(int(c)) for c in classes]
    with cam_session(model, method, target) as cam:
        # The input asks for gradients, so that frozen models get heat-maps too.
        maps = cam(input_tensor=images.detach().requires_grad_(True), targets=targets)
    return np.clip(maps.astype(np.float32), 0.0, 1.0)


def hook_count(model: nn.Module) -> int:
    """Forward and backward hooks registered on the model's modules (zero when clean)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


def adapted_heat_maps(image: torch.Tensor, model: nn.Module, adapters: dict, class_names,
                      key: int = 0) -> dict:
    """For one image (C x H x W): the source model's Grad-CAM of its predicted class, then each
    named episodic method's (``adapters``: MEMO, MEMO_PLUS ...) after adapting to this image
    alone (``method.adapted``, restored afterwards), keyed ``"<name>: <predicted class>"``."""
    def entry(name, net):
        with torch.no_grad():
            predicted = net(image[None]).argmax(1).item()
        return f"{name}: {class_names[predicted].split(',')[0]}", heat_maps(net, image[None])[0]

    maps = dict([entry("source", model)])
    for name, method in adapters.items():
        with method.adapted(image, key=key) as adapted:
            maps.update([entry(name, adapted)])
    return maps
