# The two commands: `make run` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint test-faults install clean chromium postgresql record-histories bench

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

# The Temporal dev server with its UI, the worker, the web app, local mail and SMS stand-ins.
run: $(STAMP)
	$(PY) -m starter.devstack

# Debian's Chromium for the browser tests (Playwright drives it; it never downloads a browser).
chromium:
	test -x /usr/bin/chromium || (apt-get update && apt-get install -y --no-install-recommends chromium)

# Debian's PostgreSQL for the ledger's tests: a fixture runs its binaries (initdb, pg_ctl) on
# loopback in a temporary directory; the package's own cluster is not used.
postgresql:
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || (apt-get update && apt-get install -y --no-install-recommends postgresql)

# The linters first (seconds), then everything but the slow fault tests (marker faults_full);
# the quick fault tests are included.
test: $(STAMP) chromium postgresql lint
	$(PY) -m pytest -m "not faults_full" $(PYTEST_ARGS)

# ruff (rules in pyproject.toml), mypy on the production packages, import-linter's contracts.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# The whole fault-injection suite (tests/faults/): worker SIGKILLs, the dev server restarted,
# SMTP and Twilio outages, a bad number, the web app restarted mid-webhook. Figures are printed.
test-faults: $(STAMP)
	$(PY) -m pytest -m faults -s $(PYTEST_ARGS) tests/faults

# Re-record tests/replay/histories/*.json (one history per lifecycle path, time-skipping server);
# commit them with the workflow change they go with. See the README, "Changing the workflow".
record-histories: $(STAMP)
	$(PY) -m tests.replay.record $(HISTORIES)
	$(if $(HISTORIES),,$(PY) -m tests.replay.record_erasure)

# Benchmarks against bare Temporal on a loopback dev server: one table (bench/RESULTS.md).
# BENCH_ARGS="--with-suite" also times the test suite; --quick is a smoke run; see --help.
bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
