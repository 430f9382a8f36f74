"""`copilot-backend generate` as a real process (python -m model_backend.cli)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "model_backend.cli", "generate", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.mark.e2e
def test_generate_json_with_the_default_model():
    p = run_cli(
        "def fibonacci(n):\n",
        "--max-tokens",
        "8",
        "--temperature",
        "0.7",
        "--n",
        "2",
        "--seed",
        "3",
        "--stop",
        "\n\n",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--json",
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)  # stdout is only the JSON
    assert len(out) == 2
    for c in out:
        assert set(c) == {"text", "mean_logprob", "tokens", "finish_reason"}
        assert c["finish_reason"] in ("stop", "length")
        assert "\n\n" not in c["text"]
        assert c["mean_logprob"] < 0 and isinstance(c["tokens"], list)
    assert "loading default" in p.stderr  # progress goes to stderr


def test_bad_sampling_options_are_clear_errors():
    p = run_cli("x", "--top-p", "0")
    assert p.returncode == 2
    assert "top_p must be in (0, 1]" in p.stderr
    assert p.stdout == ""


def test_missing_model_is_a_clear_error(tmp_path):
    p = run_cli("x", "--model", str(tmp_path / "nope.gguf"))
    assert p.returncode == 1
    assert "cannot load model" in p.stderr and "nope.gguf" in p.stderr
    assert "Traceback" not in p.stderr


def test_prompt_over_the_context_is_a_clear_error(tmp_path):
    sys.path.insert(0, os.path.dirname(__file__))
    from tiny_models import make_tiny_model

    model = make_tiny_model("llama", tmp_path / "tiny")
    p = run_cli("int main(void) { return 0; }\n" * 200, "--model", str(model), "--device", "cpu")
    assert p.returncode == 2
    assert "prompt is" in p.stderr and "tokens but the context holds 512" in p.stderr


@pytest.mark.e2e
def test_generate_with_speculation_prints_the_same_text():
    prompt = 'def test_upper():\n    assert upper("ab") == "AB"\n    assert upper("cd") == "CD"\n'
    common = ("--max-tokens", "24", "--threads", "1", "--device", "cpu", "--json")
    off = run_cli(prompt, *common)
    on = run_cli(prompt, *common, "--speculate", "ngram")
    assert off.returncode == 0 and on.returncode == 0, on.stderr
    assert json.loads(on.stdout)[0]["text"] == json.loads(off.stdout)[0]["text"]


def test_draft_speculation_without_a_draft_model_is_a_clear_error():
    p = run_cli("x", "--speculate", "draft", "--device", "cpu")
    assert p.returncode == 1
    assert "needs a draft model (--draft-model)" in p.stderr
