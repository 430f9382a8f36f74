"""End-to-end tests of `copilot-backend serve`: a real server process on a free loopback port, the real default
model (SmolLM2-135M), httpx. Most tests share the session server (`backend_url`); tests that need other flags
(API key, tiny queue), a FIM model, or kill the server start their own (`start_backend`).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import tokenizers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model_backend.metrics import parse as parse_metrics

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
PROMPT = "def fibonacci(n):\n"
LONG_PROMPT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"  # keeps counting: a generation that does not stop early


def complete(url: str, timeout: float = 300, headers: dict | None = None, **body: Any) -> httpx.Response:
    # json.dumps escapes non-ASCII, so lone surrogates ("\ud800") travel as JSON allows (httpx's json= cannot)
    return httpx.post(
        url + "/v1/completions",
        content=json.dumps(body).encode(),
        timeout=timeout,
        headers={"content-type": "application/json", **(headers or {})},
    )


def ok(url: str, **body: Any) -> dict:
    r = complete(url, **body)
    assert r.status_code == 200, r.text
    return r.json()


def metrics(url: str) -> dict[str, float]:
    r = httpx.get(url + "/metrics", timeout=30)
    assert r.status_code == 200
    return parse_metrics(r.text)


def cancellations(url: str) -> float:
    return sum(v for k, v in metrics(url).items() if k.startswith("copilot_backend_cancellations_total"))


def sse_events(lines: list[str]) -> list[Any]:
    """Parse `data: ...` lines: JSON objects, and the final "[DONE]" string."""
    out: list[Any] = []
    for line in lines:
        if line.startswith("data: "):
            data = line[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def stream(url: str, **body: Any) -> tuple[dict[int, str], dict[int, dict], list[Any]]:
    """POST with stream=True: (text per index, last choice per index, all events)."""
    with httpx.stream("POST", url + "/v1/completions", json={**body, "stream": True}, timeout=300) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(list(r.iter_lines()))
    assert events and events[-1] == "[DONE]"
    texts: dict[int, str] = {}
    finals: dict[int, dict] = {}
    for ev in events[:-1]:
        for ch in ev["choices"]:
            texts[ch["index"]] = texts.get(ch["index"], "") + ch["text"]
            if ch["finish_reason"] is not None:
                finals[ch["index"]] = ch
    return texts, finals, events


# --- the API ----------------------------------------------------------------------------------------------------
def test_health_models_and_tokenizer(backend_url: str) -> None:
    h = httpx.get(backend_url + "/health", timeout=30)
    assert h.status_code == 200 and h.json()["status"] == "ready"
    models = httpx.get(backend_url + "/v1/models", timeout=30).json()
    assert models["object"] == "list" and len(models["data"]) == 1
    entry = models["data"][0]
    assert entry["object"] == "model" and entry["id"]
    assert isinstance(entry["context_length"], int) and entry["context_length"] >= 2048
    assert entry["fim"] is None  # SmolLM2 has no FIM tokens
    text = httpx.get(backend_url + "/v1/tokenizer", timeout=30).text
    tk = tokenizers.Tokenizer.from_str(text)
    ids = tk.encode(PROMPT, add_special_tokens=False).ids
    body = ok(backend_url, prompt=PROMPT, max_tokens=1, temperature=0)
    assert body["usage"]["prompt_tokens"] in (len(ids), len(ids) + 1)  # + BOS for models that want one
    assert body["model"] == entry["id"]


def test_completion_response_shape_logprobs_and_usage(backend_url: str) -> None:
    body = ok(backend_url, model="anything", prompt=PROMPT, max_tokens=8, temperature=0, logprobs=0)
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] in ("stop", "length") and choice["text"]
    lp = choice["logprobs"]
    n = len(lp["tokens"])
    assert 1 <= n <= 8 and len(lp["token_logprobs"]) == n and len(lp["text_offset"]) == n
    assert all(x <= 0 for x in lp["token_logprobs"])
    assert lp["text_offset"][0] == len(PROMPT) and lp["text_offset"] == sorted(lp["text_offset"])
    usage = body["usage"]
    assert usage["completion_tokens"] == n
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    if choice["finish_reason"] == "length":
        assert math.isclose(choice["mean_logprob"], sum(lp["token_logprobs"]) / n, rel_tol=1e-6, abs_tol=1e-6)
    plain = ok(backend_url, prompt=[PROMPT], max_tokens=8, temperature=0)["choices"][0]
    assert plain["logprobs"] is None and plain["text"] == choice["text"]


def test_top_logprobs_as_openai_shapes_them(backend_url: str) -> None:
    """logprobs=N: per token, {text: log-prob} of the N most likely tokens; greedy picks the most likely one."""
    body = ok(backend_url, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3, token_healing=False)
    lp = body["choices"][0]["logprobs"]
    tops = lp["top_logprobs"]
    assert len(tops) == len(lp["tokens"]) >= 1
    for tok, chosen, top in zip(lp["tokens"], lp["token_logprobs"], tops, strict=True):
        assert 1 <= len(top) <= 3 and all(v <= 0 for v in top.values())
        assert math.isclose(max(top.values()), chosen, abs_tol=1e-5)  # greedy: the chosen token leads
        assert tok in top
    assert (
        ok(backend_url, prompt=PROMPT, max_tokens=2, temperature=0, logprobs=0)["choices"][0]["logprobs"][
            "top_logprobs"
        ]
        is None
    )
    bad = httpx.post(f"{backend_url}/v1/completions", json={"prompt": PROMPT, "logprobs": 6}, timeout=30)
    assert bad.status_code == 400 and "logprobs" in bad.text


def test_greedy_answer_equals_generate_command(backend_url: str) -> None:
    server_text = ok(backend_url, prompt=PROMPT, max_tokens=16, temperature=0)["choices"][0]["text"]
    cmd = [
        sys.executable,
        "-m",
        "model_backend.cli",
        "generate",
        PROMPT,
        "--max-tokens",
        "16",
        "--temperature",
        "0",
        "--json",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert server_text.strip(), "the model produced nothing"
    assert json.loads(proc.stdout)[0]["text"] == server_text


def test_stream_and_non_stream_give_the_same_text(backend_url: str) -> None:
    for params in ({"temperature": 0, "logprobs": 0}, {"temperature": 0.9, "top_p": 0.95, "seed": 1234}):
        body = ok(backend_url, prompt=PROMPT, max_tokens=12, **params)
        texts, finals, events = stream(backend_url, prompt=PROMPT, max_tokens=12, **params)
        assert texts[0] == body["choices"][0]["text"]
        assert finals[0]["finish_reason"] == body["choices"][0]["finish_reason"]
        if "logprobs" in params:  # the last chunk carries the whole choice's logprobs
            streamed, plain = finals[0]["logprobs"], body["choices"][0]["logprobs"]
            assert streamed["tokens"] == plain["tokens"] and streamed["text_offset"] == plain["text_offset"]
            assert streamed["token_logprobs"] == pytest.approx(plain["token_logprobs"], abs=1e-3)
        assert len(events) > 3  # text arrived in pieces, not in one final chunk
        assert all(e["object"] == "text_completion" and e["id"] == events[0]["id"] for e in events[:-1])


def test_stream_with_usage_and_stop(backend_url: str) -> None:
    texts, finals, events = stream(
        backend_url,
        prompt=LONG_PROMPT,
        max_tokens=40,
        temperature=0,
        stop=[" 15"],
        stream_options={"include_usage": True},
    )
    assert events[-2]["choices"] == [] and events[-2]["usage"]["prompt_tokens"] > 0
    body = ok(backend_url, prompt=LONG_PROMPT, max_tokens=40, temperature=0, stop=[" 15"])
    assert texts[0] == body["choices"][0]["text"]
    if body["choices"][0]["finish_reason"] == "stop":
        assert " 15" not in texts[0]


def test_n_and_best_of(backend_url: str) -> None:
    common = {"prompt": PROMPT, "max_tokens": 10, "temperature": 1.0, "seed": 7}
    all4 = ok(backend_url, n=4, **common)["choices"]
    assert [c["index"] for c in all4] == [0, 1, 2, 3]
    assert all(isinstance(c["mean_logprob"], float) for c in all4)
    best = ok(backend_url, n=2, best_of=4, **common)
    chosen = best["choices"]
    assert [c["index"] for c in chosen] == [0, 1]
    ranked = sorted(all4, key=lambda c: -c["mean_logprob"])[:2]
    assert [c["text"] for c in chosen] == [c["text"] for c in ranked]
    assert chosen[0]["mean_logprob"] >= chosen[1]["mean_logprob"]
    # usage counts every generated sample, as OpenAI bills best_of
    assert best["usage"]["completion_tokens"] >= sum(1 for _ in chosen)
    texts, finals, _ = stream(backend_url, n=2, best_of=4, **common)
    assert [texts[0], texts[1]] == [c["text"] for c in ranked]
    assert len(ok(backend_url, n=3, prompt=PROMPT, max_tokens=4)["choices"]) == 3


def test_beam_search(backend_url: str) -> None:
    body = ok(backend_url, prompt=PROMPT, max_tokens=8, n=2, use_beam_search=True, beam_width=3)
    choices = body["choices"]
    assert len(choices) == 2 and all(c["text"] for c in choices)
    assert choices[0]["mean_logprob"] >= choices[1]["mean_logprob"]


# --- bad input ----------------------------------------------------------------------------------------------------
JSON = {"content-type": "application/json"}
BAD_BODIES: list[tuple[str, Any, int, str | None]] = [
    # (case, JSON body or raw bytes, status, param)
    ("malformed json", b'{"prompt": "x",', 400, None),
    ("not an object", b"[1, 2]", 400, None),
    ("NaN", b'{"prompt": "x", "temperature": NaN}', 400, None),
    ("empty body", b"", 400, None),
    ("missing prompt", {"max_tokens": 4}, 400, "prompt"),
    ("empty prompt", {"prompt": ""}, 400, "prompt"),
    ("prompt wrong type", {"prompt": 42}, 400, "prompt"),
    ("two prompts", {"prompt": ["a", "b"]}, 400, "prompt"),
    ("max_tokens string", {"prompt": "x", "max_tokens": "8"}, 400, "max_tokens"),
    ("max_tokens zero", {"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ("max_tokens bool", {"prompt": "x", "max_tokens": True}, 400, "max_tokens"),
    ("top_p zero", {"prompt": "x", "top_p": 0}, 400, "top_p"),
    ("top_p above one", {"prompt": "x", "top_p": 1.5}, 400, "top_p"),
    ("negative temperature", {"prompt": "x", "temperature": -0.5}, 400, "temperature"),
    ("temperature string", {"prompt": "x", "temperature": "hot"}, 400, "temperature"),
    ("n zero", {"prompt": "x", "n": 0}, 400, "n"),
    ("n over limit", {"prompt": "x", "n": 50}, 400, "n"),
    ("best_of over limit", {"prompt": "x", "best_of": 100}, 400, "best_of"),
    ("best_of below n", {"prompt": "x", "n": 3, "best_of": 2}, 400, "best_of"),
    ("logprobs over limit", {"prompt": "x", "logprobs": 50}, 400, "logprobs"),
    ("stop wrong type", {"prompt": "x", "stop": [1, 2]}, 400, "stop"),
    ("too many stops", {"prompt": "x", "stop": [f"s{i}" for i in range(17)]}, 400, "stop"),
    ("empty stop", {"prompt": "x", "stop": [""]}, 400, "stop"),
    ("stream not bool", {"prompt": "x", "stream": "yes"}, 400, "stream"),
    ("seed negative", {"prompt": "x", "seed": -1}, 400, "seed"),
    ("token id out of range", {"prompt": [10**9]}, 400, "prompt"),
    ("suffix without FIM tokens", {"prompt": "def f(", "suffix": "\n    return x\n"}, 400, "suffix"),
    ("model wrong type", {"prompt": "x", "model": 3}, 400, "model"),
    ("echo unsupported", {"prompt": "x", "echo": True}, 400, "echo"),
    ("lone surrogate", {"prompt": "a\ud800"}, 400, "prompt"),
]


def test_every_bad_input_gets_its_status(backend_url: str) -> None:
    context = httpx.get(backend_url + "/v1/models", timeout=30).json()["data"][0]["context_length"]
    cases = list(BAD_BODIES) + [
        (
            "max_tokens + prompt over the context",
            {"prompt": PROMPT, "max_tokens": context},
            400,
            "max_tokens",
        ),
        ("prompt over the context", {"prompt": "x y" * (context + 10)}, 400, "prompt"),
    ]
    for name, body, status, param in cases:
        if isinstance(body, bytes):
            r = httpx.post(backend_url + "/v1/completions", content=body, headers=JSON, timeout=60)
        else:
            r = complete(backend_url, timeout=60, **body)
        assert r.status_code == status, f"{name}: {r.status_code} {r.text}"
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"], name
        assert err["type"] == "invalid_request_error", name
        assert err["param"] == param, f"{name}: {err}"
    assert "fill-in-the-middle" in complete(backend_url, prompt="a", suffix="b").json()["error"]["message"]

    big = httpx.post(
        backend_url + "/v1/completions",
        content=b'{"prompt": "' + b"x" * (2 << 20) + b'"}',
        headers=JSON,
        timeout=60,
    )
    assert big.status_code == 413 and big.json()["error"]["code"] == "body_too_large"
    form = httpx.post(backend_url + "/v1/completions", data={"prompt": "x"}, timeout=60)
    assert form.status_code == 415 and "error" in form.json()
    assert httpx.get(backend_url + "/v1/completions", timeout=30).status_code == 405
    missing = httpx.get(backend_url + "/v1/nothing", timeout=30)
    assert missing.status_code == 404 and "error" in missing.json()
    m = metrics(backend_url)
    assert m.get('copilot_backend_requests_total{endpoint="/v1/completions",status="400"}', 0) >= len(cases)
    assert not any('status="500"' in k for k in m), "a bad input produced a 500"
    assert ok(backend_url, prompt=PROMPT, max_tokens=2)["choices"]  # still serving


VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 4),
    st.floats(-2, 3, allow_nan=False),
    st.text(max_size=8),
    st.sampled_from(["", "\ud800", "x" * 300, "def f(", "\n"]),
    st.lists(st.integers(-1, 5), max_size=3),
    st.lists(st.text(max_size=3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
FIELDS = (
    "prompt",
    "suffix",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "n",
    "best_of",
    "logprobs",
    "stop",
    "seed",
    "stream",
    "use_beam_search",
    "beam_width",
    "echo",
    "model",
    "stream_options",
    "token_healing",
    "presence_penalty",
    "logit_bias",
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=8))
def test_random_bodies_never_get_a_server_error(backend_url: str, body: dict) -> None:
    r = complete(backend_url, timeout=300, **body)
    assert r.status_code in (200, 400), f"{body!r}: {r.status_code} {r.text[:300]}"
    if r.status_code == 400:
        assert r.json()["error"]["message"]
    elif body.get("stream") is True:
        assert r.text.rstrip().endswith("data: [DONE]") and '"error"' not in r.text
    else:
        assert len(r.json()["choices"]) >= 1


# --- serving -------------------------------------------------------------------------------------------------------
async def test_32_concurrent_clients_get_correct_answers(backend_url: str) -> None:
    prompts = ["def add(a, b):\n", "import os\n", "class Stack:\n", "for i in range(10):\n"]
    params = {"max_tokens": 6, "temperature": 0}
    async with httpx.AsyncClient(base_url=backend_url, timeout=600) as client:
        expected = []
        for p in prompts:
            r = await client.post("/v1/completions", json={"prompt": p, **params})
            expected.append(r.json()["choices"][0]["text"])
        t0 = time.monotonic()
        rs = await asyncio.gather(
            *(client.post("/v1/completions", json={"prompt": prompts[i % 4], **params}) for i in range(32))
        )
        elapsed = time.monotonic() - t0
    assert [r.status_code for r in rs] == [200] * 32
    got = [r.json()["choices"][0]["text"] for r in rs]
    assert got == [expected[i % 4] for i in range(32)]
    assert elapsed < 600


async def test_disconnect_mid_generation_is_cancelled_and_frees_the_slot(backend_url: str) -> None:
    before = cancellations(backend_url)
    body = {"prompt": LONG_PROMPT, "max_tokens": 2000, "temperature": 0}
    async with httpx.AsyncClient(base_url=backend_url, timeout=600) as client:
        # streaming: close the stream after the first piece of text
        async with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    break
        await _wait_for(lambda: cancellations(backend_url) >= before + 1, backend_url)
        # non-streaming: the client gives up (read timeout) and closes the connection
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/v1/completions", json=body, timeout=httpx.Timeout(600, read=3.0))
        await _wait_for(lambda: cancellations(backend_url) >= before + 2, backend_url)
        r = await client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 2})
        assert r.status_code == 200
    m = metrics(backend_url)
    assert m['copilot_backend_cancellations_total{reason="disconnect"}'] >= before + 2


async def _wait_for(pred: Any, url: str, timeout: float = 60) -> None:
    """Until pred() holds and the engine runs nothing (the slots are free)."""
    deadline = time.monotonic() + timeout
    while True:
        m = metrics(url)
        if pred() and m["copilot_backend_active_requests"] == 0 and m["copilot_backend_queue_depth"] == 0:
            return
        assert time.monotonic() < deadline, f"not cancelled/freed in time: {m}"
        await asyncio.sleep(0.1)


def test_metrics_exposition(backend_url: str) -> None:
    ok(backend_url, prompt=PROMPT, max_tokens=4, temperature=0)
    ok(backend_url, prompt=PROMPT, max_tokens=4, temperature=0)  # same prompt: served from the prefix cache
    text = httpx.get(backend_url + "/metrics", timeout=30).text
    for family in (
        "requests_total",
        "prompt_tokens_total",
        "completion_tokens_total",
        "queue_depth",
        "prefill_seconds",
        "decode_step_seconds",
        "prefix_cache_hit_ratio",
        "cancellations_total",
    ):
        assert f"# TYPE copilot_backend_{family} " in text, family
    m = parse_metrics(text)
    assert m['copilot_backend_requests_total{endpoint="/v1/completions",status="200"}'] >= 2
    assert m["copilot_backend_prompt_tokens_total"] > 0 and m["copilot_backend_completion_tokens_total"] > 0
    assert m['copilot_backend_prefill_seconds_bucket{le="+Inf"}'] >= 2
    assert 0 < m["copilot_backend_prefix_cache_hit_ratio"] <= 1


# --- flags: API key, queue limit, loading; FIM; shutdown ----------------------------------------------------------
@pytest.fixture(scope="module")
def limited_server(start_backend_module: Any) -> Any:
    """A second server with an API key, ONE slot and a queue of one; started anew when the last one is gone.

    Shared by the auth/queue test and the SIGTERM test (which ends it): the model loads once less.
    """
    servers: list[Any] = []

    def get() -> Any:
        if not servers or servers[-1].proc.poll() is not None:
            servers.append(
                start_backend_module(
                    "--api-key", "s3cret", "--max-batch", "1", "--max-queue", "1", "--shutdown-timeout", "10"
                )
            )
        return servers[-1]

    return get


KEY = {"Authorization": "Bearer s3cret"}


async def test_api_key_loading_and_queue_full(limited_server: Any) -> None:
    srv = limited_server()
    h = httpx.get(srv.url + "/health", timeout=30)
    if h.status_code != 200:  # a fresh server: HTTP answers while the model loads
        assert h.status_code == 503 and h.json()["status"] == "loading"
        r = complete(srv.url, headers=KEY, prompt=PROMPT)
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading"
        assert r.headers["retry-after"]
    srv.wait_ready()
    assert complete(srv.url, prompt=PROMPT, max_tokens=2).status_code == 401
    wrong = complete(srv.url, prompt=PROMPT, max_tokens=2, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
    assert httpx.get(srv.url + "/v1/models", timeout=30).status_code == 401
    assert httpx.get(srv.url + "/health", timeout=30).status_code == 200  # probes need no key
    assert complete(srv.url, prompt=PROMPT, max_tokens=2, headers=KEY).status_code == 200

    long = {"prompt": LONG_PROMPT, "max_tokens": 2000, "temperature": 0}
    async with httpx.AsyncClient(base_url=srv.url, timeout=600, headers=KEY) as client:
        async with client.stream("POST", "/v1/completions", json={**long, "stream": True}) as running:
            assert running.status_code == 200
            lines = running.aiter_lines()  # kept alive: dropping it would close the connection
            while not (await lines.__anext__()).startswith("data: "):
                pass  # the one slot is busy now
            queued = asyncio.create_task(
                client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 2})
            )
            await _until(lambda m: m["copilot_backend_queue_depth"] == 1, srv.url)
            full = await client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 2})
            assert full.status_code == 429 and full.json()["error"]["code"] == "queue_full"
            assert full.headers["retry-after"]
            # the queued request's client goes away: it leaves the queue and never starts
            before = metrics(srv.url)
            queued.cancel()
            after = await _until(lambda m: m["copilot_backend_queue_depth"] == 0, srv.url)
            assert after["copilot_backend_active_requests"] == 1  # the stream still runs
            assert (
                cancellations(srv.url)
                == sum(v for k, v in before.items() if k.startswith("copilot_backend_cancellations_total"))
                + 1
            )
            assert (
                after["copilot_backend_prompt_tokens_total"] == before["copilot_backend_prompt_tokens_total"]
            )
        # leaving the stream cancels it and frees the slot
        await _until(lambda m: m["copilot_backend_active_requests"] == 0, srv.url)
        r = await client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 2})
        assert r.status_code == 200


async def _until(pred: Any, url: str, timeout: float = 120) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        m = metrics(url)
        if pred(m):
            return m
        assert time.monotonic() < deadline, f"condition not reached: {m}"
        await asyncio.sleep(0.05)


def test_sigterm_finishes_in_flight_and_exits_cleanly(limited_server: Any) -> None:
    srv = limited_server()
    srv.wait_ready()
    context = httpx.get(srv.url + "/v1/models", headers=KEY, timeout=30).json()["data"][0]["context_length"]
    late: dict[str, httpx.Response] = {}

    def queued() -> None:  # waits for the one slot, then generates far longer than --shutdown-timeout (10 s)
        late["r"] = complete(srv.url, headers=KEY, prompt=LONG_PROMPT, max_tokens=context - 64, temperature=0)

    with httpx.stream(
        "POST",
        srv.url + "/v1/completions",
        timeout=600,
        headers=KEY,
        json={"prompt": PROMPT, "max_tokens": 8, "temperature": 0, "stream": True},
    ) as r:
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        admitted = metrics(srv.url)["copilot_backend_prompt_tokens_total"]
        waiter = threading.Thread(target=queued)
        waiter.start()
        asyncio.run(
            _until(
                lambda m: (
                    m["copilot_backend_queue_depth"] == 1  # waits for the slot
                    or m["copilot_backend_prompt_tokens_total"] > admitted
                ),
                srv.url,
            )
        )  # or already runs
        srv.proc.send_signal(signal.SIGTERM)  # while the request is in flight
        rest = list(lines)
    events = sse_events([first, *rest])
    assert events[-1] == "[DONE]"  # the in-flight request was finished, not cut off
    assert any(ch["finish_reason"] for e in events[:-1] for ch in e["choices"])
    waiter.join(300)
    # the one still running at the deadline is cancelled with a 503 that says why (it was a bare 500, cut by uvicorn)
    assert late["r"].status_code == 503, late["r"].text
    assert late["r"].json()["error"]["code"] == "shutting_down"
    assert srv.proc.wait(120) == 0, srv.log_tail()
    with pytest.raises(httpx.ConnectError):
        httpx.get(srv.url + "/health", timeout=5)
    assert re.search(r"copilot-backend: stopped", srv.log_tail())


def test_fim_suffix_with_a_fim_model(start_backend: Any, tmp_path: Path) -> None:
    from tiny_models import make_tiny_model

    path = make_tiny_model("qwen2", tmp_path / "qwen2")
    srv = start_backend(model=str(path))
    srv.wait_ready()
    entry = httpx.get(srv.url + "/v1/models", timeout=30).json()["data"][0]
    assert entry["fim"] == {
        "prefix": "<|fim_prefix|>",
        "suffix": "<|fim_suffix|>",
        "middle": "<|fim_middle|>",
        "file_sep": "<|file_sep|>",
    }
    tk = tokenizers.Tokenizer.from_str(httpx.get(srv.url + "/v1/tokenizer", timeout=30).text)
    prefix, suffix = "def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"
    body = ok(srv.url, prompt=prefix, suffix=suffix, max_tokens=4, temperature=0)
    n = len(tk.encode(prefix, add_special_tokens=False).ids) + len(
        tk.encode(suffix, add_special_tokens=False).ids
    )
    assert body["usage"]["prompt_tokens"] in (n + 3, n + 4)  # 3 FIM markers (+ BOS when the model wants one)
    plain = ok(srv.url, prompt=prefix, max_tokens=4, temperature=0)
    assert plain["usage"]["prompt_tokens"] < body["usage"]["prompt_tokens"]


def test_a_model_that_cannot_load_is_reported_and_exits_1(tmp_path: Path) -> None:
    missing = tmp_path / "missing.gguf"
    proc = subprocess.run(
        [sys.executable, "-m", "model_backend.cli", "serve", "--model", str(missing), "--port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert "could not load the model" in proc.stderr and "missing.gguf" in proc.stderr
