# Each target creates .venv and installs the project (with its test extra) when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Ray pinned to the floor pyproject.toml declares, so that the floor is what the tests run on.
FLOOR := .ci/ray-floor.txt

.PHONY: demo test lint bench install

$(STAMP): pyproject.toml $(FLOOR)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@echo "installing san-labeler and its dependencies into $(VENV) (PyTorch included: several GB, a few minutes the first time)"
	# one pip command for everything: moto[server] installed alone pulls a botocore s3fs rejects
	$(PY) -m pip install --progress-bar on -e '.[test]' -c $(FLOOR)
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/san demo

lint: $(STAMP)
	$(VENV)/bin/ruff check --no-cache .
	$(VENV)/bin/ruff format --no-cache --check .

# pytest exits 5 when it collects nothing: that is a broken suite, never a pass.
test: lint
	$(PY) -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

# One table: the job path against the release before the speed work, measured in the same run.
bench: $(STAMP)
	$(PY) benchmarks/job_path.py
