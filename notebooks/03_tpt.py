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
# Which methods and models this run compares is generated from its parameters below the parameters cell; a learned **CoOp** context runs only when one is given (`ctx_file`, which no profile sets). The profiles:
#
# | profile | models | data | methods |
# |---|---|---|---|
# | `smoke` (defaults below) | small CLIP **trained here** (not OpenAI's) | three corruptions of FashionMNIST, a few dozen images | source, prompt, TPT, MEMO, Zero, TDA |
# | `offline` | two small CLIPs trained here, under two training recipes | FashionMNIST-C: the 15 corruptions of ImageNet-C at severity 5 | source, prompt, TPT, Zero, TDA (MEMO on these models is notebook 01's) |
# | `full` (GPU) | CLIP ViT-B/16, ViT-B/32, RN50 and RN101 (OpenAI weights) | ImageNet-A and ImageNet-V2 from disk, the TPT paper's setting | source, prompt, TPT, MEMO, Zero, TDA |
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
# accuracy vs learning rate, as multiples of TPT's (0: the fixed prompt by construction)
sweep_lr = [0, 1]
sweep_zero = True  # Zero over the same numbers of views (False: TPT alone)
sweep_corruptions = 4  # the sweep's data sets: up to this many, one per ImageNet-C family
sweep_images = 8  # test images per data set of the sweep, the same under each (0: no sweep)
agreement_images = 16  # images per data set for the views-without-adaptation diagnostic
batch_size = 64
seed = 0
scheduler = None  # a Dask scheduler's address (tcp://host:8786) for the grid; None: here
results_path = None  # default: results/<profile>/03_tpt.json ($TTA_RESULTS)
figures_dir = None  # default: figures/<profile>/ ($TTA_FIGURES)

# %%
from functools import partial

import pandas as pd
from IPython.display import Markdown, display

from helpers import conclusions, data, findings, plots
from helpers.anchors import anchor_table
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
    sweep_views=sweep_views, sweep_selection=sweep_selection, sweep_lr=sweep_lr,
    sweep_zero=sweep_zero,
    sweep_corruptions=sweep_corruptions, sweep_images=sweep_images,
    agreement_images=agreement_images,
    batch_size=batch_size, seed=seed), results_path, figures_dir)

# %%
# What this run compares: the methods that run, in a fixed order (source first).
methods_by_name = method_factories(
    methods, {"tpt": tpt, "memo": memo, "zero": {**view_settings(tpt), **zero}, "tda": tda},
    {"memo": memo_per_model, "tpt": tpt_per_model,
     "zero": {m: view_settings(s) for m, s in tpt_per_model.items()}})
if ctx_file:
    methods_by_name["coop"] = method_factories(
        ["prompt"], {"prompt": {"ctx_file": ctx_file}})["prompt"]
tpt_factory = method_factories(["tpt"], {"tpt": tpt}, {"tpt": tpt_per_model})["tpt"]
ORDER = ["source", "prompt", "coop", "tpt", "memo", "zero", "tda"]
method_order = sorted(methods_by_name, key=lambda m: ORDER.index(m) if m in ORDER else 99)
ABOUT = {
    "source": "CLIP's zero-shot classifier as its authors evaluate it: each class's text "
              "feature averaged over prompt templates (for OpenAI's CLIPs the seven of their "
              "ImageNet evaluation, `helpers.models.TEMPLATES[\"ensemble\"]`; for the small "
              "CLIP trained here its eight training captions, `TEMPLATES[\"small\"]`)",
    "prompt": "the single prompt \"a photo of a {class}.\" through TPT's prompt learner: "
              "TPT's starting point before any tuning (TPT against *prompt* is what the "
              "tuning adds; *source* against *prompt* what the template ensemble adds)",
    "coop": f"a learned CoOp context (`{ctx_file}`) in place of \"a photo of a\", untuned",
    "tpt": "test-time prompt tuning as above",
    "memo": "MEMO (notebook 01): the entropy of the marginal over augmented views, here "
            "updating the image encoder",
    "zero": "Zero (Farina et al., NeurIPS 2024): TPT's views and confidence selection, no "
            "backward pass; the prediction is the **vote** of the confident views (the "
            "arg-max of their zero-temperature marginal)",
    "tda": "TDA (Karmanov et al., CVPR 2024): a positive and a negative **cache** of test "
           "features with their pseudo-labels, filled online along the test stream, whose "
           "affinities to the current image are added to CLIP's logits",
}
# What each method's confidence is (what ECE and the reliability diagrams read).
confidence = findings.confidence_definitions(method_order)
softmax = findings.confidence_definitions(["source"])["source"]  # the default
WHY_NOT = {"coop": "coop (needs a learned context, `ctx_file`)",
           "memo": "memo (notebook 01 runs it on these models)"}
