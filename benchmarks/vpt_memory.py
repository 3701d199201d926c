"""Memory and time of one VPT-deep training step (100 prompts, ViT-B/16, 224 px, batch 8):
eager attention without checkpointing (the baseline) against scaled-dot-product attention
with gradient-checkpointed blocks, measured in the same run. Run on demand:

    python benchmarks/vpt_memory.py [--batch 8] [--prompts 100] [--steps 3] [--threads 1]

Each configuration runs in fresh processes (CPU) so that its peak resident memory above the
resting level (weights, optimizer state, runtime excluded) is its own: one process measures
the memory with glibc mapping each tensor on its own (resident memory follows the live
tensors; see helpers.vpt.meter), another the time per step with glibc's usual settings. Target: at least 3x
lower peak step memory at no more than 40% more time per step on CPU. Random weights: memory
and time do not depend on their values.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from helpers.vpt import StepConfig, measure_step

CONFIGS = {"eager, no checkpointing": dict(attention="eager", checkpointing=False),
           "sdpa, checkpointing": dict(attention="sdpa", checkpointing=True)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after a warm-up step")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's; 1 is steadier on a shared machine)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    rows = {}
    for name, change in CONFIGS.items():
        config = StepConfig(mode="vpt-deep", n_prompts=args.prompts, batch_size=args.batch,
                            image_size=args.image_size, steps=args.steps, device=args.device,
                            threads=args.threads, **change)
        memory = measure_step(replace(config, steps=1), allocator="live")
        timed = measure_step(config, allocator="default")
        rows[name] = row = {**timed, "peak_mb": memory["peak_mb"],
                            "default_allocator_peak_mb": timed["peak_mb"]}
        print(f"{name:26s} peak step memory {row['peak_mb']:8.1f} MB "
              f"(glibc defaults: {timed['peak_mb']:.0f} MB)   "
              f"{row['seconds_per_step']:6.2f} s/step   (resting {row['rest_mb']:.0f} MB, "
              f"{row['tokens']} tokens, {row['threads']} threads, {args.device})", flush=True)
    base, new = rows.values()
    memory, time = base["peak_mb"] / new["peak_mb"], new["seconds_per_step"] / base["seconds_per_step"]
    print(f"memory: {memory:.2f}x lower (target >= 3x); time: {time:.2f}x "
          f"({100 * (time - 1):+.0f}%, target <= +40%)")


if __name__ == "__main__":
    main()
