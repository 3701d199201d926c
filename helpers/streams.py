"""Test streams that separate the batch methods (NormAdapt, Tent, EATA, SAR): one corruption at
several batch sizes, all corruptions mixed in one shuffled stream (SAR's "wild" mixed shift),
a label-imbalanced stream (NOTE's Dirichlet order, online label shift) and a continual stream
through the corruptions without reset (Tent online); and what is read off a stream's results:
the error per segment along it, and where predictions collapse.

A stream is a data set (``data.ImageTensorDataset``): the grid (``grid.run_grid``) runs it as
any task. Streams built from several corrupted sets keep their ``segments``: one
``(name, start, stop)`` per corruption, in stream order (the mixed stream's are the images'
corruptions, not contiguous: see ``origins``).
"""

from __future__ import annotations

import numpy as np
import torch

from .data import ImageTensorDataset
from .evaluate import expected_calibration_error
from .findings import correct_per_image, proportion_interval

__all__ = ["by_batch_size", "carried", "collapse_lines", "collapse_point", "collapse_rows",
           "collapsed_windows", "concatenated", "continual", "episodic_cells", "in_setting",
           "label_runs", "label_shifted", "mixed", "segment_cells", "segment_errors",
           "separation_lines", "stream_errors"]

# A window of the stream has collapsed when one class takes more than this share of its
# predictions and its accuracy is at most CHANCE_FACTOR times chance (1 / classes).
COLLAPSE_SHARE = 0.5
CHANCE_FACTOR = 1.5
# What EATA and SAR count of their samples and updates (``stream_errors``).
COUNTERS = ("reliable", "selected", "steps", "momentum_steps", "recoveries")


def concatenated(suite: dict, names, label: str) -> ImageTensorDataset:
    """The sets ``suite[name]`` for ``names``, one after the other, as one set named ``label``,
    with ``segments`` ``[(name, start, stop), ...]`` in that order and ``origins`` (each
    image's set). The sets must share their classes."""
    names = list(names)
    missing = [n for n in names if n not in suite]
    if not names or missing:
        raise ValueError(f"no set {missing or names} in the suite; choose from {list(suite)}")
    parts = [suite[n] for n in names]
    if any(p.class_names != parts[0].class_names for p in parts):
        raise ValueError("the sets have different classes: build them from one test set")
    acceptable = None if parts[0].acceptable is None else [
        a for p in parts for a in p.acceptable]
    out = ImageTensorDataset(torch.cat([p.images for p in parts]),
                             torch.cat([p.labels for p in parts]).numpy(), parts[0].class_names,
                             label, f"{parts[0].description.split(';')[0]}; {label}",
                             imagenet_indices=parts[0].imagenet_indices, acceptable=acceptable)
    bounds = np.cumsum([0, *map(len, parts)])
    out.segments = [(n, int(a), int(b)) for n, a, b in zip(names, bounds, bounds[1:])]
    out.positions = [(n, i) for n, p in zip(names, parts) for i in range(len(p))]
    out.origins = [n for n, _ in out.positions]
    return out


def continual(suite: dict, order) -> ImageTensorDataset:
    """The corrupted sets in ``order`` (ImageNet-C's: ``data.CORRUPTIONS``) one after the other,
    as one stream for an online method to adapt through without reset (Tent online, CoTTA's
    continual setting); ``segments`` say where each corruption starts and stops."""
    order = list(order)
    return concatenated(suite, order, f"continual stream through {len(order)} "
                                      "corruptions in ImageNet-C's order")


def mixed(suite: dict, names, seed: int = 0) -> ImageTensorDataset:
    """Every image of every set in ``names``, shuffled into one stream (seeded: the same seed,
    the same order): SAR's mixed distribution shift. Each (image, corruption) appears once;
    ``origins`` names each position's corruption, ``segments`` are empty (none is contiguous)."""
    names = list(names)
    whole = concatenated(suite, names, "")
    order = torch.randperm(len(whole), generator=torch.Generator().manual_seed(seed))
    out = whole.subset(order, f"{len(names)} corruptions mixed in one shuffled stream "
                              f"(seed {seed})")
    out.name, out.segments = f"mixed stream of {len(names)} corruptions", []
    out.positions = [whole.positions[i] for i in order.tolist()]
    out.origins = [n for n, _ in out.positions]
    return out


