"""Run every notebook on a profile with papermill: ``python -m helpers.batch --profile offline``.

Executed notebooks go to ``runs/<profile>/``, results to ``results/<profile>/``, and a
Markdown summary across the profile's notebooks (also those ``--only`` leaves out, from their
earlier results) to ``results/<profile>/SUMMARY.md``. A failing notebook does not stop the
others; ``--resume`` skips notebooks whose results exist for the same
parameters. ``--jobs N`` runs N notebooks at once, each kernel with its share of the CPU
threads: the small models of the offline profile run as fast on one thread as on two, so
two notebooks side by side take about half the time of one after the other; the longest
start first (``longest_first``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from . import paths

# Parameters the runner itself gives each notebook that declares them.
RUNNER_PARAMETERS = ("profile", "results_path", "figures_dir")


def profile_names() -> list[str]:
    return sorted(p.stem for p in paths.PROFILES.glob("*.yaml"))


def load_profile(name: str) -> dict:
    """A profile: ``description``, ``defaults`` (for every notebook that has the parameter)
    and ``notebooks`` (per notebook stem, its parameters)."""
    file = paths.PROFILES / f"{name}.yaml"
    if not file.exists():
        raise SystemExit(f"Unknown profile {name!r}; valid profiles: {', '.join(profile_names())} "
                         f"(files in {paths.PROFILES}).")
    profile = yaml.safe_load(file.read_text()) or {}
    profile.setdefault("defaults", {})
    profile.setdefault("notebooks", {})
    return profile


def notebook_parameters(notebook: Path) -> dict:
    """The names and defaults of a notebook's ``parameters`` cell, as papermill sees them."""
    import papermill

    found = papermill.inspect_notebook(str(notebook))
    return {name: info["default"] for name, info in found.items()}


def plan(profile_name: str, notebooks: list[Path]) -> list[tuple[Path, dict]]:
    """Each notebook with the parameters to inject; unknown names are an error that lists
    the valid ones, raised before anything runs."""
    profile = load_profile(profile_name)
    stems = {nb.stem for nb in notebooks}
    unknown_nb = sorted(set(profile["notebooks"]) - stems)
    if unknown_nb:
        raise SystemExit(f"Profile {profile_name!r} names notebooks that do not exist: "
                         f"{unknown_nb}; notebooks: {sorted(stems)}.")
    jobs, errors = [], []
    for nb in notebooks:
        valid = notebook_parameters(nb)
        params = {k: v for k, v in profile["defaults"].items() if k in valid}
        params.update(profile["notebooks"].get(nb.stem) or {})
        params.setdefault("profile", profile_name)
        results_path, figures_dir = paths.notebook_outputs(nb.stem, profile_name)
        params.setdefault("results_path", str(results_path))
        params.setdefault("figures_dir", str(figures_dir))
        params = {k: v for k, v in params.items() if k in valid or k not in RUNNER_PARAMETERS}
        wrong = sorted(set(params) - set(valid))
        if wrong:
            errors.append(f"{nb.name}: unknown parameter(s) {wrong}; valid: {sorted(valid)}")
        jobs.append((nb, params))
    if errors:
        raise SystemExit("Profile " + repr(profile_name) + " has bad parameters:\n  "
                         + "\n  ".join(errors))
    return jobs


def record_file(profile_name: str, nb: Path) -> Path:
    """Where the runner records a notebook's last successful run (parameters, seconds)."""
    return paths.RUNS / profile_name / f"{nb.stem}.done.json"


def _record(file: Path, params: dict, seconds: float) -> None:
    """Written atomically after a notebook succeeds: an interrupted write is never a record."""
    tmp = file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"parameters": params, "seconds": round(seconds, 1)}, indent=1))
    os.replace(tmp, file)


def _recorded(file: Path) -> dict:
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, OSError):
        return {}


