"""`copilot-backend serve`: the OpenAI-compatible HTTP API over the engine (FastAPI + uvicorn).

HTTP only: read and validate a request, hand a ``worker.Job`` to the engine worker thread, turn its events into a
JSON body or an SSE stream. The engine itself is touched only by the worker (model_backend/worker.py).

Endpoints: POST /v1/completions, GET /v1/models, GET /v1/tokenizer, GET /health, GET /metrics (docs/backend.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import ipaddress
import json
import math
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Nothing leaves the machine: no OpenTelemetry export, no model hub.
os.environ.setdefault("OTEL_SDK_DISABLED", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# (OMP_WAIT_POLICY=PASSIVE is set by model_backend/__init__.py, which runs before this module and torch.)

import uvicorn  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402

from model_backend import chat_template  # noqa: E402
from model_backend import fim as fimlib  # noqa: E402
from model_backend.cli_options import add_speculation_arguments  # noqa: E402
from model_backend.metrics import Metrics  # noqa: E402
from model_backend.ranking import best_n  # noqa: E402
from model_backend.sequences import IDENTIFIER_CHARS, MAX_CHOICE_CHARS, MAX_CHOICES, SamplingParams  # noqa: E402
from model_backend.worker import Job, NotReady, QueueFull, Worker  # noqa: E402

PROG = "copilot-backend"


# --- limits ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1 << 20  # 1 MiB: ~250k tokens of code, far above any context we serve
    max_n: int = 16  # as the LS allows (explicitCandidates); one batch of sequences on the engine
    max_best_of: int = 16
    max_beam_width: int = 8
    max_logprobs: int = 5  # as OpenAI
    max_stop: int = 16  # OpenAI allows 4; editors' per-language stop lists need more
    max_stop_chars: int = 256
    max_seed: int = 2**63 - 1


class ApiError(Exception):
    """An error answered as OpenAI does: {"error": {"message", "type", "param", "code"}}."""

    TYPES = {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "invalid_request_error",
        405: "invalid_request_error",
        413: "invalid_request_error",
        415: "invalid_request_error",
        429: "rate_limit_error",
        499: "client_closed_request",
        500: "server_error",
        503: "server_unavailable",
    }

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.TYPES.get(self.status, "server_error"),
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


# --- request parsing (pure) -----------------------------------------------------------------------------------
@dataclass
class CompletionRequest:
    prompt: str | list[int]
    suffix: str | None = None
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    n: int = 1
    best_of: int | None = None
    logprobs: int | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False
    beam_width: int = 1
    token_healing: bool = True
    allowed_identifiers: tuple[str, ...] | None = None  # guided decoding (model_backend/guide.py)

    @property
    def samples(self) -> int:
        """Candidates the engine generates: best_of when given, else n (beam search returns n)."""
        return self.best_of if (self.best_of and self.beam_width == 1) else self.n


def _bad(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param, code)


def _wrong_type(name: str, what: str, value: Any) -> ApiError:
    return _bad(f"'{name}' must be {what}, got {json.dumps(value)[:40]}", name, "invalid_type")


def _get_int(body: dict, name: str, default: int | None, lo: int, hi: int | None = None) -> int | None:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise _wrong_type(name, "an integer", v)
    if v < lo or (hi is not None and v > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise _bad(f"'{name}' must be {bound}, got {v}", name)
    return v


def _get_float(body: dict, name: str, default: float) -> float:
    v = body.get(name)
    if v is None:
        return default
    try:
        f = float(v) if isinstance(v, int | float) and not isinstance(v, bool) else math.nan
    except OverflowError:  # a JSON integer too large for a float (1 followed by 400 zeros)
        f = math.inf
    if not math.isfinite(f):
        raise _wrong_type(name, "a number", v)
    return f


def _get_bool(body: dict, name: str, default: bool) -> bool:
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise _wrong_type(name, "true or false", v)
    return v


def _get_prompt(body: dict, vocab_size: int) -> str | list[int]:
    p = body.get("prompt")
    if p is None:
        raise _bad("'prompt' is required", "prompt", "missing_required_parameter")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str | list):
        p = p[0]  # a batch of one prompt
    if isinstance(p, str):
        return _check_text(p, "prompt")
    if isinstance(p, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
        if any(t < 0 or t >= vocab_size for t in p):
            raise _bad(f"prompt token ids must be in [0, {vocab_size})", "prompt")
        return list(p)
    if isinstance(p, list) and len(p) > 1 and all(isinstance(x, str | list) for x in p):
        raise _bad("one prompt per request: send the prompts as separate requests", "prompt", "unsupported")
    raise _bad(
        "'prompt' must be a string, a list of one string, or a list of token ids", "prompt", "invalid_type"
    )


def _check_text(text: str, name: str) -> str:
    """Text must be encodable as UTF-8 (JSON allows lone surrogates like "\\ud800"; tokenizers does not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad(f"'{name}' contains invalid Unicode (a lone surrogate escape)", name) from None
    return text


def _get_stop(body: dict, limits: Limits) -> list[str]:
    v = body.get("stop")
    if v is None:
        return []
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _bad("'stop' must be a string or a list of strings", "stop", "invalid_type")
    if len(stops) > limits.max_stop:
        raise _bad(f"'stop' takes at most {limits.max_stop} strings, got {len(stops)}", "stop")
    for s in stops:
        if not s:
            raise _bad("'stop' strings must not be empty", "stop")
        if len(s) > limits.max_stop_chars:
            raise _bad(f"'stop' strings are limited to {limits.max_stop_chars} characters", "stop")
        _check_text(s, "stop")
    return stops


UNSUPPORTED_TRUE = ("echo",)  # accepted only when false
UNSUPPORTED_NONZERO = ("presence_penalty", "frequency_penalty")


def parse_completion_request(body: Any, limits: Limits, vocab_size: int) -> CompletionRequest:
    """Validate a decoded JSON body (types and ranges; no tokenizer needed). Raises ApiError(400)."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object", None, "invalid_type")
    _get_str(body, "model")  # any name: the server serves one model
    _reject_unsupported(body)
    suffix = _get_str(body, "suffix")
    if suffix is not None:
        _check_text(suffix, "suffix")
    prompt = _get_prompt(body, vocab_size)
    if not prompt and not suffix:
        raise _bad("'prompt' must not be empty", "prompt")
    temperature, top_p, top_k = _get_sampling(body)
    n = _get_int(body, "n", 1, 1, limits.max_n)
    best_of = _get_int(body, "best_of", None, 1, limits.max_best_of)
    if best_of is not None and best_of < n:
        raise _bad(f"'best_of' ({best_of}) must be >= 'n' ({n})", "best_of")
    logprobs = _get_int(body, "logprobs", None, 0, limits.max_logprobs)
    beam_width = _get_beam_width(body, n, best_of, limits)
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise _bad("'stream_options' must be an object", "stream_options", "invalid_type")
    return CompletionRequest(
        prompt=prompt,
        suffix=suffix,
        max_tokens=_get_int(body, "max_tokens", 16, 1),
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        n=n,
        best_of=best_of,
        logprobs=logprobs,
        stop=_get_stop(body, limits),
        seed=_get_int(body, "seed", None, 0, limits.max_seed),
        stream=_get_bool(body, "stream", False),
        include_usage=_get_bool(stream_options or {}, "include_usage", False),
        beam_width=beam_width,
        token_healing=_get_bool(body, "token_healing", True),
        allowed_identifiers=_get_allowed_identifiers(body),
    )


def _get_allowed_identifiers(body: dict) -> tuple[str, ...] | None:
    """Guided decoding: the completion starts with one of these identifiers (model_backend/guide.py)."""
    value = body.get("allowed_identifiers")
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise _bad(
            "'allowed_identifiers' must be a non-empty list of strings", "allowed_identifiers", "invalid_type"
        )
    if len(value) > MAX_CHOICES:
        raise _bad(f"'allowed_identifiers' holds at most {MAX_CHOICES} names", "allowed_identifiers")
    for c in value:
        if not isinstance(c, str) or len(c) > MAX_CHOICE_CHARS or not IDENTIFIER_CHARS.fullmatch(c):
            raise _bad(
                f"'allowed_identifiers' entries must be identifier characters (at most {MAX_CHOICE_CHARS}): "
                f"{json.dumps(c)[:40]}",
                "allowed_identifiers",
            )
    return tuple(dict.fromkeys(value))


def _get_str(body: dict, name: str) -> str | None:
    v = body.get(name)
    if v is not None and not isinstance(v, str):
        raise _bad(f"'{name}' must be a string", name, "invalid_type")
    return v


def _reject_unsupported(body: dict) -> None:
    """OpenAI fields this server accepts only at their neutral values."""
    for name in UNSUPPORTED_TRUE:
        if _get_bool(body, name, False):
            raise _bad(f"'{name}' is not supported by this server", name, "unsupported")
    for name in UNSUPPORTED_NONZERO:
        if _get_float(body, name, 0.0) != 0.0:
            raise _bad(f"'{name}' is not supported by this server (only 0)", name, "unsupported")
    if body.get("logit_bias"):
        raise _bad("'logit_bias' is not supported by this server", "logit_bias", "unsupported")


def _get_sampling(body: dict) -> tuple[float, float, int]:
    """(temperature, top_p, top_k); top_k -1 is vLLM's "off", read as 0."""
    temperature = _get_float(body, "temperature", 1.0)
    if temperature < 0:
        raise _bad(f"'temperature' must be >= 0, got {temperature}", "temperature")
    top_p = _get_float(body, "top_p", 1.0)
    if not 0.0 < top_p <= 1.0:
        raise _bad(f"'top_p' must be in (0, 1], got {top_p}", "top_p")
    top_k = _get_int(body, "top_k", 0, -1)
    return temperature, top_p, max(0, top_k or 0)


def _get_beam_width(body: dict, n: int, best_of: int | None, limits: Limits) -> int:
    """1 without beam search; else the width (default max(4, n, best_of), at most the limit)."""
    use_beam = _get_bool(body, "use_beam_search", False)
    beam_width = _get_int(body, "beam_width", None, 1, limits.max_beam_width)
    if not use_beam and (beam_width or 1) <= 1:
        return 1
    if beam_width is None:
        beam_width = min(limits.max_beam_width, max(4, n, best_of or 1))
    if beam_width < 2:
        raise _bad("'beam_width' must be at least 2 for beam search", "beam_width")
    if n > beam_width:
        raise _bad(f"'n' ({n}) must be <= 'beam_width' ({beam_width})", "n")
    return beam_width


# --- prompt preparation (needs the tokenizer) -----------------------------------------------------------------
def prepare_prompt(
    req: CompletionRequest, tokenizer: Any, fim: fimlib.FimTokens | None, context_length: int
) -> tuple[str | list[int], int]:
    """(what the engine gets, prompt token count). Formats FIM; checks prompt + max_tokens against the context."""
    bos = 1 if (tokenizer.add_bos and tokenizer.bos_id is not None) else 0
    if req.suffix and fim is None:
        raise _bad(
            "this model has no fill-in-the-middle tokens, so 'suffix' is not supported; send the text "
            "before the cursor as 'prompt' only",
            "suffix",
            "fim_unsupported",
        )
    if req.suffix is not None and fim is not None:
        if not isinstance(req.prompt, str):
            raise _bad("'suffix' needs a string prompt", "prompt", "invalid_type")
        engine_prompt: str | list[int] = fimlib.fim_prompt_ids(tokenizer, fim, req.prompt, req.suffix)
        n_prompt = len(engine_prompt)
    elif isinstance(req.prompt, list):
        engine_prompt, n_prompt = req.prompt, len(req.prompt)
    else:
        engine_prompt, n_prompt = req.prompt, len(tokenizer.encode(req.prompt)) + bos
    if n_prompt >= context_length:
        raise _bad(
            f"the prompt is {n_prompt} tokens; this model's context is {context_length} tokens",
            "prompt",
            "context_length_exceeded",
        )
    if n_prompt + req.max_tokens > context_length:
        raise _bad(
            f"prompt ({n_prompt} tokens) + max_tokens ({req.max_tokens}) exceeds this model's context of "
            f"{context_length} tokens",
            "max_tokens",
            "context_length_exceeded",
        )
    return engine_prompt, n_prompt


def sampling_params(req: CompletionRequest) -> SamplingParams:
    """The engine's SamplingParams. best_of is ranked here, not in the engine: it generates `samples` candidates."""
    return SamplingParams(
        max_tokens=req.max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        n=req.samples,
        best_of=None,
        beam_width=req.beam_width,
        stop=list(req.stop),
        seed=req.seed,
        token_healing=req.token_healing,
        top_logprobs=req.logprobs or 0,
        allowed_identifiers=req.allowed_identifiers,
    )


# --- responses (pure) -----------------------------------------------------------------------------------------
def select_candidates(req: CompletionRequest, candidates: list[Any]) -> list[Any]:
    """best_of: the n candidates with the highest mean token log-prob (ranking.best_n, as the engine ranks)."""
    if req.best_of and req.best_of > req.n and req.beam_width == 1:
        return best_n(candidates, req.n)
    return candidates[: req.n]


def logprobs_dict(candidate: Any, text_base: int) -> dict[str, Any]:
    offsets, pos = [], text_base
    for tok in candidate.tokens:
        offsets.append(pos)
        pos += len(tok)
    top = getattr(candidate, "top_logprobs", None)
    return {
        "tokens": list(candidate.tokens),
        "token_logprobs": [float(x) for x in candidate.token_logprobs],
        "text_offset": offsets,
        # OpenAI's shape: per token, {token text: log-prob} of the `logprobs` most likely tokens
        "top_logprobs": None if not top else [{t: float(v) for t, v in step} for step in top],
    }


def choice_dict(index: int, candidate: Any, req: CompletionRequest, prompt_chars: int) -> dict[str, Any]:
    return {
        "text": candidate.text,
        "index": index,
        "logprobs": logprobs_dict(candidate, prompt_chars) if req.logprobs is not None else None,
        "finish_reason": candidate.finish_reason,
        "mean_logprob": _finite(candidate.mean_logprob),
    }


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def usage_dict(prompt_tokens: int, candidates: list[Any]) -> dict[str, int]:
    completion = sum(len(c.token_ids) for c in candidates)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }


def sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


# --- the app --------------------------------------------------------------------------------------------------
ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/v1/tokenizer", "/health", "/metrics")


@dataclass
class ServerState:
    worker: Worker
    metrics: Metrics
    limits: Limits = field(default_factory=Limits)
    api_key: str | None = None
    model_id: str = "default"
    created: int = field(default_factory=lambda: int(time.time()))
    tokenizer: Any = None
    fim: fimlib.FimTokens | None = None
    context_length: int = 0
    max_sequences: int = 1  # the engine's slots: best_of / n / beam_width may not exceed it
    max_open: int | None = None  # requests open at once beyond which the answer is 429
    model_spec: str | None = None  # the --model argument: where /v1/chat/completions reads the chat template
    _chat_template: tuple[str | None] | None = None  # (template,) once read

    def on_ready(self, engine: Any) -> None:
        self.tokenizer = engine.tokenizer
        self.fim = fimlib.fim_tokens(engine.tokenizer)
        self.context_length = int(getattr(engine, "max_seq_len", None) or engine.config.context_length)
        self.max_sequences = int(getattr(engine, "max_batch", 1))
        self.created = int(time.time())
        self.metrics.engine_stats = lambda: engine_stats(engine)


def engine_stats(engine: Any) -> dict[str, float]:
    """Prefix-cache numbers from the engine's EngineStats (prompt tokens, of which reused from the cache)."""
    stats = getattr(engine, "stats", None)
    prompt = getattr(stats, "prompt_tokens", None)
    reused = getattr(stats, "prefix_tokens_reused", None)
    if not isinstance(prompt, int) or not isinstance(reused, int):
        return {}
    out = {"prefix_cache_hit_tokens": float(reused), "prefix_cache_query_tokens": float(prompt)}
    if prompt:
        out["prefix_cache_hit_ratio"] = reused / prompt
    return out


