"""Notebook 06's study: the memory grid's ratios against eager attention, the tuning modes
trained on each data set and compared on the same test images, and the sentences of its
findings, every number formatted from the results."""

from __future__ import annotations

import pandas as pd

from .. import findings
from ..anchors import finding_table
from ..data import UNAVAILABLE
from . import small
from .meter import state_memory, total_memory
from .model import MODES, VIT_B16, PromptedViT, build_vit, expected_trainable

# The order of every table: the project's fixed order of the tuning modes (the report's too).
ORDER = MODES
# The VPT paper's setting (Jia et al., ECCV 2022, Section 4.1): ViT-B/16 pretrained on
# ImageNet-21k (Deng et al., 2009), tuned on FGVC (five sets, their full training sets) and
# VTAB-1k (1,000 training images per task) for 100 epochs.
PAPER = {"backbone": "ViT-B/16", "pretrain_images": 14_000_000, "pretrain_classes": 21_843,
         "vtab_train_images": 1000, "epochs": 100}


def megabytes(value: float) -> str:
    """MB as text: whole MB from 100 up, one decimal below."""
    return f"{value:,.0f} MB" if value >= 100 else f"{value:.1f} MB"


def ordered_modes(modes) -> list[str]:
    """``modes`` in :data:`ORDER`, any others after them."""
    modes = list(dict.fromkeys(modes))
    return [m for m in ORDER if m in modes] + [m for m in modes if m not in ORDER]


def parameter_counts(arch: str = VIT_B16, n_prompts: int = 100, num_classes: int = 10,
                     modes=ORDER) -> list[dict]:
    """Per mode (in :data:`ORDER`): trainable parameters (checked against
    :func:`expected_trainable`), their share, tokens per block, and the MB of the model's state
    in training from the counts: weights, gradients and AdamW's two slots per trainable
    parameter (random weights: counting does not need real ones)."""
    vit = build_vit(arch, num_classes=num_classes)
    total = sum(p.numel() for p in vit.parameters())
    rows = []
    for mode in ordered_modes(modes):
        model = PromptedViT(vit, mode, n_prompts=n_prompts if mode.startswith("vpt") else 0)
        trainable = model.trainable_parameters()
        expected = expected_trainable(mode, model.n_prompts, vit.embed_dim, len(vit.blocks),
                                      num_classes, total)
        if trainable != expected:
            raise AssertionError(f"{mode}: {trainable:,} trainable parameters, the formula "
                                 f"says {expected:,}")
        state = state_memory(model)
        rows.append({"mode": mode, "prompts": model.n_prompts, "trainable": trainable,
                     "trainable %": 100 * trainable / model.total_parameters(),
                     "tokens per block": model.tokens(),
                     "state MB": sum(state.values()), **state})
    return rows


def architecture_name(arch: str, overrides: dict, image_size: int) -> str:
    """``arch`` with its size overrides and input side, as text for captions and notes."""
    changed = ", ".join(f"{key} {value}" for key, value in overrides.items())
    return f"{arch}{f' ({changed})' if changed else ''}, {image_size} px"


def memory_grid(batch_sizes, prompt_counts, attentions, checkpointing,
                prompt_counts_per_batch: dict | None = None) -> list[dict]:
    """The grid's changes of a base :class:`~helpers.vpt.meter.StepConfig`: every batch
    size x prompt count (fewer for the batch sizes in ``prompt_counts_per_batch``, whose keys
    may be text, as papermill passes them) x attention x checkpointing."""
    per_batch = {int(b): counts for b, counts in (prompt_counts_per_batch or {}).items()}
    return [dict(batch_size=b, n_prompts=p, attention=a, checkpointing=c)
            for b in batch_sizes for p in per_batch.get(b, prompt_counts)
            for a in attentions for c in checkpointing]


def setting_name(attention: str, checkpointing) -> str:
    return f"{attention}{' + checkpointing' if checkpointing else ''}"


def memory_ratios(rows: list[dict]) -> list[dict]:
    """Per batch size, prompt count and setting (attention, checkpointing): how many times
    less peak step memory than eager attention without checkpointing, and the time against
    it; only where that baseline was measured."""
    df = pd.DataFrame(rows)
    key = ["batch_size", "n_prompts"]
    base = df[(df["attention"] == "eager") & ~df["checkpointing"].astype(bool)]
    joined = df.merge(base[[*key, "peak_mb", "seconds_per_step"]], on=key,
                      suffixes=("", "_eager"))
    return [{"batch_size": int(r["batch_size"]), "n_prompts": int(r["n_prompts"]),
             "setting": setting_name(r["attention"], r["checkpointing"]),
             "memory_vs_eager": r["peak_mb_eager"] / max(r["peak_mb"], 1e-3),
             "time_vs_eager": r["seconds_per_step"] / r["seconds_per_step_eager"]}
            for _, r in joined.iterrows()]


