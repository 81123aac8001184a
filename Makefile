# vaelab: `make train` and `make test` create .venv and install on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Real MNIST: ../shared/data when present (this project's machines), else ./data.
VAELAB_DATA_DIR ?= $(if $(wildcard ../shared/data/MNIST/raw),$(abspath ../shared/data),$(CURDIR)/data)
export VAELAB_DATA_DIR
ARGS ?=
# make test: pytest-xdist worker processes (each test runs on one thread; 0 = in this process).
TEST_WORKERS ?= 2

.PHONY: install train test test-all lint format bench clean help

help:
	@echo "make train  - train the default experiment (VAE, dynamically binarized MNIST); ARGS='k=v ...'"
	@echo "make test   - run the test suite on TEST_WORKERS=2 processes (slow tests excluded; make test-all for everything)"
	@echo "make lint   - ruff check + format check"
	@echo "make bench  - benchmarks/epoch_speed.py (vaelab vs a hand-written PyTorch loop)"
	@echo "make install- create $(VENV) and install vaelab with its dev extras"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 > /dev/null
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(BIN)/vaelab-train $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal $(ARGS)

test-all: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal -m "" $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks scripts
	$(BIN)/ruff check --fix src tests benchmarks scripts

bench: $(STAMP)
	$(BIN)/python benchmarks/epoch_speed.py $(ARGS)

clean:
	rm -rf $(VENV) logs .pytest_cache .ruff_cache
