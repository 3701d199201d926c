"""Figures shared by the notebooks. Each function returns the figure; ``save`` writes PNG."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns


def save(fig, directory, name: str, dpi: int = 110) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.png"
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def image_grid(images, titles=None, ncols: int = 8, size: float = 1.4, suptitle=None):
    """A grid of images given as tensors (N x 3 x H x W in [0, 1])."""
    images = images.detach().cpu().clamp(0, 1).permute(0, 2, 3, 1).numpy()
    n = len(images)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * size), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, img) in enumerate(zip(axes.flat, images)):
        ax.imshow(img)
        if titles is not None:
            ax.set_title(titles[i], fontsize=7)
    if suptitle:
        fig.suptitle(textwrap.fill(suptitle, int(16 * ncols * size)), fontsize=9)
    fig.tight_layout()
    return fig


def views_text(spec) -> str:
    """A view setting as words for a figure: ``None``/``"augmix"`` -> "AugMix views",
    ``{"kind": "crop", "min_scale": 0.5}`` -> "crop views (min_scale 0.5)"."""
    options = {"kind": spec or "augmix"} if spec is None or isinstance(spec, str) else dict(spec)
    kind = options.pop("kind", "augmix")
    name = {"augmix": "AugMix", "crop": "crop"}.get(kind, str(kind))
    extra = ", ".join(f"{k} {v}" for k, v in options.items())
    return f"{name} views" + (f" ({extra})" if extra else "")


def model_views(rows: list[dict], show: int = 8, title: str = ""):
    """One row per model: the image it is shown (``image``, 3 x H x W in [0, 1]) and the first
    ``show`` of its own views (``views``, N x 3 x H x W), labelled with ``model`` and ``label``
    (e.g. ``views_text`` of its setting). Rows may differ in image size."""
    if not rows:
        raise ValueError("model_views needs at least one row (model, label, image, views)")
    ncols = 1 + min(show, max(len(r["views"]) for r in rows))
    fig, axes = plt.subplots(len(rows), ncols, figsize=(ncols * 1.3, len(rows) * 1.45),
                             squeeze=False)
    for row, line in zip(rows, axes):
        pictures = [row["image"], *list(row["views"][:show])]
        for i, ax in enumerate(line):
            ax.set_xticks([])
            ax.set_yticks([])
            if i >= len(pictures):
                ax.set_axis_off()
                continue
            ax.imshow(pictures[i].detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy())
            ax.set_title("original" if i == 0 else f"view {i}", fontsize=7)
        line[0].set_ylabel(f"{row['model']}\n{textwrap.fill(row['label'], 24)}", fontsize=7,
                           rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(textwrap.fill(title, 110), fontsize=9)
    fig.tight_layout()
    return fig


def accuracy_per_corruption(results: list[dict], title: str = "", methods=None):
    """Accuracy per corruption (x), one bar per method (in the order of ``methods``), one
    panel per model."""
    import pandas as pd

    df = pd.DataFrame([{k: r[k] for k in ("model", "data", "method", "accuracy")}
                       for r in results])
    order = [m for m in (methods or df["method"].unique()) if m in set(df["method"])]
    grid = sns.catplot(data=df, x="data", y="accuracy", hue="method", row="model", kind="bar",
                       hue_order=order, height=3, aspect=3.6, sharex=False)
    sns.move_legend(grid, "upper left", bbox_to_anchor=(1.0, 0.95))
    for ax in grid.axes.flat:
        ax.tick_params(axis="x", labelrotation=35)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    grid.set_axis_labels("", "accuracy")
    if title:
        grid.figure.suptitle(textwrap.fill(title, 140), fontsize=9)
    grid.figure.tight_layout()
    return grid.figure


def confidence_histograms(results: list[dict], bins: int = 15, title: str = "", methods=None):
    """Confidence of correct and wrong predictions, pooled over all data of a model and
    method: one row per model, one column per method (in the order of ``methods``), the
    model's name on the right margin and the method's on top, so that titles never overlap."""
    import pandas as pd

    rows = [{"model": r["model"], "method": r["method"], "confidence": c,
             "outcome": "correct" if p == y else "wrong"}
            for r in results for p, y, c in zip(r["predictions"], r["labels"],
                                                r["confidences"])]
    df = pd.DataFrame(rows)
    order = [m for m in (methods or df["method"].unique()) if m in set(df["method"])]
    grid = sns.displot(df, x="confidence", hue="outcome", col="method", row="model", bins=bins,
                       binrange=(0, 1), height=1.8, aspect=1.2, col_order=order,
                       hue_order=["correct", "wrong"],
                       facet_kws={"sharey": False, "margin_titles": True})
    grid.set_titles(row_template="{row_name}", col_template="{col_name}", size=8)
    sns.move_legend(grid, "upper left", bbox_to_anchor=(1.01, 1.0))  # clear of the margin
    ran = set(zip(df["model"], df["method"]))
    for (model, method), ax in grid.axes_dict.items():
        if (model, method) not in ran:  # e.g. NormAdapt on a model without batch norm
            for artist in [*ax.patches, *ax.lines, *ax.collections]:
                artist.remove()
            ax.tick_params(left=False, labelleft=False)  # x is shared: its ticks stay
            ax.text(0.5, 0.5, "does not apply", ha="center", va="center", color="grey",
                    transform=ax.transAxes)
    if title:
        grid.figure.suptitle(textwrap.fill(title, 100), fontsize=9)
    grid.figure.tight_layout()
    return grid.figure


def selected_views(batch, entropies, kept, show: int = 8, title: str = ""):
    """TPT's confidence selection: the views it keeps (lowest entropy) on the top row, the
    most uncertain ones it rejects below, each with its prediction entropy; the original
    image is marked wherever it falls."""
    order = entropies.argsort().tolist()
    kept = set(kept.tolist())
    top = [i for i in order if i in kept][:show]
    bottom = [i for i in order if i not in kept][-show:]
    fig, axes = plt.subplots(2, show, figsize=(show * 1.4, 3.3), squeeze=False)
    for row, (indices, label, colour) in enumerate([(top, "kept", "tab:green"),
                                                    (bottom, "rejected", "tab:red")]):
        for ax in axes[row]:
            ax.axis("off")
        for ax, i in zip(axes[row], indices):
            ax.imshow(batch[i].detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy())
            name = "original" if i == 0 else f"view {i}"
            ax.set_title(f"{label}: {name}\nH = {float(entropies[i]):.2f}", fontsize=7,
                         color=colour)
    if title:
        fig.suptitle(textwrap.fill(title, 120), fontsize=9)
    fig.tight_layout()
    return fig


def sweep(rows: list[dict], x: str, y: str = "accuracy", hue: str | None = None,
          title: str = "", ax=None, style: str | None = None):
    """A metric against a setting (views, selection ratio), one line per ``hue`` (and
    ``style``)."""
    import pandas as pd

    if ax is None:
        fig, ax = plt.subplots(figsize=(4.8 if style else 4.2, 3))
    sns.lineplot(data=pd.DataFrame(rows), x=x, y=y, hue=hue, style=style, marker="o", ax=ax,
                 errorbar=None)
    if ax.get_legend() is not None and style:
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    ax.set_title(textwrap.fill(title, 55), fontsize=9)
    ax.figure.tight_layout()
    return ax.figure


def method_bars(rows: list[dict], x: str = "method", y: str = "accuracy", hue: str | None = None,
                title: str = ""):
    """One bar per method (members and ensemble rules side by side), optionally per ``hue``."""
    import pandas as pd

    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len({r[x] for r in rows})), 3.2))
    sns.barplot(data=pd.DataFrame(rows), x=x, y=y, hue=hue, ax=ax, errorbar=None)
    ax.tick_params(axis="x", labelrotation=30)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    ax.set_xlabel("")
    ax.set_title(textwrap.fill(title, 100), fontsize=9)
    fig.tight_layout()
    return fig


def cut_diagram(layer_names, shapes, title: str = ""):
    """The network as a row of layers with every cut point between them: a cut at k keeps
    layers 1..k (pretrained) and renews or removes the rest."""
    names = ["input", *layer_names]
    fig, ax = plt.subplots(figsize=(1.45 * len(names), 2.3))
    for i, (name, shape) in enumerate(zip(names, shapes)):
        colour = "#dddddd" if i == 0 else ("#f4b183" if name == "output" else "#9dc3e6")
        ax.add_patch(plt.Rectangle((i * 1.4, 0), 1.0, 1.0, color=colour, ec="black"))
        ax.text(i * 1.4 + 0.5, 0.62, name, ha="center", fontsize=8)
        ax.text(i * 1.4 + 0.5, 0.32, "x".join(map(str, shape)), ha="center", fontsize=6.5)
        if i:
            ax.annotate("", (i * 1.4, 0.5), (i * 1.4 - 0.4, 0.5),
                        arrowprops={"arrowstyle": "->"})
    for k in range(1, len(layer_names)):
        x = k * 1.4 + 1.2
        ax.plot([x, x], [-0.25, 1.25], ls="--", color="tab:red", lw=1)
        ax.text(x, -0.45, f"cut {k}", ha="center", fontsize=7, color="tab:red")
    ax.set_xlim(-0.2, len(names) * 1.4)
    ax.set_ylim(-0.6, 1.5)
    ax.axis("off")
    if title:
        ax.set_title(textwrap.fill(title, 110), fontsize=8)
    fig.tight_layout()
    return fig


def _per_series_and_variant(grid, ylabel: str, title: str):
    """Short panel titles (series · variant), axis labels, the figure's title, and the legend
    outside the panels (tight_layout would otherwise draw it over the last column)."""
    grid.set_titles("{row_name} · {col_name}", size=9)
    if grid.legend is not None:
        sns.move_legend(grid, "upper left", bbox_to_anchor=(1.0, 0.95))
    grid.set_axis_labels("fraction of the fine-tuning data", ylabel)
    if title:
        grid.figure.suptitle(textwrap.fill(title, 140), fontsize=9)
    grid.figure.tight_layout()
    return grid.figure


def transfer_boxes(runs, title: str = ""):
    """Test accuracy per fraction of the fine-tuning data (x), one box per cut point, the
    baseline from scratch beside them; one panel per series (rows) and variant (columns)."""
    import pandas as pd

    df = pd.DataFrame(runs)
    base = df[df["variant"] == "baseline"]
    variants = [v for v in df["variant"].unique() if v != "baseline"]
    parts = [pd.concat([df[df["variant"] == v], base.assign(variant=v)]) for v in variants]
    df = pd.concat(parts, ignore_index=True).assign(setting=lambda d: d["cut"].map(
        lambda c: "baseline" if c == 0 else f"cut {c}"))
    order = ["baseline"] + [f"cut {c}" for c in sorted(set(df["cut"]) - {0})]
    grid = sns.catplot(data=df, x="fraction", y="test_accuracy", hue="setting", hue_order=order,
                       col="variant", row="series", kind="box", height=2.8, aspect=1.5,
                       fliersize=1.5, linewidth=0.7, palette="viridis", sharey=False)
    return _per_series_and_variant(grid, "test accuracy", title)


def transfer_gain(gains, title: str = ""):
    """Mean test accuracy minus the baseline's, against the fraction (log scale), per cut."""
    import pandas as pd

    grid = sns.relplot(data=pd.DataFrame(gains), x="fraction", y="gain", hue="cut",
                       col="variant", row="series", kind="line", marker="o", height=2.6,
                       aspect=1.4, palette="viridis", facet_kws={"sharey": False})
    for ax in grid.axes.flat:
        ax.set_xscale("log")
        ax.axhline(0, color="black", lw=0.8)
    return _per_series_and_variant(grid, "gain over baseline", title)


