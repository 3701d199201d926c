"""Shared by the benchmark scripts (run as ``python benchmarks/<name>.py``, so this folder is
on the import path): timings of competing functions taken in turns, so that a busy machine
slows all of them alike."""

import time


def timed_in_turn(fns: dict, repeats: int) -> dict:
    """Each function's times over ``repeats`` rounds, the functions taking turns after one
    warm-up call each."""
    for fn in fns.values():
        fn()  # warm-up
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times
