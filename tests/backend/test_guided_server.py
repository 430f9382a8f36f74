"""Guided decoding through the real `copilot-backend serve` process and the LS's client: the field is reported,
obeyed, validated like the other fields, and a server that rejects it gets the request again without it."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from copilot_ls.backend import BackendClient, constraint_fields

pytestmark = pytest.mark.e2e

PROMPT = (
    "class Shape:\n    def __init__(self, w, h):\n        self.qwidth = w\n        self.qheight = h\n\n"
    "    def area(self):\n        return self."
)
MEMBERS = ["qwidth", "qheight", "area"]


def post(url: str, **body) -> httpx.Response:
    return httpx.post(
        url + "/v1/completions",
        content=json.dumps(body).encode(),
        timeout=300,
        headers={"content-type": "application/json"},
    )


def test_the_server_reports_and_obeys_allowed_identifiers(backend_url):
    models = httpx.get(backend_url + "/v1/models", timeout=60).json()["data"][0]
    assert models["guided_decoding"] == ["allowed_identifiers"]
    r = post(
        backend_url,
        prompt=PROMPT,
        max_tokens=8,
        temperature=0.9,
        n=3,
        seed=5,
        stop=["\n"],
        allowed_identifiers=MEMBERS,
    )
    assert r.status_code == 200, r.text
    for choice in r.json()["choices"]:
        assert any(
            choice["text"].startswith(m) and not choice["text"][len(m) : len(m) + 1].isidentifier()
            for m in MEMBERS
        ), choice["text"]


@pytest.mark.parametrize("bad", [[], "qwidth", [1], ["a b"], ["x" * 201], ["ok"] * 5001])
def test_malformed_allowed_identifiers_are_400(backend_url, bad):
    r = post(backend_url, prompt=PROMPT, max_tokens=2, allowed_identifiers=bad)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "allowed_identifiers"


def test_client_sends_the_field_the_server_reports_and_drops_one_it_rejects(backend_url):
    async def run() -> None:
        client = BackendClient(backend_url, timeout=300)
        try:
            got = await client.complete(PROMPT, max_tokens=6, stop=["\n"], allowed_identifiers=["qheight"])
            assert got[0].text.startswith("qheight"), got[0].text
            assert client.requests == 1
            # off: nothing sent, the model is free (greedy picks whatever it likes)
            free = await client.complete(
                PROMPT, max_tokens=6, stop=["\n"], allowed_identifiers=["qheight"], guided="off"
            )
            plain = await client.complete(PROMPT, max_tokens=6, stop=["\n"])
            assert free[0].text == plain[0].text
            # a field this server answers 400 to (a name over its length limit): asked again without it, once
            before = client.requests
            got = await client.complete(PROMPT, max_tokens=6, stop=["\n"], allowed_identifiers=["q" * 300])
            assert got and client.requests == before + 2 and client.guided_rejected == {"allowed_identifiers"}
            await client.complete(PROMPT, max_tokens=6, stop=["\n"], allowed_identifiers=["qheight"])
            assert client.requests == before + 3  # remembered: not sent again
        finally:
            await client.aclose()

    asyncio.run(run())


def test_standard_fields_for_other_servers():
    assert constraint_fields(["orm", "ame"], "allowed_identifiers") == {"allowed_identifiers": ["orm", "ame"]}
    assert constraint_fields(["orm", "ame"], "regex") == {
        "guided_regex": r"(?:orm|ame)(?:[^A-Za-z0-9_][\s\S]*)?"
    }
    assert constraint_fields(["", "s"], "regex") == {"guided_regex": r"(?:s)?(?:[^A-Za-z0-9_][\s\S]*)?"}
    assert constraint_fields(["orm"], "grammar") == {
        "grammar": 'root ::= ("orm") ([^a-zA-Z0-9_] [^\\x00]*)?\n'
    }
    assert constraint_fields(["orm"], "off") == {}
