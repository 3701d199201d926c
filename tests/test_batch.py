import json

import nbformat
import papermill
import pytest
import yaml

from helpers import batch, paths

GOOD_CODE = """\
import os
from pathlib import Path
from helpers.evaluate import write_json
with open("02_good.count", "a") as counter:  # cwd is the notebooks folder
    counter.write("run\\n")
write_json(results_path, {
    "parameters": {"profile": profile, "results_path": results_path,
                   "figures_dir": figures_dir, "x": x},
    "summary": {"table": [{"a": x}]},
    "threads": os.environ.get("OMP_NUM_THREADS"),
})
"""


def notebook(path, parameters, code):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(code)]
    nbformat.write(nb, path)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    return make_repo(tmp_path, monkeypatch)


def make_repo(tmp_path, monkeypatch):
    """A repository layout in tmp_path: two notebooks (the first fails on purpose), three
    profiles; helpers.paths points at it."""
    layout = {name: tmp_path / name for name in ("notebooks", "results", "runs", "figures")}
    layout["profiles"] = layout["notebooks"] / "profiles"
    layout["profiles"].mkdir(parents=True)
    for attr in ("NOTEBOOKS", "PROFILES", "RESULTS", "RUNS", "FIGURES"):
        monkeypatch.setattr(paths, attr, layout[attr.lower()])
    assert batch.paths is paths
    notebook(layout["notebooks"] / "01_broken.ipynb",
             'profile = "smoke"\nresults_path = None',
             'raise ValueError("broken on purpose")')
    notebook(layout["notebooks"] / "02_good.ipynb",
             'profile = "smoke"\nresults_path = None\nfigures_dir = None\nx = 1', GOOD_CODE)
    (layout["notebooks"] / "README.ipynb").write_text("not run: no number prefix")
    write_profile(layout, "smoke", {"description": "tests", "defaults": {"x": 2}})
    write_profile(layout, "override", {"defaults": {"x": 2},
                                       "notebooks": {"02_good": {"x": 7}}})
    write_profile(layout, "typo", {"notebooks": {"02_good": {"y": 1}}})
    return layout


def write_profile(layout, name, profile):
    (layout["profiles"] / f"{name}.yaml").write_text(yaml.safe_dump(profile))


def notebooks(repo):
    return sorted(repo["notebooks"].glob("[0-9]*.ipynb"))


# ---------------------------------------------------------------- plan


def test_plan_injects_profile_and_runner_parameters_each_notebook_declares(repo):
    jobs = batch.plan("smoke", notebooks(repo))
    assert [nb.name for nb, _ in jobs] == ["01_broken.ipynb", "02_good.ipynb"]
    assert jobs[0][1] == {"profile": "smoke",
                          "results_path": str(repo["results"] / "smoke" / "01_broken.json")}
    assert jobs[1][1] == {"x": 2, "profile": "smoke",
                          "results_path": str(repo["results"] / "smoke" / "02_good.json"),
                          "figures_dir": str(repo["figures"] / "smoke")}
    assert batch.plan("override", notebooks(repo))[1][1]["x"] == 7  # per notebook wins


def test_notebook_outputs_default_to_the_runners_folders_and_keep_given_paths(repo):
    """A notebook run by hand writes where the batch runner would (``TTA_RESULTS`` and
    ``TTA_FIGURES`` move both); given paths win, relative ones from the repository."""
    assert paths.notebook_outputs("02_good", "smoke") == (
        repo["results"] / "smoke" / "02_good.json", repo["figures"] / "smoke")
    assert paths.notebook_outputs("02_good", "smoke", "out/r.json", "/tmp/f") == (
        paths.REPO / "out" / "r.json", paths.Path("/tmp/f"))


def test_plan_rejects_unknown_parameter_listing_valid_ones(repo):
    with pytest.raises(SystemExit) as error:
        batch.plan("typo", notebooks(repo))
    message = str(error.value)
    assert "02_good.ipynb: unknown parameter(s) ['y']" in message
    assert "valid: ['figures_dir', 'profile', 'results_path', 'x']" in message


def test_plan_rejects_profile_naming_a_missing_notebook(repo):
    write_profile(repo, "ghost", {"notebooks": {"03_ghost": {"x": 1}}})
    with pytest.raises(SystemExit, match=r"notebooks that do not exist: \['03_ghost'\]"):
        batch.plan("ghost", notebooks(repo))


def test_unknown_profile_lists_valid_profiles(repo):
    with pytest.raises(SystemExit, match="'nightly'; valid profiles: override, smoke, typo"):
        batch.plan("nightly", notebooks(repo))
    assert batch.profile_names() == ["override", "smoke", "typo"]


# ---------------------------------------------------------------- resume check


