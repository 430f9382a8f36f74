"""Which fill-in-the-middle template prompts use: the FIM tokens copilot-backend reports, else the model id of
another OpenAI-compatible server (vLLM, TGI, llama.cpp and Ollama report no FIM tokens), or the `fimTemplate`
setting. Unit tests of the choice, and the CLI against a stand-in for such a server."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from lsp_testing import REPO, FakeBackend

from copilot_ls.context.fim import FAMILIES, choose_template, template_for_model_id
from copilot_ls.lsp.settings import SettingsError, from_dict


@pytest.mark.parametrize(
    ("model_id", "family"),
    [
        ("Qwen/Qwen2.5-Coder-1.5B", "qwen"),  # vLLM / TGI: the HF repo id
        ("qwen2.5-coder:1.5b-base", "qwen"),  # Ollama
        ("Qwen3-Coder-30B-A3B-Instruct", "qwen"),
        ("/models/starcoder2-3b-Q8_0.gguf", "starcoder"),  # llama.cpp: the file
        ("bigcode/tiny_starcoder_py", "starcoder"),
        ("stabilityai/stable-code-3b", "starcoder"),
        ("codellama:7b-code", "codellama"),
        ("codellama/CodeLlama-13b-hf", "codellama"),
        ("codellama/CodeLlama-34b-hf", None),  # 34B/70B were not trained to infill
        ("deepseek-ai/deepseek-coder-1.3b-base", "deepseek"),
        ("meta-llama/Llama-3.1-8B", None),
        ("SmolLM2-135M-Instruct", None),
        ("gpt-4o", None),
        ("", None),
        (None, None),
    ],
)
def test_family_from_model_id(model_id, family) -> None:
    tpl = template_for_model_id(model_id)
    assert (tpl.family if tpl is not None else None) == family


QWEN_TOKENS = {
    "prefix": "<|fim_prefix|>",
    "suffix": "<|fim_suffix|>",
    "middle": "<|fim_middle|>",
    "file_sep": "<|file_sep|>",
}


def test_choice_order() -> None:
    # copilot-backend's report wins: null means "this model has no FIM", whatever its name says
    assert choose_template("auto", None, True, "qwen2.5-coder-1.5b") is None
    assert choose_template("auto", QWEN_TOKENS, True, "my-model").family == "qwen"
    # another server: the id decides
    assert choose_template("auto", None, False, "qwen2.5-coder-1.5b").family == "qwen"
    assert choose_template("auto", None, False, "my-finetune") is None
    # the setting overrides both
    assert choose_template("none", QWEN_TOKENS, True, "qwen2.5-coder") is None
    assert choose_template("codellama", None, False, "my-finetune") is FAMILIES["codellama"]


def test_fim_template_setting() -> None:
    assert from_dict({}).fim_template == "auto"
    assert from_dict({"copilot-ls": {"fimTemplate": "StarCoder"}}).fim_template == "starcoder"
    with pytest.raises(SettingsError, match="fim_template.*auto, none, starcoder"):
        from_dict({"fimTemplate": "santacoder"})


BUFFER = "def add(a, b):\n    return \n\n\nprint(add(1, 2))\n"


def _complete(tmp_path, url: str, *extra: str) -> subprocess.CompletedProcess:
    path = tmp_path / "m.py"
    path.write_text(BUFFER)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "copilot_ls.cli",
            "complete",
            f"{path}:2:12",
            "--backend",
            url,
            "--json",
            *extra,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("extra", "expect"),
    [
        ((), "qwen"),  # recognised from the id
        (("--fim-template", "none"), None),  # prefix-only on request
        (("--fim-template", "deepseek"), "deepseek"),  # forced
    ],
)
def test_cli_against_a_server_that_reports_no_fim_tokens(tmp_path, extra, expect) -> None:
    with FakeBackend(reply="a + b", models=[{"id": "Qwen/Qwen2.5-Coder-1.5B", "object": "model"}]) as fake:
        r = _complete(tmp_path, fake.url, *extra)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["items"][0]["text"] == "a + b"
    [body] = fake.requests
    prompt = body["prompt"]
    if expect is None:
        assert "fim" not in prompt and prompt.endswith("    return ")
        return
    tpl = FAMILIES[expect]
    assert prompt.startswith(tpl.prefix) and tpl.suffix in prompt and prompt.endswith(tpl.middle)
    before, after = prompt.split(tpl.suffix)
    assert before.endswith("    return ") and "print(add(1, 2))" in after  # the text after the cursor too
    assert set(tpl.extra_stops) <= set(body["stop"])
