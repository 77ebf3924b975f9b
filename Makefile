# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the tests).
# Both create .venv with pip; nothing is installed outside it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench bench-gpu clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# One thread per job: two trainings side by side finished 11% sooner on 2 cores than one after
# the other with 2 threads each (2026-11-26), and the flower features' training then runs beside
# the first network's instead of before all of them.
demo: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores all --configfile config/demo.yaml \
		--set-threads preprocess=1 inception_weights=1 reference_stats=1 train=1 progress=1 sample=1 evaluate=1
	@echo "Done: open results/demo/report.html (the same table as CSV: results/demo/summary.csv)"

# Tests run side by side, one more than there are cores: most of their time is one-core
# subprocess chains, and a third test on 2 cores uses the time that the others spend waiting on
# Snakemake, DVC and SLURM (the suite took 492 s instead of 512 s with two, each run once with
# a cold torch.compile cache; 2-core VM, 2026-12-03).
TEST_WORKERS ?= $(shell echo $$(( $$(nproc) + 1 )))
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/run_all.py

# On a CUDA machine: training, sampling and Inception speed (benchmarks/bench_gpu.py).
bench-gpu: $(STAMP)
	$(BIN)/python benchmarks/bench_gpu.py

lint: $(STAMP)
	$(BIN)/ruff check ddpm tests benchmarks
	$(BIN)/ruff format --check ddpm tests benchmarks
	$(BIN)/snakefmt --check Snakefile workflow

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
