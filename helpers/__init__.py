"""Helpers for the test-time adaptation notebooks: every line of real logic lives here.

Modules, one per concept: ``docs/architecture.md`` lists them.
"""

from . import progress

__version__ = "0.1.0"

# Before any module of the package imports tqdm.auto: widget bars in JupyterLab and Colab,
# text bars in papermill and nbval kernels (helpers/progress.py says why).
if not progress.widgets_render():
    progress.use_text_bars()
