# %% [markdown]
# # 03 · TPT: test-time prompt tuning of CLIP
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tta-course/tta-notebooks/blob/main/notebooks/03_tpt.ipynb)
#
# **TPT** (Shu et al., *Test-Time Prompt Tuning for Zero-Shot Generalization in Vision-Language Models*, NeurIPS 2022) adapts CLIP's **text prompt**, not its weights, to one test image at a time:
#
# 1. the prompt is CoOp-style: learnable context vectors $v_1 \dots v_4$ (initialised from the embedding of "a photo of a") followed by the class name, through CLIP's frozen text encoder;
# 2. draw 63 augmented views of the test image (random resized crops for ImageNet-like sets, AugMix-style views otherwise) and add the image itself: 64 inputs;
# 3. **confidence selection**: keep the 10% of the 64 with the lowest prediction entropy (6 views), since very uncertain views are mostly crops that lost the object;
# 4. one AdamW step (lr $5\cdot10^{-3}$) on the entropy of the kept views' **averaged** prediction, $\ell(v) = H\big(\frac1{|S|}\sum_{i\in S} p_v(y\mid \tilde x_i)\big)$;
# 5. predict the image with the tuned prompt, then **reset** the context (episodic).
#
# `helpers.tta.Tpt` does exactly this, with two exact speed-ups (tested to leave the logits unchanged): the image encoder is frozen, so the 64 views' features are computed **once** per image (the original's among them), and the causal text encoder only runs up to the longest real prompt instead of all 77 tokens.
#
# We compare, on the same images:
#
# * **source**: CLIP's zero-shot classifier as its authors evaluate it. For OpenAI's CLIPs, each class's text feature is the average over the **seven prompt templates** of their ImageNet evaluation ("itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.", "a {} in a video game.", "art of the {}.", "a photo of the small {}."; `helpers.models.TEMPLATES["ensemble"]`); for the small CLIP trained here, over the eight captions it was trained with (`TEMPLATES["small"]`);
# * **prompt**: the single hand-written prompt "a photo of a {class}." through TPT's prompt learner, i.e. TPT's starting point before any tuning (a learned **CoOp** context instead when `ctx_file` is given, column `coop`). TPT against *prompt* is what the tuning adds; *source* against *prompt* is what the template ensemble adds;
# * **TPT**, **MEMO** (notebook 01: entropy of the marginal over views, here updating the image encoder), and two training-free successors of TPT:
#
# * **Zero** (Farina et al., *Frustratingly Easy Test-Time Adaptation of Vision-Language Models*, NeurIPS 2024): TPT's views and confidence selection, but no backward pass: the prediction is the **vote** of the confident views (the arg-max of their zero-temperature marginal);
# * **TDA** (Karmanov et al., *Efficient Test-Time Adaptation of Vision-Language Models*, CVPR 2024): a positive and a negative **cache** of test features with their pseudo-labels, filled online as the test stream goes by, whose affinities to the current image are added to CLIP's logits.
#
# | profile | models | data |
# |---|---|---|
# | `smoke` (defaults below) | small CLIP **trained here** (not OpenAI's) | three corruptions of FashionMNIST, a few dozen images |
# | `offline` | the same | FashionMNIST-C: the 15 corruptions of ImageNet-C at severity 5 |
# | `full` (GPU) | CLIP ViT-B/16, ViT-B/32, RN50 and RN101 (OpenAI weights) | ImageNet-A and ImageNet-V2 from disk, the TPT paper's setting |
#
# CLIP's ResNets (RN50, RN101) have batch norm in their image encoder: TPT and the prompts leave it as it is (the image side is frozen, in eval mode), and MEMO, which updates the image encoder, normalises with the source statistics mixed 16:1 with those of the image being adapted (`bn_prior: 16` in the full profile, MEMO's own handling of batch-norm models).

# %%
# In Colab: install the project's package, check for a GPU, show the full profile's parameters.
import sys

if "google.colab" in sys.modules:
    import subprocess

    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "tta-helpers @ git+https://github.com/tta-course/tta-notebooks"], check=True)
    from helpers.notebook import colab_setup

    colab_setup("03_tpt")

