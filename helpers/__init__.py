"""Helpers for the test-time adaptation notebooks: every line of real logic lives here.

Modules, one per concept: ``docs/architecture.md`` lists them.
"""

import warnings

__version__ = "0.1.0"

# Without ipywidgets (a papermill kernel, a bare Jupyter) tqdm.auto draws text progress bars
# instead of widgets, and says so in a warning naming its own site-packages path: noise in
# every published notebook, asking for nothing the notebooks need.
warnings.filterwarnings("ignore", message="IProgress not found", module=r"tqdm\.")