def tokenizer_json(tokenizer: Any) -> str | None:
    """The HF tokenizer.json text of our Tokenizer (it wraps a `tokenizers.Tokenizer` as `.tk`)."""
    tk = getattr(tokenizer, "tk", None)
    if tk is not None and hasattr(tk, "to_str"):
        return tk.to_str()
    for v in vars(tokenizer).values():
        if hasattr(v, "to_str") and hasattr(v, "encode"):
            return v.to_str()
    return None


class StatusCounter:
    """ASGI middleware: counts responses by endpoint and status for /metrics, and answers 429 (OpenAI's JSON, not
    uvicorn's plain-text 503 of limit_concurrency) while `max_open` requests are already open."""

    def __init__(self, app: Any, metrics: Metrics, max_open: int | None = None) -> None:
        self.app, self.metrics, self.max_open = app, metrics, max_open
        self.open = 0

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = scope.get("path", "") if scope.get("path") in ENDPOINTS else "other"
        counted = False

        async def counting_send(message: dict) -> None:
            nonlocal counted
            if message["type"] == "http.response.start" and not counted:
                counted = True
                self.metrics.count_request(endpoint, message["status"])
            await send(message)

        if self.max_open is not None and self.open >= self.max_open:
            busy = ApiError(
                429,
                f"the server is busy ({self.open} requests open); retry shortly",
                None,
                "queue_full",
                {"Retry-After": "1"},
            )
            await busy.response()(scope, receive, counting_send)
            return
        self.open += 1
        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.open -= 1
            if not counted:  # the client left before any response started
                self.metrics.count_request(endpoint, 499)


