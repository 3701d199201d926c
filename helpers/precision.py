"""Mixed precision for the test-time methods (MEMO, MEMO_PLUS, TPT, Zero) and VPT's training
step, in one place: the forward passes run under autocast, while the weights, the entropy or
cross-entropy and the optimizer step stay in float32.

``precision`` is one of:

* ``"fp32"``: no autocast (the default on a CPU, where float16 is slow and bfloat16 gains
  little);
* ``"amp"``: float16 autocast on CUDA, as the official TPT code runs (``torch.cuda.amp``
  with a ``GradScaler(init_scale=1000)``, so that small float16 gradients do not vanish),
  bfloat16 autocast elsewhere;
* ``"bf16"``: bfloat16 autocast on any device (no loss scaling: bfloat16 has float32's
  range); what the tests run on a CPU against float32;
* ``"fp16"``: float16 autocast with loss scaling on any device (``"amp"`` on CUDA; on a CPU
  the tests run the loss scaling with it);
* ``"auto"``: ``"amp"`` on CUDA, ``"fp32"`` otherwise, decided by the device of the model
  when the method is built. Methods record the precision they resolved to in ``config()``,
  so a results file says which one made its numbers.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("auto", "fp32", "amp", "bf16", "fp16")
# The official TPT's GradScaler(init_scale=1000): the loss scale float16 gradients start at.
LOSS_SCALE = 1000.0


class Precision:
    """The autocast and the loss scaling of one precision on one device."""

    def __init__(self, precision: str = "auto", device="cpu"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not "
                             f"{precision!r}")
        self.device_type = torch.device(device).type
        cuda = self.device_type == "cuda"
        self.name = ("amp" if cuda else "fp32") if precision == "auto" else precision
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16,
                      "amp": torch.float16 if cuda else torch.bfloat16}[self.name]
        # float16 needs loss scaling (its smallest normal number is 6e-5); made at the first step
        self.scaled = self.dtype == torch.float16
        self.scaler: torch.amp.GradScaler | None = None

    def autocast(self):
        """The context of the forward passes (nothing for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> bool:
        """Backward and one optimizer step on float32 weights; under float16 the loss is
        scaled and the step skipped when a gradient overflowed (returns False; the scale then
        halves, as torch's GradScaler does)."""
        if not self.scaled:
            loss.backward()
            optimizer.step()
            return True
        if self.scaler is None:
            self.scaler = torch.amp.GradScaler(self.device_type, init_scale=LOSS_SCALE)
        scale = self.scaler.get_scale()
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= scale

    def describe(self) -> str:
        """``fp32``, ``amp (float16 autocast)``, ``bf16 (bfloat16 autocast)``: for config()."""
        if self.dtype is None:
            return "fp32"
        kind = str(self.dtype).removeprefix("torch.")
        scaled = f", loss scale from {LOSS_SCALE:g}" if self.scaled else ""
        return f"{self.name} ({kind} autocast{scaled})"


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter (CPU for a model without any)."""
    return next(model.parameters(), torch.empty(0)).device
