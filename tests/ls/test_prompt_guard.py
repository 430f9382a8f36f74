"""Control-token strings in the code (a file that mentions `<|endoftext|>` or `<|fim_suffix|>`: tokenizer code,
LLM tooling) are guarded in the prompt, so the server's tokenizer reads them as text, not as control tokens that
end the document or reshape the FIM prompt; what the model copies of them is restored."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from lsp_testing import REPO

from copilot_ls.context import GUARD, PromptBudget, build_prompt, guard, unguard
from copilot_ls.context.fim import FAMILIES
from copilot_ls.documents import Document

CODE = (
    'EOS = "<|endoftext|>"\nHOLE = "<|fim_suffix|>"\nCHAT = "<|im_start|>"\n\n\ndef split_at_eos(text):\n    '
)


def snap_of(text: str):
    doc = Document("file:///tmp/guard/tok.py", "python", 1, text)
    lines = text.split("\n")
    return doc.snapshot(), len(lines) - 1, len(lines[-1])


def test_guard_round_trip() -> None:
    specials = ["<|endoftext|>", "<|im_start|>"]
    text = 'a = "<|endoftext|><|im_start|>" + "<|endoftext|>"'
    g = guard(text, specials)
    assert "<|endoftext|>" not in g and "<|im_start|>" not in g and g.count(GUARD) == 3
    assert unguard(g, specials) == text
    assert guard("nothing special", specials) == "nothing special"


def test_fim_prompt_keeps_only_its_own_control_tokens() -> None:
    qwen = FAMILIES["qwen"]
    snap, line, col = snap_of(CODE + "\nAFTER = '<|fim_middle|>'\n")
    p = build_prompt(snap, line - 1, 4, fim=qwen, workspace=None, specials=["<|im_start|>"])
    # the template's three markers once each; the code's copies (and <|endoftext|>, a Qwen stop) guarded
    assert p.prompt.startswith(qwen.prefix)
    assert (p.prompt.count(qwen.prefix), p.prompt.count(qwen.suffix), p.prompt.count(qwen.middle)) == (
        1,
        1,
        1,
    )
    for s in ("<|endoftext|>", "<|im_start|>"):
        assert s not in p.prompt and s[0] + GUARD + s[1:] in p.prompt
    assert set(p.guarded) == {"<|endoftext|>", "<|fim_suffix|>", "<|im_start|>", "<|fim_middle|>"}


def test_prefix_only_prompt_guards_the_models_specials_only() -> None:
    snap, line, col = snap_of(CODE)
    plain = build_prompt(snap, line, col, workspace=None)
    assert GUARD not in plain.prompt and plain.guarded == ()  # nothing known to guard
    p = build_prompt(snap, line, col, workspace=None, specials=["<|endoftext|>", "<|im_start|>"])
    assert p.guarded == ("<|endoftext|>", "<|im_start|>") and "<|fim_suffix|>" in p.prompt
    assert unguard(p.prompt, p.guarded) == plain.prompt


def test_budget_counts_the_guarded_text() -> None:
    snap, line, col = snap_of(CODE * 20)
    for budget in (24, 64, 200):
        p = build_prompt(
            snap,
            line,
            col,
            workspace=None,
            fim=FAMILIES["starcoder"],
            specials=["<|endoftext|>", "<|im_start|>"],
            budget=PromptBudget(max_prompt_tokens=budget),
        )
        assert len(p.prompt) <= budget * 8  # estimate: 3 characters per token (never over)


@pytest.mark.e2e
def test_cli_guards_the_real_models_specials(tmp_path, backend_url) -> None:
    path = tmp_path / "tok.py"
    path.write_text(CODE)
    lines = CODE.split("\n")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "copilot_ls.cli",
            "complete",
            f"{path}:{len(lines)}:5",
            "--backend",
            backend_url,
            "--json",
            "--explain",
            "--max-tokens",
            "8",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    prompt = json.loads(r.stdout)["explain"]["prompt"]
    # SmolLM2's tokenizer has <|endoftext|> and <|im_start|> as special tokens (served in /v1/tokenizer)
    assert (
        "<\u200b|endoftext|>" in prompt and "<\u200b|im_start|>" in prompt and "<|endoftext|>" not in prompt
    )
    assert '"<|fim_suffix|>"' in prompt  # not a control token of this model: left as it is
