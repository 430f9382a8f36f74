"""Load test of `copilot-backend serve` with editor-like traffic.

Each simulated client edits its own file: request i sends the first PROMPT_TOKENS + i * GROW tokens of a real
source file (the editor's prefix grows as the user types), waits for the answer, then sends the next one.
Reported per concurrency level (1, 4, 16 clients by default): requests/s, completion tokens/s, latency p50/p99,
and the engine's prefix-cache hit ratio over that level (from /metrics).

    .venv/bin/python benchmarks/server.py                       # starts its own server on the default model
    .venv/bin/python benchmarks/server.py --url http://127.0.0.1:8765 --concurrency 1 4 --requests 3
    .venv/bin/python benchmarks/server.py --compare-url http://127.0.0.1:8080   # same load on another server

--compare-url runs the same load against any OpenAI-compatible server (llama.cpp's `llama-server`, vLLM, ...)
on the same GGUF and prints the ratios. llama.cpp's server is not installable here quickly (llama-cpp-python is
an sdist that compiles llama.cpp), so without --compare-url the output says that no comparison was run.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import tokenizers

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model_backend.metrics import parse as parse_metrics  # noqa: E402

# Source files that stand in for the user's open files (the stdlib is always there; long enough for 2k tokens).
SOURCE_FILES = (
    "os.py",
    "typing.py",
    "argparse.py",
    "inspect.py",
    "subprocess.py",
    "dataclasses.py",
    "pathlib.py",
    "threading.py",
    "tarfile.py",
    "zipfile/__init__.py",
    "logging/__init__.py",
    "json/decoder.py",
    "asyncio/base_events.py",
    "email/message.py",
    "http/client.py",
    "shutil.py",
    "configparser.py",
    "enum.py",
    "functools.py",
    "collections/__init__.py",
)


@dataclass
class LevelResult:
    clients: int
    requests: int = 0
    errors: int = 0
    wall_s: float = 0.0
    completion_tokens: int = 0
    latencies: list[float] = field(default_factory=list)
    cache_hit_ratio: float | None = None

    def row(self) -> dict:
        lat = sorted(self.latencies)
        return {
            "clients": self.clients,
            "requests": self.requests,
            "errors": self.errors,
            "req_per_s": self.requests / self.wall_s if self.wall_s else 0.0,
            "tok_per_s": self.completion_tokens / self.wall_s if self.wall_s else 0.0,
            "p50_ms": 1000 * percentile(lat, 50),
            "p99_ms": 1000 * percentile(lat, 99),
            "prefix_cache_hit_ratio": self.cache_hit_ratio,
        }


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def editor_files(tk: tokenizers.Tokenizer, count: int, min_tokens: int) -> list[list[int]]:
    """Token ids of `count` distinct real source files, each at least min_tokens long."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files: list[list[int]] = []
    for name in SOURCE_FILES:
        path = stdlib / name
        if path.is_file():
            ids = tk.encode(path.read_text(errors="replace"), add_special_tokens=False).ids
            if len(ids) >= min_tokens:
                files.append(ids)
    if not files:
        raise SystemExit("no stdlib source files found to build prompts from")
    return [files[i % len(files)] for i in range(count)]


def engine_cache(metrics_text: str) -> tuple[float, float]:
    m = parse_metrics(metrics_text)
    return (
        m.get("copilot_backend_prefix_cache_hit_tokens_total", 0.0),
        m.get("copilot_backend_prefix_cache_query_tokens_total", 0.0),
    )