# %% tags=["parameters"]
# Parameters: papermill injects a profile's values after this cell.
profile = "smoke"
datasets = ["fashion-mnist"]  # fashion-mnist | imagenet-a | imagenet-v2 | cifar10 | cifar100
data_root = None  # folder holding the data sets (default: data/, or $TTA_DATA)
download = True  # fetch a data set when it is missing and the machine is online
models = ["small-clip"]  # small-clip | ViT-B/16 | ViT-B/32 | RN50 | a CLIP checkpoint file
corruptions = ["gaussian_noise", "motion_blur", "contrast"]  # "all": ImageNet-C's 15; []: clean
severity = 5
n_images = 24  # test images per corruption (None: the whole test set)
include_clean = False
methods = ["source", "prompt", "tpt", "memo", "zero", "tda"]  # source: CLIP's own templates; prompt: "a photo of a {}."
ctx_file = None  # a learned CoOp context (tensor file): adds a "coop" column
tpt = {"n_views": 63, "selection": 0.1, "steps": 1, "lr": 0.005, "views": "auto"}
# Per-model overrides: the stand-ins' settings chosen on ImageNet-C's four held-out validation
# corruptions (tools/standin_settings.json); Zero takes TPT's views and selection.
tpt_per_model = {"small-clip": {"views": {"kind": "crop", "min_scale": 0.5}},
                 "small-clip:none": {"views": {"kind": "crop", "min_scale": 0.5},
                                     "selection": 0.3}}
memo = {"n_views": 16, "steps": 1, "optimizer": "sgd", "lr": 1e-5, "params": "all"}
memo_per_model = {"small-clip": {"lr": 0.005, "views": {"kind": "crop", "min_scale": 0.5}},
                  "small-clip:none": {"lr": 0.0001, "views": {"kind": "crop",
                                                              "min_scale": 0.5}}}
zero = {}  # Zero's settings beyond TPT's views and selection, which it always takes
tda = {}  # the authors' ImageNet settings
sweep_views = [15, 31, 63]  # accuracy vs number of views (at the selection ratio of tpt)
sweep_selection = [0.1, 0.3, 1.0]  # accuracy vs selection ratio (at tpt's number of views)
sweep_images = 16  # images of the first task used by the sweeps (0: no sweep)
agreement_images = 16  # images per data set for the views-without-adaptation diagnostic
batch_size = 64
seed = 0
scheduler = None  # a Dask scheduler's address (tcp://host:8786) for the grid; None: here
results_path = None  # default: results/<profile>/03_tpt.json ($TTA_RESULTS)
figures_dir = None  # default: figures/<profile>/ ($TTA_FIGURES)

# %%
from functools import partial

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display

from helpers import data, findings, plots
from helpers.evaluate import pivot, summary_rows
from helpers.grid import run_grid
from helpers.models import build_classifier, describe, parse_standin
from helpers.notebook import start
from helpers.tta import method_factories, tpt_views, view_settings

run = start("03_tpt", dict(
    profile=profile, datasets=datasets, data_root=data_root, models=models,
    corruptions=corruptions, severity=severity, n_images=n_images, include_clean=include_clean,
    methods=methods, ctx_file=ctx_file, tpt=tpt, tpt_per_model=tpt_per_model, memo=memo,
    memo_per_model=memo_per_model,
    zero=zero, tda=tda,
    sweep_views=sweep_views, sweep_selection=sweep_selection, sweep_images=sweep_images,
    agreement_images=agreement_images,
    batch_size=batch_size, seed=seed), results_path, figures_dir)

# %% [markdown]
# ## The data
#
# The same seeded test images under every corruption (ImageNet-C style); for the `full` profile the natural-shift sets ImageNet-A and ImageNet-V2 as they are.

# %%
test_sets = {name: data.load_dataset(name, root=data_root, download=download)
             for name in datasets}
tasks = {name: {(f"{name}/{k}" if len(datasets) > 1 else k): v
                for k, v in data.corruption_suite(test_set, corruptions, severity, n_images,
                                                  seed, include_clean).items()}
         for name, test_set in test_sets.items()}
for test_set in test_sets.values():
    print(test_set.description)

# %%
# NBVAL_CHECK_OUTPUT
for suite in tasks.values():
    for task_name, task in suite.items():
        print(f"{task_name:24s} {len(task):6d} images, {len(task.class_names)} classes")

