"""`copilot-ls eval guided`: decoding guided by the server's knowledge, with vs without (issue 14,
item 3).

Cases: the class-member lines of `eval context --case-set class-members` (a test uses ``v.attr`` of ``v =
Cls(...)``, Cls imported from the package), with the cursor right after the first ``v.`` for which
copilot_ls.constraints.member_constraint gives a constraint (the file cut at the cursor, as the editor would see
it while typing). Each case is completed twice with the same prompt (the context builder's): free, and guided
(the constraint sent as `allowed_identifiers`). Measures, on exactly the cases where a constraint applied:
identifier hit (the suggestion's first identifier is the true member), exact match of the rest of the line, edit
similarity; Wilson / bootstrap 95% intervals and the paired counts. It also counts how many cases of the
default (calls) set would get a constraint at all (their requests are otherwise identical).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from copilot_ls.constraints import member_constraint
from copilot_ls.context import PromptBudget, build_prompt, unguard
from copilot_ls.context.workspace import Workspace, find_root
from copilot_ls.documents import Document
from copilot_ls.evaluation.context_eval import bootstrap_ci, build_cases, edit_similarity, wilson
from copilot_ls.pipeline import fim_template
from copilot_ls.postprocess import postprocess

ARMS = ("free", "guided")
_MEMBER_USE = re.compile(r"(?<![\w.])([A-Za-z_]\w*)\.([A-Za-z_]\w*)")
_IDENT = re.compile(r"[A-Za-z_]\w*")


@dataclass(frozen=True)
class GuidedCase:
    id: str
    path: str
    line: int
    col: int  # right after the dot
    member: str  # the true next identifier
    rest: str  # the true rest of the line from the cursor
    owner: str  # the class the constraint's members are of
    choices: int  # how many members the constraint allows


def _workspace(path: str, cache: dict) -> Workspace:
    root = find_root(path)[0]
    return cache.setdefault(root, Workspace(root, index=False))


def _document(path: str, line: int, col: int) -> Document:
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    prefix = "\n".join(lines[:line]) + "\n" + lines[line][:col]
    return Document(Path(path).as_uri(), "python", 0, prefix)


def build_guided_cases(packages: list[str], limit: int, seed: int) -> tuple[list[GuidedCase], int]:
    """(up to ``limit`` cases where a constraint applies, how many member lines were looked at)."""
    out: list[GuidedCase] = []
    seen = 0
    workspaces: dict = {}
    for case in build_cases(packages, limit * 4, seed, "class-members"):
        seen += 1
        text = Path(case.path).read_text(encoding="utf-8").split("\n")[case.line]
        for m in _MEMBER_USE.finditer(text):
            col = m.start(2)
            snap = _document(case.path, case.line, col).snapshot()
            c = member_constraint(snap, case.line, col, workspace=_workspace(case.path, workspaces))
            if c is None:
                continue
            rest = text[col:].rstrip()
            out.append(
                GuidedCase(case.id, case.path, case.line, col, m.group(2), rest, c.owner, len(c.identifiers))
            )
            break
        if len(out) >= limit:
            break
    return out, seen


def default_set_applied(packages: list[str], limit: int, seed: int) -> tuple[int, int]:
    """(cases of the default `calls` set that would get a constraint, cases): the cursor starts a line there."""
    from copilot_ls.evaluation.context_eval import case_document

    cases = build_cases(packages, limit, seed, "calls")
    workspaces: dict = {}
    applied = 0
    for c in cases:
        doc, line, col = case_document(c)
        if member_constraint(doc.snapshot(), line, col, workspace=_workspace(c.path, workspaces)) is not None:
            applied += 1
    return applied, len(cases)


def first_identifier(text: str) -> str:
    m = _IDENT.match(text)
    return m.group(0) if m else ""


async def run_case(case: GuidedCase, arm: str, client, meta, budget: PromptBudget, max_tokens: int) -> dict:
    snap = _document(case.path, case.line, case.col).snapshot()
    ws = Workspace(find_root(case.path)[0], index=False)
    prompt = build_prompt(
        snap,
        case.line,
        case.col,
        budget=budget,
        count_tokens=meta.count_tokens,
        fim=fim_template(meta),
        specials=meta.special_tokens,
        workspace=ws,
    )
    constraint = member_constraint(snap, case.line, case.col, workspace=ws) if arm == "guided" else None
    t0 = time.monotonic()
    raw = await client.complete(
        prompt.prompt,
        max_tokens=max_tokens,
        temperature=0.0,
        n=1,
        stop=prompt.stop,
        allowed_identifiers=constraint.identifiers if constraint else None,
        guided="allowed_identifiers",
    )
    elapsed = time.monotonic() - t0
    if prompt.guarded:
        raw = [replace(r, text=unguard(r.text, prompt.guarded)) for r in raw]
    sugg = postprocess(raw, snap, case.line, case.col, multiline=False, max_lines=1)
    got = sugg[0].text.split("\n")[0].rstrip() if sugg else ""
    return {
        "case": case.id,
        "arm": arm,
        "member": case.member,
        "expected": case.rest,
        "got": got,
        "raw": raw[0].text if raw else "",
        "identifier_hit": first_identifier(got) == case.member,
        "exact": got == case.rest,
        "edit_similarity": edit_similarity(got, case.rest),
        "shown": bool(sugg),
        "seconds": round(elapsed, 2),
    }


def allowed_names(cases: list[GuidedCase]) -> dict[str, set[str]]:
    """Per case, the names the constraint allows (the member names: the cursor is right after the dot)."""
    workspaces: dict = {}
    out = {}
    for c in cases:
        snap = _document(c.path, c.line, c.col).snapshot()
        k = member_constraint(snap, c.line, c.col, workspace=_workspace(c.path, workspaces))
        out[c.id] = {k.typed + i for i in k.identifiers} if k else set()
    return out


def summarize(results: list[dict], allowed: dict[str, set[str]] | None = None) -> dict:
    """Rates per arm with 95% intervals; `allowed`: per case the constraint's names, for the rate of
    suggestions whose first identifier is a member at all (guided: 1 by construction)."""
    if allowed is not None:
        results = [
            {**r, "valid_member": first_identifier(r["got"]) in allowed.get(r["case"], ())} for r in results
        ]
    by = {a: {r["case"]: r for r in results if r["arm"] == a} for a in ARMS}
    ids = sorted(set(by["free"]) & set(by["guided"]))
    out: dict = {"cases": len(ids), "arms": {}}
    for a in ARMS:
        rows = [by[a][i] for i in ids]
        n = len(rows)
        stats = {}
        for key in ("identifier_hit", "exact", "shown", "valid_member"):
            if not rows or key not in rows[0]:
                continue
            k = sum(bool(r[key]) for r in rows)
            stats[key] = {"rate": k / n if n else 0.0, "ci95": wilson(k, n)}
        sims = [r["edit_similarity"] for r in rows]
        stats["edit_similarity"] = {"mean": sum(sims) / n if n else 0.0, "ci95": bootstrap_ci(sims)}
        out["arms"][a] = stats
    pairs = [(by["free"][i]["identifier_hit"], by["guided"][i]["identifier_hit"]) for i in ids]
    out["identifier_pairs"] = {
        "both": sum(f and g for f, g in pairs),
        "only_guided": sum(g and not f for f, g in pairs),
        "only_free": sum(f and not g for f, g in pairs),
        "neither": sum(not f and not g for f, g in pairs),
    }
    diffs = [by["guided"][i]["identifier_hit"] - by["free"][i]["identifier_hit"] for i in ids]
    out["identifier_gain"] = {
        "points": 100 * sum(diffs) / len(ids) if ids else 0.0,
        "ci95": [100 * x for x in bootstrap_ci([float(d) for d in diffs])],
    }
    return out


def markdown(summary: dict, meta: dict) -> str:
    def pct(s: dict) -> str:
        lo, hi = s["ci95"]
        return f"{100 * s['rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"

    lines = [
        f"Guided decoding, {summary['cases']} class-member cases where a constraint applied "
        f"(model {meta['model']}, seed {meta['seed']}, of {meta['member_lines']} member lines looked at)",
        "",
        "| arm | identifier hit | first identifier is a member | exact line | edit similarity | shown |",
        "|---|---|---|---|---|---|",
    ]
    for a in ARMS:
        s = summary["arms"][a]
        es = s["edit_similarity"]
        lines.append(
            f"| {a} | {pct(s['identifier_hit'])} | {pct(s['valid_member']) if 'valid_member' in s else '-'} | "
            f"{pct(s['exact'])} | "
            f"{es['mean']:.3f} [{es['ci95'][0]:.3f}, {es['ci95'][1]:.3f}] | {pct(s['shown'])} |"
        )
    p, g = summary["identifier_pairs"], summary["identifier_gain"]
    lines += [
        "",
        f"identifier hit, guided - free: {g['points']:+.1f} points (95% CI {g['ci95'][0]:+.1f} .. "
        f"{g['ci95'][1]:+.1f}); paired: both {p['both']}, only guided {p['only_guided']}, "
        f"only free {p['only_free']}, neither {p['neither']}",
        f"default (calls) set: a constraint applied on {meta['default_applied']} of {meta['default_cases']} cases "
        "(the others' requests are the same with guided decoding on or off)",
    ]
    return "\n".join(lines) + "\n"


async def run_all(args: argparse.Namespace, cases: list[GuidedCase], out: Path) -> list[dict]:
    from copilot_ls.backend import BackendClient, BackendError

    path = out / "guided_results.jsonl"
    done: dict[tuple[str, str], dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            done[(r["case"], r["arm"])] = r
    client = BackendClient(args.backend, timeout=args.timeout)
    try:
        meta = await client.meta()
        args._model = meta.id or "?"
        budget = PromptBudget(max_prompt_tokens=args.max_prompt_tokens, max_tokens_out=args.max_tokens)
        sem = asyncio.Semaphore(args.concurrency)

        async def one(case: GuidedCase) -> None:
            async with sem:  # the two arms one after the other: the second reuses the prompt's cached prefill
                for arm in ARMS:
                    if (case.id, arm) in done:
                        continue
                    try:
                        r = await run_case(case, arm, client, meta, budget, args.max_tokens)
                    except BackendError as exc:
                        print(f"{case.id} {arm}: backend error, skipped: {exc}", file=sys.stderr)
                        continue
                    done[(case.id, arm)] = r
                    with path.open("a", encoding="utf-8") as fh:
                        fh.write(json.dumps(r, ensure_ascii=False) + "\n")
                    hit = "HIT" if r["identifier_hit"] else "   "
                    print(f"{case.id} {arm}: {hit} {r['got'][:60]!r}", file=sys.stderr)

        await asyncio.gather(*(one(c) for c in cases))
    finally:
        await client.aclose()
    return [done[(c.id, a)] for c in cases for a in ARMS if (c.id, a) in done]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`eval context`'s options (--cases, --seed, --packages, --backend, --max-tokens, --max-prompt-tokens,
    --concurrency, --timeout, --out, --list; the arm, case-set and snippet options do not apply here)."""
    from copilot_ls.evaluation.context_eval import add_arguments as context_arguments

    context_arguments(parser)
    parser.set_defaults(out=Path("out/guided-eval"))