not_run = [WHY_NOT.get(m, m) for m in ORDER if m not in methods_by_name]
display(Markdown(
    f"**This run** ({profile} profile): models {', '.join(f'`{m}`' for m in models)}; "
    f"compared on the same images:\n\n"
    + "\n".join(f"- **{m}**: {ABOUT[m]}" for m in method_order if m in ABOUT)
    + (f"\n\nNot run here: {', '.join(not_run)}." if not_run else "")
    + f"\n\nEach method's confidence (what ECE and the reliability diagrams read) is {softmax}"
    + "".join(f"; **{m}**'s is {text}" for m, text in confidence.items() if text != softmax)
    + "."))

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
# The 64 inputs TPT sees for one test image of the first corrupted data set of this run (the first data set where there is no corruption), ranked by the entropy of CLIP's prediction with the initial prompt: the kept views (top) and the most uncertain rejected ones (bottom). Only the kept ones enter the loss.

# %%
first_set = test_sets[datasets[0]]
shown_name = findings.one_per_family(list(tasks[datasets[0]]), 1)[0]
shown = tasks[datasets[0]][shown_name]
classifier = build_classifier(models[0], shown.class_names, run.device)
image, label = shown[0]
batch, entropies, kept = tpt_factory(classifier, models[0]).selection_of(
    image.to(run.device), key=0)
fig = plots.selected_views(batch, entropies, kept,
                           title=f"{models[0]} on {shown_name}, class "
                                 f"'{shown.class_names[label]}': {len(kept)} of "
                                 f"{len(batch)} inputs kept")
run.figure(fig, "03_tpt_selection")
kept_h = entropies[kept]
display(Markdown(
    f"*The first test image of **{shown_name}** ({shown.description}), class "
    f"'{shown.class_names[label]}', and {len(batch) - 1} views of it. TPT keeps the "
    f"{len(kept)} inputs of lowest prediction entropy (H from {float(kept_h.min()):.2f} to "
    f"{float(kept_h.max()):.2f}; all {len(batch)}: {float(entropies.min()):.2f} to "
    f"{float(entropies.max()):.2f}, the image itself "
    f"{'kept' if 0 in kept.tolist() else 'rejected'} at {float(entropies[0]):.2f}).*"))

# %% [markdown]
# ## The methods on every data set
#
# Every (model, data, method) cell runs through the same loop (`helpers.evaluate`): accuracy, expected calibration error (15 bins), mean confidence, seconds per test image (adaptation included). Finished cells are saved as they complete.

# %%
store = run.store(method_settings=("methods", "memo", "memo_per_model", "models", "zero",
                                   "tda", "tpt", "tpt_per_model", "agreement_images"))
results = []
for name, test_set in test_sets.items():
    builders = {m: partial(build_classifier, m, test_set.class_names, run.device)
                for m in models}
    results += run_grid(builders, tasks[name], {m: methods_by_name[m] for m in method_order},
                        store, batch_size, scheduler=scheduler)
descriptions = {name: describe(name) for name in models}
for name, text in descriptions.items():
    print(f"{name}: {text}")

