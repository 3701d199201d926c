# %% [markdown]
# # 07 · Where the batch methods part ways: batch size, mixed shifts, label shift, continual streams
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tta-course/tta-notebooks/blob/main/notebooks/07_settings.ipynb)
#
# On batches of 64 images of one corruption, NormAdapt, Tent, EATA and SAR agree (notebook 01: on the batch-norm models EATA and SAR predict as NormAdapt). Their papers separate them elsewhere:
#
# - **small batches**: NormAdapt's statistics of a batch of one image are that image's own; EATA and SAR (Niu et al., ICML 2022 and ICLR 2023) filter unreliable samples, SAR also steps sharpness-aware and resets when its loss collapses;
# - **mixed shifts** (SAR's "wild" setting): every corruption's images in one shuffled stream, so a batch mixes distributions;
# - **online label shift**: the test images ordered so that a stretch of the stream holds few classes. We follow **NOTE** (Gong et al., *NOTE: Robust Continual Test-time Adaptation Against Temporal Correlation*, NeurIPS 2022), whose code (`tgt_train_dist == 4`, "dirichlet") makes as many time slots as classes, splits each class's images over the slots by proportions drawn from a Dirichlet with concentration $\alpha$, and within a slot lets the classes follow in a shuffled order (`helpers.streams.label_shifted`);
# - **continual adaptation**: the corruptions one after another in ImageNet-C's order, never reset (Tent online, as in CoTTA's continual setting), with the error per corruption along the stream, where forgetting and collapse show.
#
# **MEMO** (episodic: every image starts from the source weights, its views seeded by the image) predicts the same whatever the batch size or the order of the stream: it runs once per image set, and its predictions in each setting are those, by construction (`streams.carried`).

# %%
# In Colab: install the project's package, check for a GPU, show the full profile's parameters.
import sys

if "google.colab" in sys.modules:
    import subprocess

    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "tta-helpers @ git+https://github.com/tta-course/tta-notebooks"], check=True)
    from helpers.notebook import colab_setup

    colab_setup("07_settings")

# %% tags=["parameters"]
# Parameters: papermill injects a profile's values after this cell.
profile = "smoke"
dataset = "fashion-mnist"  # fashion-mnist | cifar10 | cifar100 | mnist
data_root = None  # folder holding the data set (default: data/, or $TTA_DATA)
download = True  # fetch the data set when it is missing and the machine is online
models = ["small-cnn", "small-clip"]  # a batch-norm CNN and a layer-norm CLIP (stand-ins)
methods = ["source", "norm", "tent", "eata", "sar", "memo"]
severity = 5
n_images = 32  # test images per corruption (the same images under every corruption)
# The batch-size and label-shift settings run on these corruptions, one at a time.
batch_corruptions = ["gaussian_noise", "contrast"]  # or "all"
batch_sizes = [1, 4, 16, 64]
# The mixed and continual streams: these corruptions ("all": ImageNet-C's 15 in its order).
stream_corruptions = ["gaussian_noise", "motion_blur", "snow", "contrast"]
stream_batch_size = 64
label_alpha = 0.1  # Dirichlet concentration of the label-shifted stream (NOTE: 0.1)
label_batch_size = 16
collapse_window = 16  # consecutive predictions per window of the collapse rule
memo = {"n_views": 8, "steps": 1, "optimizer": "sgd", "lr": 1e-3, "params": "all"}
memo_per_model = {"small-clip": {"lr": 0.005, "views": {"kind": "crop", "min_scale": 0.5}},
                  "small-cnn": {"lr": 0.001, "bn_prior": 16, "views": "augmix"}}
tent = {"lr": 0.001, "episodic": False}
eata = {"fisher_images": "fashion-mnist:train", "fisher_size": 64}
eata_per_model = {"efficientnet-lite0": {"fisher_images": None}}
sar = {}
photo_models = []  # e.g. ["efficientnet-lite0"]: also on corrupted ImageNet sample photos
photo_dataset = "imagenet-sample"  # where absent, the photo section is skipped with a note
photo_images = 16  # photos per corruption
photo_corruptions = ["gaussian_noise", "contrast"]  # or "all"
photo_batch_sizes = [1, 16]
seed = 0
scheduler = None  # a Dask scheduler's address (tcp://host:8786) for the grid; None: here
results_path = None  # default: results/<profile>/07_settings.json ($TTA_RESULTS)
figures_dir = None  # default: figures/<profile>/ ($TTA_FIGURES)

