"""What every notebook does around its experiment, in one place: the Colab set-up, the seed,
the device, where its results and figures go, the versions that made them, its store of
finished cells, and its results file.

A notebook calls ``start`` after its parameters cell and ``NotebookRun.save`` at the end; what
lies between is the experiment and its story.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import findings, paths
from .evaluate import ResultStore, run_info, write_json
from .params import check_counts
from .profile import load_profile


def in_colab() -> bool:
    return "google.colab" in sys.modules


def colab_setup(notebook: str) -> dict:
    """Tell a Colab user what this runtime offers (GPU or not) and which parameters the
    ``full`` profile gives this notebook, to paste into the parameters cell for the papers'
    scale; returns those parameters."""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    print(f"GPU: {gpu}" if gpu else
          "No GPU in this runtime: the defaults below run on the CPU in minutes; for the full "
          "profile choose Runtime > Change runtime type > GPU.")
    full = load_profile("full")["notebooks"].get(notebook, {})
    print(f"The full profile's parameters for {notebook} (paste into the parameters cell):")
    for name, value in full.items():
        print(f"{name} = {value!r}")
    return full


@dataclass
class NotebookRun:
    """One run of a notebook: its parameters and where its outputs go."""

    name: str
    parameters: dict
    results_path: Path
    figures_dir: Path
    device: torch.device
    info: dict
    started: float = field(default_factory=time.time)
    finding_lines: list = field(default_factory=list)
    comparisons: list = field(default_factory=list)
    findings_figure: str | None = None
    stores: list = field(default_factory=list)
    anchors: list = field(default_factory=list)
    conclusions: dict | None = None

    def store(self, method_settings=()) -> ResultStore:
        """The store of finished grid cells beside the results file, kept while the parameters
        the cells depend on stay the same: all but ``method_settings`` (the names of the
        methods' own options, which each cell records and compares itself, so that changing
        one method's options recomputes only its cells)."""
        kept = {k: v for k, v in self.parameters.items() if k not in set(method_settings)}
        self.stores.append(ResultStore(self.results_path.with_suffix(".cells.json"), kept))
        return self.stores[-1]

    def cells_reused(self) -> dict:
        """How many of the grid cells this run used were computed by an earlier run: a
        resumed run's time is not the time its numbers took (the report says so)."""
        started = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.started))
        cells = [c for store in self.stores for c in store.cells.values()]
        reused = [c for c in cells if c.get("run", {}).get("time", started)[:19] < started]
        return {"cells": len(cells), "reused": len(reused)}

    def figure(self, fig, name: str) -> None:
        """Save a figure as ``<figures_dir>/<name>.png`` (and keep showing it inline). Returns
        None, so that a cell ending with it shows the figure and no path."""
        from .plots import save

        save(fig, self.figures_dir, name)

    def show_changes(self, rows, figure: str, title: str) -> None:
        """Comparison rows (``findings.compare``) as a table of changes (model x method) and,
        as figure ``figure``, the changes with their intervals: a section's compact view of
        part of the findings, such as one architecture under several training recipes."""
        import pandas as pd
        from IPython.display import display

        from .plots import changes

        if not rows:
            return
        order = list(dict.fromkeys(r["method"] for r in rows))  # the rows' order, not A-Z
        display(pd.DataFrame(rows).pivot(index="model", columns="method", values="change")
                [order].style.format("{:+.3f}", na_rep="—"))
        self.figure(changes(list(rows), title=title), figure)

    def show_findings(self, rows=(), lines=None, figure: str | None = None,
                      title: str = "Change in mean accuracy (95% paired-bootstrap intervals)"):
        """Show the findings as Markdown (one sentence per comparison row of
        ``findings.compare``, then the given ``lines``) and, as figure ``figure``, the rows'
        changes with their intervals; both are kept for the results file. Returns the lines."""
        from IPython.display import Markdown, display

        from .plots import changes

        self.comparisons = findings.table(list(rows))
        self.finding_lines = findings.lines(list(rows)) + list(lines or [])
        display(Markdown(findings.markdown(self.finding_lines)))
        if rows and figure:
            self.figure(changes(list(rows), title=title), figure)
            self.findings_figure = figure
        return self.finding_lines

    def show_anchors(self, table) -> None:
        """Show an ``anchors.anchor_table`` under "Published numbers and ours" (no index, the
        numbers already formatted) and keep its rows, with the numbers behind them
        (``table.attrs["rows"]``, by the table's index: a filtered table keeps its rows'
        numbers), for the results file's ``anchors`` key."""
        from IPython.display import Markdown, display

        numbers = table.attrs.get("rows", {})
        self.anchors = [{**{str(k): v for k, v in row.items()},
                         "numbers": numbers[i] if i < len(numbers) else {}}
                        for i, row in zip(table.index, table.to_dict("records"))]
        display(Markdown("### Published numbers and ours"))
        style = (table.style.hide(axis="index").set_uuid(f"anchors-{self.name}")
                 .set_properties(**{"text-align": "left", "vertical-align": "top"}))
        display(style if len(table) else Markdown("_No published number anchors this notebook._"))

    def show_conclusions(self, found: list[str], limitations: str,
                         anchors: list[str] = ()) -> None:
        """Show the notebook's closing section: "What we found" (``conclusions.what_we_found``
        as a list), the comparison with the published numbers (``conclusions.anchor_lines``)
        and "Limitations" (``conclusions.limitations``); all three are kept for the results
        file (``conclusions`` key), which the report's synthesis and the README read."""
        from IPython.display import Markdown, display

        self.conclusions = {"found": list(found), "anchors": list(anchors),
                            "limitations": limitations}
        display(Markdown(conclusions_markdown(self.conclusions)))

    def save(self, summary: dict, note: str = "", headline_table: str | None = None,
             headline_figure: str | None = None, **extra) -> None:
        """Write the results file atomically: what made the numbers (parameters, versions,
        device, seed), the note on models and data, the summary tables the batch summary and
        the README show, the findings shown (sentences with their intervals, and the
        comparison rows behind them), the headline the README shows (a title of ``summary``
        and a figure's name: the findings figure unless given), the conclusions shown
        (``show_conclusions``; None when not shown) and anything else given. Prints where
        they went relative to the repository (no machine path in a published notebook);
        returns None (the file is ``results_path``)."""
        seconds = round(time.time() - self.started, 1)
        headline = {"table": headline_table, "figure": headline_figure or self.findings_figure}
        write_json(self.results_path, {
            "notebook": self.name, "parameters": self.parameters, "run": self.info,
            "note": note, "summary": summary, "findings": self.finding_lines,
            "comparisons": self.comparisons, "anchors": self.anchors, "headline": headline,
            "seconds": seconds, "grid_cells": self.cells_reused(),
            "conclusions": self.conclusions,
            **extra})
        print(f"results: {shown_path(self.results_path)}\n"
              f"figures: {shown_path(self.figures_dir)}\n{seconds} s")


