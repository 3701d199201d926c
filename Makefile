# The two commands: `make report` (the main job) and `make test`. Both set themselves up.
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= offline

.PHONY: setup data report readme notebooks lab test benchmark lint clean

setup: $(VENV)/.installed data

$(VENV)/.installed: requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -e .
	touch $@

# FashionMNIST from Debian's package where we may install it, else downloaded by torchvision.
data: $(VENV)/.installed
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && [ ! -d data/fashion-mnist ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	  else \
	    $(PY) -c "from helpers.data import fashion_mnist as f; f('train', download=True); f('test', download=True)"; \
	  fi; \
	fi

# The stand-ins the profile uses, trained first (one per core: beside a notebook they train
# at half speed), then the batch, then the published report (report/, the README block) from
# what finished, even when a notebook failed (the exit status is the batch's).
report: setup
	$(PY) -m helpers.standins --prepare --profile $(PROFILE)
	$(PY) -m helpers.batch --profile $(PROFILE) --resume; status=$$?; \
	$(PY) -m helpers.report --profile $(PROFILE) && exit $$status

# The README's results block again, from the committed report/.
readme: setup
	$(PY) -m helpers.report --readme

# After editing a notebook (either file of the pair): sync the pair, run it at its defaults
# and keep the outputs nbval checks.
notebooks: setup
	$(VENV)/bin/jupytext --sync notebooks/[0-9]*.py
	$(PY) tools/checked_outputs.py

# JupyterLab at the repository, opened on notebooks/, this venv's Python as the kernel; the
# repository's settings (.jupyter/lab/settings) open the .py sources as notebooks. More
# options through LAB_ARGS, e.g. make lab LAB_ARGS="--no-browser --port=8890"; as root (a
# container) it allows root, which JupyterLab otherwise refuses.
LAB_ARGS ?=
lab: setup
	$(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)" \
	  --LabApp.app_settings_dir="$(CURDIR)/.jupyter/lab/settings" \
	  --LabApp.default_url=/lab/tree/notebooks \
	  $$([ "$$(id -u)" = 0 ] && echo --allow-root) $(LAB_ARGS)

test: setup
	$(PY) -m pytest

# Every benchmark in turn (minutes each); each prints ratios against its own baseline.
benchmark: setup
	for script in $(filter-out benchmarks/timing.py,$(wildcard benchmarks/*.py)); do echo "== $$script"; $(PY) $$script || exit 1; done

lint: setup
	$(VENV)/bin/ruff check helpers tests benchmarks tools notebooks

clean:
	rm -rf runs results/smoke figures/smoke .pytest_cache
