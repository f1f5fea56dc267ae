# cedanafs: `make demo` and `make test` set everything up first (as root) and are idempotent.
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast bench bench-smoke lint clean distclean

setup:
	@VENV=$(VENV) bash scripts/setup.sh

demo: setup
	@VENV=$(VENV) bash scripts/demo.sh

test: setup
	@$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory bench-smoke

test-fast: setup
	@$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: setup
	@$(PY) bench/run.py $(BENCH_ARGS)

bench-smoke: setup
	@$(PY) bench/run.py --smoke $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info cedanafs.egg-info .pytest_cache bench/results
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# Also forget the CRIU build, so the next setup rebuilds it from source.
distclean: clean
	rm -rf /var/cache/cedanafs
