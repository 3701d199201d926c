"""The repeats of one fraction trained together (one stacked network) vs one by one (a plain
loop of Adam over each module): same data, same batches, same steps. Run on demand:

    python benchmarks/transfer_speed.py [--repeats 8] [--steps 30] [--rounds 3] [--threads N]

For each training-set size (a fraction's subset; the batch is min(64, n)) prints the seconds
of both and their ratio (target: together at least 3x faster for 8 repeats of the default CNN
on 2 CPU cores), and checks that both give the same weights. Both are timed in turns, after a
warm-up, each the fastest of ``--rounds``; both run with freed memory kept for reuse
(``helpers.allocator``, which ``train_together`` sets), so the ratio is not the allocator's.

Measured on 2 shared CPU cores (torch 2.14, 2026-12-03), 8 repeats, 30 steps, three runs of
five rounds: batch 64 (n = 100 and 2,000) 2.9-3.7x, median 3.3x (the spread is this machine's:
one by one 1.4-1.7 s, together 0.45-0.53 s); n = 20 3.8-4.1x; n = 5 4.6-5.2x; largest weight
difference 7e-6. Keeping the stacked parameters in one flat tensor (one Adam pass per step)
took about 5% off the stacked time; before it, 2.7-3.3x at batch 64, and before the allocator
setting and the depthwise first layer, 1.4-2.0x.
"""

from __future__ import annotations

import argparse
import copy

import torch
from timing import timed_in_turn

from helpers.allocator import keep_freed_memory
from helpers.transfer import CnnConfig, batch_schedule, build_cnn, train_one, train_together


def compare(config: CnnConfig, repeats: int, n: int, steps: int, batch: int,
            rounds: int) -> dict:
    torch.manual_seed(0)
    pool = torch.randn(4000, config.in_channels, config.image_size, config.image_size)
    labels = torch.randint(0, config.num_classes, (4000,))
    indices = torch.stack([torch.randperm(4000)[:n] for _ in range(repeats)])
    schedules = torch.stack([batch_schedule(n, batch, steps, torch.Generator().manual_seed(r))
                             for r in range(repeats)])
    modules = []
    for r in range(repeats):
        torch.manual_seed(r)
        modules.append(build_cnn(config))
    trained = {}

    def one_by_one():
        trained["alone"] = [train_one(copy.deepcopy(m), pool, labels, indices[r], schedules[r],
                                      1e-3) for r, m in enumerate(modules)]

    def together():
        trained["stack"] = train_together(modules, pool, labels, indices, schedules, 1e-3)

    times = timed_in_turn({"one_by_one": one_by_one, "together": together}, rounds)
    error = max(float((a - b).abs().max()) for r, m in enumerate(trained["alone"])
                for a, b in zip(trained["stack"].module(r).state_dict().values(),
                                m.state_dict().values()))
    best = {name: min(seconds) for name, seconds in times.items()}
    return {"n": n, "batch": min(batch, n), **best,
            "ratio": best["one_by_one"] / best["together"], "max_weight_difference": error}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 20, 100, 2000],
                        help="training-set sizes (a fraction's subset)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()
    config = CnnConfig()
    print(f"default CNN {config.to_json()}\n{args.repeats} repeats, {args.steps} steps, "
          f"{torch.get_num_threads()} threads")
    print(f"{'n':>6} {'batch':>5} {'one by one s':>13} {'together s':>11} {'ratio':>6} "
          f"{'max |dw|':>9}")
    for n in args.sizes:
        r = compare(config, args.repeats, n, args.steps, args.batch, args.rounds)
        print(f"{r['n']:6d} {r['batch']:5d} {r['one_by_one']:13.2f} {r['together']:11.2f} "
              f"{r['ratio']:6.2f} {r['max_weight_difference']:9.1e}")


if __name__ == "__main__":
    main()