def create_app(state: ServerState) -> FastAPI:
    """The FastAPI app: error handlers, the info routes and POST /v1/completions, wrapped in StatusCounter."""
    app = FastAPI(
        title="copilot-backend",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        telemetry={
            "tracing": False,
            "metrics": False,
            "logs": False,
            "auto_configure": False,
            "operation_spans": False,
        },
    )
    app.state.backend = state
    _add_error_handlers(app)
    _add_info_routes(app, state)
    _add_completion_route(app, state)
    _add_chat_route(app, state)
    return StatusCounter(app, state.metrics, state.max_open)  # type: ignore[return-value]


def _add_error_handlers(app: FastAPI) -> None:
    """Every error answers in OpenAI's shape (ApiError.body)."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return ApiError(exc.status_code, str(exc.detail), None, None, dict(exc.headers or {})).response()

    @app.exception_handler(Exception)
    async def _server_error(_: Request, exc: Exception) -> JSONResponse:
        return ApiError(500, f"internal error: {type(exc).__name__}: {exc}").response()


def check_auth(state: ServerState, request: Request) -> None:
    """401 unless the request carries the API key (when the server has one)."""
    if state.api_key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), state.api_key.encode()):
        raise ApiError(
            401,
            "missing or wrong API key: send 'Authorization: Bearer <key>'",
            None,
            "invalid_api_key",
            {"WWW-Authenticate": "Bearer"},
        )


def check_ready(worker: Worker) -> None:
    """503 while the model loads or when it failed to."""
    if worker.state == "ready":
        return
    if worker.state == "loading":
        raise ApiError(
            503, "the model is still loading; retry shortly", None, "model_loading", {"Retry-After": "2"}
        )
    raise ApiError(
        503, f"the model is not available ({worker.error or worker.state})", None, "model_unavailable"
    )


def _add_info_routes(app: FastAPI, state: ServerState) -> None:
    """GET /health, /metrics, /v1/models, /v1/tokenizer."""
    worker = state.worker

    @app.get("/health")
    async def health() -> JSONResponse:
        if worker.state == "ready":
            return JSONResponse({"status": "ready", "model": state.model_id})
        body: dict[str, Any] = {"status": "loading" if worker.state == "loading" else worker.state}
        if worker.error:
            body["error"] = worker.error
        return JSONResponse(body, status_code=503)

    @app.get("/metrics")
    async def metrics_endpoint() -> PlainTextResponse:
        return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        check_auth(state, request)
        check_ready(worker)
        entry = {
            "id": state.model_id,
            "object": "model",
            "created": state.created,
            "owned_by": "copilot-ls",
            "context_length": state.context_length,
            "fim": dict(state.fim.strings) if state.fim else None,
            # request fields for decoding guided by the client's knowledge (docs/backend.md)
            "guided_decoding": ["allowed_identifiers"],
        }
        return JSONResponse({"object": "list", "data": [entry]})

    @app.get("/v1/tokenizer")
    async def tokenizer_endpoint(request: Request) -> Response:
        check_auth(state, request)
        check_ready(worker)
        text = tokenizer_json(state.tokenizer)
        if text is None:
            raise ApiError(501, "this model's tokenizer cannot be exported as tokenizer.json")
        return Response(text, media_type="application/json")


@dataclass
class _Call:
    """One completion request in flight: what the answer needs besides the worker's events."""

    job: Job
    queue: asyncio.Queue
    req: CompletionRequest
    head: dict[str, Any]  # id, object, created, model: the first keys of every response object
    n_prompt: int
    prompt_chars: int
    done: bool = False  # the worker's last event for the job arrived

    def choice(self, index: int, text: str, candidate: Any | None = None) -> dict[str, Any]:
        """A choice object; finish_reason, mean_logprob (and logprobs when asked) once its candidate is known."""
        if candidate is None:
            return {"text": text, "index": index, "logprobs": None, "finish_reason": None}
        return {**choice_dict(index, candidate, self.req, self.prompt_chars), "text": text}

    def usage(self, candidates: list[Any]) -> dict[str, int]:
        return usage_dict(self.n_prompt, candidates)


