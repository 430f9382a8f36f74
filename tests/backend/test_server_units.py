"""Unit tests of the server's pure parts: request validation, best_of ranking, FIM prompts, metrics text, and that
FastAPI's telemetry is off. The HTTP behaviour itself is tested end to end in test_server.py."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from fastapi.responses import PlainTextResponse

from model_backend import fim
from model_backend.metrics import Metrics, parse
from model_backend.server import (
    ApiError,
    CompletionRequest,
    Limits,
    ServerState,
    StatusCounter,
    create_app,
    parse_completion_request,
    prepare_prompt,
    select_candidates,
)
from model_backend.worker import Worker

LIMITS = Limits()


def parse_ok(**body: object) -> CompletionRequest:
    return parse_completion_request({"prompt": "x", **body}, LIMITS, vocab_size=100)


def test_defaults_follow_openai() -> None:
    req = parse_ok()
    assert (req.max_tokens, req.temperature, req.top_p, req.n, req.best_of, req.stream) == (
        16,
        1.0,
        1.0,
        1,
        None,
        False,
    )
    assert req.samples == 1 and req.beam_width == 1 and req.stop == []


def test_prompt_forms_and_stop_forms() -> None:
    assert parse_completion_request({"prompt": ["abc"]}, LIMITS, 100).prompt == "abc"
    assert parse_completion_request({"prompt": [1, 2, 3]}, LIMITS, 100).prompt == [1, 2, 3]
    assert parse_completion_request({"prompt": [[1, 2]]}, LIMITS, 100).prompt == [1, 2]
    assert parse_ok(stop="\n").stop == ["\n"]
    assert parse_ok(max_tokens=8.0).max_tokens == 8  # an integral float is an integer
    assert parse_ok(top_k=-1).top_k == 0  # vLLM's "off"


@pytest.mark.parametrize(
    "body, param",
    [
        ({"n": 2, "best_of": 1}, "best_of"),
        ({"top_p": 0.0}, "top_p"),
        ({"temperature": -1}, "temperature"),
        ({"max_tokens": True}, "max_tokens"),
        ({"use_beam_search": True, "n": 5, "beam_width": 4}, "n"),
        ({"stream_options": []}, "stream_options"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"temperature": 10**400}, "temperature"),  # a JSON integer too large for a float
        ({"top_p": -(10**400)}, "top_p"),
        ({"frequency_penalty": 10**400}, "frequency_penalty"),
    ],
)
def test_invalid_values_name_their_param(body: dict, param: str) -> None:
    with pytest.raises(ApiError) as err:
        parse_ok(**body)
    assert err.value.status == 400 and err.value.param == param
    assert set(err.value.body()["error"]) == {"message", "type", "param", "code"}


def test_best_of_returns_the_top_mean_logprobs() -> None:
    cands = [SimpleNamespace(index=i, mean_logprob=lp) for i, lp in enumerate([-1.0, -0.2, -3.0, -0.5])]
    req = parse_ok(n=2, best_of=4)
    assert req.samples == 4
    assert [c.index for c in select_candidates(req, cands)] == [1, 3]
    assert [c.index for c in select_candidates(parse_ok(n=4), cands)] == [0, 1, 2, 3]  # n alone keeps order


class Tok:
    vocab_size, bos_id, add_bos = 100, 1, True
    special = {"fim_prefix": 10, "fim_suffix": 11, "fim_middle": 12}

    def encode(self, text: str) -> list[int]:
        return [50 + (ord(c) % 40) for c in text]

    def token_bytes(self, i: int) -> bytes:
        return {10: b"<fim_prefix>", 11: b"<fim_suffix>", 12: b"<fim_middle>"}.get(i, b"?")


def test_fim_prompt_layout_and_description() -> None:
    tok = Tok()
    tokens = fim.fim_tokens(tok)
    assert tokens is not None
    assert fim.describe(tok) == {
        "prefix": "<fim_prefix>",
        "suffix": "<fim_suffix>",
        "middle": "<fim_middle>",
        "file_sep": None,
    }
    ids = fim.fim_prompt_ids(tok, tokens, "ab", "c")
    assert ids == [1, 10, *tok.encode("ab"), 11, *tok.encode("c"), 12]
    engine_prompt, n = prepare_prompt(parse_ok(prompt="ab", suffix="c"), tok, tokens, context_length=64)
    assert engine_prompt == ids and n == len(ids)
    no_fim = SimpleNamespace(special={}, bos_id=None, add_bos=False)
    assert fim.fim_tokens(no_fim) is None


def test_context_limit_counts_bos_and_max_tokens() -> None:
    tok = Tok()
    _, n = prepare_prompt(parse_ok(prompt="abc", max_tokens=4), tok, None, context_length=8)
    assert n == 4  # BOS + 3
    with pytest.raises(ApiError) as err:
        prepare_prompt(parse_ok(prompt="abc", max_tokens=5), tok, None, context_length=8)
    assert err.value.param == "max_tokens" and err.value.code == "context_length_exceeded"
    with pytest.raises(ApiError) as err:
        prepare_prompt(parse_ok(prompt="abc", suffix="d"), tok, None, context_length=8)
    assert err.value.param == "suffix" and err.value.code == "fim_unsupported"


def test_metrics_text_parses_and_has_the_families() -> None:
    m = Metrics()
    m.count_request("/v1/completions", 200)
    m.count_cancellation("disconnect")
    m.observe(m.prefill_seconds, 0.03)
    m.engine_stats = lambda: {
        "prefix_cache_hit_tokens": 30.0,
        "prefix_cache_query_tokens": 40.0,
        "prefix_cache_hit_ratio": 0.75,
    }
    values = parse(m.render())
    assert values['copilot_backend_requests_total{endpoint="/v1/completions",status="200"}'] == 1
    assert values['copilot_backend_cancellations_total{reason="disconnect"}'] == 1
    assert values['copilot_backend_prefill_seconds_bucket{le="0.05"}'] == 1
    assert values['copilot_backend_prefill_seconds_bucket{le="0.025"}'] == 0
    assert values["copilot_backend_prefix_cache_hit_ratio"] == 0.75
    assert math.isnan(parse(Metrics().render())["copilot_backend_prefix_cache_hit_ratio"])


def test_fastapi_telemetry_is_off() -> None:
    state = ServerState(worker=Worker(lambda: None), metrics=Metrics())
    app = create_app(state).app
    assert not app._native_telemetry.enabled()
    assert app._telemetry["auto_configure"] is False
    assert app.docs_url is None and app.openapi_url is None


class DroppedAtShutdown:
    """A worker stub that answers every job as the shutdown answers a queued one."""

    state, error = "ready", None

    def submit(self, job: object) -> None:
        job.sink(("error", 503, "the server is shutting down"))  # type: ignore[attr-defined]

    def cancel(self, job_id: str, reason: str = "disconnect") -> None:
        pass


async def test_a_job_the_shutdown_drops_answers_503_shutting_down() -> None:
    import httpx

    state = ServerState(
        worker=DroppedAtShutdown(),
        metrics=Metrics(),
        tokenizer=Tok(),  # type: ignore[arg-type]
        context_length=64,
        max_sequences=1,
    )
    transport = httpx.ASGITransport(app=create_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        r = await client.post("/v1/completions", json={"prompt": "ab"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
        r = await client.post("/v1/completions", json={"prompt": "ab", "stream": True})
        events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and '"code": "shutting_down"' in events[0]


async def test_requests_over_the_open_limit_get_a_json_429() -> None:
    """Beyond `max_open` requests at once the answer is OpenAI's error JSON with Retry-After (it was uvicorn's
    plain-text 503 "Service Unavailable", which copilot-ls also took for a model still loading)."""
    import asyncio

    import httpx

    release = asyncio.Event()

    async def slow_app(scope: dict, receive: object, send: object) -> None:
        await release.wait()
        await PlainTextResponse("ok")(scope, receive, send)  # type: ignore[arg-type]

    app = StatusCounter(slow_app, Metrics(), max_open=1)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        first = asyncio.create_task(client.get("/health"))
        while app.open < 1:
            await asyncio.sleep(0.001)
        r = await client.post("/v1/completions", json={"prompt": "x"})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "queue_full" and r.json()["error"]["type"] == "rate_limit_error"
        release.set()
        assert (await first).status_code == 200
        assert app.open == 0
