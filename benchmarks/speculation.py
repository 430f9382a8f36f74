"""Speculative decoding benchmark (not a test): greedy tok/s with speculation off vs on, and whether the text
is identical, per prompt.

    .venv/bin/python benchmarks/speculation.py [--prompts FILE.jsonl] [--max-tokens 128] [--mode ngram]
        [--model default] [--draft-model PATH] [--repeats 3] [--json OUT]

FILE.jsonl holds one {"name", "prompt"} per line; the default set (benchmarks/data/speculation_prompts.jsonl)
has edit-like prompts (a method duplicated and renamed, a series of test asserts, a dict literal that continues
a pattern; names start with "edit:") and ordinary code. Off and on run alternately on the same loaded engine,
best of --repeats each, so the ratio holds on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model_backend.engine import Engine, SamplingParams  # noqa: E402

DEFAULT_PROMPTS = Path(__file__).with_name("data") / "speculation_prompts.jsonl"


def load_prompts(path: Path) -> list[dict[str, str]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for r in rows:
        if not {"name", "prompt"} <= r.keys():
            raise SystemExit(f"{path}: each line needs 'name' and 'prompt': {r}")
    return rows


def timed(engine: Engine, prompt: str, max_tokens: int) -> tuple[str, int, float]:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    engine.generate(prompt, SamplingParams(max_tokens=1, temperature=0.0))  # prompt into the prefix cache
    t0 = time.perf_counter()
    (cand,) = engine.generate(prompt, params)
    return cand.text, len(cand.token_ids), time.perf_counter() - t0


def measure(engine: Engine, row: dict[str, str], mode: str, max_tokens: int, repeats: int) -> dict:
    best: dict[str, tuple[str, int, float]] = {}
    for _ in range(repeats):
        for m in ("off", mode):
            engine.set_speculation(m)  # the draft model, if any, stays loaded
            text, n, dt = timed(engine, row["prompt"], max_tokens)
            if m not in best or dt < best[m][2]:
                best[m] = (text, n, dt)
    engine.set_speculation("off")
    off, on = best["off"], best[mode]
    stats = engine.stats
    return {
        "name": row["name"],
        "tokens": on[1],
        "off_tok_s": off[1] / off[2],
        "on_tok_s": on[1] / on[2],
        "speedup": (on[1] / on[2]) / (off[1] / off[2]),
        "identical": off[0] == on[0],
        "accepted_share": stats.spec_accepted / max(1, stats.spec_proposed),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=Path, default=DEFAULT_PROMPTS)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--mode", default="ngram", choices=["ngram", "draft", "auto"])
    ap.add_argument("--model", default="default")
    ap.add_argument("--draft-model", default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows = load_prompts(args.prompts)
    engine = Engine.load(args.model, device="cpu")
    engine.set_speculation("off", args.draft_model)
    results = [measure(engine, r, args.mode, args.max_tokens, args.repeats) for r in rows]
    print(f"{'prompt':44} {'tokens':>6} {'off tok/s':>9} {'on tok/s':>9} {'x':>5} {'same':>5}")
    for r in results:
        print(
            f"{r['name'][:44]:44} {r['tokens']:6d} {r['off_tok_s']:9.1f} {r['on_tok_s']:9.1f} "
            f"{r['speedup']:5.2f} {'yes' if r['identical'] else 'NO':>5}"
        )
    edit = [r["speedup"] for r in results if r["name"].startswith("edit:")]
    rest = [r["speedup"] for r in results if not r["name"].startswith("edit:")]
    summary = {
        "edit_median_speedup": statistics.median(edit) if edit else None,
        "rest_min_speedup": min(rest) if rest else None,
        "all_identical": all(r["identical"] for r in results),
        "load_avg": os.getloadavg()[0],
    }
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(
            json.dumps(
                {"mode": args.mode, "max_tokens": args.max_tokens, "results": results, "summary": summary},
                indent=2,
            )
        )
    return 0 if summary["all_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
