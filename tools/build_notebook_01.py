"""Writes notebooks/01_memo_cifar100.ipynb from the cells below, so that the notebook's
source can be reviewed as plain Python. Run from the repository root:

    python tools/build_notebook_01.py --execute   # also stores the outputs nbval checks
"""

from nbbuild import build, code, md

cells = [
    md("""# 01 · MEMO: test-time adaptation by marginal entropy over augmentations

**MEMO** (Zhang, Levine and Finn, *MEMO: Test Time Robustness via Adaptation and Augmentation*, NeurIPS 2022) adapts a pretrained classifier to **one test image at a time**:

1. draw $B$ augmented views $\\tilde x_1, \\dots, \\tilde x_B$ of the test image $x$ (AugMix-style, without operations that overlap the test corruptions);
2. compute the model's **marginal** prediction over the views, $\\bar p_\\theta(y\\mid x) = \\frac1B \\sum_b p_\\theta(y \\mid \\tilde x_b)$;
3. take a gradient step on the **entropy of the marginal**, $\\ell(\\theta; x) = -\\sum_y \\bar p_\\theta(y\\mid x)\\log \\bar p_\\theta(y\\mid x)$, which asks the views to agree *and* be confident;
4. predict the original image $x$ with the adapted weights, then **restore** the source weights (episodic: every test image starts from the same model).

The course report applied MEMO to **CLIP zero-shot classification on CIFAR-100** (ViT-B/32, 50 views, one SGD step, lr $10^{-5}$). This notebook runs the same pipeline, from `helpers`, at three scales chosen by parameters only:

| profile | models | data |
|---|---|---|
| `smoke` (defaults below) | small CLIP and small CNN **trained here** | a few corruptions of FashionMNIST, a few dozen images |
| `offline` | the same, plus EfficientNet-Lite0 (real ImageNet weights) | FashionMNIST-C: 15 corruptions at severity 5, 1,000 images each; corrupted sample photos |
| `full` (GPU) | CLIP ViT-B/32 (OpenAI weights) | the CIFAR-100 test set |

Beside MEMO we run the **source** model, **NormAdapt** (batch-norm statistics of the test batch, for models with batch norm) and **Tent** (entropy minimisation of the test batch on the normalisation layers' affine parameters)."""),
    code("""# Parameters: papermill injects a profile's values after this cell.
profile = "smoke"
dataset = "fashion-mnist"      # fashion-mnist | cifar100 | cifar10 | mnist | imagenet-a | imagenet-v2
data_root = None               # folder holding the data set (default: data/, or $TTA_DATA)
download = False               # let torchvision download CIFAR / FashionMNIST when online
models = ["small-clip", "small-cnn"]  # small-clip | small-cnn | ViT-B/32 | ViT-B/16 | RN50 | a CLIP checkpoint file
corruptions = ["gaussian_noise", "motion_blur", "contrast"]  # "all": the 15 of ImageNet-C; []: clean only
severity = 5
n_images = 48                  # test images per corruption (None: the whole test set)
include_clean = True
methods = ["source", "norm", "tent", "memo"]
memo = {"n_views": 16, "steps": 1, "optimizer": "sgd", "lr": 1e-5, "params": "all"}
# Per-model overrides; batch-norm models use MEMO's single-point BN adaptation (prior N=16).
memo_per_model = {"small-clip": {"lr": 0.001}, "small-cnn": {"lr": 0.001, "bn_prior": 16},
                  "efficientnet-lite0": {"lr": 0.00025, "bn_prior": 16, "n_views": 8}}
tent = {"lr": 0.001, "episodic": False}
batch_size = 64
photo_models = []              # e.g. ["efficientnet-lite0"]: also run on the corrupted sample photos
seed = 0
results_path = None            # default: results/<profile>/01_memo_cifar100.json ($TTA_RESULTS)
figures_dir = None             # default: figures/<profile>/ ($TTA_FIGURES)""", metadata={"tags": ["parameters"]}),
    code("""import torch
import pandas as pd
from IPython.display import Markdown, display

from helpers import data, paths, plots
from helpers.evaluate import ResultStore, pivot, run_grid, run_info, summary_rows, write_json
from helpers.models import build_classifier, default_device, describe
from helpers.tta import method_factories
from helpers.views import AugMixViews, generator_for

torch.manual_seed(seed)
device = default_device()
results_path, figures_dir = paths.notebook_outputs("01_memo_cifar100", profile, results_path,
                                                   figures_dir)
parameters = dict(profile=profile, dataset=dataset, data_root=data_root, models=models,
                  corruptions=corruptions, severity=severity, n_images=n_images,
                  include_clean=include_clean, methods=methods, memo=memo,
                  memo_per_model=memo_per_model, tent=tent, batch_size=batch_size,
                  photo_models=photo_models, seed=seed)
# What the finished cells depend on besides their own method settings (``download`` and the
# methods' options are not in it): a rerun with the same values resumes.
data_parameters = {k: v for k, v in parameters.items()
                   if k not in ("memo", "memo_per_model", "tent", "methods", "models",
                                "photo_models")}
info = run_info(seed)
print(f"device: {info['device']}, torch {info['torch']}, clip {info['clip']}")"""),
    md("""## The data

The test images are drawn once (seeded) and corrupted ImageNet-C style (`imagecorruptions`, severity 1-5): the same images under every corruption, so the columns of the tables compare like with like."""),
    code("""test_set = data.load_dataset(dataset, root=data_root, download=download)
tasks = data.corruption_suite(test_set, corruptions, severity, n_images, seed, include_clean)
photo_tasks = (data.corruption_suite(data.sample_photos(), corruptions, severity, None, seed,
                                     include_clean) if photo_models else {})
print(test_set.description)"""),
    code("""# NBVAL_CHECK_OUTPUT
for name, task in {**tasks, **{f"photos/{k}": v for k, v in photo_tasks.items()}}.items():
    print(f"{name:24s} {len(task):6d} images, {len(task.class_names)} classes")"""),
    md("""## MEMO's views

AugMix-style views as in the MEMO paper: a random crop and flip, then three chains of one to three operations (autocontrast, equalize, posterize, solarize, rotate, shear, translate) mixed with Dirichlet weights and blended with the crop. All views of an image are built as one batched tensor on the model's device; the **original image is never among them** (it is only predicted)."""),
    code("""corrupted_name = next((k for k in tasks if k != "clean"), "clean")
image, label = tasks[corrupted_name][0]
views = AugMixViews(memo["n_views"])(image.to(device), generator_for(seed, 0))
fig = plots.image_grid(torch.cat([image[None], views.cpu()]),
                       ["original"] + [f"view {i + 1}" for i in range(len(views))], ncols=9,
                       suptitle=f"{test_set.description.split(';')[0]} — {corrupted_name}, "
                                f"class '{test_set.class_names[label]}'")
plots.save(fig, figures_dir, "01_memo_views")"""),
    md("""## Source, NormAdapt, Tent and MEMO

Every (model, data, method) cell is evaluated by the same loop (`helpers.evaluate`): accuracy, expected calibration error (15 bins), mean confidence and seconds per test image, adaptation included. Finished cells are saved as they complete, so an interrupted run resumes where it stopped."""),
    code("""model_builders = {name: (lambda name=name: build_classifier(name, test_set.class_names, device))
                  for name in models}
methods_by_name = method_factories(methods, {"memo": memo, "tent": tent},
                                   {"memo": memo_per_model})
store = ResultStore(results_path.with_suffix(".cells.json"), data_parameters)
results = run_grid(model_builders, tasks, methods_by_name, store, batch_size)
if photo_models:
    photo_builders = {name: (lambda name=name: build_classifier(name, device=device))
                      for name in photo_models}
    photo_results = run_grid(photo_builders, photo_tasks, methods_by_name, store, batch_size)
    results += [{**r, "data": f"photos/{r['data']}"} for r in photo_results]
descriptions = {name: describe(name) for name in [*models, *photo_models]}
for name, text in descriptions.items():
    print(f"{name}: {text}")"""),
    code("""table = pd.DataFrame(summary_rows(results))
accuracy = pd.DataFrame(pivot(results, methods=methods)).set_index(["model", "data"])
means = table.groupby(["model", "method"])[["accuracy", "ece", "mean_confidence",
                                            "seconds_per_sample"]].mean()
display(Markdown("**Accuracy per corruption** (severity %d)" % severity))
display(accuracy.style.format("{:.3f}", na_rep="—"))
display(Markdown("**Mean over the data sets**"))
display(means.style.format({"accuracy": "{:.3f}", "ece": "{:.3f}", "mean_confidence": "{:.3f}",
                            "seconds_per_sample": "{:.4f}"}))"""),
    code("""note = " ".join(f"`{name}`: {text}." for name, text in descriptions.items())
title = f"{note} Data: {test_set.description}."
fig = plots.accuracy_per_corruption(results, title=title, methods=methods)
plots.save(fig, figures_dir, "01_memo_accuracy_per_corruption")
fig = plots.confidence_histograms(results, methods=methods,
                                  title=f"Confidence of correct and wrong predictions. {title}")
plots.save(fig, figures_dir, "01_memo_confidence")"""),
    md("""## Reading the results

MEMO changes nothing about the data or the training: it only asks each test prediction to be stable under augmentation. Where a corruption leaves the object recognisable but shifts the features (noise, blur), the views disagree and one step toward agreement can fix the prediction; where the corruption destroys the evidence, no agreement can recover it. Tent and NormAdapt use a *batch* of test images; MEMO needs only one, at the price of $B$ forward and backward passes per image (see *seconds per sample*). The numbers below are computed, not written by hand."""),
    code("""mean_acc = table.groupby(["model", "method"])["accuracy"].mean().unstack()
for model_name, row in mean_acc.iterrows():
    gains = {m: row[m] - row["source"] for m in row.index if m != "source" and pd.notna(row[m])}
    text = ", ".join(f"{m} {g:+.3f}" for m, g in gains.items())
    print(f"{model_name}: source {row['source']:.3f}; change in mean accuracy: {text}")
skipped = int(table["skipped_nonfinite"].sum())
print(f"updates skipped for a non-finite loss: {skipped}")
# Sanity checks that keep the notebook honest under nbval.
assert all(0 <= r["accuracy"] <= 1 and r["n"] > 0 for r in results)
assert set(table["method"]) <= set(methods)"""),
    code("""summary = {f"Accuracy per corruption, severity {severity} ({dataset})": pivot(results, methods=methods),
           "Mean over the data sets": means.reset_index().round(4).to_dict("records")}
write_json(results_path, {"notebook": "01_memo_cifar100", "parameters": parameters,
                          "run": info, "note": note, "summary": summary,
                          "results": summary_rows(results)})
print(f"results: {results_path}\\nfigures: {figures_dir}")"""),
]

if __name__ == "__main__":
    build(cells, "notebooks/01_memo_cifar100.ipynb")
