"""User settings from LSP JSON: the `Settings` dataclass (copilot_ls/settings.py) built from what editors send.

Editors send settings as `initializationOptions` and in `workspace/didChangeConfiguration`, usually in
camelCase (`backendUrl`) and sometimes wrapped in a section (`{"copilot-ls": {...}}`). `from_dict` accepts both
spellings, ignores unknown keys (so newer editor plugins work with older servers) and rejects values of the
wrong type with a `SettingsError` that names the key.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any
from urllib.parse import urlsplit

from copilot_ls.backend import ENDPOINTS, GUIDED_STYLES
from copilot_ls.context import KEEP_IN_PREFIX
from copilot_ls.context.fim import FIM_SETTING_VALUES
from copilot_ls.settings import Settings

SECTION_NAMES = ("copilot-ls", "copilotLs", "copilot_ls")


class SettingsError(ValueError):
    """A setting has a value of the wrong type or range; the message names the key."""


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
    "explicitcandidates": "explicit_n",
    "maxprompttokens": "max_prompt_tokens",
    "fim": "fim_template",
}
_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_BY_FOLDED = {name.replace("_", ""): name for name in _FIELDS}


def _field_name(key: str) -> str | None:
    folded = re.sub(r"[_\-]", "", key).lower()
    return _BY_FOLDED.get(folded) or _ALIASES.get(folded)


# The JSON types each setting accepts (a bool is never a number).
_TYPES: dict[str, tuple[type, ...]] = {
    "backend_url": (str,),
    "api_key": (str, type(None)),
    "model": (str, type(None)),
    "autostart": (bool, type(None)),
    "timeout": (int, float),
    "debounce_ms": (int, float),
    "max_lines": (int,),
    "n": (int,),
    "explicit_n": (int,),
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
}
# The closed range of each numeric setting.
_RANGES: dict[str, tuple[float, float]] = {
    "timeout": (0.1, 3600),
    "debounce_ms": (0, 10_000),
    "max_lines": (1, 1000),
    "n": (1, 16),
    "explicit_n": (1, 16),
    "temperature": (0, 5),
    "sample_temperature": (0, 5),
    "top_p": (1e-9, 1),
    "max_tokens": (1, 4096),
    "max_prompt_tokens": (16, 1_000_000),
    "suffix_fraction": (0, 0.9),
    "cache_size": (0, 100_000),
    "min_confidence": (0, 1),
}
# Settings that name one of a fixed set of values, compared lower-cased (`fold`) or as written.
_CHOICES: dict[str, tuple[tuple[str, ...], bool]] = {
    "fim_template": (FIM_SETTING_VALUES, True),
    "keep_in_prefix": (KEEP_IN_PREFIX, False),
    "endpoint": (ENDPOINTS, True),
    "guided_decoding": (GUIDED_STYLES, True),
}


def _coerce(name: str, value: Any) -> Any:
    """The setting's value checked against its type, choices and range, in the form Settings holds it."""
    spec = _TYPES[name]
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
    if name == "guided_decoding" and isinstance(
        value, bool
    ):  # true / false: our field where supported / never
        return "auto" if value else "off"
    if name in _CHOICES:
        choices, fold = _CHOICES[name]
        if (value.lower() if fold else value) not in choices:
            raise SettingsError(f"setting {name!r}: expected one of {', '.join(choices)}, got {value!r}")
        return value.lower() if fold else value
    if name == "debounce_ms":
        value = int(value)
    if name in _RANGES:
        lo, hi = _RANGES[name]
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