def _add_completion_route(app: FastAPI, state: ServerState) -> None:
    """POST /v1/completions: validate, prepare the prompt, hand a Job to the worker, answer or stream."""
    worker = state.worker

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        check_auth(state, request)
        check_ready(worker)
        req = parse_completion_request(
            await read_json(request, state.limits.max_body_bytes), state.limits, state.tokenizer.vocab_size
        )
        check_sequences(req, state.max_sequences)
        call = await _submit(state, req)
        if req.stream:
            return StreamingResponse(
                stream_events(worker, call),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                background=_cancel_unless_done(worker, call),
            )
        return await collect(worker, request, call)


def parse_chat_request(body: Any) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """(messages, the /v1/completions fields of the request) of a /v1/chat/completions body. Raises ApiError."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object", None, "invalid_type")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty list", "messages", "invalid_type")
    for m in messages:
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise _bad('each message must be {"role": string, "content": string}', "messages", "invalid_type")
        _check_text(m["content"], "messages")
    if _get_bool(body, "stream", False):
        raise _bad(
            "'stream' is not supported on /v1/chat/completions by this server", "stream", "unsupported"
        )
    if _get_bool(body, "logprobs", False):
        raise _bad(
            "'logprobs' is not supported on /v1/chat/completions by this server", "logprobs", "unsupported"
        )
    fields = {
        k: body[k]
        for k in (
            "model",
            "n",
            "temperature",
            "top_p",
            "top_k",
            "max_tokens",
            "stop",
            "seed",
            "presence_penalty",
            "frequency_penalty",
            "logit_bias",
        )
        if k in body
    }
    if "max_completion_tokens" in body and "max_tokens" not in body:
        fields["max_tokens"] = body["max_completion_tokens"]
    return [{"role": m["role"], "content": m["content"]} for m in messages], fields


async def chat_prompt(state: ServerState, messages: list[dict[str, str]]) -> str:
    """The messages rendered with the served model's own chat template (read once, off the event loop)."""
    if state._chat_template is None:
        template = (
            await asyncio.to_thread(chat_template.read_template, state.model_spec)
            if state.model_spec
            else None
        )
        state._chat_template = (template,)
    tok = state.tokenizer
    names = {v: k for k, v in tok.tk.get_vocab(with_added_tokens=True).items()}
    try:
        return chat_template.render(
            state._chat_template[0],
            messages,
            bos=names.get(tok.bos_id, "") if tok.bos_id is not None else "",
            eos=names.get(tok.eos_id, "") if tok.eos_id is not None else "",
            has_chatml="<|im_start|>" in tok.tk.get_vocab(with_added_tokens=True),
        )
    except chat_template.ChatTemplateError as exc:
        raise _bad(str(exc), "messages", "chat_template") from None


