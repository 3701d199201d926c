"""One evaluation loop for every method and dataset, and the results files it writes."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm


def expected_calibration_error(confidences, correct, n_bins: int = 15) -> float:
    """ECE with equal-width confidence bins: the sample-weighted mean over bins of
    |accuracy - mean confidence| (Guo et al., 2017)."""
    confidences = np.asarray(confidences, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if len(confidences) == 0:
        return float("nan")
    bins = np.clip(np.ceil(confidences * n_bins).astype(int) - 1, 0, n_bins - 1)
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


def batches(dataset, batch_size: int):
    """(indices, images, labels) batches; in-memory datasets are sliced without a loader."""
    n = len(dataset)
    for start in range(0, n, batch_size):
        idx = list(range(start, min(start + batch_size, n)))
        if hasattr(dataset, "batch"):
            images, labels = dataset.batch(idx)
        else:
            items = [dataset[i] for i in idx]
            images = torch.stack([im for im, _ in items])
            labels = torch.tensor([int(y) for _, y in items])
        yield idx, images, labels


def evaluate(adapter, dataset, batch_size: int = 64, device=None, progress: bool = True,
             desc: str | None = None) -> dict:
    """Run ``adapter`` over ``dataset`` from its source state and measure accuracy, ECE
    (15 bins), mean confidence and seconds per sample (adaptation included). Same seed,
    same results: views are seeded per image index, and the adapter starts from reset."""
    device = device or next(adapter.model.parameters()).device
    adapter.reset()
    torch.manual_seed(adapter.seed)
    preds, confs, labels = [], [], []
    start = time.perf_counter()
    bar = tqdm(total=len(dataset), desc=desc or adapter.name, disable=not progress, leave=False)
    for idx, images, y in batches(dataset, batch_size):
        logits = adapter(images.to(device), keys=idx)
        probs = logits.float().softmax(-1).cpu()
        conf, pred = probs.max(-1)
        preds.append(pred)
        confs.append(conf)
        labels.append(y)
        bar.update(len(idx))
    bar.close()
    seconds = time.perf_counter() - start
    preds, confs, labels = torch.cat(preds), torch.cat(confs), torch.cat(labels)
    correct = _correct(preds, labels, getattr(dataset, "acceptable", None))
    result = {
        "method": adapter.name,
        "n": len(labels),
        "accuracy": float(correct.mean()),
        "ece": expected_calibration_error(confs.numpy(), correct),
        "mean_confidence": float(confs.mean()),
        "seconds_per_sample": seconds / max(len(labels), 1),
        "counters": dict(adapter.counters),
        "config": adapter.config(),
        "predictions": preds.tolist(),
        "labels": labels.tolist(),
        "correct": correct.astype(int).tolist(),
        "confidences": [round(c, 6) for c in confs.tolist()],
    }
    adapter.reset()
    return result


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


def write_json(path, payload) -> Path:
    """Write JSON atomically (temporary file, then rename): an interrupted run never leaves
    a half-written results file for ``--resume`` to trust."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=1, default=_jsonable))
    os.replace(tmp, path)
    return path


def _jsonable(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (Path, tuple, set)):
        return str(value) if isinstance(value, Path) else list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def summary_rows(results: list[dict], keys=("model", "data")) -> list[dict]:
    """Short rows (no per-sample lists) for tables and the batch summary."""
    fields = ("method", "accuracy", "ece", "mean_confidence", "seconds_per_sample", "n")
    rows = []
    for r in results:
        row = {k: r.get(k) for k in keys}
        row.update({k: r[k] for k in fields})
        skipped = r.get("counters", {}).get("skipped_nonfinite", 0)
        row["skipped_nonfinite"] = skipped
        rows.append(row)
    return rows


