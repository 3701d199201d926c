# %% [markdown]
# # 04 · Ensembles of test-time adapted models
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tta-course/tta-notebooks/blob/main/notebooks/04_ensemble.ipynb)
#
# TPT (notebook 03) tunes CLIP's **prompt**; MEMO (notebook 01) tunes its **image encoder**; Zero votes over TPT's confident views without any update; TDA adds the affinities to a cache of earlier test images; the source model changes nothing. They fail on different images, so combining them may beat each. `helpers.tta.Ensemble` takes any adapters with the common interface: each member adapts on its **own** views and resets on its own, and the ensemble combines their predictions by one of four rules:
#
# | rule | prediction |
# |---|---|
# | `mean` | $\bar p = \frac1M\sum_m p_m$ |
# | `temperature` | $\frac1M\sum_m \mathrm{softmax}(z_m / T_m)$, each $T_m$ fitted on a **held-out** split by minimising the negative log-likelihood |
# | `entropy` | $\sum_m w_m p_m$, $w_m \propto e^{-H(p_m)}$ per image: a confident member weighs more |
# | `vote` | majority of the members' arg-max; a tie goes to the tied class with the highest mean probability |
#
# Every member's results are shown beside the ensemble's; the rules only combine the members' logits, so each member runs once per image. At the end: **where do the members disagree**, and who is right there?
#
# | profile | models | data |
# |---|---|---|
# | `smoke` (defaults below) | small CLIP **trained here** (not OpenAI's) | three corruptions of FashionMNIST, a few dozen images |
# | `offline` | the same | FashionMNIST-C: the 15 corruptions of ImageNet-C at severity 5, a held-out part per data set for the temperatures |
# | `full` (GPU) | CLIP ViT-B/16 (OpenAI weights) | ImageNet-A and ImageNet-V2 from disk |

# %%
# In Colab: install the project's package, check for a GPU, show the full profile's parameters.
import sys

if "google.colab" in sys.modules:
    import subprocess

    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "tta-helpers @ git+https://github.com/tta-course/tta-notebooks"], check=True)
    from helpers.notebook import colab_setup

    colab_setup("04_ensemble")

# %% tags=["parameters"]
# Parameters: papermill injects a profile's values after this cell.
profile = "smoke"
datasets = ["fashion-mnist"]  # fashion-mnist | imagenet-a | imagenet-v2 | cifar10 | cifar100
data_root = None
download = True  # fetch a data set when it is missing and the machine is online
models = ["small-clip"]  # small-clip | ViT-B/16 | ViT-B/32 | RN50 | a CLIP checkpoint file
corruptions = ["gaussian_noise", "motion_blur", "contrast"]  # "all": ImageNet-C's 15; []: clean
severity = 5
n_images = 32  # images per corruption, held-out part included (None: all)
n_held_out = 8  # of those, held out to fit the temperatures (0: no temperature rule)
include_clean = False
members = ["source", "tpt", "memo", "zero", "tda"]
rules = ["mean", "temperature", "entropy", "vote"]
tpt = {"n_views": 63, "selection": 0.1, "steps": 1, "lr": 0.005, "views": "auto"}
memo = {"n_views": 16, "steps": 1, "optimizer": "sgd", "lr": 1e-5, "params": "all"}
# Per-model overrides: the stand-ins' settings chosen on ImageNet-C's four held-out validation
# corruptions (tools/standin_settings.json); Zero takes TPT's views and selection.
tpt_per_model = {"small-clip": {"views": {"kind": "crop", "min_scale": 0.5}}}
memo_per_model = {"small-clip": {"lr": 0.005, "views": {"kind": "crop", "min_scale": 0.5}}}
zero = {}  # Zero's settings beyond TPT's views and selection, which it always takes
tda = {}
batch_size = 64
seed = 0
scheduler = None  # a Dask scheduler's address (tcp://host:8786) for the grid; None: here
results_path = None  # default: results/<profile>/04_ensemble.json ($TTA_RESULTS)
figures_dir = None  # default: figures/<profile>/ ($TTA_FIGURES)

# %%
from functools import partial

import pandas as pd
from IPython.display import Markdown, display

from helpers import data, findings, plots
from helpers.evaluate import pivot, summary_rows
from helpers.models import build_classifier, describe
from helpers.notebook import start
from helpers.tta import disagreement, ensemble_grid, method_factories, view_settings

run = start("04_ensemble", dict(
    profile=profile, datasets=datasets, data_root=data_root, models=models,
    corruptions=corruptions, severity=severity, n_images=n_images, n_held_out=n_held_out,
    include_clean=include_clean, members=members, rules=rules, tpt=tpt,
    tpt_per_model=tpt_per_model, memo=memo, zero=zero, tda=tda,
    memo_per_model=memo_per_model, batch_size=batch_size, seed=seed), results_path, figures_dir)

# %% [markdown]
# ## The data: a held-out part and a test part per task
#
# The temperatures are fitted on `n_held_out` random images of each task and every number is measured on the others.

# %%
test_sets = {name: data.load_dataset(name, root=data_root, download=download)
             for name in datasets}
tasks = {name: {(f"{name}/{k}" if len(datasets) > 1 else k): data.split(v, n_held_out, seed)
                for k, v in data.corruption_suite(test_set, corruptions, severity, n_images,
                                                  seed, include_clean).items()}
         for name, test_set in test_sets.items()}