def conclusions_markdown(conclusions: dict) -> str:
    """A notebook's conclusions (``show_conclusions``'s dict) as Markdown: "What we found" as
    a list, the comparison with the published numbers, "Limitations"."""
    parts = ["### What we found", findings.markdown(conclusions.get("found") or [])]
    if conclusions.get("anchors"):
        parts += ["**Against the published numbers**",
                  "\n".join(f"- {line}" for line in conclusions["anchors"])]
    parts += ["### Limitations", conclusions.get("limitations") or "_None stated._"]
    return "\n\n".join(parts)


def shown_path(path) -> str:
    """A path as a published notebook may show it: relative to the repository when inside it,
    else its last two parts (never the machine's folders)."""
    path = Path(path)
    if path.is_absolute() and path.is_relative_to(paths.REPO):
        return str(path.relative_to(paths.REPO))
    return str(Path(*path.parts[-2:])) if path.is_absolute() else str(path)


def start(name: str, parameters: dict, results_path=None, figures_dir=None,
          device=None) -> NotebookRun:
    """Check the parameters' counts (``params.check_counts``: a run by hand gets the batch
    runner's checks), seed torch with ``parameters["seed"]``, pick the device (CUDA when
    present), resolve the outputs (``paths.notebook_outputs``: the runner's folders unless
    given) and print the versions, so every notebook starts the same way."""
    check_counts(parameters)
    torch.manual_seed(parameters.get("seed", 0))
    results_path, figures_dir = paths.notebook_outputs(name, parameters.get("profile", "smoke"),
                                                       results_path, figures_dir)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    info = run_info(parameters.get("seed"))
    print(f"device: {info['device']}, torch {info['torch']}, clip {info['clip']}, "
          f"threads {info['threads']}")
    return NotebookRun(name, parameters, results_path, figures_dir, device, info)
