# Each target creates .venv and installs what it needs when missing, from the lock: requirements/
# holds every package at the version uv.lock pins (exported by `make lock`), so pip installs them
# as listed and never searches (--no-deps); `pip check` then proves the set complete.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUNTIME := $(VENV)/.runtime-installed
TESTING := $(VENV)/.test-installed
# uv's export, without hashes: pip may take a release from a local wheel folder (find-links)
EXPORT := export --frozen --no-hashes --no-emit-project --format requirements-txt

# Label Studio for the tests that push to a real server: its own environment, its pins are its own.
LABEL_STUDIO := .venv-label-studio/bin/label-studio
LABEL_STUDIO_RELEASE := label-studio==1.23.2

.PHONY: demo test lint lock lock-check bench install

$(RUNTIME): pyproject.toml requirements/runtime.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing san-labeler's locked dependencies into $(VENV) (PyTorch included: several GB, a few minutes the first time)"
	$(PY) -m pip install --progress-bar on --no-deps -r requirements/runtime.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m pip check
	touch $@

$(TESTING): $(RUNTIME) requirements/test.txt
	$(PY) -m pip install --progress-bar on --no-deps -r requirements/test.txt
	$(PY) -m pip check
	touch $@

install: $(RUNTIME)

$(LABEL_STUDIO):
	test -x .venv-label-studio/bin/python || $(PYTHON) -m venv .venv-label-studio
	.venv-label-studio/bin/python -m pip install --quiet '$(LABEL_STUDIO_RELEASE)'

demo: $(RUNTIME)
	$(VENV)/bin/san demo

# The lock and its exports agree with pyproject.toml (uv reads no network for this).
lock-check: $(TESTING)
	$(VENV)/bin/uv lock --check --offline
	$(VENV)/bin/uv $(EXPORT) | diff -I '^#' - requirements/runtime.txt
	$(VENV)/bin/uv $(EXPORT) --extra test | diff -I '^#' - requirements/test.txt

# After changing pyproject.toml's dependencies: resolve again and export.
lock:
	uv lock
	uv $(EXPORT) -o requirements/runtime.txt
	uv $(EXPORT) --extra test -o requirements/test.txt

lint: $(TESTING)
	$(VENV)/bin/ruff check --no-cache .
	$(VENV)/bin/ruff format --no-cache --check .

# pytest exits 5 when it collects nothing: that is a broken suite, never a pass.
test: lint lock-check $(LABEL_STUDIO)
	$(PY) -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

# One table: the job path against the release before the speed work, measured in the same run.
bench: $(TESTING)
	$(PY) benchmarks/job_path.py