def chat_response(completion: dict[str, Any]) -> dict[str, Any]:
    """A /v1/completions answer in the OpenAI chat shape."""
    return {
        "id": "chat" + str(completion.get("id", "")),
        **{k: completion[k] for k in ("created", "model") if k in completion},
        "object": "chat.completion",
        "choices": [
            {
                "index": c["index"],
                "message": {"role": "assistant", "content": c["text"]},
                "logprobs": None,
                "finish_reason": c["finish_reason"],
            }
            for c in completion["choices"]
        ],
        "usage": completion.get("usage"),
    }


def _add_chat_route(app: FastAPI, state: ServerState) -> None:
    """POST /v1/chat/completions (no streaming): the messages through the model's chat template, then the
    same engine job as /v1/completions (without token healing: the prompt ends in the template's own turn)."""
    worker = state.worker

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        check_auth(state, request)
        check_ready(worker)
        messages, fields = parse_chat_request(await read_json(request, state.limits.max_body_bytes))
        prompt = await chat_prompt(state, messages)
        req = parse_completion_request(
            {**fields, "prompt": prompt, "token_healing": False}, state.limits, state.tokenizer.vocab_size
        )
        if "<|im_end|>" in prompt and "<|im_end|>" not in req.stop and len(req.stop) < state.limits.max_stop:
            req.stop.append("<|im_end|>")  # the end of the assistant's turn, should the model not emit EOS
        check_sequences(req, state.max_sequences)
        call = await _submit(state, req)
        answer = await collect(worker, request, call)
        return JSONResponse(chat_response(json.loads(bytes(answer.body))))


def check_sequences(req: CompletionRequest, max_sequences: int) -> None:
    """400 when the request's samples or beams do not fit the engine's decode batch (--max-batch)."""
    sequences = req.beam_width if req.beam_width > 1 else req.samples
    if sequences > max_sequences:
        name = "beam_width" if req.beam_width > 1 else ("best_of" if req.best_of else "n")
        raise _bad(
            f"'{name}' needs {sequences} sequences but this server decodes at most "
            f"{max_sequences} at once (--max-batch)",
            name,
        )


async def _submit(state: ServerState, req: CompletionRequest) -> _Call:
    """Prepare the prompt (off the event loop when it is long) and queue the job; 429 / 503 when it can't."""
    prepare = (req, state.tokenizer, state.fim, state.context_length)
    if isinstance(req.prompt, str) and len(req.prompt) + len(req.suffix or "") > 32_000:
        engine_prompt, n_prompt = await asyncio.to_thread(prepare_prompt, *prepare)  # keep the loop free
    else:
        engine_prompt, n_prompt = prepare_prompt(*prepare)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    job = Job(
        id=f"cmpl-{uuid.uuid4().hex}",
        prompt=engine_prompt,
        params=sampling_params(req),
        sink=lambda ev: loop.call_soon_threadsafe(queue.put_nowait, ev),
        n_candidates=req.samples,
        stream=req.stream,
        prompt_tokens=n_prompt,
    )
    try:
        state.worker.submit(job)
    except QueueFull as exc:
        raise ApiError(
            429, f"the server is busy ({exc}); retry shortly", None, "queue_full", {"Retry-After": "1"}
        ) from None
    except NotReady as exc:
        raise ApiError(503, f"the model is not available ({exc})", None, "model_unavailable") from None
    head = {"id": job.id, "object": "text_completion", "created": int(time.time()), "model": state.model_id}
    prompt_chars = len(req.prompt) if isinstance(req.prompt, str) else 0
    return _Call(job, queue, req, head, n_prompt, prompt_chars)


async def collect(worker: Worker, request: Request, call: _Call) -> Response:
    """A non-streaming answer: wait for the job's end (cancelling it when the client disconnects)."""
    watcher = asyncio.create_task(
        _watch_disconnect(request, lambda: worker.cancel(call.job.id, "disconnect"))
    )
    try:
        while True:
            event = await call.queue.get()
            kind = event[0]
            if kind == "done":
                call.done = True
                chosen = select_candidates(call.req, event[1])
                return JSONResponse(
                    {
                        **call.head,
                        "choices": [
                            choice_dict(i, c, call.req, call.prompt_chars) for i, c in enumerate(chosen)
                        ],
                        "usage": call.usage(event[1]),
                    }
                )
            if kind == "error":
                call.done = True
                raise _job_error(event[1], event[2])
            if kind == "cancelled":
                call.done = True
                if event[1] == "shutdown":
                    raise ApiError(503, "the server is shutting down", None, "shutting_down")
                raise ApiError(499, "the client closed the request", None, "cancelled")
    finally:
        watcher.cancel()
        if not call.done:  # this handler was cancelled (client gone, shutdown)
            worker.cancel(call.job.id, "disconnect")


