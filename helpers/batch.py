"""Run every notebook on a profile with papermill: ``python -m helpers.batch --profile offline``.

Executed notebooks go to ``runs/<profile>/``, results to ``results/<profile>/``, and a
Markdown summary across the profile's notebooks (also those ``--only`` leaves out, from their
earlier results) to ``results/<profile>/SUMMARY.md``. A failing notebook does not stop the
others; ``--resume`` skips notebooks whose results exist for the same
parameters and the same code (the notebook's source and the ``helpers`` modules it imports,
see ``helpers.fingerprint``). ``--jobs N`` runs N notebooks at once, each kernel with its
share of the CPU threads: the small models of the offline profile run as fast on one thread
as on two, so two notebooks side by side take about half the time of one after the other;
the longest start first (``longest_first``). Ctrl-C stops the running kernels within
seconds, writes the summary of what finished and exits with 130.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed, wait
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from . import fingerprint, params, paths
from .jsonfile import read_json, write_json

# Parameters the runner itself gives each notebook that declares them.
RUNNER_PARAMETERS = ("profile", "results_path", "figures_dir")
# The top-level entries of a profile file and their types.
PROFILE_ENTRIES = {"description": str, "jobs": int, "minutes": dict, "defaults": dict,
                   "notebooks": dict}
EXAMPLE = "notebooks:\n  01_memo_cifar100:\n    n_images: 100"


def profile_names() -> list[str]:
    return sorted(p.stem for p in paths.PROFILES.glob("*.yaml"))


def profile_file(name: str) -> Path:
    return paths.PROFILES / f"{name}.yaml"


def load_profile(name: str) -> dict:
    """A profile: ``description``, ``defaults`` (for every notebook that has the parameter)
    and ``notebooks`` (per notebook stem, its parameters). A file that is not valid YAML
    or not of that shape is an error naming the file and the fix."""
    file = profile_file(name)
    if not file.exists():
        raise SystemExit(f"Unknown profile {name!r}; valid profiles: {', '.join(profile_names())} "
                         f"(files in {paths.PROFILES}).")
    try:
        with open(file) as stream:  # a stream, so that YAML's error names the file
            profile = yaml.safe_load(stream)
    except yaml.YAMLError as error:
        raise SystemExit(f"Profile file {file} is not valid YAML:\n{error}") from None
    profile = {} if profile is None else profile
    if not isinstance(profile, dict):
        raise SystemExit(f"Profile file {file} must be a mapping with the entries "
                         f"{', '.join(PROFILE_ENTRIES)}; it is a {type(profile).__name__}.")
    unknown = sorted(set(profile) - set(PROFILE_ENTRIES))
    if unknown:
        raise SystemExit(f"Profile file {file} has unknown entries {unknown}; valid: "
                         f"{', '.join(PROFILE_ENTRIES)}.")
    for entry, kind in PROFILE_ENTRIES.items():
        if profile.get(entry) is None and kind is dict:
            profile[entry] = {}
        elif entry in profile and not isinstance(profile[entry], kind):
            how = (f" Write it as a mapping of notebook names to their parameters, e.g.\n"
                   f"{EXAMPLE}" if entry == "notebooks" else "")
            raise SystemExit(f"`{entry}:` in profile file {file} must be a {kind.__name__}, "
                             f"not a {type(profile[entry]).__name__}.{how}")
    bad = [nb for nb, p in profile["notebooks"].items() if not isinstance(p or {}, dict)]
    if bad:
        raise SystemExit(f"In profile file {file}, the parameters of {bad} must be a mapping "
                         f"(name: value), e.g.\n{EXAMPLE}")
    if profile.get("jobs", 1) < 1:
        raise SystemExit(f"`jobs:` in profile file {file} must be at least 1.")
    return profile


def notebook_parameters(notebook: Path) -> dict:
    """The names and defaults (as source text) of a notebook's ``parameters`` cell, as
    papermill sees them."""
    import papermill

    found = papermill.inspect_notebook(str(notebook))
    return {name: info["default"] for name, info in found.items()}


def parameter_problems(nb: Path, given: dict, declared: dict) -> list[str]:
    """What is wrong with the profile's values for one notebook: a type that does not fit
    the notebook's default, or a count out of range (``helpers.params``)."""
    problems = []
    for name, value in given.items():
        why = params.type_problem(value, declared[name]) if name in declared else None
        if why is None and name in params.COUNTS:
            try:
                params.check_count(name, value, *params.COUNTS[name])
            except params.ParameterError as error:
                why = str(error).split(": ", 1)[1]
        if why:
            problems.append(f"{nb.name}: {name}: {why}")
    return problems


