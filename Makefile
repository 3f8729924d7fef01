# One command to set up and run each main job on a fresh machine (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.rose_hf_installed

.PHONY: install test test-fast demo bench-speed bench-quality lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# Pinned: a local CPU build; an unpinned torch pulls several GB of CUDA packages.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev,deepspeed,qlora]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 DS_ACCELERATOR=cpu $(BIN)/python -m pytest -q -ra tests

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -ra -m "not slow and not distributed" tests

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/rose-hf demo --output_dir outputs/demo

bench-speed: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/rose-hf bench speed --output_dir outputs/bench_speed

bench-quality: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/rose-hf bench quality --output_dir outputs/bench_quality

lint: $(STAMP)
	$(BIN)/ruff check rose_hf tests examples

clean:
	rm -rf outputs .pytest_cache
