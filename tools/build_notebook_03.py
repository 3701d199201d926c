"""Writes notebooks/03_tpt.ipynb from the cells below, so that the notebook's source can be
reviewed as plain Python. Run from the repository root:

    python tools/build_notebook_03.py --execute   # also stores the outputs nbval checks
"""

from nbbuild import build, code, md

cells = [
    md("""# 03 · TPT: test-time prompt tuning of CLIP

**TPT** (Shu et al., *Test-Time Prompt Tuning for Zero-Shot Generalization in Vision-Language Models*, NeurIPS 2022) adapts CLIP's **text prompt**, not its weights, to one test image at a time:

1. the prompt is CoOp-style: learnable context vectors $v_1 \\dots v_4$ (initialised from the embedding of "a photo of a") followed by the class name, through CLIP's frozen text encoder;
2. draw 63 augmented views of the test image (random resized crops for ImageNet-like sets, AugMix-style views otherwise) and add the image itself: 64 inputs;
3. **confidence selection**: keep the 10% of the 64 with the lowest prediction entropy (6 views), since very uncertain views are mostly crops that lost the object;
4. one AdamW step (lr $5\\cdot10^{-3}$) on the entropy of the kept views' **averaged** prediction, $\\ell(v) = H\\big(\\frac1{|S|}\\sum_{i\\in S} p_v(y\\mid \\tilde x_i)\\big)$;
5. predict the image with the tuned prompt, then **reset** the context (episodic).

`helpers.tta.Tpt` does exactly this, with two exact speed-ups (tested to leave the logits unchanged): the image encoder is frozen, so the 64 views' features are computed **once** per image (the original's among them), and the causal text encoder only runs up to the longest real prompt instead of all 77 tokens.

We compare, on the same images: zero-shot CLIP (the model's own prompt templates), the fixed prompt "a photo of a {class}." (TPT's starting point; a learned **CoOp** context when `ctx_file` is given), **TPT**, and **MEMO** (notebook 01: entropy of the marginal over views, here updating the image encoder).

| profile | models | data |
|---|---|---|
| `smoke` (defaults below) | small CLIP **trained here** (not OpenAI's) | three corruptions of FashionMNIST, a few dozen images |
| `offline` | the same | FashionMNIST-C: 15 corruptions at severity 5, 500 images each |
| `full` (GPU) | CLIP ViT-B/16 and ViT-B/32 (OpenAI weights) | ImageNet-A and ImageNet-V2 from disk, the TPT paper's setting |"""),
    code("""# Parameters: papermill injects a profile's values after this cell.
profile = "smoke"
datasets = ["fashion-mnist"]   # fashion-mnist | imagenet-a | imagenet-v2 | cifar10 | cifar100 | mnist
data_root = None               # folder holding the data sets (default: data/, or $TTA_DATA)
models = ["small-clip"]        # small-clip | ViT-B/16 | ViT-B/32 | RN50 | a CLIP checkpoint file
corruptions = ["gaussian_noise", "motion_blur", "contrast"]  # "all": the 15 of ImageNet-C; []: clean only
severity = 5
n_images = 24                  # test images per corruption (None: the whole test set)
include_clean = False
methods = ["source", "prompt", "tpt", "memo"]  # source: zero-shot with the model's templates
ctx_file = None                # a learned CoOp context (tensor file): adds a "coop" column
tpt = {"n_views": 63, "selection": 0.1, "steps": 1, "lr": 0.005, "views": "auto"}
memo = {"n_views": 16, "steps": 1, "optimizer": "sgd", "lr": 1e-5, "params": "all"}
memo_per_model = {"small-clip": {"lr": 0.001}}
sweep_views = [15, 31, 63]     # accuracy vs number of views (at the selection ratio of tpt)
sweep_selection = [0.1, 0.3, 1.0]  # accuracy vs selection ratio (at tpt's number of views)
sweep_images = 16              # images of the first task used by the sweeps (0: no sweep)
batch_size = 64
seed = 0
results_path = None            # default: results/<profile>/03_tpt.json ($TTA_RESULTS)
figures_dir = None             # default: figures/<profile>/ ($TTA_FIGURES)""", metadata={"tags": ["parameters"]}),
    code("""import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import Markdown, display

from helpers import data, paths, plots
from helpers.evaluate import ResultStore, pivot, run_grid, run_info, summary_rows, write_json
from helpers.models import build_classifier, default_device, describe
from helpers.tta import build_method, method_factories

torch.manual_seed(seed)
device = default_device()
results_path, figures_dir = paths.notebook_outputs("03_tpt", profile, results_path,
                                                   figures_dir)
parameters = dict(profile=profile, datasets=datasets, data_root=data_root, models=models,
                  corruptions=corruptions, severity=severity, n_images=n_images,
                  include_clean=include_clean, methods=methods, ctx_file=ctx_file, tpt=tpt,
                  memo=memo, memo_per_model=memo_per_model, sweep_views=sweep_views,
                  sweep_selection=sweep_selection, sweep_images=sweep_images,
                  batch_size=batch_size, seed=seed)
info = run_info(seed)
print(f"device: {info['device']}, torch {info['torch']}, clip {info['clip']}")"""),
    md("""## The data

The same seeded test images under every corruption (ImageNet-C style, `imagecorruptions`); for the `full` profile the natural-shift sets ImageNet-A and ImageNet-V2 as they are."""),
    code("""test_sets = {name: data.load_dataset(name, root=data_root) for name in datasets}
tasks = {name: {(f"{name}/{k}" if len(datasets) > 1 else k): v
                for k, v in data.corruption_suite(test_set, corruptions, severity, n_images,
                                                  seed, include_clean).items()}
         for name, test_set in test_sets.items()}
for name, test_set in test_sets.items():
    print(test_set.description)"""),
    code("""# NBVAL_CHECK_OUTPUT
for name, suite in tasks.items():
    for task_name, task in suite.items():
        print(f"{task_name:24s} {len(task):6d} images, {len(task.class_names)} classes")"""),
    md("""## Confidence selection

For one corrupted test image, the 64 inputs TPT sees, ranked by the entropy of CLIP's prediction with the initial prompt: the kept views (top) and the most uncertain rejected ones (bottom). Only the kept ones enter the loss."""),
    code("""first_set = test_sets[datasets[0]]
first_task_name, first_task = next(iter(tasks[datasets[0]].items()))
classifier = build_classifier(models[0], first_task.class_names, device)
image, label = first_task[0]
batch, entropies, kept = build_method("tpt", classifier, **tpt).selection_of(image.to(device), key=0)
fig = plots.selected_views(batch, entropies, kept,
                           title=f"{models[0]}, {first_task_name}, class '{first_task.class_names[label]}': "
                                 f"{len(kept)} of {len(batch)} inputs kept")
plots.save(fig, figures_dir, "03_tpt_selection")"""),
    md("""## Zero-shot, fixed prompt, TPT and MEMO

Every (model, data, method) cell runs through the same loop (`helpers.evaluate`): accuracy, expected calibration error (15 bins), mean confidence, seconds per test image (adaptation included). Finished cells are saved as they complete."""),
    code("""options = {"tpt": tpt, "memo": memo}
methods_by_name = method_factories(methods, options, {"memo": memo_per_model})
if ctx_file:
    methods_by_name["coop"] = method_factories(["prompt"], {"prompt": {"ctx_file": ctx_file}})["prompt"]
store = ResultStore(results_path.with_suffix(".cells.json"), parameters)
results = []
for name, test_set in test_sets.items():
    builders = {m: (lambda m=m, names=test_set.class_names: build_classifier(m, names, device))
                for m in models}
    results += run_grid(builders, tasks[name], methods_by_name, store, batch_size)
method_order = list(methods_by_name)
descriptions = {name: describe(name) for name in models}
for name, text in descriptions.items():
    print(f"{name}: {text}")"""),
    code("""table = pd.DataFrame(summary_rows(results))
accuracy = pd.DataFrame(pivot(results, methods=method_order)).set_index(["model", "data"])
means = table.groupby(["model", "method"])[["accuracy", "ece", "mean_confidence",
                                            "seconds_per_sample"]].mean()
display(Markdown("**Accuracy per data set**"))
display(accuracy.style.format("{:.3f}", na_rep="—"))
display(Markdown("**Mean over the data sets**"))
display(means.style.format({"accuracy": "{:.3f}", "ece": "{:.3f}", "mean_confidence": "{:.3f}",
                            "seconds_per_sample": "{:.4f}"}))"""),
    code("""note = " ".join(f"`{name}`: {text}." for name, text in descriptions.items())
fig = plots.accuracy_per_corruption(results, title=f"{note} Data: {first_set.description}."[:180])
plots.save(fig, figures_dir, "03_tpt_accuracy")"""),
    md("""## How many views, how many kept

A small sweep on the first task: the number of augmented views (at the paper's 10% selection) and the selection ratio (at the number of views above; 1.0 keeps every view, i.e. no confidence selection)."""),
    code("""sweep_task = {first_task_name: data.take(first_task, sweep_images, seed)} if sweep_images else {}
settings = ([("views", n, {**tpt, "n_views": n}) for n in sweep_views]
            + [("selection", r, {**tpt, "selection": r}) for r in sweep_selection])
sweep_methods = {f"tpt {kind}={value}": (lambda model, name, s=s: build_method("tpt", model, **s))
                 for kind, value, s in settings}
sweep_results = run_grid({models[0]: lambda: classifier}, sweep_task, sweep_methods, store, batch_size) if sweep_images else []
sweep_rows = [{"setting": kind, "value": value, "accuracy": r["accuracy"], "ece": r["ece"],
               "seconds_per_sample": r["seconds_per_sample"]}
              for (kind, value, _), r in zip(settings, sweep_results)]
if sweep_rows:
    display(pd.DataFrame(sweep_rows).style.format({"accuracy": "{:.3f}", "ece": "{:.3f}",
                                                   "seconds_per_sample": "{:.4f}"}))
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3))
    plots.sweep([r for r in sweep_rows if r["setting"] == "views"], "value", ax=axes[0],
                title=f"accuracy vs views (+ original), selection {tpt['selection']}")
    plots.sweep([r for r in sweep_rows if r["setting"] == "selection"], "value", ax=axes[1],
                title=f"accuracy vs selection ratio, {tpt['n_views']} views")
    plots.save(fig, figures_dir, "03_tpt_sweep")"""),
    md("""## Reading the results

TPT changes four context vectors of the text side and nothing else: it cannot repair image features that a corruption destroyed, but it can move the class prototypes toward where this image's confident views lie. MEMO changes the image encoder itself, with a much larger search space and a much larger cost per step. Confidence selection matters most when many views are uninformative (small crops of a large image); on 28-pixel FashionMNIST with AugMix views, most views keep the object. The numbers below are computed, not written by hand."""),
    code("""mean_acc = table.groupby(["model", "method"])["accuracy"].mean().unstack()
for model_name, row in mean_acc.iterrows():
    base = row.get("source")
    text = ", ".join(f"{m} {row[m] - base:+.3f}" for m in row.index if m != "source" and pd.notna(row[m]))
    print(f"{model_name}: zero-shot {base:.3f}; change in mean accuracy: {text}")
assert all(0 <= r["accuracy"] <= 1 and r["n"] > 0 for r in results)
assert set(table["method"]) <= set(method_order)"""),
    code("""summary = {"Accuracy per data set (zero-shot = source)": pivot(results, methods=method_order),
           "Mean over the data sets": means.reset_index().round(4).to_dict("records")}
if sweep_rows:
    summary[f"TPT sweep on {first_task_name} ({len(next(iter(sweep_task.values())))} images)"] = sweep_rows
write_json(results_path, {"notebook": "03_tpt", "parameters": parameters, "run": info,
                          "note": note, "summary": summary, "results": summary_rows(results)})
print(f"results: {results_path}\\nfigures: {figures_dir}")"""),
]

if __name__ == "__main__":
    build(cells, "notebooks/03_tpt.ipynb")