def plan(profile_name: str, notebooks: list[Path]) -> list[tuple[Path, dict]]:
    """Each notebook with the parameters to inject. Errors name the parameter, the notebook
    and the profile file, and are raised before anything runs: unknown names (listing the
    valid ones), a ``defaults:`` entry no notebook declares (a typo), values of the wrong
    type or out of range."""
    profile, file = load_profile(profile_name), profile_file(profile_name)
    stems = {nb.stem for nb in notebooks}
    unknown_nb = sorted(set(profile["notebooks"]) - stems)
    if unknown_nb:
        raise SystemExit(f"Profile file {file} names notebooks that do not exist: "
                         f"{unknown_nb}; notebooks: {sorted(stems)}.")
    jobs, errors, everywhere = [], [], set()
    for nb in notebooks:
        valid = notebook_parameters(nb)
        everywhere |= set(valid)
        given = {k: v for k, v in profile["defaults"].items() if k in valid}
        given.update(profile["notebooks"].get(nb.stem) or {})
        injected = dict(given)
        injected.setdefault("profile", profile_name)
        results_path, figures_dir = paths.notebook_outputs(nb.stem, profile_name)
        injected.setdefault("results_path", str(results_path))
        injected.setdefault("figures_dir", str(figures_dir))
        injected = {k: v for k, v in injected.items()
                    if k in valid or k not in RUNNER_PARAMETERS}
        wrong = sorted(set(injected) - set(valid))
        if wrong:
            errors.append(f"{nb.name}: unknown parameter(s) {wrong}; valid: {sorted(valid)}")
        errors += parameter_problems(nb, given, valid)
        jobs.append((nb, injected))
    typos = sorted(set(profile["defaults"]) - everywhere)
    if typos:
        errors.append(f"defaults: {typos} declared by no notebook (a typo?); the notebooks' "
                      f"parameters: {sorted(everywhere)}")
    if errors:
        raise SystemExit(f"Profile file {file} has bad parameters:\n  " + "\n  ".join(errors))
    return jobs


def record_file(profile_name: str, nb: Path) -> Path:
    """Where the runner records a notebook's last successful run (parameters, seconds)."""
    return paths.RUNS / profile_name / f"{nb.stem}.done.json"


def record(file: Path, params: dict, seconds: float, code: dict) -> None:
    """Written atomically after a notebook succeeds: an interrupted write is never a record."""
    write_json(file, {"parameters": params, "seconds": round(seconds, 1), "code": code})


def _recorded(file: Path) -> dict:
    """A notebook's run record; empty when there is none (a corrupt one is moved aside)."""
    return read_json(file, dict) or {}


def notebook_code(nb: Path) -> dict:
    """The fingerprint of what a notebook runs: its code cells and the ``helpers`` modules
    they import (``helpers.fingerprint``)."""
    import nbformat

    cells = nbformat.read(nb, as_version=4).cells
    source = "\n".join(c.source for c in cells if c.cell_type == "code")
    own = hashlib.sha256(source.encode()).hexdigest()[:16]
    return {f"notebooks/{nb.name}": own, **fingerprint.of_source(source)}


def longest_first(todo: list, profile_name: str, minutes: dict) -> list:
    """The notebooks to run, those expected to take longest first (the last run's seconds on
    this machine, else the profile's ``minutes`` estimate, else name order last), so that
    parallel jobs end together instead of one long notebook starting last."""
    def expected(job):
        nb = job[0]
        return _recorded(record_file(profile_name, nb)).get("seconds") or \
            60 * minutes.get(nb.stem, 0)

    return sorted(todo, key=expected, reverse=True)


