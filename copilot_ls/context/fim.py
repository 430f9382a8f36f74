"""Fill-in-the-middle prompt templates per model family, chosen from the model's FIM token strings.

The backend reports the FIM tokens of the served model in ``/v1/models`` (``fim: {"prefix", "suffix",
"middle", "file_sep"}`` token strings, or null). ``template_for`` matches them against the families of the
one FIM table, ``model_backend.fim.FAMILIES`` (the only module of model_backend the language server imports: it is
plain data, no torch); an unknown set of tokens still gets a plain prefix-suffix-middle template with those
strings. A model without FIM tokens gets None: prompts are prefix-only.

Other OpenAI-compatible servers (vLLM, TGI, llama.cpp, Ollama) do not report FIM tokens; for them
``template_for_model_id`` recognises the family from the served model's id (``Qwen/Qwen2.5-Coder-1.5B``,
``starcoder2-3b-Q8_0.gguf``, ``codellama:7b-code``), and the ``fimTemplate`` setting can name one outright.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace

from model_backend.fim import FAMILIES as FIM_TABLE
from model_backend.fim import FimFamily, family_of


@dataclass(frozen=True)
class FimTemplate(FimFamily):
    """A family of the table (token strings as the model's vocabulary spells them; ``layout``: {prefix}/{suffix}
    are the code windows, {p}/{s}/{m} the markers), named, with what the language server does with it."""

    family: str = "psm"

    def format(self, prefix: str, suffix: str, files: Sequence[tuple[str, str]] = ()) -> str:
        """The FIM prompt; ``files`` (path, text) are other files put before it (multi-file templates only;
        callers without ``file_sep`` put snippets into the prefix as comments instead)."""
        head = ""
        if files and self.file_sep:
            head = "".join(f"{self.file_sep}{path}\n{text}\n" for path, text in files)
        return head + self.layout.format(
            p=self.prefix, s=self.suffix, m=self.middle, prefix=prefix, suffix=suffix
        )

    @property
    def stops(self) -> list[str]:
        """Strings that end a middle: the template's own tokens and the family's end markers."""
        out = [self.prefix, self.suffix, self.middle, *self.extra_stops]
        if self.file_sep:
            out.append(self.file_sep)
        return list(dict.fromkeys(t for t in out if t.strip()))


# family -> template, from the one table of model families' FIM tokens (model_backend/fim.py)
FAMILIES: dict[str, FimTemplate] = {
    name: FimTemplate(**asdict(f), family=name) for name, f in FIM_TABLE.items()
}


def template_for(fim: Mapping[str, str | None] | None) -> FimTemplate | None:
    """The template for a model's FIM token strings (the ``fim`` field of ``/v1/models``), or None."""
    if not fim:
        return None
    prefix, suffix, middle = fim.get("prefix"), fim.get("suffix"), fim.get("middle")
    if not (isinstance(prefix, str) and isinstance(suffix, str) and isinstance(middle, str)):
        return None
    family = family_of(prefix, suffix, middle)
    if family is not None:
        template = FAMILIES[family]
        file_sep = fim.get("file_sep")
        if isinstance(file_sep, str) and file_sep and file_sep != template.file_sep:
            return replace(template, file_sep=file_sep)
        return template
    file_sep = fim.get("file_sep")
    return FimTemplate(prefix, suffix, middle, file_sep=file_sep if isinstance(file_sep, str) else None)


# model id patterns (lower case) -> family, for servers that do not report FIM tokens; checked in order
MODEL_ID_FAMILIES: tuple[tuple[str, str], ...] = tuple((f.model_ids, name) for name, f in FIM_TABLE.items())


def template_for_model_id(model_id: str | None) -> FimTemplate | None:
    """The FIM template of a model known by its id alone (the id of another server's /v1/models), or None."""
    if not model_id:
        return None
    name = model_id.lower()
    for pattern, family in MODEL_ID_FAMILIES:
        if re.search(pattern, name):
            return FAMILIES[family]
    return None


FIM_SETTING_VALUES = ("auto", "none", *FAMILIES)


def choose_template(
    setting: str, reported: Mapping[str, str | None] | None, reports_fim: bool, model_id: str | None
) -> FimTemplate | None:
    """The template to use: the ``fimTemplate`` setting ("none", a family name, or "auto"). "auto" takes the
    FIM tokens the server reports (copilot-backend always reports them, null for a model without FIM) and
    otherwise recognises the model's id."""
    if setting == "none":
        return None
    if setting in FAMILIES:
        return FAMILIES[setting]
    if reports_fim:
        return template_for(reported)
    return template_for_model_id(model_id)