async def stream_events(worker: Worker, call: _Call) -> AsyncIterator[str]:
    """SSE: text deltas as they come; each choice's last chunk carries finish_reason (and logprobs)."""
    req = call.req
    buffered = req.samples != req.n or req.beam_width > 1  # ranked or beam: known only at the end
    sent: dict[int, str] = {}
    closed: set[int] = set()

    def chunk(index: int, text: str, candidate: Any | None = None) -> str:
        return sse({**call.head, "choices": [call.choice(index, text, candidate)]})

    def final(index: int, candidate: Any) -> str:
        already = sent.get(index, "")
        rest = candidate.text[len(already) :] if candidate.text.startswith(already) else ""
        closed.add(index)
        return chunk(index, rest, candidate)

    try:
        while True:
            event = await call.queue.get()
            kind = event[0]
            if kind == "delta":
                out = event[1]
                if buffered or out.index in closed:
                    continue
                if out.finished and out.candidate is not None:
                    yield final(out.index, out.candidate)
                elif out.delta:
                    sent[out.index] = sent.get(out.index, "") + out.delta
                    yield chunk(out.index, out.delta)
                continue
            call.done = True
            if kind == "done":
                for i, c in enumerate(select_candidates(req, event[1])):
                    idx = i if buffered else c.index
                    if idx not in closed:
                        yield final(idx, c)
                if req.include_usage:
                    yield sse({**call.head, "choices": [], "usage": call.usage(event[1])})
            elif kind == "error":
                yield sse(_job_error(event[1], event[2]).body())
            elif event[1] != "shutdown":  # cancelled by the client: nobody reads
                return
            else:  # cancelled by a shutdown
                yield sse(ApiError(503, "the server is shutting down", None, "shutting_down").body())
            yield sse("[DONE]")
            return
    finally:
        if not call.done:
            worker.cancel(call.job.id, "disconnect")


def _job_error(status: int, message: str) -> ApiError:
    """A worker's ("error", status, message) event; its only 503 is a job the shutdown dropped from the queue."""
    return ApiError(status, message, None, "shutting_down" if status == 503 else None)


def _cancel_unless_done(worker: Worker, call: _Call) -> Any:
    from starlette.background import BackgroundTask

    def cancel() -> None:
        if not call.done:
            call.done = True
            worker.cancel(call.job.id, "disconnect")

    return BackgroundTask(cancel)


