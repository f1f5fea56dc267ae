# cedanafs: `make demo` and `make test` set everything up first (as root) and are idempotent.
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

PREFIX ?= /usr/local
INSTALL_VENV ?= /opt/cedanafs
SYSTEMD_DIR ?= /etc/systemd/system
MAN_DIR ?= build/man

.PHONY: setup demo test test-fast bench bench-smoke lint clean distclean docs man install

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

# docs/commands.md, docs/config.md, docs/exit-codes.md from the help and the settings (tests check them).
docs: setup
	@$(PY) -m cedanafs.cli.docgen

# One man page per command, from the help (click-man): `man -l build/man/cedana-attach.1`.
man: setup
	@$(PY) -m cedanafs.cli.docgen --man $(MAN_DIR)

# cedana for every user: a world-readable virtualenv in INSTALL_VENV, $(PREFIX)/bin/cedana (where
# contrib/cedana.service runs it), the unit in SYSTEMD_DIR, man pages in $(PREFIX)/share/man/man1.
install: setup
	@INSTALL_VENV=$(INSTALL_VENV) PREFIX=$(PREFIX) SYSTEMD_DIR=$(SYSTEMD_DIR) VENV=$(VENV) bash scripts/install.sh

clean:
	rm -rf $(VENV) build *.egg-info cedanafs.egg-info .pytest_cache bench/results
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# Also forget the CRIU build, so the next setup rebuilds it from source.
distclean: clean
	rm -rf /var/cache/cedanafs
