"""The user's settings of a completion (LS and CLI alike): one frozen dataclass that the pipeline reads.

How editors spell them (camelCase, a `copilot-ls` section) and how their values are checked is the LSP's
business: copilot_ls/lsp/settings.py builds a `Settings` from that JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

DEFAULT_BACKEND_URL = "http://127.0.0.1:8765"
# Suggestions whose confidence (copilot_ls.confidence) is below this are not shown. 0 = off; 0.35 met the
# issue-14 target on `copilot-ls eval context` (docs/quality.md) but is not the default yet.
DEFAULT_MIN_CONFIDENCE = 0.0


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
    explicit_n: int = 4  # candidates, ranked, when the user asks (manual trigger, cycling): one round trip
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


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in ("127.0.0.1", "localhost", "::1")
