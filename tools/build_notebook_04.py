"""Writes notebooks/04_ensemble.ipynb from the cells below, so that the notebook's source can
be reviewed as plain Python. Run from the repository root:

    python tools/build_notebook_04.py --execute   # also stores the outputs nbval checks
"""

from nbbuild import build, code, md

cells = [
    md("""# 04 · Ensembles of test-time adapted models

TPT (notebook 03) tunes CLIP's **prompt**; MEMO (notebook 01) tunes its **image encoder**; the source model tunes nothing. They fail on different images, so combining them may beat each. `helpers.tta.Ensemble` takes any adapters with the common interface: each member adapts on its **own** views and resets on its own, and the ensemble combines their predictions by one of four rules:

| rule | prediction |
|---|---|
| `mean` | $\\bar p = \\frac1M\\sum_m p_m$ |
| `temperature` | $\\frac1M\\sum_m \\mathrm{softmax}(z_m / T_m)$, each $T_m$ fitted on a **held-out** split by minimising the negative log-likelihood |
| `entropy` | $\\sum_m w_m p_m$, $w_m \\propto e^{-H(p_m)}$ per image: a confident member weighs more |
| `vote` | majority of the members' arg-max; a tie goes to the tied class with the highest mean probability |

Every member's results are shown beside the ensemble's; the rules only combine the members' logits, so each member runs once per image. At the end: **where do the members disagree**, and who is right there?

| profile | models | data |
|---|---|---|
| `smoke` (defaults below) | small CLIP **trained here** (not OpenAI's) | three corruptions of FashionMNIST, a few dozen images |
| `offline` | the same | FashionMNIST-C: 15 corruptions at severity 5, 200 test images each (plus 100 held out) |
| `full` (GPU) | CLIP ViT-B/16 (OpenAI weights) | ImageNet-A and ImageNet-V2 from disk |"""),
    code("""# Parameters: papermill injects a profile's values after this cell.
profile = "smoke"
datasets = ["fashion-mnist"]   # fashion-mnist | imagenet-a | imagenet-v2 | cifar10 | cifar100 | mnist
data_root = None
models = ["small-clip"]        # small-clip | ViT-B/16 | ViT-B/32 | RN50 | a CLIP checkpoint file
corruptions = ["gaussian_noise", "motion_blur", "contrast"]  # "all": the 15 of ImageNet-C; []: clean only
severity = 5
n_images = 32                  # images per corruption, held-out part included (None: all)
n_held_out = 8                 # of those, held out to fit the temperatures (0: no temperature rule)
include_clean = False
members = ["source", "tpt", "memo"]
rules = ["mean", "temperature", "entropy", "vote"]
tpt = {"n_views": 63, "selection": 0.1, "steps": 1, "lr": 0.005, "views": "auto"}
memo = {"n_views": 16, "steps": 1, "optimizer": "sgd", "lr": 1e-5, "params": "all"}
memo_per_model = {"small-clip": {"lr": 0.001}}
batch_size = 64
seed = 0
results_path = None            # default: results/<profile>/04_ensemble.json ($TTA_RESULTS)
figures_dir = None             # default: figures/<profile>/ ($TTA_FIGURES)""", metadata={"tags": ["parameters"]}),
    code("""import pandas as pd
import torch
from IPython.display import Markdown, display

from helpers import data, paths, plots
from helpers.evaluate import ResultStore, pivot, run_info, summary_rows, write_json
from helpers.models import build_classifier, default_device, describe
from helpers.tta import disagreement, ensemble_grid, method_factories

torch.manual_seed(seed)
device = default_device()
results_path, figures_dir = paths.notebook_outputs("04_ensemble", profile, results_path,
                                                   figures_dir)
parameters = dict(profile=profile, datasets=datasets, data_root=data_root, models=models,
                  corruptions=corruptions, severity=severity, n_images=n_images,
                  n_held_out=n_held_out, include_clean=include_clean, members=members,
                  rules=rules, tpt=tpt, memo=memo, memo_per_model=memo_per_model,
                  batch_size=batch_size, seed=seed)
info = run_info(seed)
print(f"device: {info['device']}, torch {info['torch']}, clip {info['clip']}")"""),
    md("""## The data: a held-out part and a test part per task

The temperatures are fitted on `n_held_out` random images of each task and every number is measured on the others."""),
    code("""test_sets = {name: data.load_dataset(name, root=data_root) for name in datasets}
tasks = {name: {(f"{name}/{k}" if len(datasets) > 1 else k): data.split(v, n_held_out, seed)
                for k, v in data.corruption_suite(test_set, corruptions, severity, n_images,
                                                  seed, include_clean).items()}
         for name, test_set in test_sets.items()}
for test_set in test_sets.values():
    print(test_set.description)"""),
    code("""# NBVAL_CHECK_OUTPUT
for suite in tasks.values():
    for task_name, (held_out, test) in suite.items():
        print(f"{task_name:24s} held out {len(held_out):5d}, test {len(test):6d} images")"""),
    md("""## Members and ensembles

For each model and task: build the members, fit one temperature per member on the held-out part (each member adapting as it does at test time), then run every member once over the test part and combine."""),
    code("""factories = method_factories(members, {"tpt": tpt, "memo": memo}, {"memo": memo_per_model})
store = ResultStore(results_path.with_suffix(".cells.json"), parameters)
results, temperatures = [], []
for name, test_set in test_sets.items():
    builders = {m: (lambda m=m, names=test_set.class_names: build_classifier(m, names, device))
                for m in models}
    found, fitted = ensemble_grid(builders, tasks[name], factories, store, rules, batch_size)
    results, temperatures = results + found, temperatures + fitted
method_order = list(dict.fromkeys(r["method"] for r in results))
descriptions = {name: describe(name) for name in models}
for name, text in descriptions.items():
    print(f"{name}: {text}")"""),
    code("""table = pd.DataFrame(summary_rows(results))
accuracy = pd.DataFrame(pivot(results, methods=method_order)).set_index(["model", "data"])
means = table.groupby(["model", "method"], sort=False)[["accuracy", "ece", "mean_confidence",
                                                        "seconds_per_sample"]].mean()
display(Markdown("**Accuracy per data set**: members, then the ensemble under each rule"))
display(accuracy.style.format("{:.3f}", na_rep="—"))
display(Markdown("**Mean over the data sets**"))
display(means.style.format({"accuracy": "{:.3f}", "ece": "{:.3f}", "mean_confidence": "{:.3f}",
                            "seconds_per_sample": "{:.4f}"}))
if temperatures:
    display(Markdown("**Fitted temperatures** per member (above 1: the member was overconfident)"))
    display(pd.DataFrame(temperatures).round(3))"""),
    code("""note = " ".join(f"`{name}`: {text}." for name, text in descriptions.items())
fig = plots.method_bars(table.to_dict("records"), hue="model",
                        title=f"Mean accuracy over {table['data'].nunique()} data sets, members and ensembles. {note}"[:200])
plots.save(fig, figures_dir, "04_ensemble_accuracy")
fig = plots.accuracy_per_corruption(results, title=f"{note} Data: {next(iter(test_sets.values())).description}."[:180])
plots.save(fig, figures_dir, "04_ensemble_accuracy_per_corruption")"""),
    md("""## Where the members disagree

Per data set: how often the members' predictions differ, and on the images where they agree and where they do not, the accuracy of each member, of each ensemble rule, and of an oracle that picks a right member whenever one exists. An ensemble can only gain on the disagreements; the oracle bounds that gain."""),
    code("""rows = []
for (model_name, task_name), group in pd.DataFrame(results).groupby(["model", "data"], sort=False):
    rows.append({"model": model_name, "data": task_name,
                 **disagreement(group.to_dict("records"), members)})
disagree = pd.DataFrame(rows)
cols = ["model", "data", "n", "disagree"] + [c for c in disagree.columns if c.endswith("(disagree)")]
display(disagree[cols].style.format(precision=3, na_rep="—"))
long = [{"model": r["model"], "method": c.rsplit(" (", 1)[0], "accuracy": r[c]}
        for r in rows for c in cols[4:] if r[c] is not None]
if long:
    fig = plots.method_bars(long, hue="model", title="Accuracy on the images where the members disagree")
    plots.save(fig, figures_dir, "04_ensemble_disagreement")"""),
    md("""## Reading the results

The numbers below are computed, not written by hand: the change of each ensemble rule against the best single member, and how much of the oracle's headroom on the disagreements each rule takes."""),
    code("""mean_acc = table.groupby(["model", "method"], sort=False)["accuracy"].mean().unstack()
for model_name, row in mean_acc.iterrows():
    best = row[members].idxmax()
    text = ", ".join(f"{m} {row[m] - row[best]:+.3f}" for m in row.index if m.startswith("ensemble"))
    print(f"{model_name}: best member {best} {row[best]:.3f}; ensembles against it: {text}")
print(f"members disagree on {disagree['disagree'].mean():.1%} of the test images on average")
assert all(0 <= r["accuracy"] <= 1 and r["n"] > 0 for r in results)
assert set(members) <= set(table["method"])"""),
    code("""summary = {"Accuracy per data set: zero-shot (source), TPT, MEMO and their ensembles": pivot(results, methods=method_order),
           "Mean over the data sets": means.reset_index().round(4).to_dict("records"),
           "Where the members disagree": disagree[cols].round(4).to_dict("records")}
write_json(results_path, {"notebook": "04_ensemble", "parameters": parameters, "run": info,
                          "note": note, "summary": summary, "results": summary_rows(results),
                          "temperatures": temperatures})
print(f"results: {results_path}\\nfigures: {figures_dir}")"""),
]

if __name__ == "__main__":
    build(cells, "notebooks/04_ensemble.ipynb")