def memory_lines(rows: list[dict]) -> list[str]:
    """For the largest configuration (batch, then prompts): each setting's peak step memory
    against eager attention's, its time, and the training's total memory."""
    ratios = pd.DataFrame(memory_ratios(rows))
    df = pd.DataFrame(rows).sort_values(["batch_size", "n_prompts"])
    batch, prompts = df.iloc[-1][["batch_size", "n_prompts"]]
    largest = df[(df["batch_size"] == batch) & (df["n_prompts"] == prompts)]
    eager = largest[(largest["attention"] == "eager") & ~largest["checkpointing"].astype(bool)]
    if eager.empty:
        return []
    eager = eager.iloc[0]
    lines = []
    for _, row in largest.iterrows():
        name = setting_name(row["attention"], row["checkpointing"])
        if name == "eager":
            continue
        ratio = ratios[(ratios["batch_size"] == batch) & (ratios["n_prompts"] == prompts)
                       & (ratios["setting"] == name)].iloc[0]
        lines.append(
            f"Batch {batch}, {prompts} prompts ({megabytes(eager['peak_mb'])} of step peak with "
            f"eager attention, {megabytes(eager['total_mb'])} with the weights and optimizer "
            f"state): **{name}** needs {ratio['memory_vs_eager']:.2f}x less peak step memory "
            f"({megabytes(row['total_mb'])} in all), at {ratio['time_vs_eager']:.2f}x the time.")
    return lines


def state_lines(counts: list[dict], arch: str) -> list[str]:
    """From :func:`parameter_counts`: what full fine-tuning holds besides activations against
    VPT-deep (weights, gradients and AdamW state), the memory a step's peak leaves out."""
    by_mode = {row["mode"]: row for row in counts}
    if not {"full", "vpt-deep"} <= set(by_mode):
        return []
    full, deep = by_mode["full"], by_mode["vpt-deep"]
    return [f"{arch}: full fine-tuning holds {megabytes(full['state MB'])} of weights, "
            f"gradients and AdamW state before any activation, against "
            f"{megabytes(deep['state MB'])} for VPT-deep with {deep['prompts']} prompts "
            f"({full['state MB'] - deep['state MB']:,.0f} MB more): a step's peak leaves this "
            "out, the total training memory counts it."]


def tune_modes(vit, model_name: str, finetune_data, finetune_classes, modes, n_prompts: int,
               n_train, n_test, config: small.FinetuneConfig, seed: int = 0,
               classes_per_data: dict | None = None, root=None, download: bool = False,
               device=None) -> tuple[list[dict], list[str]]:
    """Each mode (in :data:`ORDER`) tuned on each data set with :func:`small.finetune`, as
    cells (``model``, ``method`` = the mode, ``data``, per-image ``correct``, ...) that
    :mod:`helpers.findings` compares; a data set that cannot be had here is skipped with a
    note. Returns (cells, notes)."""
    size = vit.patch_embed.img_size[0]
    cells, notes = [], []
    for data in finetune_data:
        classes = (classes_per_data or {}).get(data, finetune_classes)
        try:
            train, test, names = small.task_data(data, classes, n_train, n_test, seed, size,
                                                 root, download)
        except UNAVAILABLE as error:
            notes.append(f"{data} skipped: {error}")
            continue
        label = (f"{data} ({len(names)} classes)" if classes == "all"
                 else f"{data} {min(classes)}-{max(classes)}")
        for mode in ordered_modes(modes):
            row = small.finetune(vit, mode, n_prompts, train, test, config, len(names), device)
            cells.append({"model": model_name, "method": mode, "data": label,
                          "n_test": len(test[1]), **row})
    return cells, notes


def add_step_memory(cells: list[dict], memory_rows: list[dict]) -> None:
    """Each cell gets its mode's measured step (``peak_mb``), the state's memory (weights,
    gradients, optimizer) and ``total_mb``, from ``memory_rows`` (one per mode, at the
    fine-tuning batch size), and its accuracy's 95% Wilson interval."""
    by_mode = {row["mode"]: row for row in memory_rows}
    for cell in cells:
        measured = by_mode[cell["mode"]]
        for key in ("peak_mb", "weights_mb", "gradients_mb", "optimizer_mb"):
            cell[key] = measured[key]
        cell["total_mb"] = total_memory(cell)
        cell["ci_low"], cell["ci_high"] = findings.proportion_interval(cell["accuracy"],
                                                                       cell["n_test"])


