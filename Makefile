# The two commands a newcomer types: `make report` and `make test`. Both install first when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
REPRO := $(VENV)/bin/repro
STAMP := $(VENV)/.installed
TORCH_PAIR := torch==2.14.1 torchvision==0.29.1
PROFILE ?= toy
STORE ?= build/$(PROFILE).zarr
REPORT_DIR ?= build/report
# Passive OpenMP waiting: spinning threads stall on a busy 2-core machine (speed only, not results).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install test report clean benchmarks

install: $(STAMP)

# Re-install when the project's requirements change (the stamp is older than pyproject.toml).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PAIR)
	$(PY) -m pip install --quiet -e '.[dev]' $(TORCH_PAIR)
	touch $(STAMP)

# Two test processes, a test file each at a time (its module fixtures built once): the tests run one torch
# thread each, so two keep both cores busy (24 min -> 11 min on 2 cores).
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

report: $(STAMP)
	$(REPRO) pipeline --profile $(PROFILE) --store $(STORE)
	$(REPRO) report --store $(STORE) --out $(REPORT_DIR)

benchmarks: $(STAMP)
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf build
