"""Client of an OpenAI-compatible `/v1/completions` server (ours, vLLM, TGI, llama.cpp, Ollama) over httpx;
`/v1/chat/completions` for chat-only servers (the `endpoint` setting; copilot_ls/chat.py builds the messages).

Every failure -- nothing listening, a timeout, an HTTP error, a body that is not a completion -- becomes one
`BackendError` whose message says what went wrong in words a user can act on. Cancelling the awaiting task
aborts the HTTP request (the connection is closed, so our backend stops generating).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class RawCandidate:
    """One completion choice as the backend returned it (post-processing makes Suggestions of these)."""

    text: str
    mean_logprob: float = 0.0
    finish_reason: str = "stop"
    # per generated token, its text and log-prob (OpenAI `logprobs.tokens` / `token_logprobs`); empty when the
    # server sent none. copilot_ls.confidence maps the shown text back onto these.
    tokens: tuple[str, ...] = ()
    token_logprobs: tuple[float, ...] = ()


class BackendError(Exception):
    """The backend could not give a completion. `kind`: unreachable | timeout | http | auth | loading | garbage."""

    def __init__(self, message: str, *, kind: str = "http", status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status


@dataclass(frozen=True)
class ModelMeta:
    """What the LS needs to know about the served model (from /v1/models and /v1/tokenizer)."""

    id: str | None
    context_length: int | None
    fim: dict[str, str | None] | None  # /v1/models `fim`: {"prefix", "suffix", "middle", ...} or None
    count_tokens: Callable[[str], int] | None  # exact, from the server's tokenizer.json; None if unavailable
    reports_fim: bool = False  # /v1/models has a `fim` field (copilot-backend; others don't)
    special_tokens: tuple[str, ...] = ()  # control-token strings of the tokenizer (guarded in prompts)
    guided: tuple[str, ...] = ()  # /v1/models `guided_decoding`: constraint fields the server takes (ours)


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_unicode(text: str) -> str:
    """``text`` with lone surrogates (a document may hold them: JSON can carry "\\ud800") as U+FFFD: servers reject
    such a prompt (HTTP 400) and the tokenizer cannot encode it."""
    return text if text.isascii() else _LONE_SURROGATE.sub("\ufffd", text)


def _mean(values: Sequence[Any]) -> float:
    nums = [
        float(v)
        for v in values
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    ]
    return sum(nums) / len(nums) if nums else 0.0


def _token_logprobs(logprobs: Any) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """(token texts, log-probs) of an OpenAI `logprobs` object; ((), ()) when absent or malformed (servers that
    send no per-token data, or lists of different lengths). A non-finite log-prob (a token the server could not
    score) counts as very unlikely."""
    if not isinstance(logprobs, dict):
        return (), ()
    tokens, lps = logprobs.get("tokens"), logprobs.get("token_logprobs")
    if not (isinstance(tokens, list) and isinstance(lps, list) and len(tokens) == len(lps)):
        return (), ()
    if not all(isinstance(t, str) for t in tokens):
        return (), ()
    vals: list[float] = []
    for v in lps:
        if not isinstance(v, int | float) or isinstance(v, bool):
            return (), ()
        vals.append(float(v) if math.isfinite(v) else -30.0)
    return tuple(tokens), tuple(vals)


def _choices(body: Any, what: str, candidate: Callable[[dict], RawCandidate | None]) -> list[RawCandidate]:
    """The candidates of an OpenAI response's `choices` in `index` order; `candidate` reads one choice (None:
    it has no text). Anything else is a BackendError(kind="garbage")."""
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
        raise BackendError(
            f"backend answered something that is not a {what}: {str(body)[:120]!r}", kind="garbage"
        )
    out: list[tuple[int, RawCandidate]] = []
    for i, choice in enumerate(body["choices"]):
        cand = candidate(choice) if isinstance(choice, dict) else None
        if cand is None:
            raise BackendError(
                f"backend answered a {what} choice without text: {str(choice)[:120]!r}", kind="garbage"
            )
        index = choice.get("index", i)
        out.append((index if isinstance(index, int) else i, cand))
    out.sort(key=lambda t: t[0])
    return [c for _, c in out]


def _finish(choice: dict) -> str:
    finish = choice.get("finish_reason")
    return finish if isinstance(finish, str) else "stop"


def _completion_choice(choice: dict) -> RawCandidate | None:
    if not isinstance(choice.get("text"), str):
        return None
    logprobs = choice.get("logprobs")
    token_logprobs = logprobs.get("token_logprobs") if isinstance(logprobs, dict) else None
    mean = _mean(token_logprobs) if isinstance(token_logprobs, list) else 0.0
    tokens, lps = _token_logprobs(logprobs)
    return RawCandidate(choice["text"], mean, _finish(choice), tokens, lps)


def _chat_choice(choice: dict) -> RawCandidate | None:
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        return None
    # chat logprobs: {"content": [{"token", "logprob", ...}, ...]} (OpenAI, vLLM, llama.cpp) or absent
    logprobs = choice.get("logprobs")
    entries = logprobs.get("content") if isinstance(logprobs, dict) else None
    mean = (
        _mean([e.get("logprob") for e in entries if isinstance(e, dict)])
        if isinstance(entries, list)
        else 0.0
    )
    return RawCandidate(content, mean, _finish(choice))


def parse_completion(body: Any) -> list[RawCandidate]:
    """OpenAI completion JSON -> candidates in `index` order; BackendError(kind="garbage") if it is not one."""
    return _choices(body, "completion", _completion_choice)


def parse_chat_completion(body: Any) -> list[RawCandidate]:
    """OpenAI chat completion JSON -> candidates (the reply text, not yet parsed) in `index` order."""
    return _choices(body, "chat completion", _chat_choice)


ENDPOINTS = ("completions", "chat", "auto")
# how a guided-decoding constraint is sent (the `guidedDecoding` setting; docs/backend.md): "auto" = our field
# where the server reports it (/v1/models `guided_decoding`), nothing elsewhere
GUIDED_STYLES = ("auto", "off", "allowed_identifiers", "regex", "grammar")
_GUIDED_FIELDS = {"allowed_identifiers": "allowed_identifiers", "regex": "guided_regex", "grammar": "grammar"}


def constraint_fields(identifiers: Sequence[str], style: str) -> dict[str, Any]:
    """The request fields that say "the completion starts with one of ``identifiers``, then a character that
    cannot continue an identifier, or ends": ours (``allowed_identifiers``), vLLM's ``guided_regex``, or
    llama.cpp's GBNF ``grammar``; {} for "off" (or an unknown style)."""
    if style == "allowed_identifiers":
        return {"allowed_identifiers": list(identifiers)}
    names = [i for i in identifiers if i]
    optional = len(names) < len(identifiers)  # "" among them: the typed part is already a whole member
    if style == "regex":
        alts = "|".join(re.escape(i) for i in names)
        head = f"(?:{alts})" + ("?" if optional else "") if names else ""
        return {"guided_regex": head + r"(?:[^A-Za-z0-9_][\s\S]*)?"}
    if style == "grammar":
        alts = " | ".join(json.dumps(i) for i in names)
        head = f"({alts})" + ("?" if optional else "") if names else ""
        return {"grammar": f"root ::= {head} ([^a-zA-Z0-9_] [^\\x00]*)?\n".replace("root ::=  ", "root ::= ")}
    return {}


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(body, dict) and body.get("detail"):
            return str(body["detail"])
    except (ValueError, AttributeError):
        pass
    return response.text[:200] or response.reason_phrase


