"""Peak memory and time of one training step, above the memory the model already holds.

On CUDA: ``torch.cuda.max_memory_allocated`` minus the allocated memory at rest. On CPU the
process's peak resident memory cannot be trusted after other work in the same process (it
only grows, and freed memory stays mapped), so the measurements run in a fresh Python
process of their own; for each configuration it builds the model, runs a warm-up step
(optimizer state, lazy kernels), releases freed memory to the OS, reads the resident memory
at rest (VmRSS), resets the peak (Linux ``/proc/self/clear_refs``, else a sampler thread)
and reads the peak over the timed steps. Configurations of one backbone share it (built
once, its gradients dropped after each): a random ViT-B/16 takes seconds to build, and
neither memory nor time depends on the weights' values.

The step's peak leaves out what the model holds at rest, which is what sets full fine-tuning
apart: :func:`state_memory` counts the weights, the gradients and the optimizer's state from
the parameters and the optimizer, and each row's ``total_mb`` is the memory of training:
weights + optimizer state + the step's measured peak (activations, gradients and temporaries
of the step: gradients are dropped between steps, so they are part of that peak).

That process starts with ``MALLOC_MMAP_THRESHOLD_=65536`` (``allocator="live"``): glibc then
maps every allocation above 64 KB on its own and unmaps it when freed, so resident memory
rises and falls with the live tensors, as CUDA's allocated memory does. With glibc's usual
settings (``allocator="default"``) freed chunks stay resident and the peak depends on the
heap's fragmentation (the eager ViT-B/16 step read 1.7-1.8 GB instead of 1.2 GB), while the
time per step is the usual one (no page fault for each large tensor).
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ..precision import Precision
from .model import VIT_B16, PromptedViT, build_vit, train_step

MB = 2 ** 20
LIVE_MEMORY_THRESHOLD = 64 * 1024  # bytes; see the module's docstring


@dataclass
class StepConfig:
    """One measured training step; ``overrides`` change the ViT's sizes (see build_vit)."""

    mode: str = "vpt-deep"
    n_prompts: int = 100
    attention: str = "sdpa"
    checkpointing: bool | int = False  # see PromptedViT
    batch_size: int = 8
    image_size: int = 224
    arch: str = VIT_B16
    overrides: dict = field(default_factory=dict)
    num_classes: int = 10
    weights_path: str | None = None
    steps: int = 3
    device: str = "cpu"
    threads: int | None = None
    precision: str = "auto"  # helpers.precision: float32 on a CPU, float16 autocast on CUDA


# ---------------------------------------------------------------- resident memory (Linux)

def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


class _PeakRss:
    """Peak resident memory from now on: VmHWM after resetting it, or, where the kernel does
    not allow the reset, the maximum of VmRSS sampled every millisecond by a thread."""

    def __init__(self):
        self.sampled, self._stop = 0, threading.Event()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._thread = None
        except OSError:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    def _sample(self):
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.is_set():
            rss = int(Path("/proc/self/statm").read_text().split()[1]) * page
            self.sampled = max(self.sampled, rss)
            time.sleep(0.001)

    def peak(self) -> int:
        if self._thread is None:
            return _status_kb("VmHWM")
        self._stop.set()
        self._thread.join()
        return max(self.sampled, _status_kb("VmRSS"))


