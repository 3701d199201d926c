"""Progress bars: widgets where a frontend draws them, text everywhere else.

The package's modules draw their bars with ``tqdm.auto``. In a kernel that JupyterLab or
Jupyter Notebook started (jupyter_server sets ``JPY_SESSION_NAME`` in its kernels'
environment), in Colab and in VS Code those are ipywidgets bars. In papermill and nbval
kernels nothing renders widgets, and an executed notebook would keep each bar as widget JSON
(raw or blank in the published report) instead of the text lines ``helpers.report`` strips:
there ``use_text_bars`` points ``tqdm.auto`` at the text bar. ``TTA_PROGRESS=text`` or
``TTA_PROGRESS=widgets`` decides instead (the batch runner sets ``text`` for its kernels).
"""

from __future__ import annotations

import os
import sys
import warnings

CHOICES = ("auto", "text", "widgets")


def widgets_render(environ=os.environ) -> bool:
    """Whether progress bars should be widgets: ``TTA_PROGRESS`` when it says ``text`` or
    ``widgets``, else whether a frontend that renders widgets started this kernel."""
    choice = environ.get("TTA_PROGRESS", "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        raise ValueError(f"TTA_PROGRESS={environ['TTA_PROGRESS']!r}: expected one of "
                         f"{', '.join(CHOICES)} (or unset, which is auto).")
    if choice != "auto":
        return choice == "widgets"
    return bool(environ.get("JPY_SESSION_NAME") or environ.get("VSCODE_PID")
                or "google.colab" in sys.modules)


def use_text_bars() -> None:
    """Make ``tqdm.auto.tqdm`` (and ``trange``, which calls it) the text bar with the same
    interface (``tqdm.asyncio.tqdm``). Importing ``tqdm.auto`` in a kernel without ipywidgets
    warns "IProgress not found": moot here, where text is what is asked for."""
    from tqdm.asyncio import tqdm as text_tqdm

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found")
        import tqdm.auto
    tqdm.auto.tqdm = text_tqdm
