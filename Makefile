# Developer entry points. `make dev` runs the whole stack locally; `make test` is what CI runs.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: venv dev test lint

venv: $(STAMP)

# Reinstall only when .venv is missing or pyproject.toml changed since the last install.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -e '.[dev]'
	touch $@

dev: venv
	$(VENV)/bin/crm-pulse dev

test: venv
	$(VENV)/bin/ruff check .
	mkdir -p test-artifacts
	$(VENV)/bin/pip-audit --progress-spinner off --skip-editable -f json -o test-artifacts/pip-audit.json
	@$(VENV)/bin/python -c "import json; d = json.load(open('test-artifacts/pip-audit.json'))['dependencies']; \
	  s = sum('skip_reason' in x for x in d); \
	  print(f'pip-audit: {len(d) - s} of {len(d)} packages audited, {s} skipped (no vulnerability data reachable from here)')"
	$(VENV)/bin/python -m pytest -q

lint: venv
	$(VENV)/bin/ruff check .