def run(args: argparse.Namespace) -> int:
    from copilot_ls.evaluation.context_eval import package_dirs

    packages = [p.strip() for p in args.packages.split(",") if p.strip()]
    if not package_dirs(packages):
        print(f"copilot-ls eval guided: none of {packages} is installed", file=sys.stderr)
        return 2
    if args.cases < 1 or args.concurrency < 1:
        print("copilot-ls eval guided: --cases and --concurrency must be >= 1", file=sys.stderr)
        return 2
    return run_guided(args, packages)


def run_guided(args: argparse.Namespace, packages: list[str]) -> int:
    """Build the cases, complete each free and guided (resuming from --out), print and write the summary."""
    cases, seen = build_guided_cases(packages, args.cases, args.seed)
    applied, default_cases = default_set_applied(packages, args.cases, args.seed)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "guided_cases.jsonl").write_text("".join(json.dumps(asdict(c)) + "\n" for c in cases))
    if args.list:
        for c in cases:
            print(json.dumps(asdict(c)))
        return 0
    from copilot_ls.backend import BackendError

    try:
        results = asyncio.run(run_all(args, cases, out))
    except BackendError as exc:
        print(f"copilot-ls eval guided: backend {args.backend}: {exc}", file=sys.stderr)
        return 1
    summary = summarize(results, allowed_names(cases))
    meta = {
        "model": getattr(args, "_model", "?"),
        "seed": args.seed,
        "member_lines": seen,
        "default_applied": applied,
        "default_cases": default_cases,
        "max_tokens": args.max_tokens,
        "max_prompt_tokens": args.max_prompt_tokens,
    }
    (out / "guided_summary.json").write_text(json.dumps({**summary, "meta": meta}, indent=2))
    table = markdown(summary, meta)
    (out / "guided_summary.md").write_text(table)
    print(table)
    return 0
