"""Train many small networks of one architecture together, as one stacked model.

The repeats of a fine-tuning run (and the baselines of one fraction) are independent trainings
of the same architecture on data of the same size. Stacking their parameters (``torch.func``)
runs them as one network with R times wider operations (grouped convolutions, batched matrix
products): on a CPU, small networks are bound by per-operation overhead and by small
convolutions, so this is several times faster than a loop over the repeats.

Exactness: the loss is the sum over models of each model's mean loss, so the gradient of a
model's parameters is that of its own loss; Adam is element-wise, so one Adam over the stacked
tensors equals one Adam per model. ``train_one`` is the plain loop the results must equal.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import stack_module_state

from helpers.allocator import keep_freed_memory


def batch_schedule(n: int, batch_size: int, steps: int, generator: torch.Generator):
    """Positions (steps x B) into a training set of ``n`` items: consecutive random
    permutations cut into batches of ``B = min(batch_size, n)``, so every batch is full and
    every item is seen once per epoch."""
    size = min(batch_size, n)
    epochs = -(-steps * size // n)
    order = torch.cat([torch.randperm(n, generator=generator) for _ in range(epochs)])
    return order[:steps * size].view(steps, size)


def take_rows(tensor: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``tensor[rows]`` for an index tensor of any shape, by ``index_select``: on a CPU the
    same gather 7-9x faster than advanced indexing (512 rows of 1,568 floats: 0.05 vs
    0.43 ms), which showed in the training steps of the small networks."""
    return tensor.index_select(0, rows.flatten()).view(*rows.shape, *tensor.shape[1:])


def train_one(module: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
              indices: torch.Tensor, schedule: torch.Tensor, lr: float,
              optimizer: torch.optim.Optimizer | None = None) -> nn.Module:
    """The reference: Adam on one module over ``inputs[indices[schedule[t]]]``, step by step
    (pass ``optimizer`` to continue a training, e.g. epoch by epoch)."""
    optimizer = optimizer or torch.optim.Adam(module.parameters(), lr=lr)
    module.train()
    for positions in schedule.to(indices.device):
        rows = indices[positions]
        loss = F.cross_entropy(module(take_rows(inputs, rows)), take_rows(labels, rows))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return module.eval()


def _repeat_channels(x: torch.Tensor, times: int) -> torch.Tensor:
    """Channels-last N x C x H x W -> N x C*times x H x W, each channel ``times`` times in a
    row: a grouped convolution with one input channel per group then runs as a depthwise one,
    for which oneDNN has fast kernels (1.5x faster forward and backward than the grouped
    kernel on the study's first layer)."""
    n, c, h, w = x.shape
    nhwc = x.permute(0, 2, 3, 1).unsqueeze(-1).expand(n, h, w, c, times)
    return nhwc.reshape(n, h, w, c * times).permute(0, 3, 1, 2)


def _channels_layout(x: torch.Tensor) -> torch.Tensor:
    """Per-model images R x N x C x H x W as the stack's layout N x R*C x H x W in
    channels-last memory (N x H x W x R x C), in one copy."""
    r, n, c, h, w = x.shape
    nhwc = x.permute(1, 3, 4, 0, 2).reshape(n, h, w, r * c)
    return nhwc.permute(0, 3, 1, 2)