def rerun_reason(params: dict, record_path: Path, code: dict) -> str | None:
    """None when the notebook's results file exists and the runner's record of its last
    successful run holds the same injected parameters and code; else why it must run. The
    runner keeps this record itself, since a notebook need not store every parameter it was
    given (paths, for instance). Corrupt files are moved aside (with a warning) and rerun."""
    results = Path(params.get("results_path", ""))
    if not results.is_file() or read_json(results, dict) is None:
        return "no results file"
    saved = _recorded(record_path)
    if not saved:
        return "no record of a finished run"
    if saved.get("parameters") != json.loads(json.dumps(params)):
        return "other parameters"
    return fingerprint.why_stale(saved.get("code"), code)


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
            selected=None, interrupted: list | None = None) -> str:
    """One section per notebook of the whole profile, so that a run of a few (``--only``)
    does not hide the others: its title, its run time, what made the numbers, its summary
    tables. ``selected`` are the notebooks chosen this time (default: all); the others show
    the results of their earlier run, or one line when they have never run. After Ctrl-C,
    ``interrupted`` lists the notebooks that did not start."""
    parts = [f"# Summary of the `{profile_name}` profile", ""]
    if interrupted is not None:
        names = ", ".join(nb.stem for nb in interrupted) or "none"
        parts += [f"**Interrupted** (Ctrl-C); notebooks not started: {names}.", ""]
    seconds = seconds or {}
    selected = {nb for nb, _ in jobs} if selected is None else set(selected)
    for nb, injected in jobs:
        parts.append(f"## {nb.stem}")
        parts += _section(profile_name, nb, Path(injected["results_path"]), failures,
                          seconds, nb in selected)
    return "\n".join(parts)


def _section(profile_name: str, nb: Path, file: Path, failures: dict, seconds: dict,
             selected: bool) -> list[str]:
    """A notebook's run time, then its failure or its results; one line if it never ran.
    A failed run shows no earlier run time: its record was invalidated when it started."""
    if nb in failures:
        return [f"**Failed**: {failures[nb]}", ""]
    earlier = _recorded(record_file(profile_name, nb)).get("seconds")
    rerun = f"`python -m helpers.batch --profile {profile_name} --only {nb.stem}`"
    lines = []
    if nb in seconds:
        lines += [f"_Ran in {seconds[nb]:.0f} s._", ""]
    elif earlier is not None:
        how = "resumed" if selected else "left out by --only"
        lines += [f"_Ran in {earlier:.0f} s (an earlier run, {how})._", ""]
    elif not file.exists():
        return [f"_Not run yet: {rerun}._", ""]
    if not file.exists():
        return lines + ["_(no results file)_", ""]
    results = read_json(file, dict)
    if results is None:
        return lines + [f"_(its results file was unreadable and is moved aside; run it again: "
                        f"{rerun})_", ""]
    if results.get("note"):
        lines += [str(results["note"]), ""]
    if results.get("findings"):
        lines += ["### Findings", "", *(f"- {line}" for line in results["findings"]), ""]
    tables = results.get("summary") or {}
    for title, rows in (tables.items() if isinstance(tables, dict) else []):
        readable = isinstance(rows, list) and all(isinstance(r, dict) for r in rows)
        lines += [f"### {title}", "", markdown_table(rows) if readable else
                  "_(not a table: a list of records was expected)_", ""]
    return lines


def execute(nb: Path, params: dict, executed: Path, kernel: str,
            record_path: Path | None = None) -> float:
    """Run one notebook with papermill; its run time in seconds. The record of its earlier
    success (``record_path``) is deleted first, so that a run that fails, is killed or is
    interrupted never leaves a record for ``--resume`` to trust."""
    import papermill

    if record_path is not None:
        record_path.unlink(missing_ok=True)
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


def stop_kernels(grace: float = 5.0) -> int:
    """Interrupt every process this one started (the kernels, and theirs) with SIGINT, as
    Jupyter's interrupt button does, and kill those still running after ``grace`` seconds;
    returns how many there were. Needed because jupyter_client starts each kernel in a
    session of its own, where the terminal's Ctrl-C never reaches it. Independent of how the
    notebooks are scheduled (a thread pool now, another executor later)."""
    import psutil

    kernels = psutil.Process().children(recursive=True)
    for process in kernels:
        try:
            process.send_signal(signal.SIGINT)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(kernels, timeout=grace)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace)
    return len(kernels)


def _outcome(nb: Path, future, out_dir: Path, interrupted: bool) -> str | None:
    """None if the notebook ran, else the one-line reason it failed."""
    error = future.exception()
    if error is None:
        return None
    last_line = (str(error).strip().splitlines() or [""])[-1]  # may be empty
    why = f"{type(error).__name__}: {last_line} (executed notebook: {out_dir / nb.name})"
    return f"interrupted by Ctrl-C ({why})" if interrupted else why


