"""The served model's chat template (``tokenizer.chat_template`` of a GGUF, or of an HF folder's
tokenizer_config.json), rendered with jinja2 in a sandbox, for ``POST /v1/chat/completions``.

A model without a template gets ChatML (``<|im_start|>role\\n...<|im_end|>``) only when its vocabulary has
those tokens; otherwise chat requests are refused with a message that says why (`ChatTemplateError`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}"
)


class ChatTemplateError(ValueError):
    """The model's chat template is missing or cannot be rendered."""


def read_template(model_path: str | Path) -> str | None:
    """The chat template stored with a model file (.gguf) or folder (tokenizer_config.json), or None."""
    path = Path(model_path)
    if path.is_dir():
        cfg = path / "tokenizer_config.json"
        if cfg.is_file():
            template = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
            return template if isinstance(template, str) else None
        ggufs = sorted(path.glob("*.gguf"))
        if not ggufs:
            return None
        path = ggufs[0]
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get("tokenizer.chat_template")
    value = field.contents() if field is not None else None
    return value if isinstance(value, str) else None


def render(
    template: str | None,
    messages: Sequence[dict[str, str]],
    *,
    bos: str = "",
    eos: str = "",
    has_chatml: bool = False,
) -> str:
    """The prompt text for `messages` with the generation prompt appended (the assistant's turn opened)."""
    if template is None:
        if not has_chatml:
            raise ChatTemplateError(
                "this model has no chat template (tokenizer.chat_template) and no ChatML "
                "tokens: use /v1/completions"
            )
        template = CHATML
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> Any:
        raise ChatTemplateError(f"the chat template refused the messages: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template).render(
            messages=list(messages), add_generation_prompt=True, bos_token=bos, eos_token=eos
        )
    except ChatTemplateError:
        raise
    except TemplateError as exc:
        raise ChatTemplateError(
            f"cannot render this model's chat template ({type(exc).__name__}: {exc}); use /v1/completions"
        ) from exc