def _release_freed_memory() -> None:
    """Give memory freed by the warm-up back to the OS, so that the measured steps'
    allocations show up as resident memory again."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: freed memory may stay resident
        pass


# ---------------------------------------------------------------- memory of the model's state

ADAM_SLOTS = 2  # Adam / AdamW keep two tensors per trainable parameter (exp_avg, exp_avg_sq)


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def state_memory(model: torch.nn.Module, optimizer=None) -> dict:
    """MB of what training holds besides the step's activations: ``weights_mb`` (every
    parameter), ``gradients_mb`` (one per trainable parameter, of its dtype) and
    ``optimizer_mb``: the tensors of ``optimizer``'s state when it has taken a step, else (no
    optimizer, or no step yet) Adam's two float32 slots per trainable parameter."""
    parameters = list(model.parameters())
    trainable = [p for p in parameters if p.requires_grad]
    states = [] if optimizer is None else list(optimizer.state.values())
    if states:
        optimizer_bytes = tensor_bytes(v for state in states for v in state.values()
                                       if isinstance(v, torch.Tensor))
    else:
        optimizer_bytes = ADAM_SLOTS * 4 * sum(p.numel() for p in trainable)
    return {"weights_mb": tensor_bytes(parameters) / MB,
            "gradients_mb": tensor_bytes(trainable) / MB, "optimizer_mb": optimizer_bytes / MB}


def total_memory(row: dict) -> float:
    """MB of a training step in all: weights and optimizer state (at rest) plus the step's
    measured peak above rest (activations, gradients, temporaries)."""
    return row["weights_mb"] + row["optimizer_mb"] + row["peak_mb"]


# ---------------------------------------------------------------- the measurement

def _backbone_key(config: StepConfig) -> str:
    return json.dumps([config.arch, config.num_classes, config.weights_path,
                       config.overrides, config.image_size, config.device], sort_keys=True)


