"""`make test-peers` only: a REAL foreign OpenAI-compatible server, llama.cpp's (llama-cpp-python[server]),
serving the bundled GGUF on loopback. The Makefile installs it into a venv outside the project and names that
venv's Python in COPILOT_LS_PEER_PYTHON; without it (plain `make test`) every test here is skipped."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ls"))  # lsp_testing

PEER_PYTHON = os.environ.get("COPILOT_LS_PEER_PYTHON")


def pytest_collection_modifyitems(config, items):
    if PEER_PYTHON:
        return
    skip = pytest.mark.skip(reason="needs llama.cpp's server: run `make test-peers`")
    for item in items:
        if "tests/peers/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def llamacpp_url(tmp_path_factory) -> Iterator[str]:
    """`python -m llama_cpp.server --model <bundled GGUF>` on a free port; its URL once /v1/models answers."""
    from lsp_testing import free_port

    from model_backend.weights import resolve_model

    port = free_port()
    log = tmp_path_factory.mktemp("llamacpp") / "server.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [
                PEER_PYTHON,
                "-m",
                "llama_cpp.server",
                "--model",
                str(resolve_model("default")),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--n_ctx",
                "4096",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(url + "/v1/models", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not answer in 180 s: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