ACCURACY_COLUMNS = ["data", "mode", "prompts", "trainable", "trainable %", "accuracy", "ci_low",
                    "ci_high", "n_test", "peak_mb", "weights_mb", "gradients_mb", "optimizer_mb",
                    "total_mb", "train_seconds", "precision"]


def accuracy_table(cells: list[dict]) -> pd.DataFrame:
    """The cells without their per-image lists, modes in :data:`ORDER` within each data set."""
    df = pd.DataFrame(cells)
    df["mode"] = pd.Categorical(df["mode"], ordered_modes(df["mode"]), ordered=True)
    df["data"] = pd.Categorical(df["data"], list(dict.fromkeys(df["data"])), ordered=True)
    return df.sort_values(["data", "mode"])[ACCURACY_COLUMNS].reset_index(drop=True)


def mode_comparisons(cells: list[dict], baseline: str = "full") -> list[dict]:
    """Each mode against ``baseline`` on the same test images, per model and data set:
    :func:`helpers.findings.compare_all` rows (paired-bootstrap interval of the change in
    accuracy, McNemar's exact test)."""
    modes = [m for m in ordered_modes(c["method"] for c in cells) if m != baseline]
    return findings.compare_all(cells, baseline=baseline, methods=modes, by=("model", "data"))


def named_by_data(rows: list[dict]) -> list[dict]:
    """Comparison rows whose ``model`` names the data set too (``backbone`` keeps the
    model): ``conclusions.what_we_found`` names a row by its model alone."""
    return [{**row, "backbone": row["model"], "model": f"{row['model']} · {row['data']}"}
            for row in rows]


def accuracy_lines(cells: list[dict]) -> list[str]:
    """Per data set: each mode's accuracy with its interval, trainable parameters, step peak
    and total training memory."""
    lines = []
    table = accuracy_table(cells)
    for data, group in table.groupby("data", sort=False, observed=True):
        parts = [f"{r['mode']} {r['accuracy']:.3f} ({r['ci_low']:.3f}-{r['ci_high']:.3f}; "
                 f"{r['trainable']:,} trainable; {megabytes(r['peak_mb'])} step peak, "
                 f"{megabytes(r['total_mb'])} in all)" for _, r in group.iterrows()]
        lines.append(f"{data}, {int(group['n_test'].iloc[0]):,} test images: "
                     + "; ".join(parts) + ".")
    return lines


def explanation(cells: list[dict], vit, finetune: small.FinetuneConfig, n_prompts: int,
                small_config: small.SmallVitConfig | None = None) -> str:
    """Why VPT trails full fine-tuning here when the VPT paper finds the reverse, computed
    from this run: how far the frozen features carry (the linear probe) and what each mode
    adds over it, and how the backbone and the tuning differ from the paper's."""
    mean = pd.DataFrame(cells).groupby("mode")["accuracy"].mean()
    total = sum(p.numel() for p in vit.parameters())
    if small_config is not None:
        metrics = vit.metrics
        epochs = small_config.epochs
        backbone = (f"a ViT of {total:,} parameters (width {small_config.embed_dim}, "
                    f"{small_config.depth} blocks) pretrained in {metrics.get('steps', 0):,} "
                    f"steps of {small_config.batch_size} on {small_config.n_train or 'all':,} "
                    f"FashionMNIST images of {len(small_config.classes)} classes ({epochs} "
                    f"epoch{'s' if epochs != 1 else ''}; {metrics['test_accuracy']:.3f} on its "
                    "own classes)")
    else:
        backbone = f"{vit.weights} ({total:,} parameters)"
    gains = {m: mean[m] - mean["linear"] for m in ("vpt-deep", "full") if m in mean}
    carried = ""
    if "linear" in mean and len(gains) == 2:
        carried = (f" Frozen, its features carry a linear probe to {mean['linear']:.3f} on "
                   f"average; prompts add {gains['vpt-deep']:+.3f} over the probe (VPT-deep) by "
                   f"steering frozen blocks, while full fine-tuning adds {gains['full']:+.3f} by "
                   "rebuilding the features.")
    return (f"the backbone here is {backbone}, and each mode takes {finetune.steps} steps of "
            f"{finetune.batch_size} images with {n_prompts} prompts.{carried} The VPT paper "
            f"tunes {PAPER['backbone']} pretrained on ImageNet-21k "
            f"(about {PAPER['pretrain_images'] / 1e6:.0f} million images, "
            f"{PAPER['pretrain_classes']:,} classes), "
            f"whose frozen features already fit the FGVC and VTAB tasks, for "
            f"{PAPER['epochs']} epochs (VTAB-1k: {PAPER['vtab_train_images']:,} training "
            "images per task): prompts have little to fix there, and much to fix here.")


# ---------------------------------------------------------------- against the published findings

