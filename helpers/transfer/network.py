"""The study's configurable CNN as a list of layers, and the networks cut out of it.

A network is ``depth`` convolution blocks (conv, activation, optional pooling) followed by one
or two dense blocks; a **cut point** ``k`` counts the layers kept from the pretrained network
(``1 <= k < n_layers``: the output layer always learns the new classes). After the cut, the
layers are either re-initialised (same architecture, fresh weights) or removed (truncate: a new
output layer reads the cut layer directly). The kept layers are frozen or trained further.
Without batch norm, a frozen prefix is a fixed function: its outputs can be computed once.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "elu": nn.ELU,
               "leaky_relu": nn.LeakyReLU, "silu": nn.SiLU}
MONOTONE = ("relu", "tanh", "elu", "leaky_relu")  # non-decreasing: they commute with max
AFTER_CUT = ("reinit", "truncate")


@dataclass(frozen=True)
class CnnConfig:
    """Architecture of the study's CNN; serialises to JSON (``to_json`` / ``from_json``)."""

    in_channels: int = 1
    image_size: int = 28
    depth: int = 3                       # convolution layers
    channels: int | tuple = 8            # one width for all, or one per convolution layer
    kernel_size: int = 3
    activation: str = "relu"
    pool_every: int = 1                  # max-pool after every n-th convolution (0: never)
    pool_size: int = 2
    pool_stride: int = 2
    dense_layers: int = 2                # 1: only the output layer; 2: hidden + output
    hidden: int = 64
    num_classes: int = 5

    def __post_init__(self):
        if isinstance(self.channels, list):  # from JSON
            object.__setattr__(self, "channels", tuple(self.channels))
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, "
                             f"got {self.activation!r}")
        if self.dense_layers not in (1, 2):
            raise ValueError(f"dense_layers must be 1 or 2, got {self.dense_layers}")
        if self.depth < 1 or self.num_classes < 2:
            raise ValueError(f"need depth >= 1 and num_classes >= 2, got depth={self.depth}, "
                             f"num_classes={self.num_classes}")
        if len(self.widths) != self.depth:
            raise ValueError(f"channels lists {len(self.widths)} widths for depth {self.depth}")

    @property
    def widths(self) -> tuple:
        c = self.channels
        return tuple(c) if isinstance(c, tuple) else (c,) * self.depth

    @property
    def n_layers(self) -> int:
        return self.depth + self.dense_layers

    def layer_names(self) -> list[str]:
        dense = ["dense", "output"] if self.dense_layers == 2 else ["output"]
        return [f"conv{i + 1}" for i in range(self.depth)] + dense

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> CnnConfig:
        return cls(**json.loads(text))

    def with_classes(self, num_classes: int) -> CnnConfig:
        return replace(self, num_classes=num_classes)


def _pools(config: CnnConfig, index: int) -> bool:
    return config.pool_every > 0 and (index + 1) % config.pool_every == 0


def layer_shapes(config: CnnConfig) -> list[tuple]:
    """Output shape (without the batch) of every layer; the input's is (C, size, size)."""
    shapes, channels, side = [], config.in_channels, config.image_size
    for i, width in enumerate(config.widths):
        channels = width
        if _pools(config, i):
            side = (side - config.pool_size) // config.pool_stride + 1
        if side < 1:
            raise ValueError(f"{config.depth} pooled layers shrink a {config.image_size}-pixel "
                             "image to nothing: pool less often (pool_every) or use fewer layers")
        shapes.append((channels, side, side))
    if config.dense_layers == 2:
        shapes.append((config.hidden,))
    return shapes + [(config.num_classes,)]


def _conv_block(config: CnnConfig, index: int, in_channels: int) -> nn.Sequential:
    """Conv, activation, pooling; for a non-decreasing activation, pooling comes first: max
    pooling commutes with it (same outputs and gradients), on 4x fewer elements."""
    conv = nn.Conv2d(in_channels, config.widths[index], config.kernel_size,
                     padding=config.kernel_size // 2)
    activation = ACTIVATIONS[config.activation]()
    if not _pools(config, index):
        return nn.Sequential(conv, activation)
    pool = nn.MaxPool2d(config.pool_size, config.pool_stride)
    if config.activation in MONOTONE:
        return nn.Sequential(conv, pool, activation)
    return nn.Sequential(conv, activation, pool)


def _features(shape: tuple) -> int:
    return int(torch.tensor(shape).prod())


def build_layer(config: CnnConfig, index: int) -> nn.Module:
    """Layer ``index`` (0-based) with fresh weights from the global RNG."""
    if not 0 <= index < config.n_layers:
        raise IndexError(f"layer {index} outside 0..{config.n_layers - 1}")
    shapes = layer_shapes(config)
    if index < config.depth:
        return _conv_block(config, index, shapes[index - 1][0] if index else config.in_channels)
    head = [nn.Flatten()] if index == config.depth else []
    out = nn.Linear(_features(shapes[index - 1]), _features(shapes[index]))
    is_output = index == config.n_layers - 1
    return nn.Sequential(*head, out, *([] if is_output else [ACTIVATIONS[config.activation]()]))


def build_cnn(config: CnnConfig) -> nn.Sequential:
    """The whole network, one child per layer (``net[k]`` is layer k+1 of the diagram)."""
    return nn.Sequential(*(build_layer(config, i) for i in range(config.n_layers)))


def check_cut(config: CnnConfig, cut: int) -> int:
    """A valid cut point or a ValueError naming the valid ones."""
    valid = range(1, config.n_layers)
    if isinstance(cut, bool) or not isinstance(cut, int) or cut not in valid:
        raise ValueError(
            f"cut point {cut!r} is outside the network: with {config.n_layers} layers "
            f"({', '.join(config.layer_names())}) a cut keeps k = {valid.start}..{valid.stop - 1} "
            "pretrained layers (k = 0 is the baseline trained from scratch; the output layer is "
            "always new)")
    return cut


def check_after(after: str) -> str:
    if after not in AFTER_CUT:
        raise ValueError(f"after the cut, layers are {' or '.join(AFTER_CUT)}; got {after!r}")
    return after


def new_layers(config: CnnConfig, cut: int, after: str) -> nn.Sequential:
    """The fresh layers that follow a cut: the network's own (``reinit``) or a single output
    layer reading the cut layer (``truncate``). Weights from the global RNG."""
    check_cut(config, check_after(after) and cut)
    if after == "reinit":
        return nn.Sequential(*(build_layer(config, i) for i in range(cut, config.n_layers)))
    shape = layer_shapes(config)[cut - 1]
    return nn.Sequential(nn.Flatten(), nn.Linear(_features(shape), config.num_classes))


def kept_layers(pretrained: nn.Sequential, cut: int) -> nn.Sequential:
    """A copy of the first ``cut`` layers of a pretrained network."""
    import copy
    return copy.deepcopy(pretrained[:cut])