class Stack:
    """R modules of one architecture as stacked tensors, run as one wider network.

    Convolutions become one grouped convolution over the models' channels side by side
    (layout B x R*C x H x W, in which activations and pooling run unchanged), dense layers one
    batched matrix product (layout R x B x F). Plain ``vmap`` of the forward pass gives the
    same numbers but copies tensors around every pooling layer (3x slower on a CPU).
    Supports sequential networks of Conv2d, Linear, Flatten and parameter-free layers.
    """

    def __init__(self, modules: list[nn.Module]):
        self.size = len(modules)
        params, self.buffers = stack_module_state(modules)
        # All stacked parameters live in one flat tensor (``flat``, the one leaf the optimizer
        # sees): each Adam step is then one pass of each element-wise operation instead of one
        # per tensor, with the same numbers.
        self.shapes = {name: p.shape for name, p in params.items()}
        self.flat = torch.cat([p.detach().flatten() for p in params.values()]).requires_grad_()
        self.base = modules[0]
        self.leaves = [(name, m) for name, m in self.base.named_modules()
                       if not list(m.children())]
        for name, m in self.leaves:
            has_params = any(True for _ in m.parameters(recurse=False))
            if has_params and not isinstance(m, (nn.Conv2d, nn.Linear)):
                raise NotImplementedError(f"cannot stack layer {name} ({type(m).__name__})")

    @property
    def params(self) -> dict:
        """The stacked parameters (R x ...) by name, as views of ``flat``."""
        parts = self.flat.split([shape.numel() for shape in self.shapes.values()])
        return {name: part.view(shape) for (name, shape), part in zip(self.shapes.items(), parts)}

    def _weights(self, params, name):
        prefix = f"{name}." if name else ""
        return params[prefix + "weight"], params.get(prefix + "bias")

    def _conv(self, params, name, conv: nn.Conv2d, x):
        weight, bias = self._weights(params, name)
        groups = conv.groups * self.size
        if conv.in_channels == conv.groups:  # one input channel per group (a grey image)
            x = _repeat_channels(x, conv.out_channels // conv.groups)
            groups = conv.out_channels * self.size
        return F.conv2d(x, weight.flatten(0, 1), None if bias is None else bias.flatten(),
                        conv.stride, conv.padding, conv.dilation, groups)

    def _shared_conv(self, params, name, conv: nn.Conv2d, x):
        """The first convolution of every model on the same images (N x C x H x W): one dense
        convolution with the models' filters side by side, straight into the channels layout
        (no copy of the images per model; for evaluating on a shared test set). Only for
        ``groups == 1``, where every filter reads all of the input's channels."""
        weight, bias = self._weights(params, name)
        out = F.conv2d(x.contiguous(memory_format=torch.channels_last), weight.flatten(0, 1),
                       None if bias is None else bias.flatten(), conv.stride, conv.padding,
                       conv.dilation)
        # A grey image is as much channels-last as not, and then so is the output, which the
        # next layers would run on in the slower layout.
        return out.contiguous(memory_format=torch.channels_last)

    def _linear(self, params, name, x):
        """R x N x in -> R x N x out, computed transposed (weight @ x^T) so that autograd
        forms the weight's gradient as grad^T @ x, in the weight's own shape: for a
        1,568-feature input 5x faster than x^T @ grad."""
        weight, bias = self._weights(params, name)
        out = torch.bmm(weight, x.transpose(1, 2))             # R x out x N
        if bias is not None:
            out = out + bias.unsqueeze(2)
        return out.transpose(1, 2)

    def __call__(self, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
        """Logits R x N x classes, from per-model inputs (R x N x ...) or, with ``shared``,
        the same inputs (N x ...) for every model."""
        params = self.params
        layers = self.leaves
        first = layers[0][1]
        if shared and isinstance(first, nn.Conv2d) and first.groups == 1:
            x = self._shared_conv(params, layers[0][0], first, x)
            layers = layers[1:]
        elif shared:
            x = x.unsqueeze(0).expand(self.size, *x.shape)
        for name, layer in layers:
            if isinstance(layer, nn.Conv2d):
                if x.dim() == 5:
                    x = _channels_layout(x)
                x = self._conv(params, name, layer, x)
            elif isinstance(layer, nn.Flatten) and x.dim() == 4:  # channels layout
                # The reshape's gradient comes back in NCHW order; the pooling and ReLU before
                # it take their gradient 4-5x slower in a layout other than their input's.
                if x.requires_grad:
                    x.register_hook(lambda g: g.contiguous(memory_format=torch.channels_last))
                x = x.reshape(x.shape[0], self.size, -1).transpose(0, 1)
            elif isinstance(layer, nn.Flatten):  # a frozen prefix's features, R x N x ...
                x = x.flatten(2)
            elif isinstance(layer, nn.Linear):
                x = self._linear(params, name, x)
            elif isinstance(layer, nn.ReLU):
                x = torch.relu_(x)  # on a fresh output no backward needs (autograd checks)
            else:
                x = layer(x)
        return x

    def module(self, index: int, like: nn.Module | None = None) -> nn.Module:
        """Model ``index`` as an ordinary module (a copy of ``like`` with its weights)."""
        out = copy.deepcopy(like or self.base)
        out.load_state_dict({k: v[index].detach() for k, v in {**self.params,
                                                                **self.buffers}.items()})
        return out


def train_together(modules: list[nn.Module], inputs: torch.Tensor, labels: torch.Tensor,
                   indices: torch.Tensor, schedules: torch.Tensor, lr: float) -> Stack:
    """Train ``modules[r]`` on ``inputs[indices[r][schedules[r][t]]]`` for every step t, all
    at once; equal to ``train_one`` per module up to float rounding.

    ``indices``: R x n (each model's training set, rows of ``inputs``); ``schedules``:
    R x steps x B positions into it (``batch_schedule``).
    """
    keep_freed_memory()
    stack = Stack(modules)
    optimizer = torch.optim.Adam([stack.flat], lr=lr)
    schedules = schedules.to(indices.device)
    for step in range(schedules.shape[1]):
        rows = indices.gather(1, schedules[:, step])           # R x B
        logits = stack(take_rows(inputs, rows))                # R x B x classes
        losses = F.cross_entropy(logits.flatten(0, 1), take_rows(labels, rows).flatten(),
                                 reduction="none")
        loss = losses.view(rows.shape).mean(1).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return stack


def model_of_element(stack: Stack) -> torch.Tensor:
    """For every element of ``stack.flat``, the index of the model it belongs to."""
    parts = [torch.arange(stack.size).repeat_interleave(shape[1:].numel())
             for shape in stack.shapes.values()]
    return torch.cat(parts).to(stack.flat.device)


def train_early_stopped(modules: list[nn.Module], inputs: torch.Tensor, labels: torch.Tensor,
                        indices: torch.Tensor, schedules: torch.Tensor, lr: float,
                        val_inputs: torch.Tensor, val_labels: torch.Tensor, eval_every: int,
                        patience: int) -> tuple[Stack, dict]:
    """``train_together`` with early stopping per model: every ``eval_every`` steps (and
    after the last step of ``schedules``, the maximum) each model's accuracy on the shared
    validation set; a model stops after ``patience`` evaluations without a better one and
    keeps the weights of its best. Equal to stopping each model alone: a model's training
    does not depend on the others', and steps after its stop never change its kept weights.
    Returns the stack (best weights) and, per model (R values each), ``best_step``,
    ``steps`` (trained until it stopped) and ``capped`` (still improving at the maximum)."""
    if eval_every < 1 or patience < 1:
        raise ValueError(f"eval_every and patience must be >= 1, got {eval_every}, {patience}")
    keep_freed_memory()
    stack = Stack(modules)
    optimizer = torch.optim.Adam([stack.flat], lr=lr)
    schedules = schedules.to(indices.device)
    owner = model_of_element(stack)
    best_flat = stack.flat.detach().clone()
    best = torch.full((stack.size,), -1.0)
    best_step = torch.zeros(stack.size, dtype=torch.int64)
    stale = torch.zeros(stack.size, dtype=torch.int64)
    stopped_at = torch.zeros(stack.size, dtype=torch.int64)
    total = schedules.shape[1]
    for step in range(total):
        rows = indices.gather(1, schedules[:, step])
        logits = stack(take_rows(inputs, rows))
        losses = F.cross_entropy(logits.flatten(0, 1), take_rows(labels, rows).flatten(),
                                 reduction="none")
        optimizer.zero_grad(set_to_none=True)
        losses.view(rows.shape).mean(1).sum().backward()
        optimizer.step()
        if (step + 1) % eval_every and step + 1 < total:
            continue
        running = stopped_at == 0
        accuracy = accuracy_together(stack, val_inputs, val_labels)
        better = running & (accuracy > best)
        with torch.no_grad():
            chosen = better.to(owner.device)[owner]
            best_flat[chosen] = stack.flat[chosen]
        best[better], best_step[better] = accuracy[better], step + 1
        stale = torch.where(better, 0, stale + running.long())
        stopped_at[running & (stale >= patience)] = step + 1
        if bool((stopped_at > 0).all()):
            break
    capped = stopped_at == 0
    stopped_at[capped] = step + 1
    with torch.no_grad():
        stack.flat.copy_(best_flat)
    return stack, {"best_step": best_step, "steps": stopped_at, "capped": capped}


@torch.no_grad()
def accuracy_together(stack: Stack, inputs: torch.Tensor, labels: torch.Tensor,
                      indices: torch.Tensor | None = None, chunk: int = 128) -> torch.Tensor:
    """Accuracy of each stacked model (R values): on its own rows ``indices[r]`` of
    ``inputs``, or on all of them (a shared test set) when ``indices`` is None. In chunks of
    ``chunk`` rows: 128 keeps a chunk's activations small (512 was 1.4-1.7x slower)."""
    hits = torch.zeros(stack.size)
    total = len(inputs) if indices is None else indices.shape[1]
    for start in range(0, total, chunk):
        if indices is None:
            logits = stack(inputs[start:start + chunk], shared=True)
            y = labels[start:start + chunk].expand(stack.size, -1)
        else:
            rows = indices[:, start:start + chunk]
            logits, y = stack(take_rows(inputs, rows)), take_rows(labels, rows)
        hits += (logits.argmax(-1) == y).float().sum(1).cpu()
    return hits / total
