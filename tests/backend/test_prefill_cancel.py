"""A request cancelled in the middle of a long prefill stops it (the engine asks between prefill chunks), so
the next request is not delayed by the rest of that prompt; the part already prefilled stays a cached prefix.
End to end: the session's `copilot-backend serve` with the default model, httpx."""

from __future__ import annotations

import asyncio
import random
import time

import httpx
import pytest

from model_backend.metrics import parse as parse_metrics

pytestmark = pytest.mark.e2e


def long_prompt(seed: int, words: int = 260) -> str:
    """~2,000 tokens of Python that no earlier prompt shares (a cold prefill over several chunks)."""
    rnd = random.Random(seed)
    names = [f"v{rnd.randrange(10**6)}" for _ in range(words)]
    return "".join(f"{a} = {b}\n" for a, b in zip(names[::2], names[1::2], strict=True))


async def cached_tokens(client: httpx.AsyncClient) -> float:
    m = parse_metrics((await client.get("/metrics")).text)
    return m["copilot_backend_prefix_cache_hit_tokens_total"]


async def test_cancel_mid_prefill_frees_the_worker_quickly(backend_url: str) -> None:
    async with httpx.AsyncClient(base_url=backend_url, timeout=600) as client:
        short = {"prompt": "def fibonacci(n):\n", "max_tokens": 1, "temperature": 0}
        assert (await client.post("/v1/completions", json=short)).status_code == 200
        # the time one whole cold prefill of such a prompt takes on this machine now
        t0 = time.monotonic()
        r = await client.post("/v1/completions", json={"prompt": long_prompt(1), "max_tokens": 1})
        full = time.monotonic() - t0
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["prompt_tokens"] > 1500

        # another cold prompt; the client gives up a quarter into its prefill
        doomed = asyncio.create_task(
            client.post(
                "/v1/completions",
                json={"prompt": long_prompt(2), "max_tokens": 1},
                timeout=httpx.Timeout(600, read=full / 4),
            )
        )
        await asyncio.sleep(full / 4 + 0.05)
        t1 = time.monotonic()
        r = await client.post("/v1/completions", json=short)
        waited = time.monotonic() - t1
        with pytest.raises(httpx.ReadTimeout):
            await doomed
        assert r.status_code == 200
        # without the interrupt this request waited for the rest of the doomed prefill (~3/4 of `full`)
        assert waited < full / 2, f"next request waited {waited:.2f}s; a whole prefill takes {full:.2f}s"

        # what the cancelled request prefilled is a cached prefix of the same prompt sent again
        before = await cached_tokens(client)
        r = await client.post("/v1/completions", json={"prompt": long_prompt(2), "max_tokens": 1})
        assert r.status_code == 200
        assert await cached_tokens(client) - before >= 256
