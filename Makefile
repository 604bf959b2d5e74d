# Two commands set everything up on a fresh machine with Python >= 3.11:
#   make demo   -- simulate a small cohort, run the whole study, write the report
#   make test   -- install with test extras, lint, and run the whole test suite
#   make test-fast -- the tests not marked slow (under a minute; ANTs, Dask clusters, simulated cohorts, real
#                     processes, the real subject and the input fuzzing are slow)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test test-fast lint install clean bench browser slurm

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[test]"
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/ferritin demo

# The report is checked in a real headless browser.  Chromium comes from the
# distribution's packages where we may install them (root with apt-get, as in
# CI); elsewhere that one test is skipped with the reason.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "chromium not installed: the browser check of the report will be skipped"

# A real single-node Slurm (slurmctld + slurmd on localhost, munge) for the HPC test; the test
# configures and starts a throw-away cluster itself.  Installed where we may, as Chromium is.
slurm:
	@command -v slurmctld >/dev/null 2>&1 && command -v munged >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null; } || \
	  echo "slurm-wlm/munge not installed: the Slurm end-to-end test will be skipped"

lint: install
	$(BIN)/ruff check .

# Test modules run on TEST_WORKERS processes, a module's tests together (their fixtures are shared
# within a module); most slow tests are single-threaded registrations.
TEST_WORKERS ?= 2

test: install browser slurm lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: install
	$(BIN)/python benchmarks/simulate.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