# %% [markdown]
# ## Confidence selection
#
# For one corrupted test image, the 64 inputs TPT sees, ranked by the entropy of CLIP's prediction with the initial prompt: the kept views (top) and the most uncertain rejected ones (bottom). Only the kept ones enter the loss.

# %%
first_set = test_sets[datasets[0]]
first_task_name, first_task = next(iter(tasks[datasets[0]].items()))
classifier = build_classifier(models[0], first_task.class_names, run.device)
image, label = first_task[0]
methods_by_name = method_factories(
    methods, {"tpt": tpt, "memo": memo, "zero": {**view_settings(tpt), **zero}, "tda": tda},
    {"memo": memo_per_model, "tpt": tpt_per_model,
     "zero": {m: view_settings(s) for m, s in tpt_per_model.items()}})
batch, entropies, kept = methods_by_name["tpt"](classifier, models[0]).selection_of(
    image.to(run.device), key=0)
fig = plots.selected_views(batch, entropies, kept,
                           title=f"{models[0]}, {first_task_name}, class "
                                 f"'{first_task.class_names[label]}': {len(kept)} of "
                                 f"{len(batch)} inputs kept")
run.figure(fig, "03_tpt_selection")

# %% [markdown]
# ## Zero-shot, fixed prompt, TPT, MEMO, Zero and TDA
#
# Every (model, data, method) cell runs through the same loop (`helpers.evaluate`): accuracy, expected calibration error (15 bins), mean confidence, seconds per test image (adaptation included). Finished cells are saved as they complete.

# %%
if ctx_file:
    methods_by_name["coop"] = method_factories(
        ["prompt"], {"prompt": {"ctx_file": ctx_file}})["prompt"]
store = run.store(method_settings=("methods", "memo", "memo_per_model", "models", "zero",
                                   "tda", "tpt", "tpt_per_model", "agreement_images"))
results = []
for name, test_set in test_sets.items():
    builders = {m: partial(build_classifier, m, test_set.class_names, run.device)
                for m in models}
    results += run_grid(builders, tasks[name], methods_by_name, store, batch_size,
                        scheduler=scheduler)
method_order = list(methods_by_name)
descriptions = {name: describe(name) for name in models}
for name, text in descriptions.items():
    print(f"{name}: {text}")

# %%
table = pd.DataFrame(summary_rows(results))
accuracy = pd.DataFrame(pivot(results, methods=method_order)).set_index(["model", "data"])
means = table.groupby(["model", "method"])[["accuracy", "ece", "mean_confidence",
                                            "seconds_per_sample"]].mean()
display(Markdown("**Accuracy per data set**"))
display(accuracy.style.format("{:.3f}", na_rep="—"))
display(Markdown("**Mean over the data sets**"))
display(means.style.format({"accuracy": "{:.3f}", "ece": "{:.3f}", "mean_confidence": "{:.3f}",
                            "seconds_per_sample": "{:.4f}"}))

# %%
note = " ".join(f"`{name}`: {text}." for name, text in descriptions.items())
fig = plots.accuracy_per_corruption(results, title=f"{note} Data: {first_set.description}.",
                                    methods=method_order)
run.figure(fig, "03_tpt_accuracy")

# %% [markdown]
# ## How many views, how many kept
#
# A small sweep on the first task: the number of augmented views (at the paper's 10% selection) and the selection ratio (at the number of views above; 1.0 keeps every view, i.e. no confidence selection).

# %%
sweep_task = ({first_task_name: data.take(first_task, sweep_images, seed)}
              if sweep_images else {})
first_tpt = methods_by_name["tpt"].settings(models[0])  # TPT's settings for the first model
settings = ([("views", n, {**first_tpt, "n_views": n}) for n in sweep_views]
            + [("selection", r, {**first_tpt, "selection": r}) for r in sweep_selection])
sweep_methods = {f"tpt {kind}={value}": method_factories(["tpt"], {"tpt": s})["tpt"]
                 for kind, value, s in settings}
sweep_model = {models[0]: partial(build_classifier, models[0], first_task.class_names,
                                  run.device)}
sweep_results = (run_grid(sweep_model, sweep_task, sweep_methods, store, batch_size,
                          scheduler=scheduler) if sweep_images else [])
sweep_rows = [{"setting": kind, "value": value, "accuracy": r["accuracy"], "ece": r["ece"],
               "seconds_per_sample": r["seconds_per_sample"]}
              for (kind, value, _), r in zip(settings, sweep_results)]
