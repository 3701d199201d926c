"""The full profile: what it asks for (the papers' settings), and a dry run of every notebook
on it through ``helpers.batch``, with stand-ins of every file it reads (tests/standins.py) and
a test-only profile generated from full.yaml in which only sizes shrink.

The dry run (``pytest -m dryrun`` selects it; plain ``pytest`` runs it) is the check that the
full profile cannot silently break: its model names, file names and layouts, methods and code
paths are full.yaml's, so a notebook or loader change that the full profile would trip over
fails here, on a CPU, in a few minutes. What it cannot check is the numbers: the weights are
random. Its two departures from full.yaml besides sizes, both for time: the CLIPs' text
transformer is one layer of width 64 (``standins.official_clip``), and notebook 02's masks
come from the offline provider (Segment-Anything's image encoder takes 15-50 s per image at
1024 px on this CPU); SAM's stand-in checkpoint is loaded from TTA_CHECKPOINTS by the test
itself instead.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import standins
import yaml

from helpers import batch, paths

FULL = batch.load_profile("full")
# Sizes and what they shrink to: counts of images, views, steps, epochs, repeats, samples and
# prompts; batch sizes. Views per method: TPT's and Zero's keep one view of ten at their 10%.
SIZES = {"n_images": 1, "n_held_out": 1, "sweep_images": 1, "batch_size": 1, "n_train": 10,
         "n_test": 4, "timed_steps": 1, "min_repeats": 1, "max_repeats": 2, "epochs": 1,
         "max_epochs": 1, "patience": 1, "steps": 1, "min_steps": 1, "max_steps": 2,
         "n_samples": 20, "n_subsets": 1, "vpt_prompts": 2, "fisher_size": 2,
         "agreement_images": 2, "severity_images": 1, "photo_sweep_images": 1,
         "photo_images": 2}
VIEWS = {"memo": 2, "tpt": 9, "zero": 9}
# Lists of sizes: the first (and last) kept, or values capped.
SIZE_LISTS = {"fractions": lambda v: [v[0], v[-1]], "prompt_counts": lambda v: v[:2],
              "batch_sizes": lambda v: [1], "photo_batch_sizes": lambda v: [1],
              "sweep_views": lambda v: [min([*v, VIEWS["tpt"]])],
              "sweep_lr": lambda v: v[-1:], "severities": lambda v: v[-1:]}
# Where one notebook needs more: 04 holds one image out to fit temperatures, tests another.
AT_LEAST = {"04_ensemble": {"n_images": 2}}
# The one departure that is not a size (see the module's docstring).
MASKS = {"02_memo_plus_sam_gradcam": ("memo_plus", {"masks": "offline", "mask_options": {}})}


def shrink(value, key: str | None = None, parent: str | None = None):
    """``value`` (a notebook's parameters, recursively) with every size made small."""
    if isinstance(value, dict):
        return {k: shrink(v, k, key) for k, v in value.items()}
    if key == "n_views" and parent in VIEWS:
        return min(value, VIEWS[parent])
    if key in SIZE_LISTS and isinstance(value, list):
        return SIZE_LISTS[key](value)
    if key in SIZES and (value is None or isinstance(value, int)) and \
            not isinstance(value, bool):
        return SIZES[key] if value is None else min(value, SIZES[key])
    return value


def defaults(name: str) -> dict:
    """A notebook's own parameter values (those written as literals), which full.yaml's
    complete: a size full.yaml leaves at the notebook's default shrinks too."""
    found = {}
    for key, source in batch.notebook_parameters(paths.NOTEBOOKS / f"{name}.ipynb").items():
        try:
            found[key] = ast.literal_eval(source)
        except (ValueError, SyntaxError):
            pass
    return found


def completed(full: dict) -> dict:
    """Each notebook's parameters under full.yaml: its defaults, then the profile's."""
    return {name: {**defaults(name), **(parameters or {})}
            for name, parameters in full["notebooks"].items()}


def dry_run_profile(full: dict) -> dict:
    notebooks = {}
    for name, parameters in completed(full).items():
        shrunk = {**shrink(parameters), **AT_LEAST.get(name, {})}
        if name in MASKS:
            entry, change = MASKS[name]
            shrunk[entry] = {**shrunk[entry], **change}
        given = full["notebooks"][name]  # full.yaml's own entries, and the sizes shrunk
        notebooks[name] = {k: v for k, v in shrunk.items() if k in given or v != parameters[k]}
    return {"description": "full.yaml with only sizes shrunk (tests/test_full_profile.py)",
            "jobs": 1, "notebooks": notebooks}


def departures(full, shrunk, where="") -> list[str]:
    """Every difference between two parameter trees that is not a smaller size."""
    if isinstance(full, dict) and isinstance(shrunk, dict):
        found = [f"{where}/{k}: dropped" for k in set(full) - set(shrunk)]
        for key in shrunk:
            if key in full:
                found += departures(full[key], shrunk[key], f"{where}/{key}")
            else:
                found.append(f"{where}/{key}: added")
        return found
    if full == shrunk:
        return []
    key = where.rsplit("/", 1)[-1]
    smaller = (isinstance(shrunk, int) and (full is None or
                                            (isinstance(full, int) and shrunk <= full)))
    fewer = (isinstance(full, list) and isinstance(shrunk, list) and shrunk and
             all(v in full or v <= min(full) for v in shrunk))
    is_size = key in SIZES or key in SIZE_LISTS or key == "n_views"
    return [] if is_size and (smaller or fewer) else [f"{where}: {full!r} -> {shrunk!r}"]


def test_the_dry_run_profile_differs_from_full_yaml_in_sizes_only():
    shrunk, full = dry_run_profile(FULL), completed(FULL)
    found = []
    for name, parameters in shrunk["notebooks"].items():
        found += departures(full[name], {**full[name], **parameters}, name)
    masks = "02_memo_plus_sam_gradcam/memo_plus"
    assert sorted(found) == [f"{masks}/mask_options/model_type: dropped",
                             f"{masks}/masks: 'sam' -> 'offline'"]
    assert departures({"models": ["ViT-B/16"]}, {"models": ["ViT-B/32"]}) == [
        "/models: ['ViT-B/16'] -> ['ViT-B/32']"]  # the check catches what is not a size
    assert departures({"n_views": 63}, {"n_views": 64}) == ["/n_views: 63 -> 64"]


def test_the_full_profile_is_the_papers_setting():
    notebooks = FULL["notebooks"]
    for name in ("01_memo_cifar100", "03_tpt"):  # CLIP's ResNets, as the TPT paper reports
        assert {"RN50", "RN101"} <= set(notebooks[name]["models"])
        assert all(notebooks[name]["memo_per_model"][m] == {"bn_prior": 16}
                   for m in ("RN50", "RN101"))  # MEMO's batch-norm handling
    assert "norm" in notebooks["01_memo_cifar100"]["methods"]
    for name in ("03_tpt", "04_ensemble"):  # MEMO's ImageNet views; TPT's 63 + the image
        assert notebooks[name]["memo"]["n_views"] == 64
        assert notebooks[name]["tpt"]["n_views"] == 63
    vpt = notebooks["06_vpt_memory"]
    assert vpt["weights_path"] == "vit_base_patch16_224.augreg2_in21k_ft_in1k.safetensors"
    assert {"flowers102", "cub200"} <= set(vpt["finetune_data"])
    assert vpt["finetune_classes_per_data"] == {"flowers102": "all", "cub200": "all"}


def clip_names(profile: dict) -> set[str]:
    return {m for p in profile["notebooks"].values() for m in p.get("models", [])
            if m not in ("small-clip", "small-cnn") and not m.startswith("efficientnet")}


def build_standins(root: Path, profile: dict) -> dict:
    """Every file the full profile reads, under ``root``; the environment that points the
    notebooks at them."""
    data, checkpoints, home = root / "data", root / "checkpoints", root / "home"
    for name in sorted(clip_names(profile)):
        standins.official_clip(name, home / ".cache" / "clip")
    standins.timm_vit_b16(checkpoints / profile["notebooks"]["06_vpt_memory"]["weights_path"])
    standins.sam_vit_b(checkpoints / "sam_vit_b_01ec64.pth")
    standins.idx_set(data / "fashion-mnist")
    standins.idx_set(data / "MNIST" / "raw", seed=1)
    standins.cifar(data, 10)
    standins.cifar(data, 100, per_class=1)
    standins.imagenet_a(data)
    standins.imagenet_v2(data)
    standins.flowers102(data)
    standins.cub200(data)
    profiles = root / "profiles"
    profiles.mkdir()
    (profiles / "dryrun.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    env = {**os.environ, "HOME": str(home), "MPLCONFIGDIR": str(root / "matplotlib"),
           "TTA_DATA": str(data), "TTA_CHECKPOINTS": str(checkpoints),
           "TTA_PROFILES": str(profiles), "PYTHONPATH": os.pathsep.join(
               [str(paths.REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(
                   os.pathsep) if p])}
    for name in ("CACHE", "RESULTS", "RUNS", "FIGURES"):
        env[f"TTA_{name}"] = str(root / name.lower())
    return env


@pytest.mark.dryrun
def test_every_notebook_runs_on_the_full_profile_with_stand_in_files(tmp_path, monkeypatch):
    profile = dry_run_profile(FULL)
    start = time.time()
    env = build_standins(tmp_path, profile)
    built = time.time() - start
    # SAM's stand-in, found under TTA_CHECKPOINTS by Meta's file name (see the docstring).
    from helpers.masks import SamMasks

    monkeypatch.setattr(paths, "CHECKPOINTS", tmp_path / "checkpoints")
    assert SamMasks(model_type="vit_b", device="cpu").checkpoint == str(
        tmp_path / "checkpoints" / "sam_vit_b_01ec64.pth")
    # Two notebooks at a time, one thread each (the runner's own sharing, as the offline
    # profile runs): on a shared CPU, OpenMP threads that wait for each other slow CLIP's
    # small matrix products up to 40x (measured: 3.5 ms per text batch on one thread, 20-140
    # ms on two under load), and the notebooks' peaks of memory (~4 GB) fit side by side.
    env.pop("OMP_NUM_THREADS", None)
    run = subprocess.run([sys.executable, "-m", "helpers.batch", "--profile", "dryrun",
                          "--jobs", "2"], env=env, cwd=paths.REPO, capture_output=True,
                         text=True, timeout=1500)
    seconds = time.time() - start
    print(f"dry run: stand-ins {built:.0f} s, all {seconds:.0f} s")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    results = {name: json.loads((tmp_path / "results" / "dryrun" / f"{name}.json").read_text())
               for name in profile["notebooks"]}
    for name, parameters in profile["notebooks"].items():
        rows = results[name].get("results")
        if rows:  # the methods' notebooks: every model with every method that applies to it
            models = {r["model"] for r in rows}
            assert models == set(parameters["models"]), name
    assert "skipped" not in results["05_transfer_cuts_clustering"]["note"]
    assert "skipped" not in results["06_vpt_memory"]["note"]
    tuned = {row["data"] for row in results["06_vpt_memory"]["summary"][
        next(t for t in results["06_vpt_memory"]["summary"] if t.startswith("Accuracy"))]}
    assert tuned == {"fashion-mnist 5-9", "mnist 5-9", "flowers102 (102 classes)",
                     "cub200 (200 classes)"}