def label_shifted(dataset, alpha: float, seed: int = 0, min_chunk: int | None = None,
                  name: str = ""):
    """``dataset`` reordered as NOTE's online label shift (Gong et al., NeurIPS 2022; its
    ``dirichlet`` target distribution, also SAR's and RoTTA's): as many time slots as classes;
    each class's images, shuffled, are split over the slots by proportions drawn from
    Dirichlet(``alpha``) (a slot that already holds its share of the images gets no more); in
    each slot the classes follow in a shuffled order. A small ``alpha`` gives long runs of one
    class. Draws again until every slot holds ``min_chunk`` images (NOTE: 10; default here:
    at most half a slot's share). A permutation of ``dataset``: every image once; its
    ``positions`` are ``(name, index in dataset)``."""
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0 (NOTE uses 0.1), got {alpha!r}")
    labels = np.asarray(dataset.labels)
    classes = int(labels.max()) + 1
    chunks, n = classes, len(labels)
    min_chunk = min(10, n // chunks // 2) if min_chunk is None else min_chunk
    rng = np.random.default_rng(seed)
    for _ in range(10_000):
        slots = _dirichlet_slots(labels, classes, chunks, alpha, rng)
        if min(sum(map(len, slot)) for slot in slots) >= min_chunk:
            break
    else:
        raise ValueError(f"no Dirichlet({alpha}) order gives every slot {min_chunk} images of "
                         f"{n}: use more images or a larger min_chunk")
    order = [int(i) for slot in slots for k in rng.permutation(classes) for i in slot[k]]
    out = dataset.subset(order, f"ordered by NOTE's Dirichlet label shift (alpha {alpha}, "
                                f"seed {seed})")
    out.segments, out.positions = [], [(name, i) for i in order]
    out.origins = [name] * len(order)
    return out


def _dirichlet_slots(labels, classes, chunks, alpha, rng) -> list[list[np.ndarray]]:
    """One draw of NOTE's split: ``slots[j][k]`` the images of class k in time slot j."""
    slots = [[np.array([], dtype=np.int64)] * classes for _ in range(chunks)]
    sizes = np.zeros(chunks)
    for k in range(classes):
        members = rng.permutation(np.flatnonzero(labels == k))
        share = rng.dirichlet(np.full(chunks, alpha)) * (sizes < len(labels) / chunks)
        share = share / share.sum() if share.sum() > 0 else np.full(chunks, 1 / chunks)
        cuts = (np.cumsum(share) * len(members)).astype(int)[:-1]
        for j, part in enumerate(np.split(members, cuts)):
            slots[j][k] = part
            sizes[j] += len(part)
    return slots


def carried(cells: dict, stream) -> dict:
    """The cell a method whose prediction for an image depends on that image alone (Source,
    MEMO: episodic, its views seeded by the image's index in its set) has on ``stream``,
    built from its cells on the sets the stream was made of (``cells``: set name -> cell)
    by the stream's ``positions``: the same predictions, in stream order, by construction."""
    missing = sorted({n for n, _ in stream.positions} - set(cells))
    if missing:
        raise ValueError(f"no cell for {missing}: run the method on the stream's sets first")
    fields = [f for f in ("predictions", "confidences", "labels", "correct")
              if f in cells[stream.positions[0][0]]]
    out = {f: [cells[n][f][i] for n, i in stream.positions] for f in fields}
    correct = correct_per_image(out)
    first = cells[stream.positions[0][0]]
    return {**{k: v for k, v in first.items() if k not in fields}, **out,
            "n": len(correct), "accuracy": float(correct.mean()),
            "ece": float(expected_calibration_error(np.asarray(out["confidences"]), correct)),
            "seconds_per_sample": float(np.mean([c["seconds_per_sample"]
                                                 for c in cells.values()])),
            "counters": {}}


def label_runs(labels) -> float:
    """The mean length of the runs of equal consecutive labels: 1 for a stream that never
    repeats a label, about classes / (classes - 1) for an i.i.d. one, the stream's length for
    one class throughout."""
    labels = np.asarray(labels)
    if not len(labels):
        raise ValueError("no labels: a stream needs at least one image")
    return len(labels) / (1 + int(np.sum(labels[1:] != labels[:-1])))


def by_batch_size(suite: dict, sizes) -> dict:
    """``{(task, batch size): set}`` keyed for notebooks as ``"<task> · batch <b>"``: the
    store's key is (model, task, method), so a task run at several batch sizes needs one
    name per size."""
    if not sizes or any(not isinstance(b, int) or b < 1 for b in sizes):
        raise ValueError(f"batch sizes must be positive integers, got {sizes!r}")
    return {b: {f"{name} · batch {b}": task for name, task in suite.items()} for b in sizes}


def segment_errors(result: dict, segments) -> list[dict]:
    """Per segment ``(name, start, stop)`` of a stream: the error of ``result`` (a grid cell)
    over those images, with its 95% Wilson interval, in stream order."""
    correct = correct_per_image(result)
    if segments and segments[-1][2] > len(correct):
        raise ValueError(f"segments run to image {segments[-1][2]} but the result has "
                         f"{len(correct)}: pass the segments of the stream it ran on")
    rows = []
    for position, (name, start, stop) in enumerate(segments):
        accuracy = float(correct[start:stop].mean())
        low, high = proportion_interval(accuracy, stop - start)
        rows.append({"model": result.get("model"), "method": result.get("method"),
                     "segment": name, "position": position + 1, "start": start,
                     "error": 1 - accuracy, "low": 1 - high, "high": 1 - low})
    return rows


def segment_cells(result: dict, segments) -> list[dict]:
    """A stream's cell cut into one cell per segment ``(name, start, stop)`` (``data``: the
    segment's name, its per-image lists sliced, its accuracy recomputed): the continual
    stream as per-corruption cells, for what pairs or pools cells per corruption (the
    anchors' mean error over the corruptions, images resampled with all their corruptions)."""
    correct = correct_per_image(result)
    if segments and segments[-1][2] > len(correct):
        raise ValueError(f"segments run to image {segments[-1][2]} but the result has "
                         f"{len(correct)}: pass the segments of the stream it ran on")
    lists = [f for f in ("predictions", "confidences", "labels", "correct") if f in result]
    return [{**result, **{f: list(result[f][a:b]) for f in lists}, "data": name, "n": b - a,
             "accuracy": float(correct[a:b].mean())} for name, a, b in segments]


def stream_errors(results: list[dict], methods, by=("model", "data")) -> list[dict]:
    """Per value of ``by`` (a model and a stream, or a model and a setting of several sets)
    and method, in the order of ``methods``: the error over all the images of its cells with
    its 95% Wilson interval, and, summed over the cells, the samples it trusted and used and
    its steps and recoveries where its counters say (EATA, SAR)."""
    groups: dict = {}
    for r in results:
        if r["method"] in methods:
            groups.setdefault((*(r[k] for k in by), r["method"]), []).append(r)
    rows = []
    for key in sorted(groups, key=lambda k: list(methods).index(k[-1])):
        cells = groups[key]
        correct = np.concatenate([correct_per_image(c) for c in cells])
        low, high = proportion_interval(float(correct.mean()), len(correct))
        counts = {}
        for c in cells:
            for name in COUNTERS:
                if name in c.get("counters", {}):
                    counts[name] = counts.get(name, 0) + c["counters"][name]
        rows.append({**dict(zip(by, key)), "method": key[-1], "n": len(correct),
                     "error": 1 - float(correct.mean()), "low": 1 - high, "high": 1 - low,
                     **counts})
    order = list(dict.fromkeys(tuple(r[k] for k in by) for r in results))
    return sorted(rows, key=lambda r: order.index(tuple(r[k] for k in by)))


def collapsed_windows(result: dict, classes: int, window: int,
                      share: float = COLLAPSE_SHARE,
                      chance_factor: float = CHANCE_FACTOR) -> list[int]:
    """The first images of the windows of ``window`` consecutive predictions (the stream cut
    in whole windows, a short tail left out) where the model collapsed onto a class: the
    most-predicted class takes more than ``share`` of the predictions and the accuracy is at
    most ``chance_factor`` / classes."""
    if window < 1 or classes < 2:
        raise ValueError(f"window must be >= 1 and classes >= 2, got {window} and {classes}")
    predictions = np.asarray(result["predictions"])
    correct = correct_per_image(result)
    return [start for start in range(0, len(predictions) - window + 1, window)
            if np.bincount(predictions[start:start + window]).max() > share * window
            and correct[start:start + window].mean() <= chance_factor / classes]


def collapse_point(result: dict, classes: int, window: int, **rule) -> int | None:
    """The first image of the first collapsed window (``collapsed_windows``), None if none."""
    found = collapsed_windows(result, classes, window, **rule)
    return found[0] if found else None


def collapse_rows(results: list[dict], streams: dict, classes: int, window: int,
                  methods=None) -> list[dict]:
    """Per model, stream (task in ``streams``) and method of ``methods`` (default: all but
    Source) whose predictions collapse (``collapsed_windows``) where Source's do not: the
    first such window's first image, the corruption of that image (the stream's
    ``origins``), and how many windows collapse of all. A window where Source collapses too
    is the model's failure on that data, not the method's, and is left out. Collapse is what
    a method that updates along the stream can do; an episodic one (MEMO) starts every image
    from the source weights, so the notebooks pass the online methods."""
    source = {(r["model"], r["data"]): set(collapsed_windows(r, classes, window))
              for r in results if r["method"] == "source"}
    rows = []
    for r in results:
        if r["data"] not in streams or r["method"] == "source" or (
                methods is not None and r["method"] not in methods):
            continue
        own = [w for w in collapsed_windows(r, classes, window)
               if w not in source.get((r["model"], r["data"]), set())]
        if own:
            origins = getattr(streams[r["data"]], "origins", None)
            rows.append({"model": r["model"], "data": r["data"], "method": r["method"],
                         "image": own[0], "window": window,
                         "segment": origins[own[0]] if origins else None,
                         "windows": len(own), "of": len(r["predictions"]) // window})
    return rows


def in_setting(results: list[dict], setting: str) -> list[dict]:
    """Grid cells tagged with their ``setting`` ("batch 16", "mixed stream", ...): ``model``
    becomes "<model> · <setting>" (so that the findings, which pair cells per model, pair
    within a setting) and ``base_model`` keeps the model's name."""
    return [{**r, "model": f"{r['model']} · {setting}", "base_model": r["model"],
             "setting": setting} for r in results]


def episodic_cells(results: list[dict], tasks: dict, sets: dict) -> list[dict]:
    """An episodic method's cells (``results``: per model, its cells on the sets of ``sets``,
    name -> set) for the tasks ``tasks`` (name -> one of ``sets``, or a stream built from
    them: ``carried``): what it would predict there, by construction, without running again."""
    out = []
    for model in dict.fromkeys(r["model"] for r in results):
        cells = {r["data"]: r for r in results if r["model"] == model}
        for name, task in tasks.items():
            same = next((s for s, d in sets.items() if d is task), None)
            cell = cells[same] if same is not None else carried(cells, task)
            out.append({**cell, "model": model, "data": name})
    return out


def collapse_lines(rows: list[dict], streams_run: list[str], window: int,
                   classes: int) -> list[str]:
    """``collapse_rows`` in words: one sentence per model and method that collapse, naming
    each stream and where on it (the image, and its corruption where the stream has several),
    then the rule; or one sentence saying that none collapsed on ``streams_run``."""
    rule = (f"Collapse: a window of {window} consecutive predictions where one class takes "
            f"more than {COLLAPSE_SHARE:.0%} of them and the accuracy is at most "
            f"{CHANCE_FACTOR:g} times chance ({CHANCE_FACTOR / classes:.2f}), in a window "
            f"where Source does not collapse.")
    if not rows:
        return [f"No method collapsed on {', '.join(streams_run)}. {rule}"]
    grouped: dict = {}
    for r in rows:
        where = f"{r['data']} from image {r['image']:,}" + (
            f" ({r['segment'].replace('_', ' ')})" if r["segment"] else "") + (
            f", {r['windows']} of its {r['of']} windows")
        grouped.setdefault((r["model"], r["method"]), []).append(where)
    return [f"{model} · **{method}** collapses on {'; '.join(places)}."
            for (model, method), places in grouped.items()] + [rule]


def separation_lines(rows: list[dict], counts: list[dict]) -> list[str]:
    """Where EATA or SAR differ from NormAdapt or Tent beyond the 95% interval (``rows``:
    ``findings.compare`` rows of EATA and SAR against NormAdapt and Tent), or, where none
    does, why, from the samples they used and their recoveries (``counts``: their
    ``stream_errors`` rows)."""
    differ = [r for r in rows if r["ci_low"] > 0 or r["ci_high"] < 0]
    if differ:
        return [f"{r['model']} · **{r['method']}** differs from {r['baseline']} beyond its "
                f"interval: accuracy {r['baseline_accuracy']:.3f} → {r['accuracy']:.3f} "
                f"({r['change']:+.3f}, 95% CI {r['ci_low']:+.3f} to {r['ci_high']:+.3f})."
                for r in differ]
    used = []
    for c in counts:
        taken = c.get("selected", c.get("reliable", 0))
        where = " · ".join(str(c[k]) for k in ("model", "base_model", "setting") if k in c)
        used.append(f"{where} · {c['method']} used {taken:,} of {c['n']:,} samples "
                    f"({taken / c['n']:.0%}), {c.get('steps', 0):,} steps, "
                    f"{c.get('recoveries', 0):,} recoveries")
    return ["In no setting do EATA or SAR differ from NormAdapt or Tent beyond the 95% "
            "interval. What they used: " + "; ".join(used) + "."]