def ari_per_layer(rows, title: str = ""):
    """ARI of K-means on each layer's activations, pretraining vs fine-tuning data, per
    pretrained network; whole layers solid, single channels dashed."""
    import pandas as pd

    df = pd.DataFrame(rows)
    order = list(dict.fromkeys(df.sort_values("depth")["layer"]))
    grid = sns.relplot(data=df, x="depth", y="ari", hue="data", style="unit", col="network",
                       kind="line", marker="o", height=3, aspect=1.3, errorbar="sd",
                       style_order=["layer", "channel best", "channel mean"])
    for ax in grid.axes.flat:
        ax.set_xticks(range(len(order)), order, rotation=30)
    grid.set_titles("{col_name}")
    sns.move_legend(grid, "upper left", bbox_to_anchor=(1.0, 0.95))
    grid.set_axis_labels("activations after", "adjusted Rand index")
    if title:
        grid.figure.suptitle(textwrap.fill(title, 140), fontsize=9)
    grid.figure.tight_layout()
    return grid.figure


def _overlay(ax, image, heat=None, mask=None, title: str = ""):
    ax.imshow(image.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy())
    if heat is not None:
        ax.imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1)
    if mask is not None:
        ax.contour(mask, levels=[0.5], colors="white", linewidths=1.2)
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def mask_candidates(image, heat, candidates, coverage, chosen, title: str = "", max_masks=7):
    """The image, its Grad-CAM heat-map, and the candidate masks over the heat-map with the
    share of the heat-map's mass each holds, its area and soft IoU; the chosen one starred."""
    shown = sorted(range(len(candidates)), key=lambda i: -coverage[i]["soft_iou"])[:max_masks]
    fig, axes = plt.subplots(1, 2 + len(shown), figsize=(1.9 * (2 + len(shown)), 2.3),
                             squeeze=False)
    _overlay(axes[0, 0], image, title="image")
    _overlay(axes[0, 1], image, heat, title="Grad-CAM")
    for ax, i in zip(axes[0, 2:], shown):
        c, star = coverage[i], "★ " if i == chosen else ""
        _overlay(ax, image, heat * candidates[i].mask, candidates[i].mask,
                 f"{star}{candidates[i].source}\nmass {c['mass_share']:.2f}, area {c['area']:.2f}"
                 f"\nsoft IoU {c['soft_iou']:.2f}")
    fig.suptitle(textwrap.fill(title, int(25 * (2 + len(shown)))), fontsize=8)
    fig.tight_layout()
    return fig


