"""BackendClient: the OpenAI-compatible request it sends, how every failure becomes one clear BackendError, model
facts from /v1/models + /v1/tokenizer; autostart's failure path; and the real backend end to end."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest
from lsp_testing import FakeBackend, free_port

from copilot_ls.backend import BackendClient, BackendError, parse_completion
from copilot_ls.lsp import autostart
from copilot_ls.settings import Settings


@pytest.fixture
def fake():
    fb = FakeBackend(reply="return a")
    yield fb
    fb.close()


async def test_request_shape_and_ranking_data(fake):
    client = BackendClient(fake.url, api_key="sekret", model="m1")
    try:
        cands = await client.complete(
            "def f():\n    ", max_tokens=7, n=2, stop=["\n\n"], temperature=0.3, seed=1
        )
    finally:
        await client.aclose()
    body, headers = fake.requests[-1], fake.headers[-1]
    assert body["prompt"] == "def f():\n    " and body["max_tokens"] == 7 and body["n"] == 2
    assert body["stop"] == ["\n\n"] and body["model"] == "m1" and body["seed"] == 1 and body["logprobs"]
    assert "suffix" not in body and body["stream"] is False
    assert headers["Authorization"] == "Bearer sekret"
    assert [c.text for c in cands] == ["return a", "return a"]
    assert cands[0].mean_logprob == pytest.approx(-0.1) and cands[1].mean_logprob == pytest.approx(-0.2)
    assert client.requests == 1


def test_parse_completion_orders_by_index_and_tolerates_missing_logprobs():
    cands = parse_completion(
        {
            "choices": [
                {"index": 1, "text": "b", "logprobs": None, "finish_reason": "length"},
                {"index": 0, "text": "a", "logprobs": {"token_logprobs": [None, -1.0, -3.0]}},
            ]
        }
    )
    assert [(c.text, c.mean_logprob, c.finish_reason) for c in cands] == [
        ("a", -2.0, "stop"),
        ("b", 0.0, "length"),
    ]


@pytest.mark.parametrize(
    "answer, kind, words",
    [
        ((200, b"<html>"), "garbage", "non-JSON"),
        ((200, b'{"id": 1}'), "garbage", "not a completion"),
        ((200, b'{"choices": [{"text": 5}]}'), "garbage", "without text"),
        (
            (400, b'{"error": {"message": "max_tokens too large", "type": "invalid_request_error"}}'),
            "http",
            "max_tokens too large",
        ),
        ((401, b'{"error": {"message": "bad key"}}'), "auth", "refused the API key"),
        ((503, b'{"status": "loading"}'), "loading", "not ready"),
        ((500, b"boom"), "http", "HTTP 500"),
    ],
)
async def test_every_failure_is_one_clear_backend_error(fake, answer, kind, words):
    fake.answer = answer
    client = BackendClient(fake.url)
    try:
        with pytest.raises(BackendError) as info:
            await client.complete("x")
    finally:
        await client.aclose()
    assert info.value.kind == kind and words in str(info.value)


async def test_unreachable_and_timeout():
    client = BackendClient(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(BackendError, match="cannot reach the backend") as info:
        await client.complete("x")
    assert info.value.kind == "unreachable"
    await client.aclose()
    slow = FakeBackend(mode="slow", delay=3.0)
    client = BackendClient(slow.url, timeout=0.3)
    try:
        with pytest.raises(BackendError, match="did not answer within 0.3 s"):
            await client.complete("x")
    finally:
        await client.aclose()
        slow.close()


async def test_cancelling_the_task_closes_the_connection():
    slow = FakeBackend(mode="slow", delay=5.0)
    client = BackendClient(slow.url)
    try:
        task = asyncio.ensure_future(client.complete("x"))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(50):
            if slow.disconnects:
                break
            await asyncio.sleep(0.05)
        assert slow.disconnects == 1
    finally:
        await client.aclose()
        slow.close()


async def test_meta_without_tokenizer_route(fake):
    client = BackendClient(fake.url)
    try:
        meta = await client.meta()
        assert (meta.id, meta.context_length, meta.fim, meta.count_tokens) == ("fake", 2048, None, None)
        assert await client.health() == "ready"
    finally:
        await client.aclose()


async def test_autostart_reports_a_child_that_dies(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(
        autostart,
        "backend_command",
        lambda url: [sys.executable, "-c", "import sys; print('no model here'); sys.exit(3)"],
    )
    url = f"http://127.0.0.1:{free_port()}"
    client = BackendClient(url)
    try:
        with pytest.raises(BackendError, match="exited with code 3: no model here"):
            await autostart.ensure_backend(client, Settings(backend_url=url, autostart=True))
        with pytest.raises(BackendError, match="cannot reach"):  # not allowed to start one
            await autostart.ensure_backend(client, Settings(backend_url=url, autostart=False))
    finally:
        await client.aclose()


def test_backend_logs_are_removed_when_stopped_and_pruned_when_stale(monkeypatch, tmp_path):
    import os
    import time

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    base = tmp_path / "copilot-ls"
    base.mkdir()
    stale, fresh, alive = (
        base / "backend-999999999.log",
        base / "backend-999999998.log",
        base / f"backend-{os.getppid()}.log",
    )
    for f in (stale, fresh, alive):
        f.write_text("x")
    old = time.time() - autostart.LOG_KEEP_S - 60
    os.utime(stale, (old, old))
    os.utime(alive, (old, old))
    monkeypatch.setattr(
        autostart, "backend_command", lambda url: [sys.executable, "-c", "import time; time.sleep(60)"]
    )
    proc = autostart.BackendProcess("http://127.0.0.1:1")
    assert not stale.exists() and fresh.exists() and alive.exists()  # a dead process's old log goes
    assert proc.log.exists() and proc.alive()
    proc.stop()
    assert not proc.log.exists()  # stopped by us: nothing to keep
    monkeypatch.setattr(
        autostart, "backend_command", lambda url: [sys.executable, "-c", "raise SystemExit(2)"]
    )
    failed = autostart.BackendProcess("http://127.0.0.1:1")
    failed.popen.wait(30)
    failed.stop()
    assert failed.log.exists()  # failed on its own: kept for the user


def test_backend_command_binds_loopback():
    cmd = autostart.backend_command("http://localhost:8765")
    assert cmd[-4:] == ["--host", "127.0.0.1", "--port", "8765"] and "--model" in cmd
    # the port the client will poll: a URL without one means 80 (starting on 8765 left the client waiting)
    assert autostart.backend_command("http://127.0.0.1")[-2:] == ["--port", "80"]


@pytest.mark.e2e
async def test_real_backend(backend_url):
    client = BackendClient(backend_url, timeout=600)
    try:
        meta = await client.meta()
        assert meta.context_length and meta.context_length >= 2048
        assert meta.fim is None  # the default model has no FIM tokens
        assert meta.count_tokens is not None and 0 < meta.count_tokens("def common_prefix(a, b):") < 20
        cands = await client.complete(
            "def add(a, b):\n    return", max_tokens=6, n=2, temperature=0.8, seed=3
        )
        assert len(cands) == 2 and all(c.text for c in cands)
        assert all(c.mean_logprob < 0 for c in cands)  # real log-probs came back
        greedy = await client.complete("def add(a, b):\n    return", max_tokens=6)
        again = await client.complete("def add(a, b):\n    return", max_tokens=6)
        assert greedy[0].text == again[0].text
        with pytest.raises(BackendError) as info:  # the server's own validation, as a clear error
            await client.complete("x", top_p=0.0)
        assert info.value.status == 400 and "top_p" in str(info.value)
    finally:
        await client.aclose()


@pytest.mark.e2e
async def test_lone_surrogate_in_the_prompt(backend_url):
    """A document may hold a lone surrogate (JSON carries "\\ud800"): the tokenizer's count raised TypeError and
    the server rejects such a prompt with HTTP 400 (an 'outage' for every document). Both get U+FFFD instead."""
    client = BackendClient(backend_url, timeout=600)
    try:
        meta = await client.meta()
        assert meta.count_tokens("s = '\ud800'") == meta.count_tokens("s = '\ufffd'")
        (cand,) = await client.complete(
            "s = '\udfff'\ndef add(a, b):\n    return", max_tokens=4, stop=["\ud800"]
        )
        assert cand.text
    finally:
        await client.aclose()


def test_parse_completion_rejects_non_objects():
    for body in (None, [], "text", {"choices": "x"}, json.loads('{"choices": [null]}')):
        with pytest.raises(BackendError):
            parse_completion(body)
