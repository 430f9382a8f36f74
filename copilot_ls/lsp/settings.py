"""User settings of the language server (and the CLI): one dataclass, built from LSP JSON.

Editors send settings as `initializationOptions` and in `workspace/didChangeConfiguration`, usually in
camelCase (`backendUrl`) and sometimes wrapped in a section (`{"copilot-ls": {...}}`). `from_dict` accepts both
spellings, ignores unknown keys (so newer editor plugins work with older servers) and rejects values of the
wrong type with a `SettingsError` that names the key.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from copilot_ls.backend import ENDPOINTS, GUIDED_STYLES
from copilot_ls.context import KEEP_IN_PREFIX
from copilot_ls.context.fim import FIM_SETTING_VALUES

DEFAULT_BACKEND_URL = "http://127.0.0.1:8765"
# Suggestions whose confidence (copilot_ls.confidence) is below this are not shown. 0 = off; 0.35 met the
# issue-14 target on `copilot-ls eval context` (docs/quality.md) but is not the default yet.
DEFAULT_MIN_CONFIDENCE = 0.0
SECTION_NAMES = ("copilot-ls", "copilotLs", "copilot_ls")


class SettingsError(ValueError):
    """A setting has a value of the wrong type or range; the message names the key."""


@dataclass(frozen=True)
class Settings:
    backend_url: str = DEFAULT_BACKEND_URL
    api_key: str | None = None
    model: str | None = None  # sent as `model`; None = whatever the server serves
    autostart: bool | None = None  # None: start `copilot-backend serve` only for the default URL
    timeout: float = 30.0  # seconds for one backend request
    endpoint: str = "completions"  # "completions", "chat" (chat-only servers) or "auto" (probe once)
    debounce_ms: int = 100  # wait after the last keystroke before calling the backend
    max_lines: int = 10  # longest multi-line suggestion
    n: int = 1  # candidates per request (items the editor can cycle)
    temperature: float = 0.0  # 0 = greedy; with n > 1 the extra candidates are sampled
    sample_temperature: float = 0.6  # temperature of the extra candidates when temperature == 0 and n > 1
    top_p: float = 1.0
    max_tokens: int = 128
    max_prompt_tokens: int = 1536
    suffix_fraction: float = 0.25
    cache_size: int = 256  # LRU entries (prompt -> raw candidates)
    fim_template: str = "auto"  # "auto" (reported tokens, else the model id), "none", or a family name
    keep_in_prefix: str = "file"  # what snippets may never push out of the prompt: "file", "function", "none"
    min_confidence: float = DEFAULT_MIN_CONFIDENCE  # hide suggestions less confident than this (0 = show all)
    # guided decoding (copilot_ls/constraints.py): "auto" (our engine's field where the server reports it),
    # "off", or a field style to force: "allowed_identifiers", "regex" (vLLM), "grammar" (llama.cpp)
    guided_decoding: str = "auto"
    enabled: bool = True
    languages: dict[str, bool] = field(default_factory=dict)  # per-language enable, e.g. {"markdown": False}

    def enabled_for(self, language_id: str | None) -> bool:
        if not self.enabled:
            return False
        if language_id is not None and language_id in self.languages:
            return self.languages[language_id]
        return self.languages.get("*", True)

    def should_autostart(self) -> bool:
        if self.autostart is not None:  # copilot-backend serves plain HTTP: an https URL can never be it
            return (
                self.autostart
                and is_loopback(self.backend_url)
                and urlsplit(self.backend_url).scheme == "http"
            )
        return self.backend_url.rstrip("/") in (DEFAULT_BACKEND_URL, "http://localhost:8765")

    def merged(self, data: dict[str, Any] | None) -> Settings:
        """These settings with the keys present in `data` replaced (see module doc)."""
        return from_dict(data, base=self)


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in ("127.0.0.1", "localhost", "::1")


# JSON key aliases (camelCase as editors send them, and a few common spellings) -> field name
_ALIASES = {
    "backend": "backend_url",
    "url": "backend_url",
    "apikey": "api_key",
    "debounce": "debounce_ms",
    "maxlines": "max_lines",
    "enable": "enabled",
    "maxtokens": "max_tokens",
    "topp": "top_p",
    "candidates": "n",
    "maxprompttokens": "max_prompt_tokens",
    "fim": "fim_template",
}
_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_BY_FOLDED = {name.replace("_", ""): name for name in _FIELDS}


def _field_name(key: str) -> str | None:
    folded = re.sub(r"[_\-]", "", key).lower()
    return _BY_FOLDED.get(folded) or _ALIASES.get(folded)


def _coerce(name: str, value: Any) -> Any:  # long: one row of the type table per setting
    spec = {
        "backend_url": (str,),
        "api_key": (str, type(None)),
        "model": (str, type(None)),
        "autostart": (bool, type(None)),
        "timeout": (int, float),
        "debounce_ms": (int, float),
        "max_lines": (int,),
        "n": (int,),
        "temperature": (int, float),
        "sample_temperature": (int, float),
        "top_p": (int, float),
        "max_tokens": (int,),
        "max_prompt_tokens": (int,),
        "suffix_fraction": (int, float),
        "cache_size": (int,),
        "enabled": (bool,),
        "languages": (dict,),
        "fim_template": (str,),
        "keep_in_prefix": (str,),
        "min_confidence": (int, float),
        "endpoint": (str,),
        "guided_decoding": (str, bool),
    }[name]
    if isinstance(value, bool) and bool not in spec:
        raise SettingsError(f"setting {name!r}: expected a number, got {value!r}")
    if not isinstance(value, spec):
        raise SettingsError(
            f"setting {name!r}: expected {' or '.join(t.__name__ for t in spec)}, got {value!r}"
        )
    if name == "backend_url":
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SettingsError(f"setting 'backend_url': expected an http(s) URL, got {value!r}")
        return value.rstrip("/")
    if name == "api_key" and value == "":
        return None
    if name == "languages":
        bad = {k: v for k, v in value.items() if not isinstance(v, bool)}
        if bad:
            raise SettingsError(f"setting 'languages': values must be true/false, got {bad!r}")
        return dict(value)
    if name == "fim_template":
        if value.lower() not in FIM_SETTING_VALUES:
            raise SettingsError(
                f"setting 'fim_template': expected one of {', '.join(FIM_SETTING_VALUES)}, got {value!r}"
            )
        return value.lower()
    if name == "keep_in_prefix":
        if value not in KEEP_IN_PREFIX:
            raise SettingsError(
                f"setting 'keep_in_prefix': expected one of {', '.join(KEEP_IN_PREFIX)}, got {value!r}"
            )
    if name == "endpoint":
        if value.lower() not in ENDPOINTS:
            raise SettingsError(f"setting 'endpoint': expected one of {', '.join(ENDPOINTS)}, got {value!r}")
        return value.lower()
    if name == "guided_decoding":
        if isinstance(value, bool):
            return "auto" if value else "off"
        if value.lower() not in GUIDED_STYLES:
            raise SettingsError(
                f"setting 'guided_decoding': expected true, false or one of {', '.join(GUIDED_STYLES)}, got {value!r}"
            )
        return value.lower()
    if name == "debounce_ms":
        value = int(value)
    ranges = {
        "timeout": (0.1, 3600),
        "debounce_ms": (0, 10_000),
        "max_lines": (1, 1000),
        "n": (1, 16),
        "temperature": (0, 5),
        "sample_temperature": (0, 5),
        "top_p": (1e-9, 1),
        "max_tokens": (1, 4096),
        "max_prompt_tokens": (16, 1_000_000),
        "suffix_fraction": (0, 0.9),
        "cache_size": (0, 100_000),
        "min_confidence": (0, 1),
    }
    if name in ranges:
        lo, hi = ranges[name]
        if not lo <= value <= hi:
            raise SettingsError(f"setting {name!r}: {value!r} is outside [{lo}, {hi}]")
    return value


def unwrap_section(data: Any) -> dict[str, Any]:
    """`{"copilot-ls": {...}}` -> `{...}`; a plain dict is returned as is; None -> {}."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"settings must be a JSON object, got {type(data).__name__}")
    for name in SECTION_NAMES:
        if isinstance(data.get(name), dict):
            return data[name]
    return data


def from_dict(data: dict[str, Any] | None, base: Settings | None = None) -> Settings:
    """Settings from LSP JSON (camelCase or snake_case, optionally wrapped in a section)."""
    data = unwrap_section(data)
    changes: dict[str, Any] = {}
    for key, value in data.items():
        name = _field_name(str(key))
        if name is None:
            continue  # unknown keys are ignored on purpose
        changes[name] = _coerce(name, value)
    return dataclasses.replace(base or Settings(), **changes)