# %%
from functools import partial

import pandas as pd
from IPython.display import Markdown, display

from helpers import conclusions, data, findings, plots, streams
from helpers.anchors import anchor_table
from helpers.evaluate import summary_rows
from helpers.grid import run_grid
from helpers.models import build_classifier, describe, parse_standin, photo_size
from helpers.notebook import start
from helpers.tta import method_factories, method_names

run = start("07_settings", dict(
    profile=profile, dataset=dataset, data_root=data_root, models=models, methods=methods,
    severity=severity, n_images=n_images, batch_corruptions=batch_corruptions,
    batch_sizes=batch_sizes, stream_corruptions=stream_corruptions,
    stream_batch_size=stream_batch_size, label_alpha=label_alpha,
    label_batch_size=label_batch_size, collapse_window=collapse_window, memo=memo,
    memo_per_model=memo_per_model, tent=tent, eata=eata, eata_per_model=eata_per_model, sar=sar,
    photo_models=photo_models, photo_dataset=photo_dataset, photo_images=photo_images,
    photo_corruptions=photo_corruptions, photo_batch_sizes=photo_batch_sizes, seed=seed),
    results_path, figures_dir)

# %% [markdown]
# ## The streams
#
# The same `n_images` test images (drawn once, seeded) under every corruption at one severity. From them: each of `batch_corruptions` alone, run at every batch size; the label-shifted stream of each of them; all of `stream_corruptions` mixed into one shuffled stream (each image once per corruption); and the same sets one after the other in ImageNet-C's order (the continual stream). A label run is a stretch of consecutive images of one class: short in an i.i.d. stream, long in a label-shifted one.

# %%
test_set = data.load_dataset(dataset, root=data_root, download=download)
order = data.corruption_names(stream_corruptions)
batch_corruptions = list(data.corruption_names(batch_corruptions))
used = list(dict.fromkeys([*batch_corruptions, *order]))
suite = data.corruption_suite(test_set, used, severity, n_images, seed, clean=False)
batch_tasks = streams.by_batch_size({c: suite[c] for c in batch_corruptions}, batch_sizes)
label_tasks = {f"label shift · {c}": streams.label_shifted(suite[c], label_alpha, seed, name=c)
               for c in batch_corruptions}
stream_tasks = {"mixed stream": streams.mixed(suite, order, seed),
                "continual stream": streams.continual(suite, order)}
every_task = {**{t: d for tasks in batch_tasks.values() for t, d in tasks.items()},
              **label_tasks, **stream_tasks}
print(test_set.description)

# %%
# NBVAL_CHECK_OUTPUT
composition = pd.DataFrame([{"stream": name, "images": len(task),
                             "mean label run": streams.label_runs(task.labels)}
                            for name, task in {**{c: suite[c] for c in batch_corruptions},
                                               **label_tasks, **stream_tasks}.items()])
print(composition.to_string(index=False, float_format="{:.2f}".format))
print("continual order:", ", ".join(name for name, _, _ in stream_tasks["continual stream"]
                                    .segments))

# %% [markdown]
# ## What runs
#
# Source, NormAdapt, Tent, EATA and SAR run on every stream at its batch size (each online method from the source weights at the start of a stream, never reset along it); MEMO once on each corruption's images. NormAdapt does not apply to a model without batch norm (the small CLIP): the tables show it as not applicable (—).

# %%
model_builders = {name: partial(build_classifier, name, test_set.class_names, run.device)
                  for name in models}
methods_by_name = method_factories(methods, {"memo": memo, "tent": tent, "eata": eata,
                                             "sar": sar},
                                   {"memo": memo_per_model, "eata": eata_per_model})
