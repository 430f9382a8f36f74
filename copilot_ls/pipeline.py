"""The ONE completion pipeline, called by the language server, `copilot-ls complete` and the evaluation:

    snapshot -> context.build_prompt (pure) -> BackendClient.complete (HTTP) -> postprocess (pure)
             -> the minConfidence gate (copilot_ls.confidence; no extra backend call)

An optional LRU cache keyed on the exact request (prompt, stop strings, sampling settings, backend) skips the
HTTP call when the same context is asked again; post-processing always runs against the current snapshot.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

from copilot_ls import chat
from copilot_ls.backend import BackendClient, ModelMeta, RawCandidate
from copilot_ls.confidence import passes
from copilot_ls.constraints import Constraint, member_constraint
from copilot_ls.context import Prompt, PromptBudget, build_prompt, unguard
from copilot_ls.context.edits import EditRegion
from copilot_ls.context.fim import FimTemplate, choose_template
from copilot_ls.context.workspace import workspace_for
from copilot_ls.documents import Snapshot
from copilot_ls.lru import LRUCache
from copilot_ls.postprocess import Suggestion, postprocess
from copilot_ls.settings import Settings

CacheKey = tuple
RawCache = LRUCache[CacheKey, list[RawCandidate]]


@dataclass
class CompletionResult:
    suggestions: list[Suggestion]
    prompt: Prompt
    raw: list[RawCandidate]
    cached: bool = False  # the raw candidates came from the cache (no backend call)
    hidden: int = 0  # suggestions below settings.min_confidence, not shown
    timings: dict[str, float] = field(default_factory=dict)  # context_ms, backend_ms, postprocess_ms


def fim_template(meta: ModelMeta, setting: str = "auto") -> FimTemplate | None:
    """The FIM template for the served model (its reported FIM tokens, else its id; the `fimTemplate`
    setting can force one or none), or None (prefix-only prompts)."""
    return choose_template(setting, meta.fim, meta.reports_fim, meta.id)


def budget_for(settings: Settings, meta: ModelMeta) -> PromptBudget:
    max_prompt = settings.max_prompt_tokens
    if meta.context_length:
        max_prompt = max(16, min(max_prompt, meta.context_length - settings.max_tokens - 8))
    return PromptBudget(
        max_prompt_tokens=max_prompt,
        suffix_fraction=settings.suffix_fraction,
        max_tokens_out=settings.max_tokens,
        keep_in_prefix=settings.keep_in_prefix,
    )


Ask = Callable[[int, float], Awaitable[list[RawCandidate]]]  # (n, temperature) -> candidates


async def n_candidates(ask: Ask, settings: Settings) -> list[RawCandidate]:
    """settings.n candidates. With temperature 0 and n > 1: the greedy one plus n-1 samples, sent together (the
    greedy candidate repeated n times would offer the editor nothing to cycle through)."""
    if settings.n > 1 and settings.temperature == 0:
        greedy, sampled = await asyncio.gather(ask(1, 0.0), ask(settings.n - 1, settings.sample_temperature))
        return greedy + sampled
    return await ask(settings.n, settings.temperature)


async def ask_backend(
    client: BackendClient, prompt: Prompt, settings: Settings, guide: Constraint | None = None
) -> list[RawCandidate]:
    """n candidates for `prompt` (n_candidates). `guide`: guided decoding."""
    kw: dict = dict(max_tokens=settings.max_tokens, top_p=settings.top_p, stop=prompt.stop)
    if guide is not None:
        kw.update(allowed_identifiers=guide.identifiers, guided=settings.guided_decoding)
    return await n_candidates(lambda n, t: client.complete(prompt.prompt, n=n, temperature=t, **kw), settings)


def chat_prompt(prompt: Prompt, snap: Snapshot) -> tuple[Prompt, chat.ChatPrompt]:
    """A prompt built with chat.CHAT_FIM as chat messages; the Prompt's text becomes their transcript and it
    has no stop strings (a reply may open with a fence line; post-processing cuts the text)."""
    msgs = chat.build_messages(prompt.prompt, snap.language_id, prompt.multiline)
    return replace(prompt, prompt=msgs.transcript, stop=[]), msgs


async def ask_chat(client: BackendClient, msgs: chat.ChatPrompt, settings: Settings) -> list[RawCandidate]:
    """n candidates from a chat endpoint, each reply parsed to the text inserted at the cursor."""
    kw = dict(max_tokens=settings.max_tokens, top_p=settings.top_p)
    raw = await n_candidates(lambda n, t: client.chat(msgs.messages, n=n, temperature=t, **kw), settings)
    return [replace(r, text=chat.parse_reply(r.text, msgs.before, msgs.after)) for r in raw]


def guide_for(
    snap: Snapshot, line: int, col: int, settings: Settings, others: Sequence[Snapshot] = ()
) -> Constraint | None:
    """The guided-decoding constraint at the cursor (copilot_ls/constraints.py), or None (off, or not sure)."""
    if settings.guided_decoding == "off":
        return None
    return member_constraint(snap, line, col, others=others, workspace=workspace_for(snap.path))


def cache_key(
    client: BackendClient, prompt: Prompt, settings: Settings, guide: Constraint | None = None
) -> CacheKey:
    return (
        guide.identifiers if guide is not None else None,
        client.base_url,
        client.model,
        prompt.prompt,
        tuple(prompt.stop),
        settings.n,
        settings.temperature,
        settings.sample_temperature,
        settings.top_p,
        settings.max_tokens,
    )


async def complete(
    snap: Snapshot,
    line: int,
    col: int,
    *,
    client: BackendClient,
    settings: Settings,
    others: Sequence[Snapshot] = (),
    cache: RawCache | None = None,
    edits: Sequence[EditRegion] = (),
) -> CompletionResult:
    """Suggestions at (line, code-point col) of `snap`, best first (at most settings.n); `edits`: the recent
    edit regions of the open documents (the LS's history; none from the CLI)."""
    t0 = time.perf_counter()
    meta = await client.meta()
    use_chat = await client.endpoint_mode() == "chat"
    t1 = time.perf_counter()
    budget = budget_for(settings, meta)
    prompt = build_prompt(
        snap,
        line,
        col,
        others=others,
        budget=chat_budget(budget) if use_chat else budget,
        fim=chat.CHAT_FIM if use_chat else fim_template(meta, settings.fim_template),
        count_tokens=meta.count_tokens,
        specials=meta.special_tokens,
        edits=edits,
    )
    msgs = None
    guide = None
    if use_chat:
        prompt, msgs = chat_prompt(prompt, snap)
    else:
        guide = guide_for(snap, line, col, settings, others)
    t2 = time.perf_counter()
    raw, cached = await raw_candidates(client, prompt, msgs, settings, cache, guide)
    t3 = time.perf_counter()
    if prompt.guarded:
        raw = [replace(r, text=unguard(r.text, prompt.guarded)) for r in raw]
    suggestions = postprocess(
        raw,
        snap,
        line,
        col,
        multiline=prompt.multiline,
        max_lines=settings.max_lines,
        known=known_names(snap),
    )
    shown = [s for s in suggestions if passes(s.confidence, settings.min_confidence)]
    t4 = time.perf_counter()
    timings = {
        "context_ms": (t2 - t1) * 1000,
        "backend_ms": (t3 - t2 + t1 - t0) * 1000,
        "postprocess_ms": (t4 - t3) * 1000,
    }
    return CompletionResult(
        shown[: settings.n], prompt, raw, cached, hidden=len(suggestions) - len(shown), timings=timings
    )


def chat_budget(budget: PromptBudget) -> PromptBudget:
    """The budget of the same context sent as chat messages (cut at chat.CHAT_FIM's markers into the code
    before / after the hole): the chat instructions take chat.OVERHEAD_TOKENS of it."""
    return replace(budget, max_prompt_tokens=max(16, budget.max_prompt_tokens - chat.OVERHEAD_TOKENS))


async def raw_candidates(
    client: BackendClient,
    prompt: Prompt,
    msgs: chat.ChatPrompt | None,
    settings: Settings,
    cache: RawCache | None,
    guide: Constraint | None = None,
) -> tuple[list[RawCandidate], bool]:
    """The backend's candidates for the prompt (as chat messages when `msgs` is given; `guide`: guided decoding
    of a completions request), and whether they came from the cache."""
    key = cache_key(client, prompt, settings, guide)
    raw = cache.get(key) if cache is not None else None
    if raw is not None:
        return raw, True
    if msgs is not None:
        raw = await ask_chat(client, msgs, settings)
    else:
        raw = await ask_backend(client, prompt, settings, guide)
    if cache is not None:
        cache.put(key, raw)
    return raw, False


def known_names(snap: Snapshot):
    """Whether the workspace's name index has a top-level definition of a name (for the undefined-name check;
    never waits for the index: while it is being built nothing counts as known beyond the document)."""
    ws = workspace_for(snap.path)
    if ws is None:
        return None
    return lambda name: bool(ws.paths_defining(name))
