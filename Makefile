# `make test` and `make demo` set everything up on a fresh machine.
# GPU users: create .venv and install your CUDA build of torch into it first;
# the CPU wheel torch==2.13.0 is only installed when no torch is importable.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.svdlora-installed

.PHONY: test demo lint format install clean

$(PY):
	python3 -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/svdlora --help

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