# %%
table = pd.DataFrame(summary_rows(results))
accuracy = pd.DataFrame(pivot(results, methods=method_order)).set_index(["model", "data"])
means = table.groupby(["model", "method"], sort=False)[  # the grid's order: source first
    ["accuracy", "ece", "mean_confidence", "seconds_per_sample"]].mean()
display(Markdown("**Accuracy per data set**"))
display(accuracy.style.format("{:.3f}", na_rep="—"))
display(Markdown("**Mean over the data sets**"))
display(means.rename(columns={"ece": "ECE", "mean_confidence": "mean confidence",
                              "seconds_per_sample": "s per image"})
        .style.format({"accuracy": "{:.3f}", "ECE": "{:.3f}", "mean confidence": "{:.3f}",
                       "s per image": "{:.4f}"}))

# %%
note = " ".join(f"`{name}`: {text}." for name, text in descriptions.items())
fig = plots.accuracy_per_corruption(results, title="Accuracy per data set and method",
                                    methods=method_order)
run.figure(fig, "03_tpt_accuracy")
display(Markdown(f"*{note} Data: {first_set.description}.*"))

# %% [markdown]
# ## Against the published numbers
#
# The anchors of this notebook (`helpers/resources/published.yaml`): the papers' numbers beside this run's on the same metric.

# %%
anchors = anchor_table("03_tpt", results)
run.show_anchors(anchors)

# %% [markdown]
# ## Calibration
#
# ECE summarises how far confidence is from accuracy; the reliability diagrams (pooled over the corrupted data sets, each panel's ECE with its 95% interval) show where: a bar below the diagonal is a confidence bin whose predictions are right less often than they claim. A method whose confidence is not a softmax probability (see the definitions at the top) is judged as it reports it.

# %%
calibration_lines = findings.calibration_lines(results, methods=method_order)
display(Markdown(findings.markdown(calibration_lines)))
for index, model_name in enumerate(models):
    fig = plots.reliability_diagram(results, method_order, model_name)
    run.figure(fig, f"03_tpt_reliability_{index}")

# %% [markdown]
# ## How many views, how many kept, how large a step
#
# TPT's number of augmented views (at its selection ratio), its selection ratio (at its number of views; 1.0 keeps every view, i.e. no confidence selection) and its learning rate (multiples of its own), one at a time, and Zero over the same numbers of views, for the first model on up to `sweep_corruptions` data sets, the same `sweep_images` test images under each. Where the test data are corrupted, the sweep runs on ImageNet-C's held-out **validation** corruptions (one per family), not on the test ones; it is **descriptive**: no setting of this notebook is chosen from it (TPT's and Zero's settings come from the parameters). Beside them, the fixed prompt (TPT's starting point) on the same images. At learning rate 0 TPT does not move its prompt and predicts with the initial one: it **is** the fixed prompt by construction, so that point is the fixed prompt's result, not a run of TPT.

# %%
SWEEP_BASELINE = "prompt"
sweep_data = (findings.validation_tasks(first_set, sweep_corruptions, sweep_images, severity,
                                        seed) if corruptions else
              findings.sweep_tasks(tasks[datasets[0]], sweep_corruptions, sweep_images, seed))
first_tpt = tpt_factory.settings(models[0])  # TPT's settings for the first model
sweep, sweep_methods = findings.model_sweeps(
    tpt_factory.settings, models[:1], {"n_views": sweep_views, "selection": sweep_selection,
                                       "lr": sweep_lr}, "tpt", ("lr",))
zero_sweep, zero_methods = findings.model_sweeps(
    getattr(methods_by_name.get("zero"), "settings", None),
    models[:1] if sweep_zero and "zero" in methods_by_name else [], {"n_views": sweep_views},
    "zero")
sweep_methods = {SWEEP_BASELINE: method_factories(["prompt"])["prompt"], **sweep_methods,
                 **zero_methods}
sweep_model = {models[0]: partial(build_classifier, models[0], shown.class_names, run.device)}
sweep_results = (run_grid(sweep_model, sweep_data, sweep_methods, store, batch_size,
                          scheduler=scheduler) if sweep_data else [])
