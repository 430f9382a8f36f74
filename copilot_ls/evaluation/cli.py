"""`copilot-ls eval humaneval ...`, `copilot-ls eval context ...` and `copilot-ls eval guided ...`.

Only argparse at import time: every `copilot-ls` start (the LSP server too) builds this parser, so the heavy
modules (the harness, matplotlib, the context evaluation) are imported when their subcommand runs.

`eval context` belongs to copilot_ls/evaluation/context_eval.py and `eval guided` to guided_eval.py, which follow
the subcommand convention (`add_arguments(parser)`, `run(args) -> int`); their arguments are handed over untouched
and parsed by them.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from pathlib import Path

DEFAULT_BACKEND = "http://127.0.0.1:8765"
CONTEXT_MODULE = "copilot_ls.evaluation.context_eval"
GUIDED_MODULE = "copilot_ls.evaluation.guided_eval"


def add_arguments(parser: argparse.ArgumentParser) -> None:  # long: a flat list of options
    sub = parser.add_subparsers(dest="eval_command", metavar="{humaneval,context,guided}")
    sub.required = True
    he = sub.add_parser(
        "humaneval",
        help="HumanEval pass@k of the served model (through the LS or raw)",
        description="HumanEval pass@k: generate n samples per problem, run each with the "
        "problem's tests in a sandbox, report unbiased pass@k, top-log-prob and greedy pass@1. "
        "Writes samples.jsonl, results.json and pass_at_k.png to --out; rerun the same "
        "command to resume an interrupted run.",
    )
    he.add_argument(
        "--n",
        type=int,
        default=10,
        help="samples per problem (default 10; --through ls: at most 16, one request)",
    )
    he.add_argument("--k", default="1,10", help="comma-separated k for pass@k (default 1,10; each <= n)")
    he.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (default 0.8)")
    he.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (default 0.95)")
    he.add_argument("--max-tokens", type=int, default=300, help="tokens per sample (default 300)")
    he.add_argument("--limit", type=int, default=None, help="only the first N problems (default all 164)")
    he.add_argument(
        "--through",
        choices=("ls", "raw"),
        default="ls",
        help="ls: the editor's pipeline (context + post-processing); raw: the bare prompt with "
        "the Codex stop sequences (default ls)",
    )
    he.add_argument(
        "--backend",
        default=DEFAULT_BACKEND,
        help=f"OpenAI-compatible server; the default one is started if nothing answers "
        f"(default {DEFAULT_BACKEND})",
    )
    he.add_argument(
        "--endpoint",
        choices=("completions", "chat", "auto"),
        default="completions",
        help="the server's API: /v1/completions, /v1/chat/completions (a FIM prompt as chat "
        "messages; --through ls only) or auto (probe once) (default completions)",
    )
    he.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory (default out/humaneval-THROUGH, plus -chat / -auto for those endpoints)",
    )
    he.add_argument("--workers", type=int, default=2, help="problems in flight at once (default 2)")
    he.add_argument(
        "--no-greedy",
        dest="greedy",
        action="store_false",
        help="skip the extra greedy (temperature 0) sample per problem",
    )
    he.add_argument(
        "--timeout", type=float, default=10.0, help="seconds per sample in the sandbox (default 10)"
    )
    he.set_defaults(_eval_run=run_humaneval)
    # `prefix_chars` that no option uses: everything after `context` reaches context_eval's own parser.
    ctx = sub.add_parser(
        "context",
        help="repo-level next-line accuracy: prefix-only vs the context builder",
        add_help=False,
        prefix_chars="\x00",
    )
    ctx.add_argument("args", nargs="*")
    ctx.set_defaults(_eval_run=run_context)
    guided = sub.add_parser(
        "guided",
        help="guided decoding with vs without, on class-member cases where a constraint applies",
        add_help=False,
        prefix_chars="\x00",
    )
    guided.add_argument("args", nargs="*")
    guided.set_defaults(_eval_run=run_guided)


def run(args: argparse.Namespace) -> int:
    return int(args._eval_run(args) or 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="copilot-ls eval")
    add_arguments(parser)
    return run(parser.parse_args(argv))


# ---------------------------------------------------------------------------------------------------------


def run_context(args: argparse.Namespace) -> int:
    return _run_module("context", CONTEXT_MODULE, args.args, "copilot_ls/evaluation/context_eval.py")


def run_guided(args: argparse.Namespace) -> int:
    return _run_module("guided", GUIDED_MODULE, args.args, "copilot_ls/evaluation/guided_eval.py")


def _run_module(command: str, name: str, argv: list[str], source: str) -> int:
    """A subcommand that follows the convention: the module's own `add_arguments(parser)` and `run(args)`."""
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        print(
            f"copilot-ls eval {command}: not available in this build ({source} is missing)",
            file=sys.stderr,
        )
        return 2
    if not (hasattr(module, "add_arguments") and hasattr(module, "run")):
        print(f"copilot-ls eval {command}: {name} lacks add_arguments()/run()", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog=f"copilot-ls eval {command}")
    module.add_arguments(parser)
    return int(module.run(parser.parse_args(argv)) or 0)