for test_set in test_sets.values():
    print(test_set.description)

# %%
# NBVAL_CHECK_OUTPUT
for suite in tasks.values():
    for task_name, (held_out, test) in suite.items():
        print(f"{task_name:24s} held out {len(held_out):5d}, test {len(test):6d} images")

# %% [markdown]
# ## Members and ensembles
#
# For each model and task: build the members, fit one temperature per member on the held-out part (each member adapting as it does at test time), then run every member once over the test part and combine.

# %%
factories = method_factories(
    members, {"tpt": tpt, "memo": memo, "zero": {**view_settings(tpt), **zero}, "tda": tda},
    {"memo": memo_per_model, "tpt": tpt_per_model,
     "zero": {m: view_settings(s) for m, s in tpt_per_model.items()}})
store = run.store()
results, temperatures = [], []
for name, test_set in test_sets.items():
    builders = {m: partial(build_classifier, m, test_set.class_names, run.device)
                for m in models}
    found, fitted = ensemble_grid(builders, tasks[name], factories, store, rules, batch_size,
                                  scheduler=scheduler)
    results, temperatures = results + found, temperatures + fitted
method_order = list(dict.fromkeys(r["method"] for r in results))
descriptions = {name: describe(name) for name in models}
for name, text in descriptions.items():
    print(f"{name}: {text}")

# %%
table = pd.DataFrame(summary_rows(results))
accuracy = pd.DataFrame(pivot(results, methods=method_order)).set_index(["model", "data"])
means = table.groupby(["model", "method"], sort=False)[["accuracy", "ece", "mean_confidence",
                                                        "seconds_per_sample"]].mean()
display(Markdown("**Accuracy per data set**: members, then the ensemble under each rule"))
display(accuracy.style.format("{:.3f}", na_rep="—"))
display(Markdown("**Mean over the data sets**"))
display(means.style.format({"accuracy": "{:.3f}", "ece": "{:.3f}", "mean_confidence": "{:.3f}",
                            "seconds_per_sample": "{:.4f}"}))
if temperatures:
    display(Markdown("**Fitted temperatures** per member (above 1: the member was "
                     "overconfident)"))
    display(pd.DataFrame(temperatures).round(3))

# %%
note = " ".join(f"`{name}`: {text}." for name, text in descriptions.items())
fig = plots.accuracy_per_corruption(
    results, title=f"{note} Data: {next(iter(test_sets.values())).description}.",
    methods=method_order)
run.figure(fig, "04_ensemble_accuracy_per_corruption")

# %% [markdown]
# ## Where the members disagree
#
# Per data set: how often the members' predictions differ, and on the images where they agree and where they do not, the accuracy of each member, of each ensemble rule, and of an oracle that picks a right member whenever one exists. An ensemble can only gain on the disagreements; the oracle bounds that gain.

# %%
rows = []
for (model_name, task_name), group in pd.DataFrame(results).groupby(["model", "data"],
                                                                    sort=False):
    rows.append({"model": model_name, "data": task_name,
                 **disagreement(group.to_dict("records"), members)})
disagree = pd.DataFrame(rows)
cols = (["model", "data", "n", "disagree"]
        + [c for c in disagree.columns if c.endswith("(disagree)")])
display(disagree[cols].style.format(precision=3, na_rep="—"))
long = [{"model": r["model"], "method": c.rsplit(" (", 1)[0], "accuracy": r[c]}
        for r in rows for c in cols[4:] if r[c] is not None]
if long:
    fig = plots.method_bars(long, hue="model",
                            title="Accuracy on the images where the members disagree")
    run.figure(fig, "04_ensemble_disagreement")

# %% [markdown]
# ## Findings
#
# Every member and every rule against the source model, and every rule against the best single member (chosen per model by its mean accuracy on these same data sets, which slightly favours the member), on the same images: the change in mean accuracy with a 95% paired-bootstrap interval (images resampled with all their corruptions) and the number of data sets where McNemar's exact test finds it significant. The figure puts the rules side by side on a zoomed axis: where the intervals overlap zero, the ensemble is not told apart from its best member. Every number below is computed from this run's results.

# %%
finding_rows = findings.compare_all(results, methods=method_order)
mean_accuracy = table.groupby(["model", "method"], sort=False)["accuracy"].mean()
for model_name in models:
    best = mean_accuracy[model_name][members].idxmax()
    finding_rows += [row for rule in method_order if rule.startswith("ensemble")
                     for row in findings.compare(results, rule, baseline=best)
                     if row["model"] == model_name]
run.show_findings(finding_rows, figure="04_ensemble_findings",
                  title="Ensembles and members: change in mean accuracy (95% paired-bootstrap "
                        "intervals)")
print(f"members disagree on {disagree['disagree'].mean():.1%} of the test images on average")
assert all(0 <= r["accuracy"] <= 1 and r["n"] > 0 for r in results)
assert set(members) <= set(table["method"])

# %%
summary = {"Accuracy per data set: the members (source: zero-shot) and their ensembles":
           pivot(results, methods=method_order),
           "Mean over the data sets": means.reset_index().round(4).to_dict("records"),
           "Where the members disagree": disagree[cols].round(4).to_dict("records")}
run.save(summary, note, headline_table="Mean over the data sets",
         results=summary_rows(results), temperatures=temperatures)