async def run_level(
    url: str, model: str, tk: tokenizers.Tokenizer, clients: int, args: argparse.Namespace, ours: bool
) -> LevelResult:
    result = LevelResult(clients)
    files = editor_files(tk, clients, args.prompt_tokens + args.grow * args.requests)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(900.0)) as http:
        before = engine_cache((await http.get("/metrics")).text) if ours else None

        async def client(c: int) -> None:
            ids = files[c]
            offset = (c // len(SOURCE_FILES)) * 7  # clients sharing a file start at different points
            for i in range(args.requests):
                end = offset + args.prompt_tokens + i * args.grow
                prompt = tk.decode(ids[offset:end], skip_special_tokens=False)
                body = {"model": model, "prompt": prompt, "max_tokens": args.max_tokens, "temperature": 0}
                t0 = time.perf_counter()
                try:
                    r = await http.post("/v1/completions", json=body)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                dt = time.perf_counter() - t0
                if not ok:
                    result.errors += 1
                    continue
                result.requests += 1
                result.latencies.append(dt)
                result.completion_tokens += int(r.json().get("usage", {}).get("completion_tokens", 0))

        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(clients)))
        result.wall_s = time.perf_counter() - t0
        if ours and before is not None:
            hit, looked = engine_cache((await http.get("/metrics")).text)
            if looked > before[1]:
                result.cache_hit_ratio = (hit - before[0]) / (looked - before[1])
    return result


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    cmd = [
        sys.executable,
        "-m",
        "model_backend.cli",
        "serve",
        "--model",
        args.model,
        "--device",
        args.device,
        "--port",
        "0",
        "--max-batch",
        str(args.max_batch),
        "--max-queue",
        "256",
    ]
    if args.cache_slots is not None:
        cmd += ["--cache-slots", str(args.cache_slots)]
    if args.prefill_chunk is not None:
        cmd += ["--prefill-chunk", str(args.prefill_chunk)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    url = line.split("listening on", 1)[1].strip()
    deadline = time.monotonic() + 900
    while True:
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("server did not become ready")
        time.sleep(0.2)


async def bench(url: str, args: argparse.Namespace, tk: tokenizers.Tokenizer, ours: bool) -> list[dict]:
    models = httpx.get(url + "/v1/models", timeout=30).json()
    model = models["data"][0]["id"]
    rows = []
    for clients in args.concurrency:
        res = await run_level(url, model, tk, clients, args, ours)
        rows.append(res.row())
        print(format_row(rows[-1]), flush=True)
    return rows


HEADER = (
    f"{'clients':>7} {'requests':>8} {'errors':>6} {'req/s':>7} {'tok/s':>7} {'p50 ms':>8} {'p99 ms':>8} "
    f"{'cache hit':>9}"
)


def format_row(r: dict) -> str:
    hit = "-" if r["prefix_cache_hit_ratio"] is None else f"{r['prefix_cache_hit_ratio']:.1%}"
    return (
        f"{r['clients']:>7} {r['requests']:>8} {r['errors']:>6} {r['req_per_s']:>7.2f} {r['tok_per_s']:>7.1f} "
        f"{r['p50_ms']:>8.0f} {r['p99_ms']:>8.0f} {hit:>9}"
    )


# why no comparison ran, by whether llama-cpp-python is installed
NO_COMPARISON = {
    True: "llama-cpp-python is installed; start `python -m llama_cpp.server --model <the GGUF>` and pass "
    "--compare-url",
    False: "llama.cpp's server is not installed here and cannot be installed quickly (llama-cpp-python is "
    "an sdist that compiles llama.cpp); pass --compare-url URL to compare against any running "
    "OpenAI-compatible server on the same GGUF",
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="benchmark this running copilot-backend (default: start one)")
    p.add_argument("--model", default="default")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument(
        "--cache-slots",
        type=int,
        default=None,
        help="the started server's --cache-slots (default: its own; = --max-batch for the old behaviour)",
    )
    p.add_argument(
        "--prefill-chunk",
        type=int,
        default=None,
        help="the started server's --prefill-chunk (default: its own; 0 = no interleaving)",
    )
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=4, help="requests per client (keystrokes)")
    p.add_argument("--prompt-tokens", type=int, default=2000)
    p.add_argument("--grow", type=int, default=4, help="tokens the prompt grows by per request")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--compare-url", help="also run the load against this OpenAI-compatible server")
    p.add_argument("--json", type=Path, help="write the results here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    proc = None
    url = args.url
    if url is None:
        proc, url = start_server(args)
    try:
        tk = tokenizers.Tokenizer.from_str(httpx.get(url + "/v1/tokenizer", timeout=30).text)
        print(
            f"copilot-backend at {url}: {args.prompt_tokens}-token prompts growing by {args.grow} tokens, "
            f"{args.requests} requests per client, max_tokens {args.max_tokens}, greedy"
        )
        print(HEADER)
        ours = asyncio.run(bench(url, args, tk, ours=True))
        result: dict = {"copilot_backend": ours, "compare": None}
        if args.compare_url:
            print(f"\nsame load against {args.compare_url}:")
            print(HEADER)
            other = asyncio.run(bench(args.compare_url, args, tk, ours=False))
            result["compare"] = {"url": args.compare_url, "rows": other}
            print(
                "\nratios (copilot-backend / other): "
                + ", ".join(
                    f"{a['clients']} clients: tok/s x{a['tok_per_s'] / b['tok_per_s']:.2f}, "
                    f"p50 x{a['p50_ms'] / b['p50_ms']:.2f}"
                    for a, b in zip(ours, other, strict=True)
                    if b["tok_per_s"] and b["p50_ms"]
                )
            )
        else:
            llama_cpp_installed = importlib.util.find_spec("llama_cpp") is not None
            print("\nllama.cpp comparison: not run -- " + NO_COMPARISON[llama_cpp_installed])
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