def test_rerun_reason_compares_the_runners_record_of_parameters_and_code(tmp_path):
    results, record = tmp_path / "r.json", tmp_path / "r.done.json"
    params, code = {"x": 2, "results_path": str(results)}, {"helpers.tta.memo": "a1"}
    batch.record(record, params, 12.34, code)
    assert batch.rerun_reason(params, record, code) == "no results file"
    results.write_text("{}")  # the notebook need not record its parameters
    assert batch.rerun_reason(params, record, code) is None
    assert json.loads(record.read_text())["seconds"] == 12.3
    assert batch.rerun_reason({**params, "x": 3}, record, code) == "other parameters"
    assert batch.rerun_reason({**params, "y": 1}, record, code) == "other parameters"
    assert batch.rerun_reason(params, record, {"helpers.tta.memo": "b2"}) == (
        "code changed: helpers/tta/memo.py")
    record.write_text('{"parameters": ')  # interrupted write
    with pytest.warns(UserWarning, match="r.done.json is unreadable"):
        assert batch.rerun_reason(params, record, code) == "no record of a finished run"


# ---------------------------------------------------------------- run


def counter(repo):
    file = repo["notebooks"] / "02_good.count"
    return len(file.read_text().splitlines()) if file.exists() else 0


def test_run_executes_all_reports_failures_and_resumes(repo, capsys):
    assert batch.run("smoke") == 1  # 01_broken fails, 02_good still runs after it
    runs = repo["runs"] / "smoke"
    assert sorted(p.name for p in runs.iterdir()) == ["01_broken.ipynb", "02_good.done.json",
                                                      "02_good.ipynb"]  # no record of a failure
    executed = nbformat.read(runs / "02_good.ipynb", as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "x = 2" in injected[0].source
    results = json.loads((repo["results"] / "smoke" / "02_good.json").read_text())
    assert results["parameters"]["x"] == 2 and counter(repo) == 1

    summary = (repo["results"] / "smoke" / "SUMMARY.md").read_text()
    assert "\n### table\n\n| a |\n|---|\n| 2 |" in summary.split("## 02_good\n_Ran in ")[1]
    failure = summary.split("## 01_broken\n")[1].split("\n")[0]
    assert failure.startswith("**Failed**: PapermillExecutionError")
    assert "broken on purpose" in failure and str(runs / "01_broken.ipynb") in failure
    assert str(runs / "01_broken.ipynb") in capsys.readouterr().err

    # same parameters: skipped (the notebook's counter does not move)
    assert batch.run("smoke", resume=True, only=["02"]) == 0
    assert counter(repo) == 1
    assert "skip 02_good.ipynb" in capsys.readouterr().out
    summary = (repo["results"] / "smoke" / "SUMMARY.md").read_text()
    assert "## 02_good\n_Ran in " in summary and "(an earlier run, resumed)" in summary
    assert NOT_RUN_01 in summary  # its failure left no results
    # a changed parameter: run again, and the summary follows
    write_profile(repo, "smoke", {"defaults": {"x": 3}})
    assert batch.run("smoke", resume=True, only=["02"]) == 0
    assert counter(repo) == 2
    summary = (repo["results"] / "smoke" / "SUMMARY.md").read_text()
    assert "| a |\n|---|\n| 3 |" in summary and NOT_RUN_01 in summary
    # --only with a profile that names a notebook left out: that notebook is not an error
    write_profile(repo, "smoke", {"defaults": {"x": 4}, "notebooks": {"01_broken": {}}})
    assert batch.run("smoke", resume=True, only=["02"]) == 0
    assert counter(repo) == 3


NOT_RUN_01 = ("## 01_broken\n"
              "_Not run yet: `python -m helpers.batch --profile smoke --only 01_broken`._\n\n")


def test_run_of_a_few_notebooks_keeps_the_whole_profile_in_the_summary(repo):
    """The summary of ``--only 01`` still shows 02 from its earlier results (it used to hold
    only the notebooks of the last run, overwriting the rest)."""
    assert batch.run("smoke", only=["02"]) == 0
    summary = (repo["results"] / "smoke" / "SUMMARY.md").read_text()
    assert summary.startswith("# Summary of the `smoke` profile\n\n" + NOT_RUN_01 + "## 02_good\n")
    assert batch.run("smoke", only=["01"]) == 1
    summary = (repo["results"] / "smoke" / "SUMMARY.md").read_text()
    assert summary.split("## 01_broken\n")[1].startswith("**Failed**: PapermillExecutionError")
    earlier = json.loads((repo["runs"] / "smoke" / "02_good.done.json").read_text())["seconds"]
    assert summary.split("## 02_good\n")[1] == (
        f"_Ran in {earlier:.0f} s (an earlier run, left out by --only)._\n\n"
        "### table\n\n| a |\n|---|\n| 2 |\n")


def test_only_prefix_matching_no_notebook_is_an_error_before_anything_runs(repo):
    with pytest.raises(SystemExit) as error:
        batch.main(["--profile", "smoke", "--only", "02", "07"])
    assert str(error.value) == ("--only 07 matches no notebook; give a prefix of one of: "
                                "01_broken, 02_good.")
    assert not repo["runs"].exists() and not repo["results"].exists() and counter(repo) == 0


def test_run_survives_an_exception_without_message(repo, monkeypatch, capsys):
    def crash(*args, **kwargs):
        raise RuntimeError()

    monkeypatch.setattr(papermill, "execute_notebook", crash)
    assert batch.run("smoke", processes=False) == 1  # workers in this process see the patch
    summary = (repo["results"] / "smoke" / "SUMMARY.md").read_text()
    assert summary.count("**Failed**: RuntimeError") == 2
    assert "(executed notebook: " + str(repo["runs"] / "smoke" / "02_good.ipynb") in summary


def test_run_in_parallel_shares_the_cores_and_reports_times(repo, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "unset by the test")
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(batch.os, "cpu_count", lambda: 4)
    write_profile(repo, "smoke", {"defaults": {"x": 5}, "jobs": 2})
    assert batch.run("smoke") == 1  # the profile's jobs: both notebooks at once
    results = json.loads((repo["results"] / "smoke" / "02_good.json").read_text())
    assert results["threads"] == "2"  # 4 cores shared by 2 kernels
    summary = (repo["results"] / "smoke" / "SUMMARY.md").read_text()
    ran = summary.split("## 02_good\n")[1].split("\n")[0]
    assert ran.startswith("_Ran in ") and ran.endswith(" s._")
    assert "**Failed**: PapermillExecutionError" in summary


def test_parallel_runs_start_the_longest_notebooks_first(repo):
    todo = [(nb, {}) for nb in notebooks(repo)]

    def order(minutes):
        return [nb.stem for nb, _ in batch.longest_first(todo, "smoke", minutes)]

    assert order({}) == ["01_broken", "02_good"]  # no estimate: name order
    assert order({"02_good": 3}) == ["02_good", "01_broken"]
    record = batch.record_file("smoke", todo[0][0])  # this machine's last run outranks it
    batch.record(record, {}, 400.0, {})
    assert order({"02_good": 3}) == ["01_broken", "02_good"]
    assert order({"02_good": 7}) == ["02_good", "01_broken"]


# ---------------------------------------------------------------- markdown


def test_markdown_table_exact():
    rows = [{"method": "memo", "acc": 0.81234, "n": 3},
            {"method": "tent", "note": None, "acc": float("nan")},
            {"method": "zero", "acc": 0.0025, "n": 0.0}]
    assert batch.markdown_table(rows) == (
        "| method | acc | n | note |\n"
        "|---|---|---|---|\n"
        "| memo | 0.812 | 3 | n/a |\n"
        "| tent | n/a | n/a | n/a |\n"
        "| zero | 0.0025 | 0.000 | n/a |")
    assert batch.markdown_table([]) == "_(no rows)_"


def test_sweep_spread_reports_values_that_are_not_finite_as_na():
    nan, inf = float("nan"), float("inf")
    assert batch.spread([0.5, 0.7, nan]) == "0.600 ± 0.141 (1 of 3 n/a)"
    assert batch.spread([0.5, inf]) == "0.500 (1 of 2 n/a)"
    assert batch.spread([nan, nan]) == "n/a"
    assert batch.spread([0.5, 0.7]) == "0.600 ± 0.141"
    assert batch.spread([3, 3]) == 3 and batch.spread(["a", nan]) == "a / nan"


def test_a_successful_smoke_run_prints_no_kernel_warning_or_interrupt(tmp_path, monkeypatch,
                                                                      capfd):
    """Notebook 05 at its smoke defaults through the runner (about a minute): the kernel
    talks over IPC sockets, which it removes, and is shut down without a SIGINT."""
    for attr in ("RESULTS", "RUNS", "FIGURES"):
        monkeypatch.setattr(paths, attr, tmp_path / attr.lower())
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where the workers' kernels put their sockets
    assert batch.run("smoke", only=["05"]) == 0
    printed = "".join(capfd.readouterr())
    assert "ok   05_transfer_cuts_clustering" in printed
    assert "without encryption" not in printed and "KeyboardInterrupt" not in printed
    assert not list(tmp_path.glob("tta-kernel-*"))  # removed at shutdown


def test_kernels_talk_over_ipc_sockets_named_per_kernel():
    made = [batch.quiet_kernel_manager()(kernel_name="python3") for _ in range(2)]
    assert [km.transport for km in made] == ["ipc", "ipc"] and made[0].ip != made[1].ip


def test_kernels_are_shut_down_without_an_interrupt(monkeypatch):
    import asyncio
    import signal

    from jupyter_client.manager import KernelManager

    sent = []
    send = KernelManager._async_signal_kernel

    async def recorded(km, signum):
        sent.append((signum, km.shutting_down))
        await send(km, signum)

    monkeypatch.setattr(KernelManager, "_async_signal_kernel", recorded)

    async def session():
        km = batch.quiet_kernel_manager()(kernel_name="python3")
        await km.start_kernel()
        client = km.client()
        client.start_channels()
        await client.wait_for_ready(timeout=60)
        client.stop_channels()
        await km.interrupt_kernel()  # asked for: sent
        await km.shutdown_kernel()  # jupyter_client's own sends SIGINT first; this one does not
        return await km.is_alive()

    assert asyncio.run(session()) is False
    assert sent == [(signal.SIGINT, False)]