def longest_first(todo: list, profile_name: str, minutes: dict) -> list:
    """The notebooks to run, those expected to take longest first (the last run's seconds on
    this machine, else the profile's ``minutes`` estimate, else name order last), so that
    parallel jobs end together instead of one long notebook starting last."""
    def expected(job):
        nb = job[0]
        return _recorded(record_file(profile_name, nb)).get("seconds") or \
            60 * minutes.get(nb.stem, 0)

    return sorted(todo, key=expected, reverse=True)


def is_done(params: dict, record: Path) -> bool:
    """True when the notebook's results file exists and the runner's record of its last
    successful run holds the same injected parameters. The runner keeps this record itself,
    since a notebook need not store every parameter it was given (paths, for instance)."""
    if not Path(params.get("results_path", "")).is_file():
        return False
    return _recorded(record).get("parameters") == json.loads(json.dumps(params))


def markdown_table(rows: list[dict]) -> str:
    """A list of records as a Markdown table (floats to 3 decimals; "n/a" where a record has
    no value or NaN, e.g. a method that does not apply to a model or a per-channel score of a
    dense layer, so no cell looks forgotten or broken); floats to 3 decimals, or 2 significant
    digits below 0.01."""
    if not rows:
        return "_(no rows)_"
    columns = list(dict.fromkeys(k for row in rows for k in row))

    def cell(v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "n/a"
        if isinstance(v, float):  # small values (a fraction 0.0025, seconds) keep 2 digits
            return f"{v:.3f}" if v == 0 or abs(v) >= 0.01 else f"{v:.2g}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def summary(profile_name: str, jobs, failures: dict, seconds: dict | None = None,
            selected=None) -> str:
    """One section per notebook of the whole profile, so that a run of a few (``--only``)
    does not hide the others: its title, its run time, what made the numbers, its summary
    tables. ``selected`` are the notebooks chosen this time (default: all); the others show
    the results of their earlier run, or one line when they have never run."""
    parts = [f"# Summary of the `{profile_name}` profile", ""]
    seconds = seconds or {}
    selected = {nb for nb, _ in jobs} if selected is None else set(selected)
    for nb, params in jobs:
        parts.append(f"## {nb.stem}")
        parts += _section(profile_name, nb, Path(params["results_path"]), failures,
                          seconds, nb in selected)
    return "\n".join(parts)


def _section(profile_name: str, nb: Path, file: Path, failures: dict, seconds: dict,
             selected: bool) -> list[str]:
    """A notebook's run time, then its failure or its results; one line if it never ran."""
    earlier = _recorded(record_file(profile_name, nb)).get("seconds")
    lines = []
    if nb in seconds:
        lines += [f"_Ran in {seconds[nb]:.0f} s._", ""]
    elif earlier is not None:
        how = "resumed" if selected else "left out by --only"
        lines += [f"_Ran in {earlier:.0f} s (an earlier run, {how})._", ""]
    elif nb not in failures and not file.exists():
        return [f"_Not run yet: `python -m helpers.batch --profile {profile_name} "
                f"--only {nb.stem}`._", ""]
    if nb in failures:
        return lines + [f"**Failed**: {failures[nb]}", ""]
    if not file.exists():
        return lines + ["_(no results file)_", ""]
    results = json.loads(file.read_text())
    if results.get("note"):
        lines += [results["note"], ""]
    if results.get("findings"):
        lines += ["### Findings", "", *(f"- {line}" for line in results["findings"]), ""]
    for title, rows in (results.get("summary") or {}).items():
        lines += [f"### {title}", "", markdown_table(rows), ""]
    return lines


def execute(nb: Path, params: dict, executed: Path, kernel: str) -> float:
    """Run one notebook with papermill; its run time in seconds."""
    import papermill

    start = time.time()
    papermill.execute_notebook(str(nb), str(executed), parameters=params, kernel_name=kernel,
                               cwd=str(nb.parent), progress_bar=False)
    return time.time() - start


