# vaelab: `make train` and `make test` create .venv and install on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Datasets: ./data, the configs' default (paths.data_dir; VAELAB_DATA_DIR overrides it). Where a
# data folder sits beside the checkout (../shared/data), `make install` links ./data to it, so a
# fresh shell finds it too.
SHARED_DATA ?= ../shared/data
ARGS ?=
# make test: pytest-xdist worker processes (each test runs on one thread; 0 = in this process).
TEST_WORKERS ?= 2

.PHONY: install data train test test-all lint format bench docs clean help

help:
	@echo "make train  - train the default experiment (VAE, dynamically binarized MNIST); ARGS='k=v ...'"
	@echo "make test   - run the test suite on TEST_WORKERS=2 processes (slow tests excluded; make test-all for everything)"
	@echo "make lint   - ruff check + format check"
	@echo "make bench  - benchmarks/epoch_speed.py (vaelab vs a hand-written PyTorch loop)"
	@echo "make docs   - build the documentation site (mkdocs, --strict) into site/"
	@echo "make install- create $(VENV), install vaelab with its dev extras, link ./data (see data)"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 > /dev/null
	touch $(STAMP)

install: $(STAMP) data

# ./data -> $(SHARED_DATA) when that folder exists and ./data does not (data/ is git-ignored).
data:
	@if [ ! -e data ] && [ ! -L data ] && [ -d $(SHARED_DATA) ]; then \
		ln -s $(SHARED_DATA) data && echo "data -> $(SHARED_DATA)"; fi

train: $(STAMP) data
	$(BIN)/vaelab-train $(ARGS)

test: $(STAMP) data
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal $(ARGS)

test-all: $(STAMP) data
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal -m "" $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks scripts
	$(BIN)/ruff check --fix src tests benchmarks scripts

bench: $(STAMP)
	$(BIN)/python benchmarks/epoch_speed.py $(ARGS)

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) logs site .pytest_cache .ruff_cache
