"""Syntax-side timings of the language server (no model): incremental reparse per keystroke, prompt building and
post-processing, on a 5,000-line Python file (and a 50,000-line one for the reparse).

    .venv/bin/python benchmarks/ls_syntax.py [--repeat 200] [--json out.json]

Targets (issue 4): reparse <= 1 ms per keystroke; the whole per-request overhead p99 <= 5 ms (the request
overhead is measured end to end by benchmarks/ls.py; here are the syntax parts of it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from copilot_ls.backend import RawCandidate  # noqa: E402
from copilot_ls.context import build_prompt  # noqa: E402
from copilot_ls.documents import Document  # noqa: E402
from copilot_ls.postprocess import postprocess  # noqa: E402


def python_source(lines: int) -> str:
    """Realistic-looking Python: classes with methods, docstrings, loops, comprehensions."""
    out: list[str] = []
    i = 0
    while len(out) < lines:
        out += [
            f"class Widget{i}:",
            f'    """Widget number {i}."""',
            "",
            "    def __init__(self, items, scale=1.0):",
            "        self.items = list(items)",
            "        self.scale = scale",
            "",
            "    def total(self):",
            "        acc = 0.0",
            "        for item in self.items:",
            "            if item is None:",
            "                continue",
            "            acc += item * self.scale",
            "        return acc",
            "",
            "    def names(self):",
            "        return [str(x) for x in self.items if x]",
            "",
            "",
        ]
        i += 1
    return "\n".join(out[:lines]) + "\n"


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def stats_ms(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {"p50": round(statistics.median(ms), 3), "p99": round(pct(ms, 0.99), 3), "max": round(max(ms), 3)}


def bench_reparse(lines: int, repeat: int) -> dict[str, float]:
    """Type `repeat` characters one by one in the middle of the file (edit + incremental reparse each)."""
    doc = Document("file:///bench/big.py", "python", 0, python_source(lines))
    line = lines // 2
    while doc.snapshot().lines()[line].strip() != "acc = 0.0":
        line += 1
    col = len(doc.snapshot().lines()[line])
    times = []
    text = "  # typing here"
    for k in range(repeat):
        ch = text[k % len(text)]
        t0 = time.perf_counter()
        doc.apply_change(ch, (line, col + k), (line, col + k), version=k + 1)
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    Document("file:///bench/full.py", "python", 0, doc.text)
    full = time.perf_counter() - t0
    return {**stats_ms(times), "full_parse_ms": round(full * 1000, 1)}


def bench_request(repeat: int, n_others: int = 0) -> dict[str, dict[str, float]]:
    """Snapshot + build_prompt + postprocess (3 candidates) at a cursor in a 5,000-line file (with ``n_others``
    other open 3,000-line documents for the similar-window search)."""
    src = python_source(5000)
    lines = src.split("\n")
    line = 2500
    while lines[line].strip() != "acc = 0.0":
        line += 1
    lines.insert(line + 1, "        ")
    doc = Document("file:///bench/req.py", "python", 0, "\n".join(lines))
    cands = [
        RawCandidate("        for item in self.items:\n            acc += item\n        return acc", -0.3),
        RawCandidate("        return sum(self.items)", -0.5),
        RawCandidate("        acc = 0.0\n", -0.9),
    ]
    others = [
        Document(f"file:///bench/other{i}.py", "python", 0, python_source(3000)).snapshot()
        for i in range(n_others)
    ]
    snap_t, prompt_t, post_t = [], [], []
    for k in range(repeat):
        doc.apply_change(" ", (line + 1, 8), (line + 1, 8), version=k + 1)
        doc.apply_change("", (line + 1, 8), (line + 1, 9), version=k + 1)
        t0 = time.perf_counter()
        snap = doc.snapshot()
        t1 = time.perf_counter()
        prompt = build_prompt(snap, line + 1, 8, workspace=None, others=others)
        t2 = time.perf_counter()
        postprocess(cands, snap, line + 1, 8, multiline=prompt.multiline)
        t3 = time.perf_counter()
        snap_t.append(t1 - t0)
        prompt_t.append(t2 - t1)
        post_t.append(t3 - t2)
    total = [a + b + c for a, b, c in zip(snap_t, prompt_t, post_t, strict=True)]
    return {
        "snapshot": stats_ms(snap_t),
        "build_prompt": stats_ms(prompt_t),
        "postprocess": stats_ms(post_t),
        "total": stats_ms(total),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    results = {
        "reparse_5000_lines": bench_reparse(5000, args.repeat),
        "reparse_50000_lines": bench_reparse(50_000, max(20, args.repeat // 4)),
        "request_5000_lines": bench_request(max(20, args.repeat // 2)),
        "request_5000_lines_10_open_docs": bench_request(max(20, args.repeat // 2), n_others=10),
    }
    for name, r in results.items():
        print(f"{name}: {json.dumps(r)}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