def run_humaneval(args: argparse.Namespace) -> int:
    from copilot_ls.evaluation.humaneval import EvalConfig, EvalError
    from copilot_ls.evaluation.passk import parse_ks

    try:
        cfg = EvalConfig(
            n=args.n,
            ks=tuple(parse_ks(args.k)),
            temperature=args.temperature,
            top_p=args.top_p,
            max_tokens=args.max_tokens,
            limit=args.limit,
            through=args.through,
            backend=args.backend,
            endpoint=args.endpoint,
            out=args.out
            or Path(
                f"out/humaneval-{args.through}"
                + ("" if args.endpoint == "completions" else f"-{args.endpoint}")
            ),
            workers=args.workers,
            greedy=args.greedy,
            timeout_s=args.timeout,
        )
        cfg.validate()
    except (ValueError, EvalError) as exc:
        print(f"copilot-ls eval humaneval: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_humaneval(cfg))


async def _humaneval(cfg) -> int:
    from copilot_ls.backend import BackendClient, BackendError
    from copilot_ls.evaluation.humaneval import EvalError, evaluate
    from copilot_ls.evaluation.sandbox import SandboxError
    from copilot_ls.lsp.autostart import ensure_backend
    from copilot_ls.settings import Settings

    client = BackendClient(
        cfg.backend, timeout=900.0, endpoint=cfg.endpoint
    )  # n samples of 300 tokens on a CPU take a while
    proc = None
    try:
        proc = await ensure_backend(
            client,
            Settings(backend_url=cfg.backend),
            progress=lambda msg: print(f"[backend] {msg}", file=sys.stderr),
        )
        results = await evaluate(cfg, client)
    except EvalError as exc:
        print(f"copilot-ls eval humaneval: {exc}", file=sys.stderr)
        return 2
    except (BackendError, SandboxError) as exc:
        from copilot_ls.evaluation.humaneval import SAMPLES_FILE

        kept = (cfg.out / SAMPLES_FILE).is_file()  # (a backend that never answered left nothing to resume)
        print(
            f"copilot-ls eval humaneval: {exc}"
            + (f" (samples so far are kept in {cfg.out}; rerun to resume)" if kept else ""),
            file=sys.stderr,
        )
        return 1
    finally:
        if proc is not None:
            proc.stop()
        await client.aclose()
    print(format_summary(results))
    return 0


def _interval(share: float, problems: int) -> str:
    """The 95% Wilson interval of a pass@1 over `problems` (one pass/fail each: exact for greedy and ranked)."""
    from copilot_ls.evaluation.context_eval import wilson

    if not problems:
        return ""
    lo, hi = wilson(round(share * problems), problems)
    return f"  (95% CI {100 * lo:.1f}-{100 * hi:.1f}%)"


def format_summary(results: dict) -> str:
    cfg = results["config"]
    model = (results.get("model") or {}).get("id", "?")
    lines = [
        f"HumanEval: {results['problems']} problems, n={results['samples_per_problem']}, "
        f"through {cfg['through']}, model {model}, T={cfg['temperature']}, top-p={cfg['top_p']}"
    ]
    for name, value in results["pass_at_k"].items():
        lines.append(f"  {name:<34}{100 * value:6.2f}%")
    for key, label in (
        ("pass_at_1_mean_of_samples", "pass@1, mean of all samples"),
        ("pass_at_1_top_logprob", "pass@1, top mean log-prob sample"),
        ("pass_at_1_ranked", "pass@1, LS-ranked sample"),
        ("pass_at_1_greedy", "pass@1, greedy"),
    ):
        if results.get(key) is not None:  # the mean of samples is no pass/fail per problem: no interval
            ci = "" if key == "pass_at_1_mean_of_samples" else _interval(results[key], results["problems"])
            lines.append(f"  {label:<34}{100 * results[key]:6.2f}%{ci}")
    lines.append(
        f"  wrote {cfg['out']}/results.json, samples.jsonl"
        + (", pass_at_k.png" if results.get("plot") else "")
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
