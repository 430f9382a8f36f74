"""Chat endpoints: the FIM prompt as chat messages, the reply parse (copilot_ls/chat.py), the chat response
parser against recorded server shapes (tests/ls/fixtures/chat/), the `endpoint` setting, and the backend's chat
template rendering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from copilot_ls import chat
from copilot_ls.backend import BackendClient, BackendError, parse_chat_completion, parse_completion
from copilot_ls.context import PromptBudget, build_prompt
from copilot_ls.documents import Document
from copilot_ls.lsp.settings import SettingsError, from_dict
from copilot_ls.pipeline import chat_prompt
from copilot_ls.settings import Settings
from model_backend import chat_template

FIXTURES = Path(__file__).parent / "fixtures"

FIB_BEFORE = (
    '# Path: fib.py (python)\ndef fibonacci(n):\n    """Return the n-th Fibonacci number."""\n'
    "    if n < 2:\n        return n\n"
)
BODY = "    return fibonacci(n - 1) + fibonacci(n - 2)"


# --- the reply parse: each shape a chat model answers in ------------------------------------------------
@pytest.mark.parametrize(
    "reply",
    [
        BODY,  # bare code
        f"```python\n{BODY}\n```",  # fenced
        f"```\n{BODY}\n```\nThis uses recursion.",  # fence, prose after
        f"Here is the code:\n```python\n{BODY}\n```",  # prose before a fence
        f"Here is the completed code:\n{BODY}\nThis function recurses.",  # prose around bare code
        f"Sure! {chat.HOLE} should be:\n\n```py\n{BODY}\n```\n",  # prose naming the hole
        # the snippet echoed back (lightly reworded, as SmolLM2 does), then the body
        '```python\n# Path: fib.py (python)\ndef fibonacci(n):\n    """Return the nth Fibonacci number."""\n'
        f"    if n < 2:\n        return n\n{BODY}\n```\n\nThis is a recursive function.",
        FIB_BEFORE + BODY,  # the exact prefix repeated
    ],
)
def test_reply_shapes_all_give_the_body(reply):
    assert chat.parse_reply(reply, FIB_BEFORE, "\n") == BODY


def test_reply_running_into_the_suffix_is_cut_there():
    before = "def area(r):\n    "
    after = "\n\ndef perimeter(r):\n    return 2 * PI * r\n"
    reply = "return PI * r * r\n\ndef perimeter(r):\n    return 2 * PI * r"
    assert chat.parse_reply(reply, before, after) == "return PI * r * r"


def test_reply_repeating_the_cursor_line_keeps_only_the_rest():
    assert chat.parse_reply("    total = sum(values)", "def f(values):\n    total = ", "\n") == "sum(values)"
    assert chat.parse_reply("total = sum(values)", "def f(values):\n    total = ", "\n") == "sum(values)"


def test_reply_echoing_the_hole_line_keeps_what_follows_the_marker():
    assert chat.parse_reply(f"x = {chat.HOLE}compute()", "x = ", "") == "compute()"


def test_block_body_after_a_colon_goes_below_the_cursor_line():
    assert chat.parse_reply("```\n    return x\n```", "def f(x):", "") == "\n    return x"


def test_an_echoed_signature_before_the_body_is_dropped():
    before = (
        'from typing import List\n\n\ndef mean(xs: List[float]) -> float:\n    """Return the mean of xs.\n'
        '    >>> mean([1.0, 3.0])\n    2.0\n    """\n'
    )
    reply = "\ndef mean(xs: List[float]) -> float:\n    return sum(xs) / len(xs)"
    assert chat.parse_reply(reply, before, "\n") == "    return sum(xs) / len(xs)"


def test_a_body_line_equal_to_an_earlier_line_is_kept():
    # one short line that also occurs above is not an echo
    before = "def f(n):\n    if n:\n        return n\n    "
    assert chat.parse_reply("return n", before, "\n") == "return n"


# --- the prompt: the same context, a hole marker, strict instructions -------------------------------------
def test_chat_prompt_carries_prefix_suffix_and_hole():
    text = "import os\n\ndef main():\n    path = \n    print(path)\n"
    snap = Document("file:///tmp/chat/m.py", "python", 1, text).snapshot()
    prompt = build_prompt(snap, 3, 11, budget=PromptBudget(max_prompt_tokens=400), fim=chat.CHAT_FIM)
    shown, msgs = chat_prompt(prompt, snap)
    user = msgs.messages[-1]["content"]
    assert msgs.messages[0]["role"] == "system" and "no markdown fences" in msgs.messages[0]["content"]
    assert "```python\n" in user and f"    path = {chat.HOLE}\n    print(path)" in user
    assert "import os" in user and "no prose, no fences" in user
    assert "\x00" not in shown.prompt and shown.stop == []  # the markers never leave the LS
    assert msgs.before.endswith("    path = ") and msgs.after.startswith("\n    print(path)")