class BackendClient:
    """OpenAI-compatible /v1/completions over httpx; works against any such server."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        model: str | None = None,
        timeout: float = 30.0,
        endpoint: str = "completions",
    ) -> None:
        if endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {', '.join(ENDPOINTS)}, got {endpoint!r}")
        self.endpoint = endpoint  # "auto" becomes "completions" or "chat" at the first `endpoint_mode()`
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.model = model
        self.timeout = timeout
        self.requests = 0  # /v1/completions calls made (the LS's own counter)
        self.guided_rejected: set[str] = (
            set()
        )  # constraint fields this server answered 400 to: never sent again
        self._meta: ModelMeta | None = None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            trust_env=False,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 3.0)),
        )

    async def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kw)
        except httpx.TimeoutException as exc:
            raise BackendError(
                f"backend at {self.base_url} did not answer within {self.timeout:g} s", kind="timeout"
            ) from exc
        except httpx.TransportError as exc:
            raise BackendError(
                f"cannot reach the backend at {self.base_url} ({type(exc).__name__}: {exc})",
                kind="unreachable",
            ) from exc
        if response.status_code in (401, 403):
            raise BackendError(
                f"backend at {self.base_url} refused the API key (HTTP {response.status_code}): "
                f"{_error_message(response)}",
                kind="auth",
                status=response.status_code,
            )
        if response.status_code == 503:
            raise BackendError(
                f"backend at {self.base_url} is not ready (loading the model?)", kind="loading", status=503
            )
        if response.status_code >= 400:
            raise BackendError(
                f"backend at {self.base_url} answered HTTP {response.status_code}: "
                f"{_error_message(response)}",
                status=response.status_code,
            )
        return response

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise BackendError(f"backend answered non-JSON: {response.text[:120]!r}", kind="garbage") from exc

    async def complete(
        self,
        prompt: str,
        *,
        suffix: str | None = None,
        max_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        n: int = 1,
        stop: Sequence[str] = (),
        seed: int | None = None,
        allowed_identifiers: Sequence[str] | None = None,
        guided: str = "auto",
    ) -> list[RawCandidate]:
        """One /v1/completions call (logprobs requested; mean log-prob ranks candidates). allowed_identifiers:
        the completion starts with one of these (guided decoding), sent as the `guided` style says (see
        GUIDED_STYLES); a server that answers 400 to the field gets the request again without it, and never
        that field again."""
        payload: dict[str, Any] = {
            "prompt": valid_unicode(prompt),
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "n": n,
            "logprobs": 1,
            "stream": False,
        }
        if suffix is not None:
            payload["suffix"] = valid_unicode(suffix)
        extra = await self._constraint(allowed_identifiers, guided)
        if extra:
            try:
                return await self._generate(
                    "/v1/completions", {**payload, **extra}, stop, seed, parse_completion
                )
            except BackendError as exc:
                if exc.status != 400:
                    raise
            # remembered only when the request without the field is accepted (a 400 for another reason is not
            # the field's fault)
            got = await self._generate("/v1/completions", payload, stop, seed, parse_completion)
            self.guided_rejected.update(extra)
            return got
        return await self._generate("/v1/completions", payload, stop, seed, parse_completion)

    async def _constraint(self, identifiers: Sequence[str] | None, guided: str) -> dict[str, Any]:
        """The guided-decoding fields to send ({} where the server does not take one)."""
        if not identifiers or guided == "off":
            return {}
        if guided == "auto":
            taken = (await self.meta()).guided
            guided = "allowed_identifiers" if "allowed_identifiers" in taken else "off"
        if _GUIDED_FIELDS.get(guided) in self.guided_rejected:
            return {}
        return constraint_fields(identifiers, guided)

    async def chat(
        self,
        messages: Sequence[dict[str, str]],
        *,
        max_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        n: int = 1,
        stop: Sequence[str] = (),
        seed: int | None = None,
    ) -> list[RawCandidate]:
        """One /v1/chat/completions call; the candidates' text is the raw reply (chat.parse_reply cleans it)."""
        payload: dict[str, Any] = {
            "messages": [{"role": m["role"], "content": valid_unicode(m["content"])} for m in messages],
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "n": n,
            "stream": False,
        }
        return await self._generate("/v1/chat/completions", payload, stop, seed, parse_chat_completion)

    async def _generate(
        self,
        path: str,
        payload: dict[str, Any],
        stop: Sequence[str],
        seed: int | None,
        parse: Callable[[Any], list[RawCandidate]],
    ) -> list[RawCandidate]:
        """The options both generation routes share (stop strings, seed, model), one POST, its candidates."""
        if stop:
            payload["stop"] = [valid_unicode(x) for x in stop]
        if seed is not None:
            payload["seed"] = seed
        if self.model:
            payload["model"] = self.model
        self.requests += 1
        response = await self._request("POST", path, json=payload)
        return parse(self._json(response))

    async def endpoint_mode(self) -> str:
        """ "completions" or "chat". With endpoint "auto" the first call probes once: a one-token
        /v1/completions request; HTTP 404 / 405 / 501 (no such route) means the server is chat-only."""
        if self.endpoint != "auto":
            return self.endpoint
        payload: dict[str, Any] = {"prompt": "def", "max_tokens": 1, "temperature": 0.0}
        if self.model:
            payload["model"] = self.model
        try:
            await self._request("POST", "/v1/completions", json=payload)
            mode = "completions"
        except BackendError as exc:
            if exc.status not in (404, 405, 501):
                if exc.kind in ("unreachable", "timeout", "loading", "auth"):
                    raise  # not an answer about the route: probe again next time
                mode = "completions"  # the route exists (it rejected this request for another reason)
            else:
                mode = "chat"
        self.endpoint = mode
        return mode

    async def health(self) -> str:
        """ "ready", "loading" or raises BackendError (unreachable, ...). Servers without /health count as ready."""
        try:
            await self._request("GET", "/health")
        except BackendError as exc:
            if exc.kind == "loading":
                return "loading"
            if exc.status == 404:
                return "ready"
            raise
        return "ready"

    async def model_info(self) -> dict:
        """The served model's entry of GET /v1/models (ours adds `context_length` and `fim`)."""
        body = self._json(await self._request("GET", "/v1/models"))
        models = body.get("data") if isinstance(body, dict) else None
        if not isinstance(models, list) or not models or not all(isinstance(m, dict) for m in models):
            raise BackendError(
                f"backend answered an unexpected /v1/models: {str(body)[:120]!r}", kind="garbage"
            )
        for m in models:
            if self.model and m.get("id") == self.model:
                return m
        return models[0]

    async def tokenizer_json(self) -> str | None:
        """tokenizer.json text from GET /v1/tokenizer, or None when the server has no such route."""
        try:
            response = await self._request("GET", "/v1/tokenizer")
        except BackendError as exc:
            if exc.status in (404, 405, 501):
                return None
            raise
        return response.text

    async def meta(self) -> ModelMeta:
        """Model facts, fetched once per client (a model change means a new client)."""
        if self._meta is None:
            try:
                info = await self.model_info()
            except BackendError as exc:
                if exc.status not in (404, 405):
                    raise
                info = {}
            fim = info.get("fim") if isinstance(info.get("fim"), dict) else None
            ctx = info.get("context_length")
            tokenizer = await self.tokenizer_json()
            self._meta = ModelMeta(
                id=info.get("id") if isinstance(info.get("id"), str) else None,
                context_length=ctx if isinstance(ctx, int) and ctx > 0 else None,
                fim=fim,
                count_tokens=_token_counter(tokenizer),
                reports_fim="fim" in info,
                special_tokens=_special_tokens(tokenizer),
                guided=tuple(g for g in info.get("guided_decoding") or () if isinstance(g, str))
                if isinstance(info.get("guided_decoding"), list)
                else (),
            )
        return self._meta

    async def aclose(self) -> None:
        await self._http.aclose()


def _special_tokens(tokenizer_json: str | None) -> tuple[str, ...]:
    """The strings of a tokenizer.json's special added tokens (a tokenizer turns them into control tokens
    wherever they occur in a prompt's text)."""
    try:
        added = json.loads(tokenizer_json or "{}").get("added_tokens") or []
        return tuple(
            sorted(
                {
                    a["content"]
                    for a in added
                    if a.get("special") and isinstance(a.get("content"), str) and a["content"].strip()
                }
            )
        )
    except (ValueError, AttributeError, TypeError, KeyError):
        return ()


def _token_counter(tokenizer_json: str | None) -> Callable[[str], int] | None:
    if not tokenizer_json:
        return None
    try:
        json.loads(tokenizer_json)
        from tokenizers import Tokenizer

        tok = Tokenizer.from_str(tokenizer_json)
    except Exception:  # a server's odd tokenizer must not break completions; fall back to estimates
        return None

    def count(text: str) -> int:
        return len(tok.encode(valid_unicode(text), add_special_tokens=False).ids)

    return count