online = {name: make for name, make in methods_by_name.items() if name != "memo"}
episodic = {name: make for name, make in methods_by_name.items() if name == "memo"}
note = " ".join(f"`{name}`: {describe(name)}." for name in [*models, *photo_models])
note += f" Data: {test_set.description}."
display(Markdown(
    f"**Models.** {note}\n\n**Methods**, in this order everywhere: {', '.join(methods)}.\n\n"
    f"**Settings.** batch sizes {', '.join(map(str, batch_sizes))} on "
    f"{', '.join(batch_corruptions)}; the label-shifted streams (Dirichlet α = {label_alpha}) "
    f"in batches of {label_batch_size}; the mixed and continual streams of {len(order)} "
    f"corruptions in batches of {stream_batch_size}; {n_images} images per corruption, "
    f"severity {severity}."))

# %%
store = run.store(method_settings=("memo", "memo_per_model", "tent", "eata", "eata_per_model",
                                   "sar", "methods", "models", "photo_models"))
results = [r for b, tasks in batch_tasks.items() for r in streams.in_setting(
    run_grid(model_builders, tasks, online, store, b, scheduler=scheduler), f"batch {b}")]
results += streams.in_setting(run_grid(model_builders, label_tasks, online, store,
                                       label_batch_size, scheduler=scheduler),
                              f"label shift, batch {label_batch_size}")
results += [r for name, task in stream_tasks.items() for r in streams.in_setting(
    run_grid(model_builders, {name: task}, online, store, stream_batch_size,
             scheduler=scheduler), name)]
memo_results = run_grid(model_builders, suite, episodic, store, stream_batch_size,
                        scheduler=scheduler) if episodic else []
settings = list(dict.fromkeys(r["setting"] for r in results))
setting_tasks = {f"batch {b}": tasks for b, tasks in batch_tasks.items()} | {
    f"label shift, batch {label_batch_size}": label_tasks} | {
    name: {name: task} for name, task in stream_tasks.items()}
results += [r for setting, tasks in setting_tasks.items() for r in streams.in_setting(
    streams.episodic_cells(memo_results, tasks, suite), setting)]

# %% [markdown]
# ## Error per method and setting
#
# The error over all the images of a setting (its corruptions pooled), with a 95% Wilson interval over those images; and what EATA and SAR did with them: the samples they trusted (entropy below $E_0$: `reliable`), those EATA used (also unlike its recent predictions: `selected`), their steps, SAR's steps on momentum alone when no sample was reliable, and SAR's recoveries (back to the source weights when its loss average fell below its threshold).

# %%
error_rows = streams.stream_errors(results, methods, by=("base_model", "setting"))
errors = pd.DataFrame(error_rows)
errors["error (95% CI)"] = [f"{r['error']:.3f} ({r['low']:.3f}–{r['high']:.3f})"
                            for r in error_rows]
error_table = errors.pivot(index=["base_model", "setting"], columns="method",
                           values="error (95% CI)").reindex(columns=methods).reindex(
    pd.MultiIndex.from_product([models, settings]))
error_table.index.names = ["model", "setting"]
display(error_table.fillna("—"))
counted = [c for c in streams.COUNTERS if c in errors]
counts = errors[errors["method"].isin(["eata", "sar"])][
    ["base_model", "setting", "method", "n", *counted]].rename(columns={"base_model": "model"})
display(counts.set_index(["model", "setting", "method"]).fillna(0).astype(int))

# %% [markdown]
# ## EATA and SAR against NormAdapt and Tent, setting by setting
#
# Each change in accuracy on the same images, with its 95% paired-bootstrap interval. NormAdapt applies to the batch-norm model only; on the layer-norm model the comparison is with Tent.

# %%
per_setting_methods = [m for m in methods if m != "memo"]
successor_rows = [row for base in ("norm", "tent") for row in findings.compare_all(
    results, baseline=base, methods=[base, "eata", "sar"]) if row["method"] != base]
separation = streams.separation_lines(successor_rows, [r for r in error_rows
                                                       if r["method"] in ("eata", "sar")])
if successor_rows:
    fig = plots.changes([{**r, "panel": r["model"].split(" · ")[0],
                          "what": f"{r['model'].split(' · ', 1)[1]}: {r['method']}"}
                         for r in successor_rows], panel="panel", label="what",
                        title="EATA and SAR against NormAdapt and Tent per setting "
                              "(95% paired-bootstrap intervals)")
    _ = run.figure(fig, "07_settings_successors")
