"""Memory and time of one VPT-deep training step (100 prompts, ViT-B/16, 224 px, batch 8):
eager attention without checkpointing (the baseline) against scaled-dot-product attention
with gradient-checkpointed blocks, measured in the same run. Run on demand:

    python benchmarks/vpt_memory.py [--batch 8] [--prompts 100] [--rounds 3] [--threads 1]
                                    [--checkpoint-blocks K]

Memory: each configuration in a fresh process (on CPU), peak resident memory of a step above
the resting level (weights, optimizer state, runtime excluded), with glibc mapping each
tensor on its own so that resident memory follows the live tensors (see helpers.vpt.meter).
Time: both configurations built in this process and stepped in turns (median over rounds,
after a warm-up step each), so that load from other work weighs on both alike.
Target: at least 3x lower peak step memory at no more than 40% more time per step on CPU.
Random weights: memory and time do not depend on their values.

Measured on 2 shared CPU cores (torch 2.14, timm 1.0.31): 1,203 -> 209 MB (5.76x lower) at
5.83 -> 7.08 s/step (+21%) with 2 threads; 5.75x at +25-27% with --threads 1.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from helpers.vpt import StepConfig, measure_step
from helpers.vpt.meter import alternating_times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3, help="timed steps of each, in turns")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's; 1 is steadier on a shared machine)")
    parser.add_argument("--checkpoint-blocks", type=int, default=None,
                        help="blocks to checkpoint, from the first (default: all but the last)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    base = StepConfig(mode="vpt-deep", n_prompts=args.prompts, batch_size=args.batch,
                      image_size=args.image_size, steps=1, device=args.device,
                      threads=args.threads)
    checkpointing = True if args.checkpoint_blocks is None else args.checkpoint_blocks
    blocks = "all but the last block" if checkpointing is True else f"{checkpointing} blocks"
    configs = {"eager, no checkpointing": replace(base, attention="eager", checkpointing=False),
               f"sdpa, checkpointing ({blocks})":
                   replace(base, attention="sdpa", checkpointing=checkpointing)}
    memory = {}
    for name, config in configs.items():
        memory[name] = row = measure_step(config)
        print(f"{name:45s} peak step memory {row['peak_mb']:8.1f} MB (resting {row['rest_mb']:.0f} "
              f"MB, {row['tokens']} tokens, {row['threads']} threads, {args.device})", flush=True)
    seconds = alternating_times(list(configs.values()), args.rounds)
    for name, value in zip(configs, seconds):
        print(f"{name:45s} {value:6.2f} s/step (median of {args.rounds}, in turns)")
    (base_mb, new_mb), (base_s, new_s) = [m["peak_mb"] for m in memory.values()], seconds
    print(f"memory: {base_mb / new_mb:.2f}x lower (target >= 3x); time: {new_s / base_s:.2f}x "
          f"({100 * (new_s / base_s - 1):+.0f}%, target <= +40%)")


if __name__ == "__main__":
    main()
