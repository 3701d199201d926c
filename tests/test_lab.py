"""JupyterLab as a course user opens it: the command `make lab` runs serves the notebooks, and
headless Chromium (Debian's ``chromium``, driven by Playwright) opens notebook 05, runs every
cell from the Run menu, and sees no error, the findings table and the figures; the ``.py``
source double-clicked in the file browser opens as a notebook with the same cells (the
repository's default-viewer setting); ``tqdm.auto`` draws widget progress bars.

The server is rooted at a copy of the notebooks in the test's folder, so that nothing the UI
saves lands in the repository; each test leaves a screenshot there (``lab.png``)."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
NOTEBOOK = "05_transfer_cuts_clustering"
TOKEN = "tta-lab-test"
ACTIVE = ".jp-NotebookPanel:not(.lm-mod-hidden)"

pytestmark = pytest.mark.slow


def make_lab_command(root_dir: Path, port: int) -> str:
    """The shell command of the Makefile's ``lab`` target, with this venv's ``jupyter``, the
    server rooted at ``root_dir`` and the test's own options (port, token, no browser)."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^lab: setup\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe, "the Makefile has no `lab: setup` target"
    command = recipe.group(1).replace("\\\n", " ").replace("\t", " ")
    root_option = '--ServerApp.root_dir="$(CURDIR)"'
    assert root_option in command, f"`make lab` no longer passes {root_option}"
    options = (f"--no-browser --ip=127.0.0.1 --port={port} --IdentityProvider.token={TOKEN} "
               "--LabApp.expose_app_in_browser=True")
    return (command.replace(root_option, f'--ServerApp.root_dir="{root_dir}"')
            .replace("$(VENV)/bin/jupyter", str(Path(sys.executable).parent / "jupyter"))
            .replace("$(CURDIR)", str(ROOT)).replace("$(LAB_ARGS)", options)
            .replace("$$", "$"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_server(url: str, server: subprocess.Popen, log: Path, seconds: float = 120):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"JupyterLab exited ({server.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"JupyterLab did not answer within {seconds:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server started by `make lab`'s command; its URL and root folder. Its user
    settings, workspaces, runtime files and the notebooks' results and figures live in the
    test's folder (none of the user's settings apply, the study runs afresh, nothing is
    written to the home folder or results/); cells are all rendered (windowing off) so
    that the page shows every output."""
    pytest.importorskip("jupyterlab", reason="JupyterLab is in requirements.txt")
    home = tmp_path_factory.mktemp("lab")
    root = home / "root"
    (root / "notebooks").mkdir(parents=True)
    for name in (f"{NOTEBOOK}.ipynb", f"{NOTEBOOK}.py", "jupytext.toml"):
        shutil.copy(ROOT / "notebooks" / name, root / "notebooks" / name)
    tracker = home / "user-settings" / "@jupyterlab" / "notebook-extension"
    tracker.mkdir(parents=True)
    (tracker / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(home / "user-settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "TTA_RESULTS": str(home / "results"), "TTA_FIGURES": str(home / "figures")}
    env.pop("TTA_PROGRESS", None)
    port, log = free_port(), home / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen(["bash", "-c", "exec " + make_lab_command(root, port)],
                                  env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(url, server, log)
        yield url, root
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # shuts its kernels down
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


@pytest.fixture
def page(tmp_path):
    """A page of headless Chromium with a fresh profile in the test's folder; a screenshot
    of it is saved as ``lab.png`` there whatever the outcome."""
    if not CHROMIUM.exists():
        pytest.skip(f"no browser: {CHROMIUM} is missing (Debian: apt-get install chromium; "
                    ".ci/run installs it when run as root)")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="Playwright (requirements.txt) drives the browser")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1400, "height": 1000})
        page = browser.pages[0] if browser.pages else browser.new_page()
        page.set_default_timeout(60_000)
        try:
            yield page
        finally:
            page.screenshot(path=str(tmp_path / "lab.png"), full_page=True)
            print(f"screenshot: {tmp_path / 'lab.png'}")
            browser.close()


def open_notebook(page, url: str, path: str):
    """Open ``path`` in JupyterLab and wait for its notebook's kernel to be idle."""
    page.goto(f"{url}/lab/tree/{path}?token={TOKEN}")
    page.wait_for_function(
        "() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
        f" return w && w.context && w.context.path === '{path}' && w.context.isReady; }}")
    wait_idle(page)


def wait_idle(page, seconds: float = 60):
    page.wait_for_function(
        "() => { const w = window.jupyterapp.shell.currentWidget;"
        " const k = w && w.sessionContext && w.sessionContext.session"
        " && w.sessionContext.session.kernel; return k && k.status === 'idle'; }",
        timeout=seconds * 1000)


def run_all_cells(page, seconds: float = 150):
    """Run > Run All Cells, then wait until every code cell ran (a number in its prompt) or,
    none waiting or running, one shows an error (Jupyter cancels the cells after it), and
    the kernel is idle."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator('.lm-Menu-itemLabel:text-is("Run All Cells")').click()
    page.wait_for_function(
        f"() => {{ const p = [...document.querySelectorAll('{ACTIVE} .jp-CodeCell"
        " .jp-InputArea-prompt')].map(e => e.textContent);"
        " if (!p.length || p.some(t => t.includes('*'))) return false;"
        " return p.every(t => /\\[\\d+\\]/.test(t)) || document.querySelector("
        f"\"{ACTIVE} [data-mime-type='application/vnd.jupyter.stderr']\") !== null; }}",
        timeout=seconds * 1000)
    wait_idle(page)


def shown_errors(page) -> list[str]:
    """The text of every error the active notebook shows (tracebacks, a kernel's error)."""
    texts = page.locator(f"{ACTIVE} [data-mime-type='application/vnd.jupyter.stderr']")
    return [text for text in texts.all_inner_texts()
            if "Traceback (most recent call last)" in text or "Cell In[" in text
            or re.search(r"^\w*(Error|Exception)\b", text, re.MULTILINE)]


def model_cells(page) -> list[tuple[str, str]]:
    """The active notebook's cells as JupyterLab loaded them: (type, source) pairs."""
    return [tuple(cell) for cell in page.evaluate(
        "() => { const cells = window.jupyterapp.shell.currentWidget.content.model.cells;"
        " const out = []; for (let i = 0; i < cells.length; i++) {"
        " const c = cells.get(i); out.push([c.type, c.sharedModel.getSource()]); }"
        " return out; }")]


def test_notebook_05_runs_in_jupyterlab_and_its_py_opens_as_the_same_notebook(lab, page,
                                                                              tmp_path):
    url, root = lab
    open_notebook(page, url, f"notebooks/{NOTEBOOK}.ipynb")
    cells = model_cells(page)
    expected = [(c.cell_type, c.source) for c in
                nbformat.read(root / "notebooks" / f"{NOTEBOOK}.ipynb", as_version=4).cells]
    assert cells == expected
    run_all_cells(page)

    assert shown_errors(page) == []
    prompts = page.locator(f"{ACTIVE} .jp-CodeCell .jp-InputArea-prompt").all_inner_texts()
    assert all(re.fullmatch(r"\[\d+\]:", p.strip()) for p in prompts), prompts
    findings = page.locator(f"{ACTIVE} .jp-Cell", has_text="run.show_findings(")
    assert findings.locator(".jp-OutputArea table").count() >= 1  # the scores table
    assert "beats the baseline" in findings.locator(".jp-OutputArea").inner_text()
    figures = page.locator(f"{ACTIVE} .jp-OutputArea .jp-RenderedImage img")
    assert figures.count() >= 1
    assert figures.first.evaluate("img => img.naturalWidth") > 100
    findings.scroll_into_view_if_needed()
    page.screenshot(path=str(tmp_path / "05-run.png"))

    # The source, double-clicked in the file browser (showing notebooks/, the open notebook's
    # folder), opens as a notebook with the same cells.
    page.locator(".jp-DirListing-itemText",
                 has_text=re.compile(rf"^{re.escape(NOTEBOOK)}\.py$")).dblclick()
    page.wait_for_function(
        "() => { const w = window.jupyterapp.shell.currentWidget;"
        f" return w && w.context && w.context.path.endsWith('{NOTEBOOK}.py')"
        " && w.context.isReady; }")
    kind = page.evaluate("() => window.jupyterapp.shell.currentWidget.node.className")
    assert "jp-NotebookPanel" in kind, f"the .py opened in a {kind}, not as a notebook"
    page.wait_for_selector(f"{ACTIVE} .jp-Cell")
    assert model_cells(page) == cells
    assert page.locator(f"{ACTIVE} .jp-Cell").count() == len(cells)


def test_tqdm_auto_draws_a_widget_progress_bar_in_jupyterlab(lab, page):
    url, root = lab
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import helpers\nfrom tqdm.auto import tqdm\nfor _ in tqdm(range(5), desc='bar'):\n"
        "    pass")])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    nbformat.write(notebook, root / "bar.ipynb")
    open_notebook(page, url, "bar.ipynb")
    run_all_cells(page)
    output = page.locator(f"{ACTIVE} .jp-OutputArea-output")
    assert output.count() == 1  # the widget alone: no text bar, no IProgress warning
    assert output.locator(".widget-hprogress").count() == 1  # tqdm.notebook's FloatProgress
    assert re.search(r"bar:\s100%", output.inner_text())  # tqdm pads with figure spaces