# --- response shapes of real servers (fixtures say where each came from) ---------------------------------
def _fixtures(kind: str) -> list[Path]:
    return sorted((FIXTURES / kind).glob("*.json"))


@pytest.mark.parametrize("path", _fixtures("chat"), ids=lambda p: p.stem)
def test_recorded_chat_responses_parse(path):
    record = json.loads(path.read_text())
    assert record["source"]
    got = parse_chat_completion(record["response"])
    assert [c.text for c in got] == record["expect"]["texts"]
    if "mean_logprob" in record["expect"]:
        assert got[0].mean_logprob == pytest.approx(record["expect"]["mean_logprob"], abs=1e-6)


@pytest.mark.parametrize("path", _fixtures("completions"), ids=lambda p: p.stem)
def test_recorded_completion_responses_parse(path):
    record = json.loads(path.read_text())
    assert record["source"]
    got = parse_completion(record["response"])
    assert [c.text for c in got] == record["expect"]["texts"]
    if "mean_logprob" in record["expect"]:
        assert got[0].mean_logprob == pytest.approx(record["expect"]["mean_logprob"], abs=1e-6)


def test_chat_response_without_message_is_garbage():
    with pytest.raises(BackendError) as err:
        parse_chat_completion({"choices": [{"index": 0, "text": "x"}]})
    assert err.value.kind == "garbage"


# --- the setting --------------------------------------------------------------------------------------------
def test_endpoint_setting():
    assert Settings().endpoint == "completions"
    assert from_dict({"endpoint": "Chat"}).endpoint == "chat"
    assert from_dict({"copilot-ls": {"endpoint": "auto"}}).endpoint == "auto"
    with pytest.raises(SettingsError, match="endpoint"):
        from_dict({"endpoint": "responses"})
    with pytest.raises(ValueError):
        BackendClient("http://127.0.0.1:1", endpoint="responses")


# --- the backend's chat template ------------------------------------------------------------------------------
def test_bundled_model_chat_template_renders_chatml():
    from model_backend.weights import resolve_model

    template = chat_template.read_template(resolve_model("default"))
    assert template and "<|im_start|>" in template
    text = chat_template.render(
        template, [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    )
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"


def test_unrenderable_templates_are_clear_errors():
    with pytest.raises(chat_template.ChatTemplateError, match="cannot render"):
        chat_template.render(
            "{% for m in messages %}{{ m.content | nosuchfilter }}{% endfor %}",
            [{"role": "user", "content": "x"}],
        )
    with pytest.raises(chat_template.ChatTemplateError, match="refused"):
        chat_template.render(
            "{{ raise_exception('roles must alternate') }}", [{"role": "user", "content": "x"}]
        )
    with pytest.raises(chat_template.ChatTemplateError, match="no chat template"):
        chat_template.render(None, [{"role": "user", "content": "x"}])
    assert chat_template.render(None, [{"role": "user", "content": "x"}], has_chatml=True).endswith(
        "<|im_start|>assistant\n"
    )


async def test_auto_endpoint_stays_on_completions_when_the_server_has_them(fake_backend):
    client = BackendClient(fake_backend.url, endpoint="auto")
    try:
        assert await client.endpoint_mode() == "completions"
        assert await client.endpoint_mode() == "completions"
    finally:
        await client.aclose()
    assert len(fake_backend.requests) == 1 and fake_backend.requests[0]["max_tokens"] == 1  # one probe


async def test_auto_endpoint_is_chat_on_404_and_probes_again_after_a_network_error(fake_backend):
    fake_backend.answer = (404, b'{"error": {"message": "Not Found"}}')
    client = BackendClient(fake_backend.url, endpoint="auto")
    try:
        assert await client.endpoint_mode() == "chat"
    finally:
        await client.aclose()
    gone = BackendClient("http://127.0.0.1:9", endpoint="auto", timeout=2)
    try:
        with pytest.raises(BackendError):
            await gone.endpoint_mode()
        assert gone.endpoint == "auto"
    finally:
        await gone.aclose()
