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
# | `temperature` | $\frac1M\sum_m \mathrm{softmax}(z_m / T_m)$, each $T_m$ fitted by minimising the negative log-likelihood on labelled **source** images (clean images of the training split, none of them a test image), never on labelled test images, which test-time adaptation does not have |
# | `entropy` | $\sum_m w_m p_m$, $w_m \propto e^{-H(p_m)}$ per image: a confident member weighs more |
# | `vote` | majority of the members' arg-max; a tie goes to the tied class with the highest mean probability; its confidence is (votes + mean probability) / (M + 1), about the share of members that vote for the class |
#
# Every member's results are shown beside the ensemble's; the rules only combine the members' logits, so each member runs once per image. At the end: **where do the members disagree**, and who is right there?
#
# | profile | models | data |
# |---|---|---|
# | `smoke` (defaults below) | small CLIP **trained here** (not OpenAI's) | three corruptions of FashionMNIST, a few dozen images |
# | `offline` | the same | FashionMNIST-C: the 15 corruptions of ImageNet-C at severity 5; the temperatures on clean FashionMNIST training images |
# | `full` (GPU) | CLIP ViT-B/16 (OpenAI weights) | ImageNet-A and ImageNet-V2 from disk; no temperature rule (this project loads no ImageNet training images to fit it on) |

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
n_images = 24  # test images per corruption (None: all)
n_held_out = 16  # labelled source images to fit the temperatures on (0: no temperature rule)
held_out_split = "train"  # the data set's split they come from (never a test image)
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

from helpers import conclusions, data, findings, plots
from helpers.anchors import anchor_table
from helpers.ensemble_grid import ensemble_grid, source_held_out
from helpers.evaluate import pivot, summary_rows
from helpers.models import build_classifier, describe, parse_standin
from helpers.notebook import start
from helpers.tta import disagreement, method_factories, view_settings

run = start("04_ensemble", dict(
    profile=profile, datasets=datasets, data_root=data_root, models=models,
    corruptions=corruptions, severity=severity, n_images=n_images, n_held_out=n_held_out,
    held_out_split=held_out_split, include_clean=include_clean, members=members, rules=rules,
    tpt=tpt, tpt_per_model=tpt_per_model, memo=memo, zero=zero, tda=tda,
    memo_per_model=memo_per_model, batch_size=batch_size, seed=seed), results_path, figures_dir)

# %%
# The members in a fixed order (source first), then the rules; what this run compares.
ORDER = ["source", "tpt", "memo", "zero", "tda"]
members = sorted(members, key=lambda m: ORDER.index(m) if m in ORDER else 99)
rules = [r for r in ("mean", "temperature", "entropy", "vote") if r in rules and
         (r != "temperature" or n_held_out)]
confidence = findings.confidence_definitions(
    members + [f"ensemble ({rule})" for rule in rules])
softmax = findings.confidence_definitions(["source"])["source"]  # the default
ABOUT = {"source": "the model as it is (CLIP zero-shot)",
         "tpt": "TPT: tunes CLIP's prompt on each image's confident views (notebook 03)",
         "memo": "MEMO: tunes the image encoder on the marginal entropy over views (notebook 01)",
         "zero": "Zero: the vote of TPT's confident views, no update (notebook 03)",
         "tda": "TDA: CLIP's logits plus the affinities to caches of earlier test images "
                "(notebook 03)"}
display(Markdown(
    f"**This run** ({profile} profile): models {', '.join(f'`{m}`' for m in models)}; "
    f"members:\n\n" + "\n".join(f"- **{m}**: {ABOUT.get(m, m)}" for m in members)
    + f"\n\nRules: {', '.join(rules)}."
    + ("" if n_held_out else " No temperature rule: `n_held_out` is 0.")
    + f"\n\nEach method's confidence (what ECE reads) is {softmax}"
    + "".join(f"; **{m}**'s is {text}" for m, text in confidence.items() if text != softmax)
    + "."))

# %% [markdown]
# ## The data: test sets, and source images for the temperatures
#
# The same seeded test images under every corruption. The temperatures are fitted on `n_held_out` random labelled images of the data set's training split (`held_out_split`), none of them pixel-identical to a test image: source data, which a test-time method may have, never labelled test data.

# %%
test_sets = {name: data.load_dataset(name, root=data_root, download=download)
             for name in datasets}
tasks = {name: {(f"{name}/{k}" if len(datasets) > 1 else k): v
                for k, v in data.corruption_suite(test_set, corruptions, severity, n_images,
                                                  seed, include_clean).items()}
         for name, test_set in test_sets.items()}
held_out = {name: source_held_out(name, n_held_out, tasks[name].values(), seed,
                                  held_out_split, data_root, download) for name in datasets}
for name, test_set in test_sets.items():
    print(test_set.description)
    if held_out[name] is not None:
        print(f"temperatures fitted on: {held_out[name].description}")

# %%
# NBVAL_CHECK_OUTPUT
for name, suite in tasks.items():
    if held_out[name] is not None:
        print(f"{held_out[name].name:24s} {len(held_out[name]):6d} source images (temperatures)")
    for task_name, test in suite.items():
        print(f"{task_name:24s} {len(test):6d} test images")

# %% [markdown]
# ## Members and ensembles
#
# For each model: build the members and fit one temperature per member on the source images (each member adapting as it does at test time); then, per data set, run every member once over the test images and combine.

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
                                  scheduler=scheduler, held_out=held_out[name])
    results, temperatures = results + found, temperatures + fitted
method_order = list(dict.fromkeys(r["method"] for r in results))  # members, then rules
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
display(means.rename(columns={"ece": "ECE", "mean_confidence": "mean confidence",
                              "seconds_per_sample": "s per image"})
        .style.format({"accuracy": "{:.3f}", "ECE": "{:.3f}", "mean confidence": "{:.3f}",
                       "s per image": "{:.4f}"}))

