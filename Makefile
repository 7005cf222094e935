# Set-up is part of every target: a fresh machine needs only python3 (>= 3.10) and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU build by default; on a GPU machine install your CUDA torch into $(VENV) first.
TORCH  ?= torch==2.13.0

.PHONY: demo test bench bench-large lint

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

demo: $(BIN)/.installed  ## the main job end to end on the embedded default data (~5 min on 2 cores, installs included)
	$(BIN)/python scripts/generate_zoo.py experiment=zoo/demo
	$(BIN)/python scripts/canonicalize_zoo.py parent=$(CURDIR)/zoos/digits-demo transform.kind=merge_many
	$(BIN)/python scripts/train_autoencoder.py experiment=autoencoder/demo trainer.enable_progress_bar=false

test: $(BIN)/.installed  ## the whole test suite (slow tests included)
	$(BIN)/python -m pytest -q

bench: $(BIN)/.installed  ## speed and symmetry measurements against the usual ways (minutes)
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/bench_zoo.py
	$(BIN)/python benchmarks/bench_activations.py
	$(BIN)/python benchmarks/bench_symmetry.py
	$(BIN)/python benchmarks/bench_merge.py

bench-large: $(BIN)/.installed  ## peak memory of an autoencoder epoch over zoos of 10k-100k members (~3 min, ~1.5 GB of disk)
	$(BIN)/python benchmarks/bench_large_zoo.py

lint: $(BIN)/.installed
	$(BIN)/ruff check src scripts tests benchmarks
	$(BIN)/ruff format --check src scripts tests benchmarks