def _vpt_evidence(comparisons: list[dict], n_prompts: int, total: int) -> dict:
    """This run's numbers for the VPT paper's findings, each with whether they point the
    paper's way and a sentence: the share of ViT-B/16's parameters the prompts train (by
    formula, at this run's prompt count), and VPT against full fine-tuning."""
    shares = {m: 100 * expected_trainable(m, n_prompts, 768, 12, 10, total) / total
              for m in ("vpt-shallow", "vpt-deep")}
    out = {"parameters": (max(shares.values()) < 1,
                          f"ViT-B/16 with {n_prompts} prompts and 10 classes: VPT-shallow trains "
                          f"{shares['vpt-shallow']:.3f}% of the parameters, VPT-deep "
                          f"{shares['vpt-deep']:.3f}%", None)}
    vpt = [r for r in comparisons if r["method"].startswith("vpt") and r["baseline"] == "full"]
    if vpt:
        text = "; ".join(f"{r['method']} on {r['data']} {r['change']:+.3f} (95% CI "
                         f"{r['ci_low']:+.3f} to {r['ci_high']:+.3f})" for r in vpt)
        out["against full"] = (any(r["change"] > 0 for r in vpt),
                               f"change in accuracy against full fine-tuning: {text}",
                               sum(r["ci_low"] > 0 or r["ci_high"] < 0 for r in vpt))
        relative = [r["accuracy"] / r["baseline_accuracy"] - 1 for r in vpt
                    if r["method"] == "vpt-deep" and r["baseline_accuracy"] > 0]
        if relative:
            mean = sum(relative) / len(relative)
            out["relative"] = (mean > 0, f"VPT-deep's mean relative accuracy gain over full "
                                         f"fine-tuning: {100 * mean:+.1f}%", None)
    return out


def _evidence_key(entry: dict) -> str | None:
    if entry["metric"] == "parameters":
        return "parameters"
    return "relative" if "relative" in entry.get("setting", "") else "against full"


def anchor_table(anchors: list[dict], comparisons: list[dict], n_prompts: int,
                 counts: list[dict]):
    """The published findings of notebook 06 (``helpers.anchors.anchors_for``: findings in
    words) with this run's evidence beside each and whether it points the same way;
    ``counts``: :func:`parameter_counts` of ViT-B/16 with 10 classes (its full mode's
    trainable parameters are all of them)."""
    total = next(row["trainable"] for row in counts if row["mode"] == "full")
    return finding_table(anchors, _vpt_evidence(comparisons, n_prompts, total), _evidence_key,
                         "a small ViT pretrained here on 5 FashionMNIST classes against the "
                         "paper's ImageNet-21k ViT-B/16 on FGVC and VTAB-1k (the parameter "
                         "share is ViT-B/16's, by formula)")


# ---------------------------------------------------------------- conclusions

def explanation_lines(comparisons: list[dict], cells: list[dict], vit,
                      finetune: small.FinetuneConfig, n_prompts: int,
                      small_config: small.SmallVitConfig | None = None) -> list[str]:
    """The computed explanation (:func:`explanation`) as one conclusion, when VPT-deep loses
    to full fine-tuning on some data set (its interval below zero: the reverse of the VPT
    paper); else none."""
    behind = [r for r in comparisons if r["method"] == "vpt-deep" and r["ci_high"] < 0]
    if not behind:
        return []
    return ["Why VPT-deep loses to full fine-tuning here, the reverse of the VPT paper: "
            + explanation(cells, vit, finetune, n_prompts, small_config)]


def limitations(vit, small_config: small.SmallVitConfig | None, finetune: small.FinetuneConfig,
                device: str, memory_rows: list[dict], notes=()) -> list[str]:
    """The study's limits, from its settings: the backbone, one seed, the fixed learning rates,
    the device and the timing of the memory grid, the data sets skipped, what the full
    profile adds."""
    total = sum(p.numel() for p in vit.parameters())
    lrs = ", ".join(f"{m} {finetune.lr_for(m):g}" for m in ORDER)
    lines = [
        (f"The backbone is a small ViT of {total:,} parameters trained here "
         if small_config is not None else f"The backbone is {vit.weights} ({total:,} "
         "parameters) ") + f"and tuned with one seed ({finetune.seed})",
        f"The learning rates are fixed per mode ({lrs}), not tuned per mode and data set as "
        "the VPT paper does",
        f"Memory and time were measured on {device} with "
        f"{memory_rows[0].get('threads', '?')} thread(s), one configuration at a time; on a "
        "shared CPU single-step times vary by 10-20% between runs",
        "The full profile tunes ViT-B/16 with ImageNet-21k weights on Flowers-102 and "
        "CUB-200-2011 on a GPU, the paper's kind of task"]
    return lines + list(notes)
