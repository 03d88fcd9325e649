# Quick start: `make run` (the main job) and `make test` (the test suite).
# Both create .venv on first use and reuse it afterwards.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: install run test ui bench data browser demo serve

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

# Fashion-MNIST: Debian's package offline; elsewhere torchvision downloads it at run time.
data:
	@if [ ! -d $(FMNIST) ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) \
		|| echo "dataset-fashion-mnist not installed; torchvision will download Fashion-MNIST"; \
	fi

# Headless Chromium for the page test (Debian packages; skipped where apt or root is missing).
browser:
	@if ! command -v chromedriver >/dev/null && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && apt-get install -y -qq chromium chromium-driver) \
		|| echo "chromium not installed; the browser test will be skipped"; \
	fi

run: install data
	$(PY) -m harness

test: install browser
	$(PY) -m pytest -q --durations=25   # the slowest tests, printed: CI aims at under 20 minutes

ui: install
	$(PY) -m mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db

demo: install
	$(PY) demo.py

# REST API of the champion on 127.0.0.1:5001 (the venv's bin on PATH: mlflow starts uvicorn from it).
serve: install
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH MLFLOW_TRACKING_URI=sqlite:///$(CURDIR)/mlruns/mlflow.db \
		$(VENV)/bin/mlflow models serve -m models:/fashion-visual-search@champion --env-manager local -h 127.0.0.1 -p 5001

bench: install
	$(PY) experiments/bench.py