sweep_rows = findings.sweep_rows(sweep_results, sweep + zero_sweep, SWEEP_BASELINE)
sweep_labels = {"n_views": f"views (+ the image), {first_tpt['selection']:g} kept",
                "selection": f"share kept of {first_tpt['n_views']} views + the image",
                "lr": f"learning rate (x TPT's {first_tpt['lr']:g})"}
if sweep_rows:
    display(pd.DataFrame(sweep_rows)[["sweep", "setting", "value", "same_as", "accuracy",
                                      "ci_low", "ci_high", "confidence", "confidence_low",
                                      "confidence_high", "change", "change_low",
                                      "change_high", "ece", "seconds_per_sample"]]
            .fillna("—")
            .rename(columns={"sweep": "method", "same_as": "equals by construction",
                             "ci_low": "95% CI low", "ci_high": "95% CI high",
                             "confidence": "mean confidence", "confidence_low": "conf. CI low",
                             "confidence_high": "conf. CI high",
                             "change": f"change vs {SWEEP_BASELINE}",
                             "change_low": "change CI low", "change_high": "change CI high",
                             "ece": "ECE", "seconds_per_sample": "s per image"})
            .style.hide(axis="index")
            .format({"value": "{:g}", "s per image": "{:.4f}"}, precision=3))
    fig = plots.sweep_intervals(sweep_rows, sweep_labels, metrics=("accuracy", "confidence"),
                                title=f"TPT and Zero on {models[0]}: mean accuracy and "
                                      "confidence vs views, share kept and learning rate")
    run.figure(fig, "03_tpt_sweep")
    display(Markdown(
        f"*Mean accuracy (top) and mean confidence (bottom) over {len(sweep_data)} data "
        f"set{'s' * (len(sweep_data) > 1)} ({', '.join(sweep_data)}"
        f"{', validation corruptions' if corruptions else ''}), the same "
        f"{len(next(iter(sweep_data.values())))} images under each; shaded: 95% bootstrap "
        f"interval over the images (an image resampled with all its data sets); square: the "
        f"setting the tables above use; dashed: the fixed prompt on the same images, its "
        f"interval in grey (and TPT at learning rate 0, which is the fixed prompt by "
        f"construction, not drawn as a point of TPT's). Descriptive: no setting is chosen "
        f"from this sweep.*\n\n"
        + findings.markdown(findings.sweep_lines(sweep_rows, sweep_labels))))

# %% [markdown]
# ## Does the training recipe decide whether TPT helps?
#
# The small CLIP trained CLIP-style (`small-clip`: random resized crops, flips and photometric jitter, on FashionMNIST and MNIST digits with their own captions) and on clean FashionMNIST only (`small-clip:none`): each method's change over the same model's zero-shot prediction, with its 95% paired-bootstrap interval. The methods that predict from augmented views (TPT, MEMO, Zero) trust the model's predictions on them; a model never trained on such views gives them no reason to.

# %%
standins = [name for name in models if parse_standin(name)]
recipe_rows = [row for row in findings.compare_all(results, methods=method_order)
               if row["model"] in standins]
run.show_changes(recipe_rows, "03_tpt_recipes", "Change over the same model's zero-shot "
                                                "prediction, per training recipe")
agreement, agreement_lines = [], []
for name in standins if "zero" in methods and agreement_images else []:
    settings = methods_by_name["zero"].settings(name)
    zero_views = tpt_views(settings["views"], settings["n_views"], min(image.shape[-2:]))
    model = build_classifier(name, shown.class_names, run.device)
    score = findings.mean_view_agreement(model, tasks[datasets[0]], zero_views,
                                         agreement_images, seed)
    agreement.append({"model": name, **score})
    agreement_lines.append(findings.agreement_line(name, "Zero's and TPT's", score,
                                                   agreement_images))
if agreement:
    display(pd.DataFrame(agreement).set_index("model").rename(
        columns={"source": "the image", "views": "one view", "marginal": "average of views"})
        .style.format("{:.3f}"))
    display(Markdown(findings.markdown(agreement_lines)))