display(Markdown(findings.markdown(separation)))

# %% [markdown]
# ## The continual stream: error per corruption along the stream
#
# One point per corruption segment, in stream order, with its 95% interval: an online method that forgets or collapses climbs while Source does not. Collapse is a rule for the methods that carry their updates along the stream (NormAdapt, Tent, EATA, SAR; MEMO restarts from the source weights at every image), tested in `tests/test_streams.py`: a window of `collapse_window` consecutive predictions where one class takes more than half of them and the accuracy is at most 1.5 times chance, in a window where Source does not collapse.

# %%
continual = stream_tasks["continual stream"]
segment_rows = [row for r in results if r["data"] == "continual stream"
                for row in streams.segment_errors({**r, "model": r["base_model"]},
                                                  continual.segments)]
fig = plots.segment_errors(segment_rows, methods=methods,
                           title="Error per corruption along the continual stream "
                                 "(95% intervals)")
_ = run.figure(fig, "07_settings_continual")
# Only the methods that carry their updates along the stream can collapse on it.
collapsed = streams.collapse_rows(results, every_task, len(test_set.class_names),
                                  collapse_window, methods=method_names(online=True))
collapse_text = streams.collapse_lines(collapsed, list(setting_tasks), collapse_window,
                                       len(test_set.class_names))
display(Markdown(findings.markdown(collapse_text)))

# %% [markdown]
# ### Against the published numbers
#
# The continual benchmark's reruns of these methods on ImageNet-C (ResNet-50 and ViT-B/16, no reset through the 15 corruptions) beside this notebook's continual stream, on the papers' metric (mean top-1 error, with its 95% interval): the stand-ins are not the papers' models or data, so the comparison is of directions, not of values.

# %%
anchors = anchor_table("07_settings", [cell for r in results if r["data"] == "continual stream"
                                       for cell in streams.segment_cells(
                                           {**r, "model": r["base_model"]}, continual.segments)])
run.show_anchors(anchors)

# %% [markdown]
# ## EfficientNet-Lite0 on ImageNet sample photos: batch size
#
# A real ImageNet classifier with batch norm, on corrupted sample photos at two batch sizes (skipped with a note where the photos are absent). MEMO is left to notebook 01 here.

# %%
photo_sets = {name: data.load_available(photo_dataset, download=download, size=photo_size(name))
              for name in photo_models}
if any(note for _, note in photo_sets.values()):
    display(Markdown(next(note for _, note in photo_sets.values() if note)))
    photo_models = []
photo_results = [r for name in photo_models for b, tasks in streams.by_batch_size(
    data.corruption_suite(photo_sets[name][0], photo_corruptions, severity, photo_images, seed,
                          clean=False), photo_batch_sizes).items()
    for r in streams.in_setting(run_grid(
        {name: partial(build_classifier, name, device=run.device)}, tasks, online, store, b,
        scheduler=scheduler), f"photos, batch {b}")]
photo_rows = streams.stream_errors(photo_results, methods, by=("base_model", "setting"))
if photo_rows:
    display(pd.DataFrame(photo_rows).set_index(["base_model", "setting", "method"])
            .style.format("{:.3f}", subset=["error", "low", "high"])
            .format("{:.0f}", subset=[c for c in streams.COUNTERS
                                      if any(c in r for r in photo_rows)], na_rep="—"))
results += photo_results

# %% [markdown]
# ### Calibration
#
# ECE (15 bins) per model and setting, pooled over the setting's images, with its 95% bootstrap interval (not reported where too few images fill the bins).

# %%
ece_rows = [{**row, "setting": setting} for setting in dict.fromkeys(
    r["setting"] for r in results) for name in dict.fromkeys(r["model"] for r in results
                                                             if r["setting"] == setting)
    for row in findings.calibration([r for r in results if r["model"] == name], name,
                                    methods, exclude=())]
