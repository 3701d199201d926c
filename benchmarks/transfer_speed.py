"""The repeats of one fraction trained together (one stacked network) vs one by one (a plain
loop of Adam over each module): same data, same batches, same steps. Run on demand:

    python benchmarks/transfer_speed.py [--repeats 8] [--steps 30] [--rounds 3] [--threads N]
                                        [--study]

For each training-set size (a fraction's subset; the batch is min(64, n)) prints the seconds
of both and their ratio (target: together at least 3x faster for 8 repeats of the default CNN
on 2 CPU cores): first for the whole CNN trained from scratch (the study's baseline setting,
its most expensive training), with ``--study`` also for every training of one fraction as
``run_series`` builds them (the baseline, and each variant at each cut point: 17 trainings of
8 repeats; frozen prefixes' features computed once for both sides). Both sides are timed in
turns, after a warm-up, each the fastest of ``--rounds``; both run with freed memory kept for
reuse (``helpers.allocator``, which ``train_together`` sets), so the ratio is not the
allocator's. ``max |dw|`` is the largest weight difference between the two after the last
step: float rounding (1e-8 to 1e-6) until a max-pool or ReLU decision on a near-tie goes the
other way in one of the 8 x 30 steps, after which the two trajectories part (up to 1e-2 seen;
the equality itself is tested on a tiny case in ``tests/test_transfer.py``).

Measured on 2 shared CPU cores (torch 2.14, 2026-12-04), 8 repeats, 30 steps, three rounds,
several runs. The whole CNN: n = 5 5.4-6.1x, n = 20 3.3-3.8x, batch 64 (n = 100, 2,000)
2.7-3.5x. Every training of one fraction: n = 5 4.8-5.9x, n = 20 3.4-3.9x, batch 64
2.8-3.3x. At batch 64 the ratio depends on the machine's state more than on the code: one by
one swings between 1.0 and 1.7 s (its small operations wait on the second core's thread),
together stays at 0.38-0.47 s.

Why it stops near 3x at batch 64 with PyTorch's own kernels: stacking makes each small
operation 8 times larger, but the larger operations are oneDNN's grouped and depthwise
convolutions with 8 channels per model, which run at about a quarter of these cores' peak
(the stacked step: 0.6 GFLOP of arithmetic in 12-14 ms, 1.6-1.8 ms per model against 4.3-5.1
ms for one model alone); the first layer (3x3 convolution, max-pooling and ReLU on 28x28 maps,
whose 13 MB output is written, pooled, and zero-filled and scattered back in the backward pass)
takes 40% of the step. Tried and not faster: block-diagonal dense or per-phase (stride-2, 4x4)
convolutions, NCHW layouts, two Python threads of four models each, torch.compile (2x slower
with its backward), and a Numba kernel fusing the first convolution with its pooling (its
forward no faster than oneDNN's two kernels).

History: the allocator setting and the depthwise first layer took it from 1.4-2.0x to about
3x; one flat parameter tensor (one Adam pass) 5% more; gathering rows with ``index_select``,
the dense layers' weight gradient in its own orientation and frozen features fed without the
spatial layout took the weakest trainings of a fraction (a dense layer on the first layer's
features) from 1.5x to 3.6x.
"""

from __future__ import annotations

import argparse
import copy

import torch
from timing import timed_in_turn

from helpers.allocator import keep_freed_memory
from helpers.transfer import (
    CnnConfig,
    PretrainConfig,
    SeriesConfig,
    batch_schedule,
    build_cnn,
    train_one,
    train_together,
)
from helpers.transfer.study import PrefixInputs, fresh_modules


def _problem(config: CnnConfig, repeats: int, n: int, steps: int, batch: int):
    """A pool of random images, and per repeat a training subset of it and a batch order."""
    torch.manual_seed(0)
    pool = torch.randn(4000, config.in_channels, config.image_size, config.image_size)
    labels = torch.randint(0, config.num_classes, (4000,))
    indices = torch.stack([torch.randperm(4000)[:n] for _ in range(repeats)])
    schedules = torch.stack([batch_schedule(n, batch, steps, torch.Generator().manual_seed(r))
                             for r in range(repeats)])
    return pool, labels, indices, schedules