def run_all(todo: list, profile_name: str, out_dir: Path, kernel: str, jobs: int):
    """Run ``todo`` ((notebook, parameters, code) triples), ``jobs`` at a time, recording
    each success; returns (failures, seconds, not started or None). On Ctrl-C the running
    kernels are stopped (``stop_kernels``), the queued notebooks dropped, and the third
    value lists those that never started."""
    failures, seconds, not_started = {}, {}, None
    bar = tqdm(total=len(todo), desc=f"profile {profile_name}", unit="notebook")
    pool = ThreadPoolExecutor(max_workers=jobs)
    running = {pool.submit(execute, nb, injected, out_dir / nb.name, kernel,
                           record_file(profile_name, nb)): (nb, injected, code)
               for nb, injected, code in todo}
    handled = set()

    def handle(future, interrupted=False):
        nb, injected, code = running[future]
        handled.add(future)
        why = _outcome(nb, future, out_dir, interrupted)
        if why is None:
            seconds[nb] = future.result()
            record(record_file(profile_name, nb), injected, seconds[nb], code)
            tqdm.write(f"ok   {nb.name} in {seconds[nb]:.0f} s")
        else:
            failures[nb] = why
            tqdm.write(f"FAIL {nb.name}: {why}")
        bar.update()

    try:
        for future in as_completed(running):
            handle(future)
    except KeyboardInterrupt:
        tqdm.write("Ctrl-C: stopping the running notebooks ...")
        pool.shutdown(wait=False, cancel_futures=True)
        stop_kernels()
        wait(running, timeout=15)
        not_started = [running[f][0] for f in running if f.cancelled()]
        for future in running:
            if future not in handled and future.done() and not future.cancelled():
                handle(future, interrupted=True)
            elif not future.done():
                failures[running[future][0]] = "interrupted by Ctrl-C; its kernel did not stop"
    pool.shutdown(wait=not_started is None)
    bar.close()
    return failures, seconds, not_started


def run(profile_name: str, resume: bool = False, only: list[str] | None = None,
        kernel: str = "python3", jobs: int | None = None) -> int:
    """Run the profile's notebooks, ``jobs`` at a time (default: the profile's ``jobs``,
    else 1); returns the exit code: 1 when a notebook failed, 130 after Ctrl-C."""
    profile = load_profile(profile_name)
    # The whole profile is checked (it may name notebooks --only leaves out), then filtered.
    planned = plan(profile_name, sorted(paths.NOTEBOOKS.glob("[0-9]*.ipynb")))
    selected = select(planned, only)
    jobs = max(1, jobs or profile.get("jobs") or 1)
    out_dir = paths.RUNS / profile_name
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = []
    for nb, injected in selected:
        code = notebook_code(nb)
        why = rerun_reason(injected, record_file(profile_name, nb), code) if resume else None
        if resume and why is None:
            tqdm.write(f"skip {nb.name}: results exist for these parameters and this code")
            continue
        if why and why not in ("no results file", "no record of a finished run"):
            tqdm.write(f"run  {nb.name} again: {why}")
        todo.append((nb, injected, code))
    if jobs > 1:
        todo = longest_first(todo, profile_name, profile.get("minutes") or {})
    share_threads(jobs)
    failures, seconds, not_started = run_all(todo, profile_name, out_dir, kernel, jobs)
    text = summary(profile_name, planned, failures, seconds, [nb for nb, _ in selected],
                   not_started)
    summary_file = paths.RESULTS / profile_name / "SUMMARY.md"
    summary_file.parent.mkdir(parents=True, exist_ok=True)
    summary_file.write_text(text)
    print(text)
    print(f"\nSummary written to {summary_file}")
    if failures:
        print(f"{len(failures)} notebook(s) failed:", file=sys.stderr)
        for nb, why in failures.items():
            print(f"  {nb.name}: {why}", file=sys.stderr)
    if not_started is not None:
        return 130
    return 1 if failures else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.batch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="offline",
                        help=f"one of: {', '.join(profile_names())} (default: offline)")
    parser.add_argument("--resume", action="store_true",
                        help="skip notebooks whose results exist for the same parameters "
                             "and code")
    parser.add_argument("--only", nargs="*", help="notebook name prefixes, e.g. 01 03")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel name")
    parser.add_argument("--jobs", type=int, default=None,
                        help="notebooks run at once (default: the profile's 'jobs', else 1)")
    args = parser.parse_args(argv)
    try:
        return run(args.profile, args.resume, args.only, args.kernel, args.jobs)
    except KeyboardInterrupt:  # before any notebook started: nothing to stop or summarise
        print("Interrupted before any notebook ran.", file=sys.stderr)
        return 130


def _exit(code: int) -> None:
    """Exit with ``code``; after Ctrl-C without waiting for a papermill thread still
    attached to a kernel that would not stop (the summary is written by then)."""
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    _exit(main())
