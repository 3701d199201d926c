"""One evaluation loop for every method and dataset, and the results files it writes."""

from __future__ import annotations

import json
import platform
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import fingerprint
from .data import batches
from .jsonfile import (
    append_json_line,
    jsonable,
    move_aside,
    plain,
    read_json,
    read_json_lines,
    write_json,
)

__all__ = ["ResultStore", "RunLog", "changed_predictions", "evaluate", "pivot", "run_info",
           "summary_rows", "write_json", "cell_code", "expected_calibration_error",
           "ece_with_interval", "ece_text", "calibration_bins", "ECE_MIN_IMAGES"]


ECE_BINS = 15
# Fewer test images than this and ECE is not reported (``ece_with_interval``): 10 per bin on
# average over the 15 bins.
ECE_MIN_IMAGES = 150
ECE_RESAMPLES = 1000


def confidence_bins(confidences, n_bins: int = ECE_BINS) -> np.ndarray:
    """Each confidence's bin: bin b holds (b / n_bins, (b + 1) / n_bins], bin 0 also 0."""
    confidences = np.asarray(confidences, dtype=np.float64)
    return np.clip(np.ceil(confidences * n_bins).astype(int) - 1, 0, n_bins - 1)


def calibration_bins(confidences, correct, n_bins: int = ECE_BINS) -> list[dict]:
    """Per confidence bin (``confidence_bins``): its bounds, how many predictions fall in it,
    their mean confidence and their accuracy (None for an empty bin). What a reliability
    diagram draws; ECE is the count-weighted mean of |accuracy - confidence| over them."""
    confidences = np.asarray(confidences, dtype=np.float64).ravel()
    correct = np.asarray(correct, dtype=np.float64).ravel()
    bins = confidence_bins(confidences, n_bins)
    rows = []
    for b in range(n_bins):
        in_bin = bins == b
        count = int(in_bin.sum())
        rows.append({"bin": b, "lower": b / n_bins, "upper": (b + 1) / n_bins, "count": count,
                     "confidence": float(confidences[in_bin].mean()) if count else None,
                     "accuracy": float(correct[in_bin].mean()) if count else None})
    return rows


def ece_with_interval(confidences, correct, n_bins: int = ECE_BINS,
                      min_images: int = ECE_MIN_IMAGES, level: float = 0.95,
                      resamples: int = ECE_RESAMPLES, seed: int = 0) -> dict:
    """ECE (15 bins, as ``expected_calibration_error``) with a percentile bootstrap interval
    over the test images: ``{"ece", "low", "high", "n", "reason"}``. ``confidences`` and
    ``correct`` are per image (1-D), or tasks x images (2-D: the same images under several
    corruptions, resampled with all their tasks, as ``findings.paired_bootstrap`` does), or
    a list of such 2-D arrays (independent groups, resampled apart).

    Below ``min_images`` predictions (150: 10 per bin on average) ECE is None, its
    ``reason`` says why, and ``low``/``high`` are None: a bin of m predictions measures its
    accuracy in steps of 1/m, and sampling noise alone makes |accuracy - confidence| about
    0.8 sqrt(p (1 - p) / m) (0.1 for m = 10 at p = 0.8), as large as the miscalibration one
    wants to see. Above it that upward bias shrinks but remains; the bootstrap ECEs carry it
    too and sit above the estimate for a nearly calibrated model, so the interval (level
    ``level``) is widened to include the estimate."""
    groups = _ece_groups(confidences, correct)
    n = sum(c.size for c, _ in groups)
    if n < min_images:
        images = "1 image is" if n == 1 else f"{n} images are"
        return {"ece": None, "low": None, "high": None, "n": n,
                "reason": f"{images} too few to bin (fewer than {min_images})"}
    ece = expected_calibration_error(np.concatenate([c.ravel() for c, _ in groups]),
                                     np.concatenate([k.ravel() for _, k in groups]), n_bins)
    values = _bootstrap_ece(groups, n_bins, resamples, np.random.default_rng(seed))
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return {"ece": ece, "low": float(min(low, ece)), "high": float(max(high, ece)), "n": n,
            "reason": None}