# %% [markdown]
# ## Findings
#
# Each method against zero-shot CLIP, and TPT against its own starting point (the fixed prompt), on the same images: the change in mean accuracy with a 95% paired-bootstrap interval (images resampled with all their corruptions) and the number of data sets where McNemar's exact test finds the change significant.

# %%
EXPECT = {
    "tpt": "TPT changes four context vectors of the text side and nothing else, so it cannot "
           "repair image features a corruption destroyed, but it can move the class "
           "prototypes toward where this image's confident views lie",
    "memo": "MEMO changes the image encoder itself, with a larger search space and a larger "
            "cost per step",
    "zero": "Zero predicts from the views alone, never from the image itself, so it depends "
            "even more than TPT on a model whose predictions on crops and augmented views are "
            "right",
    "tda": "TDA learns from the stream, so it gains most where many test images share a shift",
}
display(Markdown("What to expect: " + "; ".join(EXPECT[m] for m in method_order if m in EXPECT)
                 + ". Every number below is computed from this run's results."))
finding_rows = findings.compare_all(results, methods=method_order)
if {"prompt", "tpt"} <= set(method_order):
    finding_rows += findings.compare(results, "tpt", baseline="prompt")
if {"tpt", "zero"} <= set(method_order):
    finding_rows += findings.compare(results, "zero", baseline="tpt")
run.show_findings(finding_rows, agreement_lines, figure="03_tpt_findings")
assert all(0 <= r["accuracy"] <= 1 and r["n"] > 0 for r in results)
assert set(table["method"]) <= set(method_order)

# %% [markdown]
# ## What we found

# %%
# A null or negative result of TPT or Zero is explained by how the model
# does on those views without adaptation (the diagnostic above).
explanations = {(row["model"], method): line for row, line in zip(agreement, agreement_lines)
                for method in ("tpt", "zero")}
sweep_half = (sum(r["ci_high"] - r["ci_low"] for r in sweep_rows) / 2 / len(sweep_rows)
              if sweep_rows else None)
who = (f"stand-ins trained here ({', '.join(standins)}), not OpenAI's CLIPs" if standins
       else ", ".join(models))
limits = [
    f"The models are {who}; {len(next(iter(tasks[datasets[0]].values())))} test images per "
    f"data set, one seed ({seed}), on {run.info['device']}",
    f"Not run here: {', '.join(not_run)}" if not_run else "",
    (f"The sweep of TPT's views, share kept and learning rate (and Zero's views) is "
     f"descriptive (no setting is chosen from it) and ran on {len(sweep_data)} data sets of "
     f"{len(next(iter(sweep_data.values())))} images: its intervals are ±{sweep_half:.3f} on "
     "average") if sweep_rows else "",
    "The full profile runs OpenAI's CLIPs (ViT-B/16, ViT-B/32, RN50, RN101) on ImageNet-A and "
    "ImageNet-V2, the setting of the published numbers, with MEMO beside TPT",
]
run.show_conclusions(
    conclusions.what_we_found(finding_rows, conclusions.identical_pairs(results, method_order),
                              explanations),
    conclusions.limitations(limits), conclusions.anchor_lines(anchors))

# %%
summary = {"Accuracy per data set (zero-shot = source)": pivot(results, methods=method_order),
           "Mean over the data sets": means.reset_index().round(4).to_dict("records"),
           "Calibration": calibration_lines}
if recipe_rows:
    summary["Change over zero-shot per training recipe (95% paired-bootstrap interval)"] = \
        findings.intervals(recipe_rows)
if agreement:
    summary["Zero's and TPT's views without adaptation (mean over the corruptions)"] = agreement
if sweep_rows:
    summary[f"TPT and Zero sweep on {len(sweep_data)} data sets ({', '.join(sweep_data)}), "
            f"{len(next(iter(sweep_data.values())))} images each"] = sweep_rows
run.save(summary, note, headline_table="Mean over the data sets",
         results=summary_rows(results))