def heat_map_row(image, heat_maps: dict, title: str = ""):
    """The same image under several heat-maps (for example before and after adaptation)."""
    fig, axes = plt.subplots(1, len(heat_maps), figsize=(2.2 * len(heat_maps), 2.4),
                             squeeze=False)
    for ax, (name, heat) in zip(axes[0], heat_maps.items()):
        _overlay(ax, image, heat, title=name)
    fig.suptitle(textwrap.fill(title, 30 * len(heat_maps)), fontsize=8)
    fig.tight_layout()
    return fig


def step_memory_and_time(rows, title: str = ""):
    """Peak training-step memory and seconds per step against the number of prompt tokens,
    one line per attention / checkpointing setting, one column per batch size."""
    import pandas as pd

    df = pd.DataFrame(rows)
    df["setting"] = df["attention"] + df["checkpointing"].map({True: " + checkpointing",
                                                               False: ""})
    batches = sorted(df["batch_size"].unique())
    fig, axes = plt.subplots(2, len(batches), figsize=(4.2 * len(batches), 6), squeeze=False)
    for column, batch in enumerate(batches):
        part = df[df["batch_size"] == batch]
        for row, (value, label) in enumerate((("peak_mb", "peak step memory (MB)"),
                                              ("seconds_per_step", "seconds per step"))):
            ax = axes[row, column]
            sns.lineplot(data=part, x="n_prompts", y=value, hue="setting", marker="o", ax=ax,
                         legend=row == 0 and column == len(batches) - 1)
            ax.set(xlabel="prompt tokens per layer", ylabel=label, ylim=(0, None))
            ax.set_title(f"batch {batch}", fontsize=9)
    if axes[0, -1].get_legend():
        sns.move_legend(axes[0, -1], "upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    if title:
        fig.suptitle(textwrap.fill(title, 120), fontsize=9)
    fig.tight_layout()
    return fig


def accuracy_vs_cost(rows, title: str = ""):
    """Test accuracy of each tuning mode against its trainable parameters (log scale) and
    its training memory: the total (weights, optimizer state and the step's peak) where the
    rows have ``total_mb``, else the step's peak; one colour per data set."""
    import pandas as pd

    df = pd.DataFrame(rows)
    memory = ("total_mb", "training memory (MB): weights, optimizer, step peak") \
        if "total_mb" in df else ("peak_mb", "peak step memory (MB)")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, x, label in ((axes[0], "trainable", "trainable parameters"), (axes[1], *memory)):
        sns.scatterplot(data=df, x=x, y="accuracy", hue="data", style="mode", s=70, ax=ax,
                        legend=ax is axes[1])
        ax.set(xlabel=label, ylabel="test accuracy")
    axes[0].set_xscale("log")
    sns.move_legend(axes[1], "upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    if title:
        fig.suptitle(textwrap.fill(title, 120), fontsize=9)
    fig.tight_layout()
    return fig


def changes(rows, title: str = "", panel: str = "model", label: str = "method"):
    """Each method's change in accuracy against its baseline with its 95% interval (rows of
    ``findings.compare``), one panel per ``panel`` value, on an axis zoomed to the intervals:
    differences of a point stay visible, and an interval crossing zero reads as no effect."""
    panels = list(dict.fromkeys(r[panel] for r in rows))
    height = max(len({r[label] for r in rows if r[panel] == p}) for p in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 0.9 + 0.38 * height),
                             squeeze=False, sharex=True)
    for ax, name in zip(axes[0], panels):
        part = [r for r in rows if r[panel] == name]
        y = np.arange(len(part))[::-1]
        for row, height in zip(part, y):
            colour = ("tab:green" if row["ci_low"] > 0 else "tab:red" if row["ci_high"] < 0
                      else "tab:grey")
            ax.errorbar(row["change"], height, xerr=[[row["change"] - row["ci_low"]],
                                                     [row["ci_high"] - row["change"]]],
                        fmt="o", color=colour, capsize=3)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(y, [f"{r[label]} vs {r['baseline']}" for r in part], fontsize=8)
        ax.set_title(textwrap.fill(str(name), 40), fontsize=9)
        ax.set_xlabel("change in mean accuracy (95% CI)", fontsize=8)
    if title:
        fig.suptitle(textwrap.fill(title, 30 * len(panels) + 40), fontsize=9)
    fig.tight_layout()
    return fig


def reliability_diagram(results: list[dict], methods=None, model: str | None = None,
                        n_bins: int = 15, exclude=("clean",), ncols: int = 4):
    """Reliability diagrams of one model's methods side by side (in the order of
    ``methods``), pooled over its data sets but ``exclude`` (the corrupted ones): per
    confidence bin the accuracy (bars) against the diagonal of perfect calibration, and
    below, how many predictions fall in each bin. Each panel's title gives the method's ECE
    with its 95% interval (``findings.calibration``, the numbers drawn here)."""
    from .findings import calibration

    rows = calibration(results, model, methods, exclude, n_bins)
    ncols = min(ncols, len(rows))
    nrows = -(-len(rows) // ncols)
    fig = plt.figure(figsize=(3.0 * ncols, 3.6 * nrows))
    # Half an inch above the first row for its panels' titles; the figure's title above that.
    outer = fig.add_gridspec(nrows, ncols, hspace=0.55, wspace=0.3,
                             top=1 - 0.5 / (3.6 * nrows))
    width = 1 / n_bins
    for i, row in enumerate(rows):
        inner = outer[i // ncols, i % ncols].subgridspec(2, 1, height_ratios=(3, 1), hspace=0.08)
        top, bottom = fig.add_subplot(inner[0]), fig.add_subplot(inner[1])
        lows = [b["lower"] for b in row["bins"]]
        accuracy = [b["accuracy"] or 0.0 for b in row["bins"]]
        top.bar(lows, accuracy, width=width, align="edge", color="tab:blue", edgecolor="white",
                label="accuracy")
        top.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="calibrated")
        top.set(xlim=(0, 1), ylim=(0, 1), xticklabels=[])
        top.set_title(f"{row['method']}\n" + textwrap.fill(f"ECE {row['text']}", 40),
                      fontsize=8)
        bottom.bar(lows, [b["count"] for b in row["bins"]], width=width, align="edge",
                   color="tab:grey")
        bottom.set(xlim=(0, 1))
        bottom.set_xlabel("confidence", fontsize=8)
        if i % ncols == 0:
            top.set_ylabel("accuracy", fontsize=8)
            bottom.set_ylabel("images", fontsize=8)
        for ax in (top, bottom):
            ax.tick_params(labelsize=7)
    data_sets = max(r["data_sets"] for r in rows)
    fig.suptitle(f"Reliability: {rows[0]['model']}\n{n_bins} confidence bins, pooled over "
                 f"{data_sets} data sets" + (f" (without {', '.join(exclude)})" if exclude
                                              else ""), fontsize=9, y=1.0, va="bottom")
    return fig


SWEEP_METRICS = {"accuracy": ("accuracy", "ci_low", "ci_high", "mean accuracy (95% CI)"),
                 "error": ("error", "error_low", "error_high", "mean error (95% CI)"),
                 "confidence": ("confidence", "confidence_low", "confidence_high",
                                "mean confidence (95% CI)")}


def _metric(row: dict, key: str) -> float:
    """A ``sweep_rows`` value; ``error`` and its bounds are one minus accuracy's."""
    flipped = {"error": "accuracy", "error_low": "ci_high", "error_high": "ci_low",
               "baseline_error": "baseline_accuracy", "baseline_error_low": "baseline_high",
               "baseline_error_high": "baseline_low"}
    return 1 - row[flipped[key]] if key in flipped and key not in row else row[key]


def sweep_intervals(rows: list[dict], labels: dict | None = None, title: str = "",
                    metrics=("accuracy",)):
    """Each of ``metrics`` ("accuracy", "error" or "confidence"; a row of panels each)
    against each swept setting (rows of ``findings.sweep_rows``: one column per ``setting``,
    one line per model and swept method) with its 95% interval shaded, and on accuracy or
    error panels the baseline's (``baseline_accuracy``, its interval as a grey band) for
    reference. The swept values are evenly spaced (a rate of 0 beside 0.1 and 10 stays
    readable). A value marked ``chosen`` is drawn as a filled square; a value that is
    another method by construction (``same_as``) is not drawn (the baseline's line shows it
    where it is the baseline). ``labels`` name the settings on the x axes."""
    unknown = [m for m in metrics if m not in SWEEP_METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose among {list(SWEEP_METRICS)}")
    slots = {setting: sorted({r["value"] for r in rows if r["setting"] == setting})
             for setting in dict.fromkeys(r["setting"] for r in rows)}
    rows = [r for r in rows if not r.get("same_as")]  # another method's cells: not a point
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    fig, axes = plt.subplots(len(metrics), len(settings),
                             figsize=(4.2 * len(settings), 3.2 * len(metrics)),
                             squeeze=False, sharey="row")
    lines = list(dict.fromkeys((r["model"], r.get("sweep", "")) for r in rows))
    several = len({sweep for _, sweep in lines}) > 1
    for metric, row_axes in zip(metrics, axes):
        key, low, high, ylabel = SWEEP_METRICS[metric]
        for ax, setting in zip(row_axes, settings):
            for index, (model, sweep) in enumerate(lines):
                line = sorted((r for r in rows if r["setting"] == setting and r["model"] ==
                               model and r.get("sweep", "") == sweep), key=lambda r: r["value"])
                if not line:
                    continue
                x = [slots[setting].index(r["value"]) for r in line]
                colour, name = f"C{index}", f"{model} · {sweep}" if several else model
                ax.plot(x, [_metric(r, key) for r in line], "o-", color=colour, label=name)
                ax.fill_between(x, [_metric(r, low) for r in line],
                                [_metric(r, high) for r in line], color=colour, alpha=0.2, lw=0)
                ax.plot([slots[setting].index(r["value"]) for r in line if r.get("chosen")],
                        [_metric(r, key) for r in line if r.get("chosen")], "s", color=colour,
                        ms=8)
                if "baseline_accuracy" in line[0] and metric != "confidence":
                    base = {"accuracy": ("baseline_accuracy", "baseline_low", "baseline_high"),
                            "error": ("baseline_error", "baseline_error_low",
                                      "baseline_error_high")}[metric]
                    ax.axhline(_metric(line[0], base[0]), color=colour, ls="--", lw=1,
                               label=f"{name}: {line[0]['baseline']}")
                    ax.axhspan(_metric(line[0], base[1]), _metric(line[0], base[2]),
                               color="grey", alpha=0.12, lw=0)
            ax.set_xticks(range(len(slots[setting])), [f"{v:g}" for v in slots[setting]])
            ax.set_xlabel((labels or {}).get(setting, setting), fontsize=8)
            ax.set_ylabel(ylabel, fontsize=8)
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(textwrap.fill(title, 50 * len(settings)), fontsize=9)
    fig.tight_layout()
    return fig


def segment_errors(rows: list[dict], title: str = "", methods=None):
    """The error per segment along a stream (rows of ``streams.segment_errors``: the
    corruptions of a continual stream in order), one line per method in the order of
    ``methods`` with its 95% interval as a band, one panel per model: forgetting or collapse
    shows as a line that climbs while Source's does not."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    methods = [m for m in (methods or dict.fromkeys(r["method"] for r in rows))
               if any(r["method"] == m for r in rows)]
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 3.4), squeeze=False,
                             sharey=True)
    for ax, model in zip(axes[0], models):
        segments = []
        for method in methods:
            part = sorted((r for r in rows if r["model"] == model and r["method"] == method),
                          key=lambda r: r["position"])
            if not part:
                continue
            x, colour = [r["position"] for r in part], f"C{methods.index(method)}"
            ax.plot(x, [r["error"] for r in part], marker="o", ms=3, label=method, color=colour)
            ax.fill_between(x, [r["low"] for r in part], [r["high"] for r in part], alpha=0.12,
                            color=colour)
            segments = segments or [r["segment"] for r in part]
        ax.set_xticks(range(1, len(segments) + 1),
                      [s.replace("_", " ") for s in segments], rotation=60, ha="right",
                      fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_title(str(model), fontsize=9)
        ax.set_ylabel("error on the segment (95% CI)", fontsize=8)
    shown = {line.get_label(): line for ax in axes[0] for line in ax.get_lines()}
    axes[0][-1].legend([shown[m] for m in methods if m in shown],
                       [m for m in methods if m in shown], fontsize=7, loc="best")
    if title:
        fig.suptitle(textwrap.fill(title, 70 * len(models)), fontsize=9)
    fig.tight_layout()
    return fig


def severity_intervals(rows: list[dict], methods, title: str = ""):
    """Mean error against severity (rows of ``findings.severity_rows``), the papers' style: a
    panel per model, a line per method in the order of ``methods`` (Source first; markers and
    dashes tell lines apart where two methods coincide), the 95% interval shaded."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.2), squeeze=False,
                             sharey=True)
    for ax, model in zip(axes[0], models):
        for index, method in enumerate(methods):
            line = sorted((r for r in rows if r["model"] == model and r["method"] == method),
                          key=lambda r: r["severity"])
            if not line:
                continue
            x = [r["severity"] for r in line]
            ax.plot(x, [r["error"] for r in line], color=f"C{index}", label=method,
                    marker="os^Dv"[index % 5], ls="-" if index % 2 == 0 else "--")
            ax.fill_between(x, [r["error_low"] for r in line], [r["error_high"] for r in line],
                            color=f"C{index}", alpha=0.15, lw=0)
        ax.set_xticks(sorted({r["severity"] for r in rows}))
        ax.set_title(model, fontsize=9)
        ax.set_xlabel("severity", fontsize=8)
        ax.set_ylabel("mean error (95% CI)", fontsize=8)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(textwrap.fill(title, 50 * len(models)), fontsize=9)
    fig.tight_layout()
    return fig