def _ece_groups(confidences, correct) -> list[tuple[np.ndarray, np.ndarray]]:
    """The inputs of ``ece_with_interval`` as a list of (tasks x images) array pairs."""
    if isinstance(confidences, (list, tuple)) and confidences and np.ndim(confidences[0]) == 2:
        pairs = list(zip(confidences, correct))
    else:
        pairs = [(confidences, correct)]
    groups = []
    for conf, hit in pairs:
        conf, hit = np.asarray(conf, dtype=np.float64), np.asarray(hit, dtype=np.float64)
        if conf.shape != hit.shape or conf.ndim > 2:
            raise ValueError(f"confidences {conf.shape} and correct {hit.shape} must have the "
                             "same shape: per image, or tasks x images")
        groups.append((np.atleast_2d(conf), np.atleast_2d(hit)))
    return groups


def _bootstrap_ece(groups, n_bins: int, resamples: int, rng) -> np.ndarray:
    """ECE of ``resamples`` resamples of the images (columns) of each group, in chunks of
    about two million predictions: sum over bins of |hits - confidences| / n per resample."""
    n = sum(c.size for c, _ in groups)
    prepared = [(confidence_bins(conf, n_bins), hit - conf) for conf, hit in groups]
    values = np.empty(resamples)
    chunk = max(1, 2_000_000 // n)
    for start in range(0, resamples, chunk):
        r = min(chunk, resamples - start)
        gap = np.zeros((r, n_bins))
        offsets = (np.arange(r) * n_bins)[:, None]
        for bins, gaps in prepared:
            picks = rng.integers(0, bins.shape[1], size=(r, bins.shape[1]))
            for task_bins, task_gaps in zip(bins, gaps):  # an image keeps all its tasks
                slot = task_bins[picks]
                slot += offsets  # resample i's bins are i * n_bins + bin
                gap += np.bincount(slot.ravel(), weights=task_gaps[picks].ravel(),
                                   minlength=r * n_bins).reshape(r, n_bins)
        values[start:start + r] = np.abs(gap).sum(1) / n
    return values


def ece_text(ece: dict) -> str:
    """``ece_with_interval``'s result as a table cell: ``0.107 (0.090–0.120)``, or
    ``n/a: 26 images are too few to bin (fewer than 150)``."""
    if ece["ece"] is None:
        return f"n/a: {ece['reason']}"
    return f"{ece['ece']:.3f} ({ece['low']:.3f}–{ece['high']:.3f})"


def expected_calibration_error(confidences, correct, n_bins: int = ECE_BINS) -> float:
    """ECE with equal-width confidence bins: the sample-weighted mean over bins of
    |accuracy - mean confidence| (Guo et al., 2017)."""
    confidences = np.asarray(confidences, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if len(confidences) == 0:
        return float("nan")
    bins = confidence_bins(confidences, n_bins)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidences[in_bin].mean())
    return float(ece)


def _correct(preds, labels, acceptable=None) -> np.ndarray:
    """Hits; where a set lists acceptable labels per item (the sample photos: "espresso"
    or "cup"), any of them counts."""
    if acceptable is None:
        return (preds == labels).numpy()
    return np.array([p in ok or p == y for p, y, ok in zip(preds.tolist(), labels.tolist(),
                                                          acceptable)])


def predict(adapter, dataset, batch_size: int = 64, device=None, progress: bool = True,
            desc: str | None = None, start: int = 0, stop: int | None = None) -> dict:
    """Run ``adapter`` from its source state over ``dataset[start:stop]`` (the images keep
    their indices in ``dataset`` as keys, so a part predicts as the whole does): predictions,
    confidences (float32, unrounded), labels, seconds and the adapter's counters, the raw
    material of ``measures``. The adapter is reset afterwards."""
    device = device or next(adapter.model.parameters()).device
    adapter.reset()
    torch.manual_seed(adapter.seed)
    stop = len(dataset) if stop is None else stop
    preds, confs, labels = [], [], []
    begin = time.perf_counter()
    bar = tqdm(total=stop - start, desc=desc or adapter.name, disable=not progress,
               leave=False)
    for idx, images, y in batches(dataset, batch_size, start, stop):
        logits = adapter(images.to(device), keys=idx)
        probs = logits.float().softmax(-1).cpu()
        conf, pred = probs.max(-1)
        preds.append(pred)
        confs.append(conf)
        labels.append(y)
        bar.update(len(idx))
    bar.close()
    raw = {"method": adapter.name, "seconds": time.perf_counter() - begin,
           "counters": dict(adapter.counters), "config": adapter.config(),
           "predictions": torch.cat(preds), "confidences": torch.cat(confs),
           "labels": torch.cat(labels)}
    adapter.reset()
    return raw


def measures(raw: dict, acceptable=None) -> dict:
    """Accuracy, ECE (15 bins), mean confidence, seconds per sample and the per-sample lists
    from ``predict``'s output (``acceptable``: a data set's acceptable labels per image)."""
    preds, confs, labels = raw["predictions"], raw["confidences"], raw["labels"]
    correct = _correct(preds, labels, acceptable)
    return {
        "method": raw["method"],
        "n": len(labels),
        "accuracy": float(correct.mean()),
        "ece": expected_calibration_error(confs.numpy(), correct),
        "mean_confidence": float(confs.mean()),
        "seconds_per_sample": raw["seconds"] / max(len(labels), 1),
        "counters": raw["counters"],
        "config": raw["config"],
        "predictions": preds.tolist(),
        "labels": labels.tolist(),
        "correct": correct.astype(int).tolist(),
        "confidences": [round(c, 6) for c in confs.tolist()],
    }


def evaluate(adapter, dataset, batch_size: int = 64, device=None, progress: bool = True,
             desc: str | None = None) -> dict:
    """Run ``adapter`` over ``dataset`` from its source state and measure accuracy, ECE
    (15 bins), mean confidence and seconds per sample (adaptation included). Same seed,
    same results: views are seeded per image index, and the adapter starts from reset."""
    raw = predict(adapter, dataset, batch_size, device, progress, desc)
    return measures(raw, getattr(dataset, "acceptable", None))


def join_parts(parts: list[dict]) -> dict:
    """The parts of one cell (``predict`` outputs over consecutive image ranges, in order) as
    one: what ``predict`` gives over the whole range for a method whose predictions depend on
    each image alone. Seconds and counters add up."""
    counters: dict = {}
    for part in parts:
        for name, count in part["counters"].items():
            counters[name] = counters.get(name, 0) + count
    return {"method": parts[0]["method"], "config": parts[0]["config"], "counters": counters,
            "seconds": sum(p["seconds"] for p in parts),
            **{k: torch.cat([p[k] for p in parts])
               for k in ("predictions", "confidences", "labels")}}


def run_info(seed: int | None = None) -> dict:
    """Versions, device and seed: what a reader needs to reproduce a results file."""
    try:
        from importlib.metadata import version
        clip_version = version("clip-anytorch")
    except Exception:  # noqa: BLE001 - any missing distribution means "unknown"
        clip_version = None
    import torchvision
    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "clip": clip_version,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(),
        "seed": seed,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def summary_rows(results: list[dict], keys=("model", "data"),
                 ece_interval: bool = True) -> list[dict]:
    """Short rows (no per-sample lists) for tables and the batch summary. ``ece`` is the
    point estimate at any size; with ``ece_interval`` (about 20 ms per cell of 320 images),
    ``ece_text`` is what to print (``ece_with_interval``: ``0.107 (0.090–0.120)``, or
    ``n/a: ...`` below ``ECE_MIN_IMAGES``), with its bounds in ``ece_low`` and ``ece_high``
    (None where not reported)."""
    fields = ("method", "accuracy", "ece", "mean_confidence", "seconds_per_sample", "n")
    rows = []
    for r in results:
        row = {k: r.get(k) for k in keys}
        row.update({k: r[k] for k in fields})
        skipped = r.get("counters", {}).get("skipped_nonfinite", 0)
        row["skipped_nonfinite"] = skipped
        if ece_interval and "confidences" in r:
            ece = ece_with_interval(r["confidences"], r["correct"] if "correct" in r else
                                    np.equal(r["predictions"], r["labels"]))
            row.update(ece_low=ece["low"], ece_high=ece["high"], ece_text=ece_text(ece))
        rows.append(row)
    return rows


class ResultStore:
    """Finished cells of an experiment grid, saved as each one finishes, so that an
    interrupted notebook resumes where it stopped. A finished cell is appended to a journal
    beside the file (``<file>.journal``, one JSON line flushed to disk): rewriting the whole
    file per cell cost a grid of n cells O(n^2) (notebook 01's 9 MB store, 700 cells: about
    2 minutes of its 15). The file is rewritten atomically, the journal folded in, when the
    journal has grown larger than the file (so each cell is written O(1) times on average)
    and when the store is opened. The store is kept for the same
    ``parameters`` (data, seed); a cell is kept for the same ``settings`` (its method's
    options for its model) and the same ``code`` (the fingerprint of the code that computed
    it, see ``cell_code``), so changing one method's options or source recomputes only its
    cells, and says so. Each cell keeps its per-sample predictions, labels and confidences
    and the ``run_info`` (versions, device, seed) of the run that computed it, which may be
    an earlier one. A corrupt store file is moved aside with a warning and recomputed."""

    def __init__(self, path, parameters: dict):
        self.path, self.parameters = Path(path), plain(parameters)
        self.journal = journal_of(self.path)
        self.cells: dict[str, dict] = {}
        self._announced: set[str] = set()
        # Bytes of the file and of the journal; None: the file is not this store's (other
        # parameters, or none yet), so the first cell rewrites it and starts a new journal.
        self._file_bytes: int | None = None
        self._journal_bytes = 0
        saved = read_json(self.path, dict)
        if saved is not None and not isinstance(saved.get("cells", {}), dict):
            move_aside(self.path, "its 'cells' entry is not a mapping")
            saved = None
        if saved is not None and saved.get("parameters") == self.parameters:
            self.cells = saved.get("cells", {})
            self._file_bytes = self.path.stat().st_size
            self.cells.update(journaled_cells(self.journal))
            if self.journal.exists():
                self._rewrite()

    @staticmethod
    def name(key: tuple) -> str:
        return " / ".join(map(str, key))

    def why_stale(self, key: tuple, settings=None, code: dict | None = None) -> str | None:
        """None when the cell is stored for these settings and code; ``"new"`` when it is
        missing; else why the stored cell cannot be used."""
        cell = self.cells.get(self.name(key))
        if cell is None:
            return "new"
        if cell.get("settings") != plain(settings):
            return f"settings changed ({_differences(cell.get('settings'), plain(settings))})"
        return fingerprint.why_stale(cell.get("code"), code) if code is not None else None

    def announce(self, cells) -> None:
        """Print one line per group of stored cells that will be computed again (grouped by
        method and reason), for ``cells`` given as (key, settings, code)."""
        groups = defaultdict(list)
        for key, settings, code in cells:
            why = self.why_stale(key, settings, code)
            if why not in (None, "new"):
                groups[(key[-1], why)].append(key)
                self._announced.add(self.name(key))
        for (method, why), keys in groups.items():
            where = ", ".join(self.name(k[:-1]) for k in keys[:3]) + (
                f" and {len(keys) - 3} more" if len(keys) > 3 else "")
            print(f"{self.path.name}: recomputing {len(keys)} cell(s) of {method} ({where}): "
                  f"{why}")

    def run(self, key: tuple, compute, settings=None, code: dict | None = None) -> dict:
        name = self.name(key)
        if self.why_stale(key, settings, code) is not None:
            if name not in self._announced:
                self.announce([(key, settings, code)])
            self.put(key, compute(), settings, code)
        return self.cells[name]

    def put(self, key: tuple, result: dict, settings=None, code: dict | None = None,
            run: dict | None = None) -> dict:
        """Store a finished cell: a line appended to the journal, or the whole file rewritten
        atomically when the journal has outgrown it; ``run`` says where it was computed
        (default: this process, ``run_info``)."""
        name = self.name(key)
        self.cells[name] = plain({**result, "settings": settings, "code": code,
                                  "run": run or run_info(self.parameters.get("seed"))})
        if self._file_bytes is None or self._journal_bytes > self._file_bytes:
            self._rewrite()
        else:
            self._journal_bytes += append_json_line(self.journal,
                                                    {"name": name, "cell": self.cells[name]})
        return self.cells[name]

    def _rewrite(self) -> None:
        """The whole store into its file, atomically; then the journal is no longer needed
        (a crash between the two replays cells the file already holds: the same values)."""
        write_json(self.path, {"parameters": self.parameters, "cells": self.cells})
        self.journal.unlink(missing_ok=True)
        self._file_bytes, self._journal_bytes = self.path.stat().st_size, 0


def journal_of(path) -> Path:
    """The journal beside a store's file: the cells finished since the file was written."""
    path = Path(path)
    return path.with_name(path.name + ".journal")


def journaled_cells(journal) -> dict:
    """The cells a journal holds, by name, the later of two lines for one cell winning."""
    return {r["name"]: r["cell"] for r in read_json_lines(journal)
            if isinstance(r, dict) and {"name", "cell"} <= set(r)}


def stored_cells(path) -> dict:
    """Every cell of a store's file and journal, whatever its parameters: for tools that
    only read a store (``ResultStore`` checks the parameters)."""
    saved = read_json(path, dict) or {}
    return {**saved.get("cells", {}), **journaled_cells(journal_of(path))}


def _differences(old, new) -> str:
    """``lr 0.001 -> 0.01, n_views 8 -> 16`` for two settings mappings."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return f"{old!r} -> {new!r}"
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys)


def cell_code(method_modules, dataset=None) -> dict:
    """The fingerprint of the code behind a grid cell: the method's modules (with what they
    import), the evaluation loop, the model-building code and, for the package's datasets,
    the data code. A method factory names its modules in ``code_modules``; without them
    (a lambda written in a notebook) every method of ``helpers.tta`` counts."""
    data_module = type(dataset).__module__ if dataset is not None else ""
    return fingerprint.closure(*(method_modules or ["helpers.tta"]), __name__,
                               "helpers.models", data_module)


def pivot(results: list[dict], value: str = "accuracy", index=("model", "data"),
          methods=None) -> list[dict]:
    """Rows per (model, data), one column per method (in the order of ``methods``, None
    where a method does not apply): the shape of the summary tables."""
    methods = list(methods or dict.fromkeys(r["method"] for r in results))
    rows: dict[tuple, dict] = {}
    for r in results:
        key = tuple(r[k] for k in index)
        rows.setdefault(key, {**dict(zip(index, key)), **dict.fromkeys(methods)})
        rows[key][r["method"]] = r[value]
    return list(rows.values())


class RunLog:
    """The results file of one experiment series: a JSON list whose first record is
    ``{"parameters": ..., "code": ...}`` and then one record per finished run, rewritten
    atomically as runs are added, so an interrupted series resumes where it stopped. Runs
    recorded under other parameters, or by other code (``code``: a fingerprint, see
    ``helpers.fingerprint``), are dropped, saying why; a corrupt file is moved aside with
    a warning. A run is identified by the values of its ``key`` fields."""

    def __init__(self, path, parameters: dict, key: tuple, code: dict | None = None):
        self.path, self.parameters, self.key = Path(path), plain(parameters), tuple(key)
        self.code = code
        self.runs: list[dict] = []
        saved = read_json(self.path, list)
        if saved and not (isinstance(saved[0], dict) and all(isinstance(r, dict)
                                                             for r in saved)):
            move_aside(self.path, "its records are not JSON objects")
            saved = None
        if saved and saved[0].get("parameters") == self.parameters:
            stale = fingerprint.why_stale(saved[0].get("code"), code) if code else None
            if stale:
                print(f"{self.path.name}: recomputing its {len(saved) - 1} run(s): {stale}")
            else:
                self.runs = saved[1:]
        self._done = {self._key(r) for r in self.runs}

    def _key(self, record: dict) -> tuple:
        return tuple(json.dumps(record.get(k), default=jsonable) for k in self.key)

    def has(self, **fields) -> bool:
        return self._key(fields) in self._done

    def add(self, records: list[dict]) -> None:
        """Append finished runs and rewrite the file (atomically)."""
        records = plain(records)
        self.runs += records
        self._done |= {self._key(r) for r in records}
        header = {"parameters": self.parameters}
        if self.code is not None:
            header["code"] = self.code
        write_json(self.path, [header, *self.runs])


def changed_predictions(results: list[dict], tasks: dict, baseline: str, method: str,
                        class_names=None) -> list[dict]:
    """The test images where ``method`` and ``baseline`` disagree on being right: one record
    per image (model, data, index in the task, label, both predictions, "fixed" or
    "broken"), for showing per-image cases. Correctness counts a task's acceptable classes.
    With ``class_names``, the label and the predictions are class names, not indices."""
    by_key = {(r["model"], r["data"], r["method"]): r for r in results}
    records = []
    for (model, data, name), r in by_key.items():
        other = by_key.get((model, data, baseline))
        if name != method or other is None:
            continue
        acceptable = getattr(tasks[data], "acceptable", None)
        ok = _correct(torch.tensor(r["predictions"]), torch.tensor(r["labels"]), acceptable)
        ok_before = _correct(torch.tensor(other["predictions"]), torch.tensor(r["labels"]),
                             acceptable)
        name_of = (lambda c: class_names[c]) if class_names is not None else int
        for i in np.flatnonzero(ok != ok_before):
            records.append({"model": model, "data": data, "index": int(i),
                            "label": name_of(r["labels"][i]),
                            baseline: name_of(other["predictions"][i]),
                            method: name_of(r["predictions"][i]),
                            "outcome": "fixed" if ok[i] else "broken"})
    return records


@torch.inference_mode()
def view_agreement(classifier, dataset, views, seed: int = 0, batch_size: int = 16) -> dict:
    """Why MEMO (or TPT) can help a model or not, without adapting anything: on ``dataset``,
    the accuracy of the model on the images (``source``), on each of their views
    (``views``: mean over views) and of the average prediction over the views (``marginal``:
    what the marginal-entropy loss pulls the prediction toward). When the marginal is no
    better than the source, agreeing on the views is no evidence for the right class. Views
    are drawn as the methods draw them: per image index, from ``generator_for(seed, index)``."""
    from .views import generator_for

    classifier.eval()
    device = next(classifier.parameters()).device
    hits = {"source": [], "views": [], "marginal": []}
    for idx, images, labels in batches(dataset, batch_size):
        images = images.to(device)
        stacked = torch.stack([views(image, generator_for(seed, i))
                               for i, image in zip(idx, images)])  # N x V x C x H x W
        probs = classifier(stacked.flatten(0, 1)).float().softmax(-1)
        probs = probs.view(*stacked.shape[:2], -1).cpu()
        acceptable = getattr(dataset, "acceptable", None)
        ok = None if acceptable is None else [acceptable[i] for i in idx]
        hits["source"].append(_correct(classifier(images).argmax(-1).cpu(), labels, ok))
        hits["views"].append(np.stack([_correct(probs[:, v].argmax(-1), labels, ok)
                                       for v in range(probs.shape[1])], 1).mean(1))
        hits["marginal"].append(_correct(probs.mean(1).argmax(-1), labels, ok))
    return {name: float(np.concatenate(values).mean()) for name, values in hits.items()}
