"""The repeats of one fraction trained together (one stacked network) vs one by one (a plain
loop of Adam over each module): same data, same batches, same steps. Run on demand:

    python benchmarks/transfer_speed.py [--repeats 8] [--steps 30] [--threads N]

For each training-set size (a fraction's subset; the batch is min(64, n)) prints the seconds
of both and their ratio (target: together at least 3x faster for 8 repeats of the default CNN
on 2 CPU cores), and checks that both give the same weights.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from helpers.transfer import CnnConfig, batch_schedule, build_cnn, train_one, train_together


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(config: CnnConfig, repeats: int, n: int, steps: int, batch: int) -> dict:
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
    alone = [copy.deepcopy(m) for m in modules]
    one_by_one = timed(lambda: [train_one(m, pool, labels, indices[r], schedules[r], 1e-3)
                                for r, m in enumerate(alone)])
    stack = None

    def together():
        nonlocal stack
        stack = train_together(modules, pool, labels, indices, schedules, 1e-3)

    seconds = timed(together)
    error = max(float((a - b).abs().max()) for r, m in enumerate(alone)
                for a, b in zip(stack.module(r).state_dict().values(), m.state_dict().values()))
    return {"n": n, "batch": min(batch, n), "one_by_one": one_by_one, "together": seconds,
            "ratio": one_by_one / seconds, "max_weight_difference": error}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 20, 100, 2000],
                        help="training-set sizes (a fraction's subset)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = CnnConfig()
    print(f"default CNN {config.to_json()}\n{args.repeats} repeats, {args.steps} steps, "
          f"{torch.get_num_threads()} threads")
    print(f"{'n':>6} {'batch':>5} {'one by one s':>13} {'together s':>11} {'ratio':>6} "
          f"{'max |dw|':>9}")
    for n in args.sizes:
        r = compare(config, args.repeats, n, args.steps, args.batch)
        print(f"{r['n']:6d} {r['batch']:5d} {r['one_by_one']:13.2f} {r['together']:11.2f} "
              f"{r['ratio']:6.2f} {r['max_weight_difference']:9.1e}")


if __name__ == "__main__":
    main()
