"""Big-file typing benchmark: suggestion latency while typing line after line at the end of a ~20,000-line
Python file, through the real LS over stdio and a real `copilot-backend serve` (default model).

    .venv/bin/python benchmarks/bigfile.py [--backend URL] [--lines 30] [--file-lines 20000] [--json OUT]

The file is standard-library modules concatenated to --file-lines lines; the typed lines come from another
module (heapq.py). For each line: Enter and the next line's indentation, then a suggestion is asked for and
awaited (the figure printed), then the line's text is typed in two halves with a suggestion request after the
first half that the next keystroke abandons (as an editor's would be). Every latency is printed; the slowest
after the first counts (issue 16: each within 1.5 s on the shared 2-core machine). Also prints a small-file
run (the last 200 lines of the same text) for comparison, the share of prompt tokens the backend's prefix
cache served during each run, the share of each prompt the previous one began with (in-process, anchored
window vs the sliding one: `window_step` 0.5 and 0), and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from ls import Editor, start_backend, start_ls, stop_ls  # noqa: E402

MODULES = (
    "_pydecimal.py",
    "argparse.py",
    "typing.py",
    "inspect.py",
    "tarfile.py",
    "pathlib.py",
    "subprocess.py",
    "dataclasses.py",
    "enum.py",
    "functools.py",
    "ast.py",
    "difflib.py",
)


def big_text(n_lines: int) -> str:
    """Standard-library modules one after the other, cut to n_lines lines (ending with a blank line)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    lines: list[str] = []
    for name in MODULES * 4:
        lines += (stdlib / name).read_text().split("\n")
        if len(lines) >= n_lines:
            break
    return "\n".join(lines[: n_lines - 1] + [""])


def typed_lines(n: int) -> list[str]:
    """n non-blank lines of heapq.py's code (after its long docstring)."""
    src = (Path(sysconfig.get_paths()["stdlib"]) / "heapq.py").read_text().split("\n")
    start = next(i for i, s in enumerate(src) if s.startswith("def heappush"))
    return [s for s in src[start:] if s.strip()][:n]


async def type_lines(ed: Editor, lines: list[str]) -> list[float]:
    """Latency (ms) of the suggestion after Enter + indentation, for each line in turn."""
    out = []
    for text in lines:
        body = text.lstrip(" ")
        indent = text[: len(text) - len(body)]
        ed.type("\n")
        ed.line, ed.col = ed.line + 1, 0
        ed.type(indent)
        ms, _ = await ed.ask(invoked=False)
        out.append(ms)
        print(f"  {ms / 1000:6.2f} s  line {ed.line + 1}: {text[:60]}", file=sys.stderr)
        half = len(body) // 2
        ed.type(body[:half])
        abandoned = asyncio.ensure_future(ed.ask(invoked=False))
        await asyncio.sleep(0.05)
        ed.type(body[half:])
        abandoned.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await abandoned
    return out


def cache_tokens(backend: str) -> tuple[float, float]:
    """(prompt tokens served from the backend's prefix cache, prompt tokens looked up) so far."""
    import httpx

    from model_backend.metrics import parse

    m = parse(httpx.get(backend + "/metrics", timeout=30).text)
    return (
        m.get("copilot_backend_prefix_cache_hit_tokens_total", 0.0),
        m.get("copilot_backend_prefix_cache_query_tokens_total", 0.0),
    )


def prompt_sharing(text: str, lines: list[str], window_step: float) -> float:
    """In-process, no model: the share of each prompt's characters that the previous keystroke's prompt also
    began with, typing `lines` at the end of `text` (what the prefix cache can reuse; load-independent)."""
    from copilot_ls.context import PromptBudget, build_prompt
    from copilot_ls.documents import Document

    budget = PromptBudget(max_prompt_tokens=1450, window_step=window_step)
    shared = total = 0
    prev = None
    for typed in lines:
        text += typed + "\n"
        snap = Document("file:///bench/bigfile/share.py", "python", 1, text).snapshot()
        prompt = build_prompt(snap, text.count("\n"), 0, budget=budget, workspace=None).prompt
        if prev is not None:
            shared += len(os.path.commonprefix([prev, prompt]))
            total += len(prompt)
        prev = prompt
    return round(shared / max(1, total), 3)


async def run(args: argparse.Namespace) -> dict:
    backend, child = await start_backend(args.backend)
    client = await start_ls(backend, debounce_ms=0)
    results: dict = {}
    try:
        text = big_text(args.file_lines)
        lines = typed_lines(args.lines)
        for name, doc in (("big", text), ("small", "\n".join(text.split("\n")[-200:]))):
            n = doc.count("\n")
            print(f"{name} file: {n + 1} lines, load average {os.getloadavg()[0]:.1f}", file=sys.stderr)
            ed = Editor(client, f"file:///bench/bigfile/{name}_module.py", doc, (n, 0))
            hit0, asked0 = cache_tokens(backend)
            ms = await type_lines(ed, lines)
            hit, asked = cache_tokens(backend)
            after = ms[1:]
            results[name] = {
                "file_lines": n + 1,
                "first_s": round(ms[0] / 1000, 2),
                "prefix_cache_hit_ratio": round((hit - hit0) / max(1.0, asked - asked0), 3),
                "after_first_max_s": round(max(after) / 1000, 2),
                "after_first_median_s": round(sorted(after)[len(after) // 2] / 1000, 2),
                "latencies_s": [round(m / 1000, 2) for m in ms],
            }
        results["prompt_chars_shared_with_previous"] = {
            f"window_step={step}": prompt_sharing(text, lines, step) for step in (0.5, 0.0)
        }
        results["load_average_1m_at_end"] = round(os.getloadavg()[0], 1)
    finally:
        await stop_ls(client)
        if child is not None:
            child.stop()
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default=None, help="a running backend (default: start one on a free port)")
    ap.add_argument("--lines", type=int, default=30, help="lines typed at the end of each file (default 30)")
    ap.add_argument("--file-lines", type=int, default=20000, help="lines of the big file (default 20000)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    results = asyncio.run(run(args))
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
