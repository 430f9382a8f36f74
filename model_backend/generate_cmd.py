"""`copilot-backend generate "PROMPT"`: print completions of a prompt from a local model.

Loading progress and timings go to stderr; stdout gets only the completions (or, with --json, a list of
{text, mean_logprob, tokens, finish_reason}).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from model_backend.cli_options import add_speculation_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="the prompt text ('-' reads it from stdin)")
    parser.add_argument("--model", default="default", help="'default', a .gguf file or a Hugging Face folder")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--n", type=int, default=1, help="number of completions")
    parser.add_argument("--best-of", type=int, default=None, help="sample this many, print the n best")
    parser.add_argument("--beam", type=int, default=1, help="beam width (> 1: beam search)")
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--quantize",
        default="auto",
        choices=["auto", "blocks", "fp16", "int8", "none"],
        help="CPU weight format: auto = blocks where the kernel builds, else fp16 (both use the "
        "weights as stored / exact to fp16 rounding); int8 is faster but lossy",
    )
    parser.add_argument("--no-token-healing", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads for prefill")
    parser.add_argument(
        "--decode-threads",
        type=int,
        default=1,
        help="torch CPU threads for decode steps (1: robust when other processes are busy)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list of candidates")
    add_speculation_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from model_backend.engine import SamplingParams

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    params = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        n=args.n,
        best_of=args.best_of,
        beam_width=args.beam,
        stop=list(args.stop),
        seed=args.seed,
        token_healing=not args.no_token_healing,
    )
    try:
        params.validate()
    except ValueError as e:
        print(f"copilot-backend generate: {e}", file=sys.stderr)
        return 2
    engine = load(args, max_batch=max(8, params.n_sequences))
    if engine is None:
        return 1
    t1 = time.perf_counter()
    try:
        candidates = engine.generate(prompt, params)
    except ValueError as e:
        print(f"copilot-backend generate: {e}", file=sys.stderr)
        return 2
    dt = time.perf_counter() - t1
    n_tok = sum(len(c.token_ids) for c in candidates)
    print(f"{n_tok} tokens in {dt:.2f}s", file=sys.stderr)
    print_candidates(prompt, candidates, as_json=args.json)
    return 0


def load(args: argparse.Namespace, *, max_batch: int) -> Any:
    """The engine the options ask for, timed on stderr; None (after one clear line there) when it can't load."""
    import torch

    from model_backend.engine import Engine

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    print(f"loading {args.model} ...", file=sys.stderr)
    try:
        engine = Engine.load(
            args.model,
            device=args.device,
            quantize=args.quantize,
            max_batch=max_batch,
            decode_threads=args.decode_threads,
        )
        engine.set_speculation(args.speculate, args.draft_model, quantize=args.quantize)
    except Exception as e:  # ModelLoadError, ValueError (device): one clear line, no traceback
        print(f"copilot-backend generate: cannot load model: {e}", file=sys.stderr)
        return None
    print(f"loaded in {time.perf_counter() - t0:.1f}s on {engine.device}", file=sys.stderr)
    return engine


def print_candidates(prompt: str, candidates: list[Any], *, as_json: bool) -> None:
    """stdout: a JSON list, the one completion after its prompt, or each of several under a header line."""
    if as_json:
        out = [
            {
                "text": c.text,
                "mean_logprob": c.mean_logprob,
                "tokens": c.tokens,
                "finish_reason": c.finish_reason,
            }
            for c in candidates
        ]
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return
    for i, c in enumerate(candidates):
        if len(candidates) > 1:
            print(f"--- completion {i} (mean log-prob {c.mean_logprob:.3f}, {c.finish_reason}) ---")
        print(prompt + c.text if len(candidates) == 1 else c.text)