def share_threads(jobs: int) -> None:
    """Give each of ``jobs`` kernels its share of the cores (kernels inherit the
    environment), unless the user set the thread count."""
    if jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))


def select(planned: list, only: list[str] | None) -> list:
    """The planned notebooks whose names start with one of the ``--only`` prefixes (all
    without prefixes). A prefix that matches nothing is a typo, not an empty run: an error
    that lists the notebooks, raised before anything runs."""
    if not only:
        return planned
    names = [nb.stem for nb, _ in planned]
    unmatched = [o for o in only if not any(name.startswith(o) for name in names)]
    if unmatched:
        raise SystemExit(f"--only {' '.join(unmatched)} matches no notebook; give a prefix of "
                         f"one of: {', '.join(names)}.")
    return [(nb, p) for nb, p in planned if any(nb.stem.startswith(o) for o in only)]


def run(profile_name: str, resume: bool = False, only: list[str] | None = None,
        kernel: str = "python3", jobs: int | None = None) -> int:
    """Run the profile's notebooks, ``jobs`` at a time (default: the profile's ``jobs``,
    else 1); returns the exit code: 1 when a notebook failed."""
    profile = load_profile(profile_name)
    # The whole profile is checked (it may name notebooks --only leaves out), then filtered.
    planned = plan(profile_name, sorted(paths.NOTEBOOKS.glob("[0-9]*.ipynb")))
    selected = select(planned, only)
    jobs = max(1, jobs or profile.get("jobs") or 1)
    out_dir = paths.RUNS / profile_name
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = []
    for nb, params in selected:
        if resume and is_done(params, record_file(profile_name, nb)):
            tqdm.write(f"skip {nb.name}: results exist for these parameters")
        else:
            todo.append((nb, params))
    if jobs > 1:
        todo = longest_first(todo, profile_name, profile.get("minutes") or {})
    share_threads(jobs)
    failures, seconds = {}, {}
    bar = tqdm(total=len(todo), desc=f"profile {profile_name}", unit="notebook")
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        running = {pool.submit(execute, nb, params, out_dir / nb.name, kernel): nb
                   for nb, params in todo}
        params_of = dict(todo)
        for future in as_completed(running):
            nb = running[future]
            try:
                seconds[nb] = future.result()
                _record(record_file(profile_name, nb), params_of[nb], seconds[nb])
                tqdm.write(f"ok   {nb.name} in {seconds[nb]:.0f} s")
            except Exception as error:  # noqa: BLE001 - one failure must not stop the batch
                last_line = (str(error).strip().splitlines() or [""])[-1]  # may be empty
                failures[nb] = (f"{type(error).__name__}: {last_line} "
                                f"(executed notebook: {out_dir / nb.name})")
                tqdm.write(f"FAIL {nb.name}: {failures[nb]}")
            bar.update()
    bar.close()
    text = summary(profile_name, planned, failures, seconds,
                   [nb for nb, _ in selected])
    summary_file = paths.RESULTS / profile_name / "SUMMARY.md"
    summary_file.parent.mkdir(parents=True, exist_ok=True)
    summary_file.write_text(text)
    print(text)
    print(f"\nSummary written to {summary_file}")
    if failures:
        print(f"{len(failures)} notebook(s) failed:", file=sys.stderr)
        for nb, why in failures.items():
            print(f"  {nb.name}: {why}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.batch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="offline",
                        help=f"one of: {', '.join(profile_names())} (default: offline)")
    parser.add_argument("--resume", action="store_true",
                        help="skip notebooks whose results exist for the same parameters")
    parser.add_argument("--only", nargs="*", help="notebook name prefixes, e.g. 01 03")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel name")
    parser.add_argument("--jobs", type=int, default=None,
                        help="notebooks run at once (default: the profile's 'jobs', else 1)")
    args = parser.parse_args(argv)
    return run(args.profile, args.resume, args.only, args.kernel, args.jobs)


if __name__ == "__main__":
    sys.exit(main())