def _build(config: StepConfig, backbones: dict | None = None):
    """Model, optimizer, one batch and the step's precision; the backbone comes from
    ``backbones`` (a cache keyed by architecture, sizes, weights and device) when it holds
    one."""
    backbones = {} if backbones is None else backbones
    key = _backbone_key(config)
    if key not in backbones:
        torch.manual_seed(0)
        backbones[key] = build_vit(config.arch, config.num_classes, config.weights_path,
                                   **{**config.overrides, "img_size": config.image_size}
                                   ).to(config.device)
    torch.manual_seed(0)
    n_prompts = config.n_prompts if config.mode.startswith("vpt") else 0
    model = PromptedViT(backbones[key], config.mode, n_prompts, attention=config.attention,
                        checkpointing=config.checkpointing).to(config.device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(config.batch_size, 3, config.image_size, config.image_size,
                         generator=generator).to(config.device)
    labels = torch.randint(config.num_classes, (config.batch_size,),
                           generator=generator).to(config.device)
    return model, optimizer, images, labels, Precision(config.precision, config.device)


def _timed_steps(config, model, optimizer, images, labels, precision) -> list[float]:
    seconds = []
    for _ in range(config.steps):
        start = time.perf_counter()
        train_step(model, optimizer, images, labels, precision)
        if config.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return seconds


def measure_here(config: StepConfig, backbones: dict | None = None) -> dict:
    """Measure in this process: right on CUDA; on CPU only in a fresh process (see
    :func:`measure_steps`), since earlier work leaves memory mapped. ``backbones``: a cache
    shared by the configurations measured in turn (see :func:`_build`)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    model, optimizer, images, labels, precision = _build(config, backbones)
    cuda = config.device.startswith("cuda")
    train_step(model, optimizer, images, labels, precision)  # warm-up: optimizer state, kernels
    optimizer.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        rest = torch.cuda.memory_allocated()
    else:
        _release_freed_memory()
        rest = _status_kb("VmRSS")
        meter = _PeakRss()
    seconds = _timed_steps(config, model, optimizer, images, labels, precision)
    peak = torch.cuda.max_memory_allocated() if cuda else meter.peak()
    row = {"peak_mb": (peak - rest) / MB, "rest_mb": rest / MB,
           "seconds_per_step": statistics.median(seconds),
           "trainable": model.trainable_parameters(), "tokens": model.tokens(config.image_size),
           "weights": model.vit.weights, "threads": torch.get_num_threads(),
           "precision": precision.describe(), **state_memory(model, optimizer)}
    row["total_mb"] = total_memory(row)
    for parameter in model.parameters():  # the shared backbone keeps none of this step's state
        parameter.grad = None
    return row


def _measure_on_cuda(config: StepConfig, backbones: dict) -> dict:
    try:
        return {**asdict(config), **measure_here(config, backbones), "allocator": "cuda"}
    except torch.OutOfMemoryError:  # a result too: this setting does not fit the GPU
        torch.cuda.empty_cache()
        return {**asdict(config), "peak_mb": float("nan"), "seconds_per_step": float("nan"),
                "total_mb": float("nan"), "error": "out of memory", "allocator": "cuda"}


# Run in the fresh process: one configuration per line in, one JSON row per line out.
_CHILD = ("import json, sys; from helpers.vpt.meter import StepConfig, measure_here; "
          "backbones = {}\n"
          "for line in sys.stdin:\n"
          "    row = measure_here(StepConfig(**json.loads(line)), backbones)\n"
          "    print(json.dumps(row), flush=True)")


def measure_steps(configs: list[StepConfig], allocator: str = "live", on_row=None) -> list[dict]:
    """Peak memory of a training step above the resting level (MB) and the median seconds
    per step after a warm-up step, for each config; on CPU in one fresh Python process whose
    ``allocator`` is "live" (resident memory follows the live tensors) or glibc's "default"
    (see above). ``on_row`` is called with each row as it arrives (a progress bar)."""
    if allocator not in ("live", "default"):
        raise ValueError(f"allocator must be 'live' or 'default', not {allocator!r}")
    on_row = on_row or (lambda row: None)
    rows = []
    if any(config.device.startswith("cuda") for config in configs):
        backbones = {}
        for config in configs:
            rows.append(_measure_on_cuda(config, backbones))
            on_row(rows[-1])
        return rows
    repo = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [repo] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    if allocator == "live":
        env["MALLOC_MMAP_THRESHOLD_"] = str(LIVE_MEMORY_THRESHOLD)
    with tempfile.TemporaryFile("w+") as errors:
        child = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=errors, text=True, env=env)
        child.stdin.write("".join(json.dumps(asdict(c)) + "\n" for c in configs))
        child.stdin.close()
        for config, line in zip(configs, child.stdout):
            rows.append({**asdict(config), **json.loads(line), "allocator": allocator})
            on_row(rows[-1])
        child.wait()
        if child.returncode or len(rows) < len(configs):
            errors.seek(0)
            failed = configs[len(rows)] if len(rows) < len(configs) else configs[-1]
            raise RuntimeError(f"measuring {failed} failed:\n{errors.read()[-3000:]}")
    return rows


def measure_step(config: StepConfig, allocator: str = "live") -> dict:
    """:func:`measure_steps` of one config."""
    return measure_steps([config], allocator)[0]


def alternating_times(configs: list[StepConfig], rounds: int = 3) -> list[float]:
    """Median seconds per step of each config, measured in turns (one step of each per round,
    after a warm-up step each) in this process: on a machine shared with other work, load
    that drifts over minutes then weighs on every config alike, not on whichever ran last."""
    built = []
    for config in configs:
        if config.threads:
            torch.set_num_threads(config.threads)
        built.append(_build(config))
        train_step(*built[-1])
    seconds = [[] for _ in configs]
    for _ in range(rounds):
        for config, parts, times in zip(configs, built, seconds):
            times += _timed_steps(replace(config, steps=1), *parts)
    return [statistics.median(times) for times in seconds]


def measure_grid(base: StepConfig, grid: list[dict], progress: bool = True) -> list[dict]:
    """:func:`measure_steps` for each change of ``base`` in ``grid`` (a list of field dicts)."""
    from tqdm.auto import tqdm

    with tqdm(total=len(grid), desc="memory", disable=not progress) as bar:
        rows = measure_steps([replace(base, **change) for change in grid],
                             on_row=lambda row: bar.update())
    for row in rows:
        row.pop("overrides")
    return rows