class ResultStore:
    """Finished cells of an experiment grid, rewritten atomically after each one, so that
    an interrupted notebook resumes where it stopped. The store is kept for the same
    ``parameters`` (data, seed); a cell is kept for the same ``settings`` (its method's
    options for its model), so changing one method's options recomputes only its cells.
    Each cell keeps its per-sample predictions, labels and confidences and the ``run_info``
    (versions, device, seed) of the run that computed it, which may be an earlier one."""

    def __init__(self, path, parameters: dict):
        self.path, self.parameters = Path(path), _plain(parameters)
        self.cells: dict[str, dict] = {}
        if self.path.is_file():
            saved = json.loads(self.path.read_text())
            if saved.get("parameters") == self.parameters:
                self.cells = saved.get("cells", {})

    def run(self, key: tuple, compute, settings=None) -> dict:
        name, settings = " / ".join(map(str, key)), _plain(settings)
        cell = self.cells.get(name)
        if cell is None or cell.get("settings") != settings:
            self.cells[name] = {**compute(), "settings": settings,
                                "run": run_info(self.parameters.get("seed"))}
            write_json(self.path, {"parameters": self.parameters, "cells": self.cells})
        return self.cells[name]


def _plain(value):
    """As it reads back from JSON, so that saved and new settings compare equal."""
    return json.loads(json.dumps(value, default=_jsonable))


def run_grid(models: dict, tasks: dict, methods: dict, store: ResultStore,
             batch_size: int = 64, progress: bool = True) -> list[dict]:
    """Evaluate every (model, task, method). ``models`` maps a name to a function that
    builds the classifier (called once, and only if some cell is missing); ``methods`` maps
    a name to ``f(model, model_name) -> Adapter``, or None where the method does not apply
    (see ``tta.method_factories``)."""
    results = []
    for model_name, build in models.items():
        model = _Lazy(build)
        for task_name, dataset in tasks.items():
            for method_name, make in methods.items():
                key = (model_name, task_name, method_name)
                settings = make.settings(model_name) if hasattr(make, "settings") else None
                result = store.run(key, lambda m=model, make=make, data=dataset, key=key:
                                   _evaluate_cell(make, m, key[0], data, batch_size,
                                                  progress, " ".join(key)), settings)
                if not result.get("not_applicable"):
                    results.append({**result, "model": model_name, "data": task_name,
                                    "method": method_name})
    return results


class _Lazy:
    """Build a model on first use: a grid that resumes with every cell done loads nothing."""

    def __init__(self, build):
        self.build, self.value = build, None

    def __call__(self):
        if self.value is None:
            self.value = self.build()
        return self.value


def _evaluate_cell(make, model: _Lazy, model_name, dataset, batch_size, progress,
                   desc) -> dict:
    adapter = make(model(), model_name)
    if adapter is None:
        return {"not_applicable": True}
    return evaluate(adapter, dataset, batch_size, progress=progress, desc=desc)


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
    ``{"parameters": ...}`` and then one record per finished run, rewritten atomically as runs
    are added, so an interrupted series resumes where it stopped. Runs recorded under other
    parameters are dropped; a run is identified by the values of its ``key`` fields."""

    def __init__(self, path, parameters: dict, key: tuple):
        self.path, self.parameters, self.key = Path(path), _plain(parameters), tuple(key)
        self.runs: list[dict] = []
        if self.path.is_file():
            saved = json.loads(self.path.read_text())
            if saved and saved[0].get("parameters") == self.parameters:
                self.runs = saved[1:]
        self._done = {self._key(r) for r in self.runs}

    def _key(self, record: dict) -> tuple:
        return tuple(json.dumps(record.get(k), default=_jsonable) for k in self.key)

    def has(self, **fields) -> bool:
        return self._key(fields) in self._done

    def add(self, records: list[dict]) -> None:
        """Append finished runs and rewrite the file (atomically)."""
        records = _plain(records)
        self.runs += records
        self._done |= {self._key(r) for r in records}
        write_json(self.path, [{"parameters": self.parameters}, *self.runs])


def changed_predictions(results: list[dict], tasks: dict, baseline: str, method: str) -> list[dict]:
    """The test images where ``method`` and ``baseline`` disagree on being right: one record
    per image (model, data, index in the task, label, both predictions, "fixed" or
    "broken"), for showing per-image cases. Correctness counts a task's acceptable classes."""
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
        for i in np.flatnonzero(ok != ok_before):
            records.append({"model": model, "data": data, "index": int(i),
                            "label": r["labels"][i], baseline: other["predictions"][i],
                            method: r["predictions"][i],
                            "outcome": "fixed" if ok[i] else "broken"})
    return records