# %%
if temperatures:
    display(Markdown("**Fitted temperatures** per member (above 1: the member was "
                     "overconfident on the source images) and each member's accuracy there"))
    display(pd.DataFrame(temperatures).set_index(["model", "member"])
            .rename(columns={"held_out_accuracy": "accuracy on them",
                             "held_out_images": "source images"})
            .style.format({"temperature": "{:.3f}", "accuracy on them": "{:.3f}",
                           "source images": "{:,}"}))
    held_accuracy = {t["model"]: t["held_out_accuracy"] for t in temperatures
                     if t["member"] == "source"}
    clean = table[(table["method"] == "source") & (table["data"].str.endswith("clean"))]
    trained_on = [m for m in models if parse_standin(m)]
    display(Markdown(" ".join(
        f"`{m}` is right on {held_accuracy[m]:.3f} of the source images"
        + (f" and on {float(clean[clean['model'] == m]['accuracy'].mean()):.3f} of the clean "
           f"test images" if (clean["model"] == m).any() else "")
        + (": it was trained on that split, so the temperatures are fitted where it is at "
           "its most confident, and cannot know how overconfident each member becomes under "
           "a corruption." if m in trained_on else ".")
        for m in held_accuracy)))

# %%
note = " ".join(f"`{name}`: {text}." for name, text in descriptions.items())
fig = plots.accuracy_per_corruption(results, title="Members and ensembles: accuracy per data "
                                                   "set", methods=method_order)
run.figure(fig, "04_ensemble_accuracy_per_corruption")
display(Markdown(f"*{note} Data: {next(iter(test_sets.values())).description}.*"))

# %% [markdown]
# ## Against the published numbers
#
# The anchors of this notebook (`helpers/resources/published.yaml`): the papers' numbers beside this run's on the same metric.

# %%
anchors = anchor_table("04_ensemble", results)
run.show_anchors(anchors)

# %% [markdown]
# ## Where the members disagree
#
# Per data set: how often the members' predictions differ, and on the images where they do not agree, the accuracy of each member, of each ensemble rule, and of an oracle that picks a right member whenever one exists. An ensemble can only gain on the disagreements; the oracle bounds that gain.

# %%
rows = []
for (model_name, task_name), group in pd.DataFrame(results).groupby(["model", "data"],
                                                                    sort=False):
    rows.append({"model": model_name, "data": task_name,
                 **disagreement(group.to_dict("records"), members)})
disagree = pd.DataFrame(rows)
cols = (["model", "data", "n", "disagree"]
        + [c for c in disagree.columns if c.endswith("(disagree)")])
display(disagree[cols].rename(columns={"n": "images", "disagree": "share disagreeing",
                                       **{c: c.replace(" (disagree)", "") for c in cols[4:]}})
        .set_index(["model", "data"]).style.format(precision=3, na_rep="—"))
long = [{"model": r["model"], "method": c.rsplit(" (", 1)[0], "accuracy": r[c]}
        for r in rows for c in cols[4:] if r[c] is not None]
if long:
    fig = plots.method_bars(long, hue="model",
                            title="Accuracy on the images where the members disagree")
    run.figure(fig, "04_ensemble_disagreement")
print(f"members disagree on {disagree['disagree'].mean():.1%} of the test images on average")

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
                  title="Ensembles and members: change in mean accuracy")
assert all(0 <= r["accuracy"] <= 1 and r["n"] > 0 for r in results)
assert set(members) <= set(table["method"])

# %% [markdown]
# ## What we found

# %%
# A rule that does not beat its best member is explained by where the members disagree (the
# only images where a rule can differ from them) and by the oracle's bound there.
where = disagree.groupby("model", sort=False).mean(numeric_only=True)
explanations = {
    (r["model"], r["method"]): (
        f"The members disagree on {where.loc[r['model'], 'disagree']:.1%} of the images; "
        f"there, some member is right on {where.loc[r['model'], 'any member right (disagree)']:.3f}"
        f" and this rule on {where.loc[r['model'], r['method'] + ' (disagree)']:.3f} (means "
        "over the data sets).")
    for r in finding_rows if r["method"].startswith("ensemble")}
who = (f"stand-ins trained here ({', '.join(m for m in models if parse_standin(m))}), not "
       "OpenAI's CLIPs" if any(parse_standin(m) for m in models) else ", ".join(models))
limits = [
    f"The models are {who}; {len(next(iter(tasks[datasets[0]].values())))} test images per "
    f"data set, one seed ({seed}), on {run.info['device']}",
    "The best member is chosen on the same data sets it is compared on, which favours it",
    (f"The temperatures are fitted on {n_held_out:,} {held_out_split}-split images of "
     f"{', '.join(datasets)}") + (", on which the stand-ins were trained" if any(
         parse_standin(m) for m in models) else "") if n_held_out else
    "No temperature rule: no source images to fit it on (n_held_out is 0)",
    "The full profile runs CLIP ViT-B/16 on ImageNet-A and ImageNet-V2, the members' "
    "published setting; no published ensemble of these methods was found",
]
run.show_conclusions(
    conclusions.what_we_found(finding_rows, conclusions.identical_pairs(results, method_order),
                              explanations),
    conclusions.limitations(limits), conclusions.anchor_lines(anchors))

# %%
summary = {"Accuracy per data set: the members (source: zero-shot) and their ensembles":
           pivot(results, methods=method_order),
           "Mean over the data sets": means.reset_index().round(4).to_dict("records"),
           "Where the members disagree": disagree[cols].round(4).to_dict("records")}
run.save(summary, note, headline_table="Mean over the data sets",
         results=summary_rows(results), temperatures=temperatures)
