# `make serve` runs Tally; `make test` runs every check. Both set up what they
# need on a fresh Debian machine (Python 3.11, root): the venv, the packages,
# and the real KISSmetrics client libraries used by the compatibility tests.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: serve test lint compat faults chromium screenshots bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || \
	  (apt-get update -qq && apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV))
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

serve: $(STAMP)
	$(BIN)/tally serve

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

compat:
	bash tests/compat/install.sh

# The fault tests (tests/test_faults_disk.py) mount small file systems and
# inject failures with strace and chattr.
faults:
	@command -v strace >/dev/null && command -v chattr >/dev/null && command -v mkfs.ext4 >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq strace e2fsprogs)

# The dashboard's browser tests (tests/test_dashboard.py) drive Debian's
# Chromium through Playwright; never `playwright install` (no browser CDN).
chromium:
	@test -x /usr/bin/chromium || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

test: $(STAMP) compat faults chromium lint
	$(BIN)/pytest

# Every page of the browser tests' demo shop, as docs/screenshots/*.png.
screenshots: $(STAMP) chromium
	$(BIN)/python docs/screenshots.py

bench: $(STAMP)
	bash bench/install.sh
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) .compat tests/compat/node/node_modules .pytest_cache .mypy_cache .ruff_cache