def _compare(trainings: list, labels, indices, schedules, rounds: int) -> dict:
    """``trainings``: (modules, inputs) pairs, each trained one by one and together."""
    trained = {}

    def one_by_one():
        trained["alone"] = [[train_one(copy.deepcopy(m), x, labels, indices[r], schedules[r],
                                       1e-3) for r, m in enumerate(modules)]
                            for modules, x in trainings]

    def together():
        trained["stack"] = [train_together(modules, x, labels, indices, schedules, 1e-3)
                            for modules, x in trainings]

    times = timed_in_turn({"one_by_one": one_by_one, "together": together}, rounds)
    error = max(float((a - b).abs().max())
                for stack, alone in zip(trained["stack"], trained["alone"])
                for r, m in enumerate(alone)
                for a, b in zip(stack.module(r, m).state_dict().values(),
                                m.state_dict().values()))
    best = {name: min(seconds) for name, seconds in times.items()}
    return {**best, "ratio": best["one_by_one"] / best["together"],
            "max_weight_difference": error}


def compare(config: CnnConfig, repeats: int, n: int, steps: int, batch: int,
            rounds: int) -> dict:
    """The whole default CNN trained from scratch (the study's baseline setting)."""
    pool, labels, indices, schedules = _problem(config, repeats, n, steps, batch)
    modules = []
    for r in range(repeats):
        torch.manual_seed(r)
        modules.append(build_cnn(config))
    return {"n": n, "batch": min(batch, n),
            **_compare([(modules, pool)], labels, indices, schedules, rounds)}


def compare_fraction(config: CnnConfig, repeats: int, n: int, steps: int, batch: int,
                     rounds: int) -> dict:
    """Every training of one fraction of the study, as ``run_series`` builds them: the
    baseline, and each variant (re-initialised or truncated after the cut, kept layers frozen
    or trained) at each cut point, each with its repeats; frozen prefixes' features computed
    once, for both sides, as the study does. A random network stands in for the pretrained
    one (the time does not depend on its weights)."""
    pool, labels, indices, schedules = _problem(config, repeats, n, steps, batch)
    series = SeriesConfig("benchmark", PretrainConfig(cnn=config))
    net = build_cnn(series.pretrain.cnn).eval()
    inputs = PrefixInputs(net, pool, pool[:1])
    trainings = []
    for variant, cut in series.settings():
        trainings.append((fresh_modules(series, net, variant, cut, repeats),
                          inputs(variant, cut)[0]))
    return {"n": n, "batch": min(batch, n), "trainings": len(trainings),
            **_compare(trainings, labels, indices, schedules, rounds)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 20, 100, 2000],
                        help="training-set sizes (a fraction's subset)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--study", action="store_true",
                        help="also time every training of one fraction of the study")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()
    config = CnnConfig()
    print(f"default CNN {config.to_json()}\n{args.repeats} repeats, {args.steps} steps, "
          f"{torch.get_num_threads()} threads")
    tables = [("the whole CNN from scratch (the baseline setting)", compare)]
    if args.study:
        tables.append(("every setting of one fraction of the study", compare_fraction))
    for title, measure in tables:
        print(f"\n{title}\n{'n':>6} {'batch':>5} {'one by one s':>13} {'together s':>11} "
              f"{'ratio':>6} {'max |dw|':>9}")
        for n in args.sizes:
            r = measure(config, args.repeats, n, args.steps, args.batch, args.rounds)
            print(f"{r['n']:6d} {r['batch']:5d} {r['one_by_one']:13.2f} {r['together']:11.2f} "
                  f"{r['ratio']:6.2f} {r['max_weight_difference']:9.1e}")


if __name__ == "__main__":
    main()