ece = pd.DataFrame(ece_rows)
display(ece.pivot(index="model", columns="method", values="text")
        .reindex(index=list(dict.fromkeys(ece["model"])),
                 columns=[m for m in methods if m in set(ece["method"])]).fillna("—"))

# %% [markdown]
# ## Findings
#
# Each method against Source **on the same images, setting by setting** (a setting's model is named "model · setting"): the change in mean accuracy with a 95% paired-bootstrap interval (images resampled with all their corruptions) and McNemar's exact test per data set. MEMO's rows are the same predictions in every setting of one image set (by construction), so they are compared once per image set: in the batch-64 setting and in the mixed stream.

# %%
memo_once = {f"batch {max(batch_sizes)}", "mixed stream"}
finding_rows = [row for row in findings.compare_all(results, methods=methods)
                if row["method"] != "memo" or row["model"].split(" · ", 1)[1] in memo_once]
memo_line = [f"MEMO adapts each image from the source weights and restores them: its "
             f"predictions are the same at every batch size and in every order, so each "
             f"setting's MEMO cells are its predictions on the same images (run once on "
             f"{len(suite)} corruptions × {n_images} images), the same by construction, not "
             f"separate results."] if episodic else []
_ = run.show_findings(finding_rows, separation + collapse_text + memo_line)

# %% [markdown]
# ## What we found
#
# The conclusions, worded by the intervals above: a method whose predictions equal another's on every image of a setting is said to be identical to it (EATA and SAR where they equal NormAdapt), not counted as a separate result.

# %%
identical = conclusions.identical_pairs([r for r in results if r["method"] != "memo"],
                                        methods=per_setting_methods)
found = conclusions.what_we_found(finding_rows + successor_rows, identical)
standins = [name for name in models if parse_standin(name)]
eta_models = [name for name in photo_models if (eata_per_model.get(name) or {}).get(
    "fisher_images", eata.get("fisher_images")) is None]
limits = conclusions.limitations([
    *([f"The stand-ins ({', '.join(standins)}) are small models trained here on {dataset}, "
       f"not the papers' ResNet-50 and ViT-B/16 on ImageNet-C."] if standins else []),
    f"{n_images or 'All'} images per corruption: a stream of "
    f"{len(stream_tasks['mixed stream']):,} images is short beside the papers' "
    f"{findings.PAPER_IMAGES:,} per corruption, so slow drifts and late collapses may not "
    f"show, and EATA and SAR take few steps.",
    f"The label-shifted streams hold {len(next(iter(label_tasks.values()))):,} images in "
    f"{len(test_set.class_names)} time slots of NOTE's procedure.",
    *([f"{', '.join(photo_models)}: {photo_images or 'all'} photos per corruption, so wide "
       f"intervals and no ECE"
       + ("; EATA runs there without its Fisher regulariser (ETA)" if eta_models else "")
       + "."] if photo_models else []),
    "One seed for the stream orders and the images; the intervals are over these test "
    "images, not over orders or training runs.",
    *(["The full profile (a GPU) runs the same streams at the papers' scale "
       "(helpers/profiles/full.yaml)."] if profile != "full" else [])])
run.show_conclusions(found, limits, conclusions.anchor_lines(anchors))

# %%
summary = {"Error per method and setting (95% Wilson interval)":
           [{k: r.get(k) for k in ("base_model", "setting", "method", "n", "error", "low",
                                   "high", *streams.COUNTERS)} for r in error_rows + photo_rows],
           "Error per corruption along the continual stream": segment_rows,
           "EATA and SAR against NormAdapt and Tent (95% paired-bootstrap interval)":
               findings.intervals(successor_rows),
           "Collapses": collapsed,
           "ECE per setting (95% bootstrap interval)":
               [{k: row.get(k) for k in ("model", "method", "ece", "low", "high", "n", "reason")}
                for row in ece_rows]}
assert all(0 <= r["accuracy"] <= 1 and r["n"] > 0 for r in results)
_ = run.save(summary, note, headline_table="Error per method and setting (95% Wilson interval)",
             headline_figure="07_settings_continual",
             results=summary_rows([{**r, "model": r["base_model"]} for r in results],
                                  keys=("model", "data", "setting")))