async def _watch_disconnect(request: Request, on_disconnect: Callable[[], None]) -> None:
    """Wait on the ASGI receive channel (the body is already read): http.disconnect means the client left."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            on_disconnect()
            return


async def read_json(request: Request, limit: int) -> Any:
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise ApiError(
            415,
            f"the body must be JSON (Content-Type: application/json), not '{ctype[:60]}'",
            None,
            "unsupported_media_type",
        )
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ApiError(413, f"the body is {length} bytes; the limit is {limit}", None, "body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the body is over the limit of {limit} bytes", None, "body_too_large")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise _bad("the body is empty; send a JSON object", None, "invalid_json")
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise _bad(f"the body is not valid JSON: {str(exc)[:200]}", None, "invalid_json") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# --- the command ----------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default="default", help="'default' (bundled SmolLM2-135M) or a GGUF/HF path"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: loopback only)"
    )
    parser.add_argument("--port", type=int, default=8765, help="port (0 = any free port; the line shows it)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--api-key",
        default=os.environ.get("COPILOT_BACKEND_API_KEY"),
        help="require 'Authorization: Bearer KEY' on /v1/* (default: $COPILOT_BACKEND_API_KEY)",
    )
    parser.add_argument(
        "--max-batch", type=_positive, default=8, help="requests decoded together (default 8)"
    )
    parser.add_argument(
        "--prefill-chunk",
        type=_non_negative,
        default=128,
        help="while others decode, prefill new prompts this many tokens per step between their "
        "decode steps (0 = a new prompt is prefilled whole first; default 128)",
    )
    parser.add_argument(
        "--quantize",
        default="auto",
        choices=["auto", "blocks", "fp16", "int8", "none"],
        help="CPU weight format (default auto: the GGUF's own blocks for decode where the "
        "kernel builds, else fp16; see docs/performance.md)",
    )
    parser.add_argument(
        "--cache-slots",
        type=_positive,
        default=None,
        help="KV-cache slots, >= --max-batch: idle ones keep finished requests' prefixes for the "
        "next keystroke (default 4 x --max-batch, fewer if memory is short)",
    )
    parser.add_argument(
        "--max-queue",
        type=_non_negative,
        default=64,
        help="requests waiting beyond the batch before 429 (default 64)",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=10.0,
        help="seconds in-flight requests get to finish after SIGTERM/SIGINT (default 10)",
    )
    add_speculation_arguments(parser)


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return v


def _non_negative(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return v


SHUTDOWN_GRACE_S = (
    5.0  # after --shutdown-timeout: time for the cancelled requests to send their 503 / SSE error
)


class _Server(uvicorn.Server):
    """uvicorn, but a SIGTERM/SIGINT ends with exit code 0 (uvicorn re-raises the signal after shutdown), and
    requests still running `deadline_s` after it are cancelled through `on_deadline` (the worker), so they answer
    503 `shutting_down` (SSE: an error event and [DONE]) before uvicorn's own timeout cuts their connections."""

    def __init__(
        self,
        config: uvicorn.Config,
        deadline_s: float = math.inf,
        on_deadline: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self.deadline_s, self.on_deadline = deadline_s, on_deadline

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        timer = None
        if self.on_deadline is not None and math.isfinite(self.deadline_s):
            timer = asyncio.get_running_loop().call_later(max(0.0, self.deadline_s), self.on_deadline)
        try:
            await super().shutdown(sockets)
        finally:
            if timer is not None:
                timer.cancel()

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handle(sig: int, _frame: Any) -> None:
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True

        original = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def log(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def model_id(spec: str) -> str:
    try:
        from model_backend.weights import resolve_model

        path = resolve_model(spec)
        return path.stem if path.is_file() else path.name
    except Exception:  # noqa: BLE001 - the engine load reports the real error
        return Path(spec).name or spec


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def load_engine(args: argparse.Namespace, model_name: str) -> Any:
    """The engine `serve`'s flags describe (runs in the worker thread); logs the time and what it loaded."""
    from model_backend.engine import Engine

    t0 = time.monotonic()
    log(f"loading model '{args.model}' on device {args.device} ...")
    engine = Engine.load(
        args.model,
        device=args.device,
        max_batch=args.max_batch,
        cache_slots=getattr(args, "cache_slots", None),
        quantize=getattr(args, "quantize", "auto"),
        prefill_interleave=getattr(args, "prefill_chunk", 128),
    )
    if getattr(args, "speculate", "off") != "off" or getattr(args, "draft_model", None):
        engine.set_speculation(args.speculate, args.draft_model, quantize=getattr(args, "quantize", "auto"))
        log(
            f"speculative decoding: {args.speculate}"
            + (f", draft model {args.draft_model}" if args.draft_model else "")
        )
    log(
        f"model ready in {time.monotonic() - t0:.1f} s: {model_name}, context "
        f"{getattr(engine, 'max_seq_len', '?')} tokens, device {getattr(engine, 'device', '?')}, "
        f"{getattr(engine, 'cache_slots', '?')} KV-cache slots, weights {getattr(engine, 'weight_format', '?')}"
    )
    return engine


class _LoadFailure:
    """What a failed model load does from the worker thread: log, exit code 1, and stop the HTTP server."""

    def __init__(self) -> None:
        self.exit_code = 0
        self.server: _Server | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def __call__(self, exc: BaseException) -> None:
        log(f"error: could not load the model: {type(exc).__name__}: {exc}")
        self.exit_code = 1
        if self.server is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(setattr, self.server, "should_exit", True)


def _model_path(spec: str) -> str | None:
    """The file or folder the --model argument names (None when it cannot be resolved; chat then uses ChatML)."""
    try:
        from model_backend.weights import resolve_model

        return str(resolve_model(spec))
    except Exception:  # the load reports a bad --model itself
        return None


def run(args: argparse.Namespace) -> int:
    if getattr(args, "cache_slots", None) is not None and args.cache_slots < args.max_batch:
        log(f"error: --cache-slots ({args.cache_slots}) must be >= --max-batch ({args.max_batch})")
        return 2
    metrics, failure, name = Metrics(), _LoadFailure(), model_id(args.model)
    worker = Worker(
        lambda: load_engine(args, name),
        max_queue=args.max_queue,
        max_active=args.max_batch,
        metrics=metrics,
        on_failed=failure,
    )
    state = ServerState(
        worker=worker,
        metrics=metrics,
        api_key=args.api_key or None,
        model_id=name,
        model_spec=_model_path(args.model),
        max_open=max(256, 4 * (args.max_queue + args.max_batch)),
    )
    worker.on_ready = state.on_ready
    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        log(f"error: cannot listen on {args.host}:{args.port}: {exc}")
        return 1
    if not _is_loopback(args.host) and not args.api_key:
        log(f"warning: listening on {args.host} without --api-key: anyone who can reach this port can use it")
    config = uvicorn.Config(
        create_app(state),
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=args.shutdown_timeout + SHUTDOWN_GRACE_S,
        server_header=False,
    )
    failure.server = _Server(
        config, deadline_s=args.shutdown_timeout, on_deadline=lambda: worker.stop(timeout=0)
    )
    host = f"[{args.host}]" if ":" in args.host else args.host
    try:
        asyncio.run(_serve(failure, worker, sock, f"http://{host}:{sock.getsockname()[1]}"))
    finally:
        worker.stop(timeout=5.0)
        sock.close()
    if failure.exit_code == 0:
        log("stopped")
    return failure.exit_code


async def _serve(failure: _LoadFailure, worker: Worker, sock: socket.socket, url: str) -> None:
    """Start the worker (it loads the model) and HTTP; print the address line once HTTP is up."""
    server = failure.server
    assert server is not None
    failure.loop = asyncio.get_running_loop()
    worker.start()
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if server.started:
        print(f"{PROG}: listening on {url}", flush=True)
    await task
