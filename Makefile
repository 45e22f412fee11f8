# Two commands do all set-up on a fresh machine:
#   make demo   build the virtual environment, then run the offline demo
#   make test   build the virtual environment (and headless Chromium), then run the tests
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.entitwist-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv demo test typecheck lint format bench browser clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# the exact torch and torchvision this project is tested with (the package itself needs
	# only torch >= 2.4): constraints.txt pins them together
	$(PY) -m pip install --quiet -c constraints.txt torch torchvision
	$(PY) -m pip install --quiet -c constraints.txt -e ".[all,dev]"
	touch $(STAMP)

browser:
	bash scripts/install_chromium.sh

demo: $(STAMP)
	$(VENV)/bin/entitwist demo $(DEMO_ARGS)

test: $(STAMP) browser typecheck
	$(PY) -m pytest -q $(PYTEST_ARGS)

typecheck: $(STAMP)
	$(PY) -m mypy

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .mypy_cache