if sweep_rows:
    display(pd.DataFrame(sweep_rows).style.format({"accuracy": "{:.3f}", "ece": "{:.3f}",
                                                   "seconds_per_sample": "{:.4f}"}))
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3))
    plots.sweep([r for r in sweep_rows if r["setting"] == "views"], "value", ax=axes[0],
                title=f"accuracy vs views (+ original), selection {first_tpt['selection']}")
    plots.sweep([r for r in sweep_rows if r["setting"] == "selection"], "value", ax=axes[1],
                title=f"accuracy vs selection ratio, {first_tpt['n_views']} views")
    run.figure(fig, "03_tpt_sweep")

# %% [markdown]
# ## Does the training recipe decide whether TPT helps?
#
# The small CLIP trained CLIP-style (`small-clip`: random resized crops, flips and photometric jitter, on FashionMNIST and MNIST digits with their own captions) and on clean FashionMNIST only (`small-clip:none`): each method's change over the same model's zero-shot prediction, with its 95% paired-bootstrap interval. TPT, MEMO and Zero all trust the model's predictions on augmented views; a model never trained on such views gives them no reason to.

# %%
standins = [name for name in models if parse_standin(name)]
recipe_rows = [row for row in findings.compare_all(results, methods=method_order)
               if row["model"] in standins]
run.show_changes(recipe_rows, "03_tpt_recipes", "Change over the same model's zero-shot "
                                                "prediction, per training recipe (95% "
                                                "paired-bootstrap intervals)")
agreement, agreement_lines = [], []
for name in standins if "zero" in methods and agreement_images else []:
    settings = methods_by_name["zero"].settings(name)
    zero_views = tpt_views(settings["views"], settings["n_views"], min(image.shape[-2:]))
    model = build_classifier(name, first_task.class_names, run.device)
    score = findings.mean_view_agreement(model, tasks[datasets[0]], zero_views,
                                         agreement_images, seed)
    agreement.append({"model": name, **score})
    agreement_lines.append(findings.agreement_line(name, "Zero's and TPT's", score,
                                                   agreement_images))
if agreement:
    display(pd.DataFrame(agreement).set_index("model").style.format("{:.3f}"))
    display(Markdown(findings.markdown(agreement_lines)))

# %% [markdown]
# ## Findings
#
# Each method against zero-shot CLIP, and TPT against its own starting point (the fixed prompt), on the same images: the change in mean accuracy with a 95% paired-bootstrap interval (images resampled with all their corruptions) and the number of data sets where McNemar's exact test finds the change significant.
#
# What to expect: TPT changes four context vectors of the text side and nothing else, so it cannot repair image features a corruption destroyed, but it can move the class prototypes toward where this image's confident views lie; MEMO changes the image encoder itself, with a larger search space and a larger cost per step. Zero predicts from the views alone, never from the image itself, so it depends even more than TPT on a model whose predictions on crops and augmented views are right; TDA learns from the stream, so it gains most where many test images share a shift. Every number below is computed from this run's results.

# %%
finding_rows = findings.compare_all(results, methods=method_order)
if {"prompt", "tpt"} <= set(method_order):
    finding_rows += findings.compare(results, "tpt", baseline="prompt")
if {"tpt", "zero"} <= set(method_order):
    finding_rows += findings.compare(results, "zero", baseline="tpt")
run.show_findings(finding_rows, agreement_lines, figure="03_tpt_findings")
assert all(0 <= r["accuracy"] <= 1 and r["n"] > 0 for r in results)
assert set(table["method"]) <= set(method_order)

# %%
summary = {"Accuracy per data set (zero-shot = source)": pivot(results, methods=method_order),
           "Mean over the data sets": means.reset_index().round(4).to_dict("records")}
if recipe_rows:
    summary["Change over zero-shot per training recipe (95% paired-bootstrap interval)"] = \
        findings.intervals(recipe_rows)
if agreement:
    summary["Zero's and TPT's views without adaptation (mean over the corruptions)"] = agreement
if sweep_rows:
    n_sweep = len(next(iter(sweep_task.values())))
    summary[f"TPT sweep on {first_task_name} ({n_sweep} images)"] = sweep_rows
run.save(summary, note, headline_table="Mean over the data sets",
         results=summary_rows(results))
