"""The prefix window of a long file starts on an anchor line that moves in large steps, so the prompts of
consecutive keystrokes share their beginning (the backend's prefix cache reuses it) while the window stays
within its budget and holds at least half of it."""

from __future__ import annotations

from copilot_ls.context import PromptBudget, build_prompt, estimate_tokens
from copilot_ls.documents import Document


def long_module(n: int) -> str:
    return "".join(f"def f{i}(x):\n    return x * {i} + {i % 7}\n\n" for i in range(n // 3))


def test_typing_at_the_end_of_a_long_file_keeps_the_prompt_start() -> None:
    budget = PromptBudget(max_prompt_tokens=1024)
    doc = Document("file:///w/big.py", "python", 1, long_module(3000))
    prompts = []
    for i in range(60):
        text = doc.text + f"value_{i} = f{i}(3)\n"
        doc = Document("file:///w/big.py", "python", 1, text)
        line = text.count("\n")
        p = build_prompt(doc.snapshot(), line, 0, budget=budget, workspace=None)
        assert estimate_tokens(p.prompt) <= budget.max_prompt_tokens
        assert estimate_tokens(p.prefix) >= budget.max_prompt_tokens // 3
        prompts.append(p.prompt)
    # a new prompt continues the previous one, except when the anchor moves (a step: about half the window)
    moved = sum(not b.startswith(a) for a, b in zip(prompts, prompts[1:], strict=False))
    assert 1 <= moved <= 3, moved


def test_window_step_zero_slides_with_every_line() -> None:
    budget = PromptBudget(max_prompt_tokens=1024, window_step=0)
    doc = Document("file:///w/big.py", "python", 1, long_module(3000))
    a = build_prompt(doc.snapshot(), doc.text.count("\n"), 0, budget=budget, workspace=None)
    text = doc.text + "y = 1\n"
    b = build_prompt(
        Document("file:///w/big.py", "python", 1, text).snapshot(),
        text.count("\n"),
        0,
        budget=budget,
        workspace=None,
    )
    assert not b.prompt.startswith(a.prompt)
    full = build_prompt(
        doc.snapshot(), doc.text.count("\n"), 0, budget=PromptBudget(max_prompt_tokens=1024), workspace=None
    )
    assert len(full.prefix) <= len(a.prefix)


def test_a_file_that_fits_is_whole() -> None:
    text = long_module(30)
    doc = Document("file:///w/small.py", "python", 1, text)
    p = build_prompt(
        doc.snapshot(), text.count("\n"), 0, budget=PromptBudget(max_prompt_tokens=1024), workspace=None
    )
    assert p.prefix == text
