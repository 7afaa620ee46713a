# Set-up and entry points. Every target creates .venv and installs what it needs.
# TORCH_SPEC pins the CPU build that the local wheel cache holds; override it
# (e.g. `make test TORCH_SPEC=torch`) to take another build.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: serve test bench clean browser docs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# One stamp per extra, rebuilt when pyproject.toml changes.
$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[$*]"
	touch $@

serve: $(VENV)/.installed-serve
	$(BIN)/mcdropout serve

# The browser tests drive Debian's chromium through its chromedriver (root on CI; installed once).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; }

# The alert rules' tests run Debian's promtool (package prometheus; installed once).
.PHONY: promtool
promtool:
	@command -v promtool >/dev/null || \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus; }

test: $(VENV)/.installed-dev browser promtool
	$(BIN)/python -m pytest

# The documentation site (mkdocs.yml, docs/) on http://127.0.0.1:8008, rebuilt as pages change.
docs: $(VENV)/.installed-docs
	$(BIN)/mkdocs serve

bench: $(VENV)/.installed-bench
	$(BIN)/python bench/engine.py

clean:
	rm -rf $(VENV) build *.egg-info
