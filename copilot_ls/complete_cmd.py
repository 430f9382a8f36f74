"""`copilot-ls complete PATH:LINE:COL`: print the completion the editor would show there.

LINE and COL are 1-based; COL counts Unicode code points (characters), so COL = length of the line + 1 is the
end of the line. PATH `-` reads the document from stdin (then pass --language, or it is plain text).
It runs the language server's own pipeline (context, backend, post-processing) and, like the server, starts
`copilot-backend serve` when the default backend URL does not answer (and stops it again before exiting).

Exit status: 0 with a completion, 1 with none (or when the backend failed), 2 on bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import re
import sys
from pathlib import Path

from copilot_ls import pipeline
from copilot_ls.backend import ENDPOINTS, BackendClient, BackendError
from copilot_ls.documents import Document, Snapshot, split_lines
from copilot_ls.languages import language_for
from copilot_ls.lsp import autostart
from copilot_ls.lsp.settings import SettingsError, from_dict
from copilot_ls.settings import DEFAULT_BACKEND_URL, Settings


class BadInput(ValueError):
    pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # "-:LINE:COL" (stdin) starts with "-": let argparse read it as a value, like a negative number
    # (`copilot-ls complete -- -:LINE:COL` works too).
    parser._negative_number_matcher = re.compile(r"^-\d+$|^-\d*\.\d+$|^-:")
    parser.add_argument(
        "position",
        metavar="PATH:LINE:COL",
        help="file and 1-based line and column (column in characters); PATH '-' reads stdin",
    )
    parser.add_argument("--n", type=int, default=1, help="number of candidates (default 1)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--backend",
        default=None,
        help=f"OpenAI-compatible backend URL (default {DEFAULT_BACKEND_URL}, started if silent)",
    )
    parser.add_argument("--explain", action="store_true", help="also print the exact prompt and its sources")
    parser.add_argument("--language", default=None, help="LSP languageId (default: from the file extension)")
    parser.add_argument("--api-key", default=None, help="bearer token for the backend")
    parser.add_argument("--model", default=None, help="model name to send to the backend")
    parser.add_argument("--max-tokens", type=int, default=None, help="most tokens to generate (default 128)")
    parser.add_argument("--temperature", type=float, default=None, help="sampling temperature (default 0)")
    parser.add_argument(
        "--max-lines", type=int, default=None, help="longest multi-line suggestion (default 10)"
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for the backend (default 300)"
    )
    parser.add_argument(
        "--min-confidence",
        type=float,
        default=None,
        metavar="C",
        help="show nothing (exit 1) when the suggestion's confidence is below C, 0..1 "
        "(default: the LS default, see docs/quality.md)",
    )
    parser.add_argument(
        "--endpoint",
        choices=ENDPOINTS,
        default=None,
        help="the server's API: completions (default), chat (/v1/chat/completions, for "
        "chat-only servers) or auto (probe once)",
    )
    parser.add_argument(
        "--fim-template",
        default=None,
        metavar="NAME",
        help="fill-in-the-middle template: auto (default: the tokens the server reports, else the "
        "model id), none, starcoder, qwen, codellama or deepseek",
    )


def parse_position(spec: str) -> tuple[str, int, int]:
    parts = spec.rsplit(":", 2)
    if len(parts) != 3 or not parts[0]:
        raise BadInput(f"expected PATH:LINE:COL (1-based), got {spec!r}")
    path, line_s, col_s = parts
    try:
        line, col = int(line_s), int(col_s)
    except ValueError:
        raise BadInput(f"LINE and COL must be integers, got {line_s!r} and {col_s!r}") from None
    if line < 1 or col < 1:
        raise BadInput(f"LINE and COL are 1-based, got {line}:{col}")
    return path, line, col


def load_document(path: str, language: str | None) -> Document:
    # Bytes, decoded here: text-mode reads would turn CRLF into LF (the editor sends the document as it is) and
    # stdin's surrogateescape would let non-UTF-8 input through to a crash instead of a message.
    if path == "-":
        data, uri, name = sys.stdin.buffer.read(), "untitled:stdin", "stdin"
    else:
        p = Path(path)
        if p.is_dir():
            raise BadInput(f"{path} is a directory, not a file")
        if not p.is_file():
            raise BadInput(f"no such file: {path}")
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise BadInput(f"cannot read {path}: {exc.strerror}") from None
        uri, name = p.resolve().as_uri(), path
    try:
        text = data.decode("utf-8-sig")  # a BOM is no character of the text (editors do not show it)
    except UnicodeDecodeError:
        raise BadInput(f"{name} is not UTF-8 text") from None
    spec = language_for(language, None if path == "-" else path)
    language_id = language or (spec.id if spec is not None else "plaintext")
    return Document(uri, language_id, 0, text)


def check_position(text: str, line: int, col: int) -> tuple[int, int]:
    """1-based (line, col) -> 0-based, or BadInput when outside the document."""
    lines = split_lines(text)
    if line > len(lines):
        raise BadInput(f"line {line} is past the end of the document ({len(lines)} lines)")
    width = len(lines[line - 1])
    if col > width + 1:
        raise BadInput(
            f"column {col} is past the end of line {line} ({width} characters; the end is {width + 1})"
        )
    return line - 1, col - 1


def _settings(args: argparse.Namespace) -> Settings:
    data = {
        "backend_url": args.backend or DEFAULT_BACKEND_URL,
        "n": args.n,
        "api_key": args.api_key,
        "model": args.model,
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "max_lines": args.max_lines,
        "timeout": args.timeout,
        "fim_template": args.fim_template,
        "min_confidence": args.min_confidence,
        "endpoint": args.endpoint,
    }
    return from_dict({k: v for k, v in data.items() if v is not None})


def _pos(p: tuple[int, int]) -> dict:
    return {"line": p[0] + 1, "column": p[1] + 1}


def _source(s) -> dict:
    """A prompt source with 1-based lines, like every other position this command prints (SnippetSource's
    are 0-based)."""
    d = dataclasses.asdict(s)
    d["start_line"] += 1
    d["end_line"] += 1
    return d


def _explain(result: pipeline.CompletionResult) -> dict:
    pr = result.prompt
    return {
        "prompt": pr.prompt,
        "prefix": pr.prefix,
        "suffix": pr.suffix,
        "multiline": pr.multiline,
        "stop": list(pr.stop),
        "sources": [_source(s) for s in pr.sources],
        "raw": [dataclasses.asdict(c) for c in result.raw],
        "cached": result.cached,
    }


def render(
    args: argparse.Namespace, snap: Snapshot, line: int, col: int, result: pipeline.CompletionResult
) -> str:
    items = [
        {
            "text": s.text,
            "start": _pos(s.start),
            "end": _pos(s.end),
            "mean_logprob": s.mean_logprob,
            "confidence": s.confidence,
            "issues": list(s.issues),
        }
        for s in result.suggestions
    ]
    if args.json:
        out = {
            "path": None if args.position.startswith("-:") else snap.path,
            "language": snap.language_id,
            "line": line + 1,
            "column": col + 1,
            "items": items,
        }
        if args.explain:
            out["explain"] = _explain(result)
        return json.dumps(out, ensure_ascii=False, indent=2)
    chunks = []
    if args.explain:
        ex = _explain(result)
        chunks.append(
            f"=== prompt ({len(ex['prompt'])} characters, multiline={ex['multiline']}, "
            f"stop={ex['stop']!r}) ===\n{ex['prompt']}"
        )
        chunks.append(
            "=== sources ===\n" + "\n".join(json.dumps(s, ensure_ascii=False) for s in ex["sources"])
        )
        chunks.append("=== completion ===")
    for i, s in enumerate(result.suggestions):
        if len(result.suggestions) > 1:
            c = "n/a" if s.confidence is None else f"{s.confidence:.2f}"
            chunks.append(f"--- candidate {i + 1} (confidence {c}, mean log-prob {s.mean_logprob:.3f}) ---")
        chunks.append(s.text)
    return "\n".join(chunks)


async def _complete(args: argparse.Namespace, settings: Settings, snap: Snapshot, line: int, col: int) -> int:
    client = BackendClient(
        settings.backend_url,
        api_key=settings.api_key,
        model=settings.model,
        timeout=settings.timeout,
        endpoint=settings.endpoint,
    )
    child = None
    try:
        child = await autostart.ensure_backend(
            client, settings, progress=lambda m: print(f"copilot-ls: backend: {m}", file=sys.stderr)
        )
        result = await pipeline.complete(snap, line, col, client=client, settings=settings)
    except BackendError as exc:
        print(f"copilot-ls complete: no completion: {exc}", file=sys.stderr)
        return 1
    finally:
        await client.aclose()
        if child is not None:
            child.stop()
    text = render(args, snap, line, col, result)
    if text:
        try:
            print(text, flush=True)
        except BrokenPipeError:  # `... --explain | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
    if not result.suggestions:
        why = f" above --min-confidence {settings.min_confidence:g}" if result.hidden else ""
        print(f"copilot-ls complete: no completion{why} at this position", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args)
        path, line1, col1 = parse_position(args.position)
        doc = load_document(path, args.language)
        line, col = check_position(doc.text, line1, col1)
    except (BadInput, SettingsError) as exc:
        print(f"copilot-ls complete: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_complete(args, settings, doc.snapshot(), line, col))
