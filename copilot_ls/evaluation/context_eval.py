"""`copilot-ls eval context`: repo-level next-line accuracy, prefix-only prompts versus the context builder.

The case set is built from real code on this machine: the test suites of pure-Python packages installed next to
copilot-ls (sympy, networkx, mpmath by default). A case is a line inside a test function that calls a function
imported from another file of the same package (resolved by the builder's own import resolution, and the
definition must exist there). The file is cut at the start of that line (after its indentation) and the model is
asked for the next line. Both arms use the same model, greedy decoding, the same token budget, the same
post-processing; they differ only in the prompt:

    prefix-only   header + the text before the cursor            (build_prompt(..., snippets=False))
    builder       + the function under test, definitions of names near the cursor, scope headers

Reports exact match (stripped line equality) and edit similarity with 95% confidence intervals (Wilson for the
proportions, paired bootstrap for the difference) and writes cases.jsonl, results.jsonl (resumable),
summary.json and summary.md (the table for docs/quality.md) under --out.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import random
import re
import sys
import sysconfig
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tree_sitter import Node

from copilot_ls import chat, confidence
from copilot_ls.backend import ENDPOINTS
from copilot_ls.context import (
    DEFAULT_SNIPPET_STYLE,
    KEEP_IN_PREFIX,
    SNIPPET_STYLES,
    Prompt,
    PromptBudget,
    build_prompt,
    unguard,
)
from copilot_ls.context.resolve import Resolver
from copilot_ls.context.workspace import Workspace, find_root
from copilot_ls.documents import Document, Snapshot
from copilot_ls.evaluation.edit_cases import build_edit_cases, replay
from copilot_ls.pipeline import ask_chat, chat_budget, chat_prompt, fim_template
from copilot_ls.postprocess import postprocess
from copilot_ls.settings import Settings

DEFAULT_BACKEND = "http://127.0.0.1:8765"
DEFAULT_PACKAGES = ("networkx", "sympy", "mpmath")
ARMS = ("prefix-only", "builder")
EDITS_ARM = "edits"  # the builder with the recent edits of the case (copilot_ls/evaluation/edit_cases.py)
ALL_ARMS = (*ARMS, EDITS_ARM)
MAX_PER_FILE = 2


@dataclass(frozen=True)
class Case:
    id: str
    path: str  # the test file
    line: int  # 0-based line of the target
    col: int  # cursor column (the target's indentation)
    expected: str  # the target line without its indentation
    subject: str  # the imported function the line calls
    subject_path: str  # where it is defined
    subject_before: bool = False  # the test already called the subject above the line (a repeated pattern)
    # recent edits replayed before the request, newest first: (path, first line, last line); the `edits` set's
    # cases have one (there `subject` is the edited line, `subject_before`: it is in the same file)
    edits: tuple[tuple[str, int, int], ...] = ()


# --- the case set ---------------------------------------------------------------------------------------------
def package_dirs(packages: Sequence[str]) -> list[Path]:
    """Installed packages by name, or package directories by path (a path holds a ``/``)."""
    site = Path(sysconfig.get_paths()["purelib"])
    dirs = [Path(p).resolve() if "/" in p else site / p for p in packages]
    return [d for d in dirs if d.is_dir()]


def _stable_hash(*parts: object) -> int:
    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:12], 16)


@dataclass
class _TestFile:
    """One parsed test file: its lines, its import resolution, and the top-level test functions in it."""

    path: Path
    snap: Snapshot
    resolver: Resolver
    lines: list[str]
    _defined: dict[tuple[str, str], str | None] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path, workspace: Workspace) -> _TestFile | None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None
        snap = Document(path.as_uri(), "python", 0, text).snapshot()
        if snap.tree is None:
            return None
        return cls(path, snap, Resolver(snap, (), workspace), snap.lines())

    def test_functions(self) -> Iterator[tuple[Node, Node]]:
        """(function, body) of each top-level `test*` function, decorated or not."""
        for node in self.snap.tree.root_node.children:
            fn = node.child_by_field_name("definition") if node.type == "decorated_definition" else node
            if fn is None or fn.type != "function_definition":
                continue
            name, body = fn.child_by_field_name("name"), fn.child_by_field_name("body")
            if name is not None and body is not None and name.text.decode().startswith("test"):
                yield fn, body

    def imported_from_elsewhere(self, name: str, kind: str) -> str | None:
        """The file defining `name` (a "function" or "class") when the test imports it from another file."""
        if (name, kind) not in self._defined:
            defs = (
                [d for d in self.resolver.definition_of(name, None) if d.kind == kind]
                if name in self.resolver.imported
                else []
            )
            self._defined[name, kind] = defs[0].path if defs and defs[0].path != str(self.path) else None
        return self._defined[name, kind]

    def target(self, stmt: Node) -> str | None:
        """The statement's line, stripped, when it can be a case's target: one line of 6 to 120 characters."""
        ln = stmt.start_point[0]
        text = self.lines[ln].strip()
        return text if stmt.end_point[0] == ln and 6 <= len(text) <= 120 else None

    def case(self, ln: int, subject: str, subject_path: str, subject_before: bool = False) -> Case:
        line = self.lines[ln]
        col = len(line) - len(line.lstrip())
        cid = f"{self.path.name}:{ln + 1}"
        return Case(cid, str(self.path), ln, col, line.strip(), subject, subject_path, subject_before)


def cases_in_file(path: Path, workspace: Workspace) -> list[Case]:
    """Candidate lines of one test file (see the module doc)."""
    f = _TestFile.open(path, workspace)
    if f is None:
        return []
    out: list[Case] = []
    for fn, body in f.test_functions():
        for stmt in body.named_children:
            ln = stmt.start_point[0]
            if ln <= fn.start_point[0] or f.target(stmt) is None:
                continue  # one-line statements below the def only (the target is "the next line")
            for callee in _called_names(stmt):
                sp = f.imported_from_elsewhere(callee, "function")
                if sp:
                    before = any(_calls(f.lines[k], callee) for k in range(fn.start_point[0] + 1, ln))
                    out.append(f.case(ln, callee, sp, before))
                    break
    return out


def class_member_cases_in_file(path: Path, workspace: Workspace) -> list[Case]:
    """Lines inside a test function that use a member (``v.attr``) of a variable the test assigned from a
    class imported from another file (``v = Circle(...)``): what a class snippet's fields and method signatures
    are for (issue 15, item 5). The subject is the class."""
    f = _TestFile.open(path, workspace)
    if f is None:
        return []
    out: list[Case] = []
    for _, body in f.test_functions():
        instances: dict[str, str] = {}  # variable -> its class
        for stmt in body.named_children:
            used = _instance_used(stmt, instances) if instances and f.target(stmt) else None
            if used is not None:
                out.append(f.case(stmt.start_point[0], used, f.imported_from_elsewhere(used, "class") or ""))
            assigned = _instance_assigned(stmt)  # recorded after the line is used: `v = Cls(...)` then `v.x`
            if assigned is not None and f.imported_from_elsewhere(assigned[1], "class"):
                instances[assigned[0]] = assigned[1]
    return out


def _called_names(stmt: Node) -> list[str]:
    """Names called as plain identifiers in the statement (``f(...)``, not ``obj.f(...)``), in tree order."""
    return [
        n.text.decode()
        for n in _walk(stmt)
        if n.type == "call"
        and n.child_by_field_name("function") is not None
        and n.child_by_field_name("function").type == "identifier"
        for n in [n.child_by_field_name("function")]
    ]


def _instance_used(stmt: Node, instances: dict[str, str]) -> str | None:
    """The class of the first known instance whose member (``v.attr``) the statement reads."""
    return next(
        (
            instances[obj.text.decode()]
            for n in _walk(stmt)
            if n.type == "attribute"
            for obj in [n.child_by_field_name("object")]
            if obj is not None and obj.type == "identifier" and obj.text.decode() in instances
        ),
        None,
    )


def _instance_assigned(stmt: Node) -> tuple[str, str] | None:
    """(variable, called name) of a statement ``v = Name(...)``; None for anything else."""
    if stmt.type != "expression_statement" or not stmt.named_child_count:
        return None
    expr = stmt.named_children[0]
    if expr.type != "assignment":
        return None
    left, right = expr.child_by_field_name("left"), expr.child_by_field_name("right")
    callee = right.child_by_field_name("function") if right is not None and right.type == "call" else None
    if left is None or left.type != "identifier" or callee is None or callee.type != "identifier":
        return None
    return left.text.decode(), callee.text.decode()


CASE_SETS = {"calls": cases_in_file, "class-members": class_member_cases_in_file}


def _calls(line: str, name: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(name)}\s*\(", line) is not None


def _walk(node):
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(n.children)


def build_cases(packages: Sequence[str], limit: int, seed: int = 0, case_set: str = "calls") -> list[Case]:
    """Up to ``limit`` cases, at most MAX_PER_FILE per test file, chosen deterministically by ``seed``;
    ``case_set`` names the kind of line (``CASE_SETS``, or ``edits``: edit_cases.py)."""
    if case_set == "edits":
        found = build_edit_cases(
            package_dirs(packages), limit, seed, similarity=edit_similarity, stable_hash=_stable_hash
        )
        return [Case(**c) for c in found]
    find_cases = CASE_SETS[case_set]
    keyed: list[tuple[int, str, Path]] = []
    for pkg in package_dirs(packages):
        for p in pkg.rglob("test_*.py"):
            if "tests" in p.relative_to(pkg).parts:
                # keyed by the path inside the package, so the choice does not depend on where it is installed
                rel = p.relative_to(pkg.parent).as_posix()
                keyed.append((_stable_hash(seed, rel), rel, p))
    files = [p for _, _, p in sorted(keyed)]
    cases: list[Case] = []
    workspaces: dict[Path, Workspace] = {}
    for f in files:
        root, _ = find_root(f)
        ws = workspaces.setdefault(root, Workspace(root, index=False))
        found = find_cases(f, ws)
        found.sort(key=lambda c: _stable_hash(seed, c.id))
        cases.extend(found[:MAX_PER_FILE])
        if len(cases) >= limit:
            break
    return cases[:limit]


def case_document(case: Case) -> tuple[Document, int, int]:
    """The test file cut at the case's cursor (everything after it removed)."""
    text = Path(case.path).read_text(encoding="utf-8")
    lines = text.split("\n")
    prefix = "\n".join(lines[: case.line]) + "\n" + lines[case.line][: case.col]
    return Document(Path(case.path).as_uri(), "python", 0, prefix), case.line, case.col


# --- metrics --------------------------------------------------------------------------------------------------
def edit_similarity(a: str, b: str) -> float:
    """1 - Levenshtein(a, b) / max(len(a), len(b)) (1.0 for two empty strings)."""
    if a == b:
        return 1.0
    if not a or not b:
        return 0.0
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return 1.0 - prev[-1] / max(len(a), len(b))


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 0.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_ci(values: Sequence[float], *, rounds: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean."""
    if not values:
        return (0.0, 0.0)
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(rounds))
    return (means[int(0.025 * rounds)], means[int(0.975 * rounds) - 1])


def summarize(results: list[dict], arms: tuple[str, str] = ARMS, strata=None) -> dict:
    """The two ``arms`` (base, new) over the cases that have both, and the new arm's lift over the base."""
    base, new = arms
    by_case: dict[str, dict[str, dict]] = {}
    for r in results:
        by_case.setdefault(r["case"], {})[r["arm"]] = r
    paired = [v for v in by_case.values() if all(a in v for a in arms)]
    out: dict = {"cases": len(paired), "arms": {}, "pair": list(arms)}
    for arm in arms:
        em = [1.0 if v[arm]["exact"] else 0.0 for v in paired]
        es = [v[arm]["edit_similarity"] for v in paired]
        n = len(paired)
        out["arms"][arm] = {
            "exact_match": sum(em) / n if n else 0.0,
            "exact_match_ci95": wilson(int(sum(em)), n),
            "edit_similarity": sum(es) / n if n else 0.0,
            "edit_similarity_ci95": bootstrap_ci(es),
            "mean_prompt_tokens": sum(v[arm]["prompt_tokens"] for v in paired) / n if n else 0.0,
        }
    diff = [(1.0 if v[new]["exact"] else 0.0) - (1.0 if v[base]["exact"] else 0.0) for v in paired]
    out["exact_match_lift"] = sum(diff) / len(diff) if diff else 0.0
    out["exact_match_lift_ci95"] = bootstrap_ci(diff)
    es_diff = [v[new]["edit_similarity"] - v[base]["edit_similarity"] for v in paired]
    out["edit_similarity_lift"] = sum(es_diff) / len(es_diff) if es_diff else 0.0
    out["edit_similarity_lift_ci95"] = bootstrap_ci(es_diff)
    out["strata"] = {}
    for name, want in strata or STRATA:
        sub = [v for v in paired if bool(v[new].get("subject_before")) == want]
        if sub:
            out["strata"][name] = _stratum(sub, arms)
    return out


# Cases split by whether the test already called the subject above the line (the model can copy the pattern)
STRATA = (("subject called earlier in the test", True), ("first call of the subject in the test", False))
EDIT_STRATA = (("edit in the same file", True), ("edit in another file", False))  # the `edits` set's


def _stratum(paired: list[dict], arms: tuple[str, str] = ARMS) -> dict:
    base, new = arms
    n = len(paired)
    row: dict = {"cases": n}
    for arm in arms:
        row[arm] = {
            "exact_match": sum(bool(v[arm]["exact"]) for v in paired) / n,
            "edit_similarity": sum(v[arm]["edit_similarity"] for v in paired) / n,
        }
    em = [float(v[new]["exact"]) - float(v[base]["exact"]) for v in paired]
    es = [v[new]["edit_similarity"] - v[base]["edit_similarity"] for v in paired]
    row["exact_match_lift"], row["exact_match_lift_ci95"] = sum(em) / n, bootstrap_ci(em)
    row["edit_similarity_lift"], row["edit_similarity_lift_ci95"] = sum(es) / n, bootstrap_ci(es)
    return row


def markdown_table(summary: dict, meta: dict) -> str:
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    rows = [
        "| prompt | exact match % (95% CI) | edit similarity % (95% CI) | mean prompt tokens |",
        "|---|---|---|---|",
    ]
    base, new = summary.get("pair", ARMS)
    for arm in (base, new):
        a = summary["arms"][arm]
        lo, hi = a["exact_match_ci95"]
        elo, ehi = a["edit_similarity_ci95"]
        rows.append(
            f"| {arm} | {pct(a['exact_match'])} ({pct(lo)}–{pct(hi)}) | {pct(a['edit_similarity'])} "
            f"({pct(elo)}–{pct(ehi)}) | {a['mean_prompt_tokens']:.0f} |"
        )
    lo, hi = summary["exact_match_lift_ci95"]
    elo, ehi = summary["edit_similarity_lift_ci95"]
    rows.append(
        f"| **{new} − {base}** | **{pct(summary['exact_match_lift'])} points** ({pct(lo)}–{pct(hi)}, "
        f"paired bootstrap) | {pct(summary['edit_similarity_lift'])} points ({pct(elo)}–{pct(ehi)}) | |"
    )
    if summary.get("strata"):
        rows += [
            "",
            f"| cases | n | exact match %, {base} → {new} | lift (95% CI) | edit similarity %, {base} → "
            f"{new} | lift (95% CI) |",
            "|---|---|---|---|---|---|",
        ]
        for name, st in summary["strata"].items():
            lo, hi = st["exact_match_lift_ci95"]
            elo, ehi = st["edit_similarity_lift_ci95"]
            rows.append(
                f"| {name} | {st['cases']} | {pct(st[base]['exact_match'])} → "
                f"{pct(st[new]['exact_match'])} | {pct(st['exact_match_lift'])} ({pct(lo)}–{pct(hi)}) | "
                f"{pct(st[base]['edit_similarity'])} → {pct(st[new]['edit_similarity'])} | "
                f"{pct(st['edit_similarity_lift'])} ({pct(elo)}–{pct(ehi)}) |"
            )
    where = "the code" if meta.get("case_set") == "edits" else "the test suites"
    head = (
        f"{summary['cases']} cases from {where} of {', '.join(meta['packages'])}; model "
        f"{meta['model']}; greedy; max prompt {meta['max_prompt_tokens']} tokens; {meta['max_tokens']} new tokens."
    )
    return head + "\n\n" + "\n".join(rows) + "\n"


# --- running --------------------------------------------------------------------------------------------------
async def run_case(
    case: Case,
    arm: str,
    client,
    meta,
    budget: PromptBudget,
    max_tokens: int,
    style: str = "code",
    use_chat: bool = False,
) -> dict:
    """One case through one arm: its prompt, one greedy completion, post-processing; the results.jsonl row."""
    prompt, snap, line, col = case_prompt(case, arm, meta, budget, style, use_chat)
    t0 = time.monotonic()
    if use_chat:
        settings = replace(Settings(), max_tokens=max_tokens, temperature=0.0, n=1)
        prompt, msgs = chat_prompt(prompt, snap)
        raw = await ask_chat(client, msgs, settings)
    else:
        raw = await client.complete(
            prompt.prompt, max_tokens=max_tokens, temperature=0.0, n=1, stop=prompt.stop
        )
    elapsed = time.monotonic() - t0
    if prompt.guarded:
        raw = [replace(r, text=unguard(r.text, prompt.guarded)) for r in raw]
    sugg = postprocess(raw, snap, line, col, multiline=False, max_lines=1)
    got = sugg[0].text.split("\n")[0].strip() if sugg else ""
    count = meta.count_tokens or (lambda s: math.ceil(len(s) / 3))
    return {
        "case": case.id,
        "arm": arm,
        "expected": case.expected,
        "got": got,
        "raw": raw[0].text if raw else "",
        "exact": got == case.expected,
        "edit_similarity": edit_similarity(got, case.expected),
        "prompt_tokens": count(prompt.prompt),
        "sources": [s.kind for s in prompt.sources],
        "seconds": round(elapsed, 2),
        "subject_before": case.subject_before,
        "shown": bool(sugg),
        "confidence": sugg[0].confidence if sugg else None,
        "features": _shown_features(raw, sugg, snap, line, col),
        "issues": list(sugg[0].issues) if sugg else [],
    }


def case_prompt(
    case: Case, arm: str, meta, budget: PromptBudget, style: str = "code", use_chat: bool = False
) -> tuple[Prompt, Snapshot, int, int]:
    """(the arm's prompt for the case, its snapshot, line, column): the same builder, with snippets in the
    builder and edits arms and the case's recent edits (replayed) in the edits arm."""
    doc, line, col = case_document(case)
    snap = doc.snapshot()
    others, edits = replay(case, snap) if case.edits else ([], ())
    prompt = build_prompt(
        snap,
        line,
        col,
        # chat: the same context as chat messages (copilot_ls/chat.py), as the editor sends with endpoint chat
        budget=chat_budget(budget) if use_chat else budget,
        count_tokens=meta.count_tokens,
        fim=chat.CHAT_FIM if use_chat else fim_template(meta),  # a FIM model: its template in both arms
        specials=meta.special_tokens,
        snippets=(arm != "prefix-only"),
        others=others,  # the file edited last is open in the editor (the builder and edits arms see it)
        edits=edits if arm == EDITS_ARM else (),
        # both arms: the same root, so the same path header (prefix-only never looks anything up)
        workspace=Workspace(find_root(case.path)[0], index=False),
        snippet_style=style,
    )
    return prompt, snap, line, col


def _shown_features(raw, sugg, snap, line: int, col: int) -> dict | None:
    """The confidence features of the shown suggestion (the curve rescores them with confidence.WEIGHTS)."""
    if not (sugg and raw):
        return None
    f = confidence.features(
        raw[0],
        sugg[0].text,
        syntax_errors=_bracket_errors(sugg[0], snap, line, col),
        static_issues=len(sugg[0].issues),
    )
    return asdict(f) if f is not None else None


def _bracket_errors(sug, snap, line: int, col: int) -> int:
    """The syntax feature postprocess gave the one suggestion (bracket balance of the edited line)."""
    from copilot_ls.postprocess import _bracket_change, make_cursor

    return _bracket_change(sug.text, make_cursor(snap, line, col), sug.end[1])


# --- the precision / coverage curve of the confidence ----------------------------------------------------------
THRESHOLDS = (
    0.0,
    0.05,
    0.1,
    0.15,
    0.2,
    0.25,
    0.3,
    0.35,
    0.4,
    0.45,
    0.5,
    0.55,
    0.6,
    0.65,
    0.7,
    0.75,
    0.8,
    0.85,
    0.9,
    0.95,
)


def rescore(r: dict, weights: dict | None = None) -> float | None:
    """The confidence of a result's shown suggestion under ``weights`` (default: confidence.WEIGHTS)."""
    f = r.get("features")
    if not f:
        return None
    return confidence.score(confidence.Features(**f), weights)


def confidence_curve(
    results: list[dict],
    arm: str = "builder",
    weights: dict | None = None,
    thresholds: Sequence[float] = THRESHOLDS,
) -> list[dict]:
    """Per threshold t: coverage (share of requests shown a suggestion when those with confidence < t are
    hidden) and precision (exact match among those shown), with Wilson 95% intervals. t = 0 shows everything
    post-processing kept; a suggestion without a confidence is always shown (as the gate does)."""
    rows = [r for r in results if r["arm"] == arm]
    n = len(rows)
    out = []
    for t in thresholds:
        shown = [
            r for r in rows if r.get("shown", bool(r["got"])) and confidence.passes(rescore(r, weights), t)
        ]
        hits = sum(1 for r in shown if r["exact"])
        out.append(
            {
                "threshold": t,
                "requests": n,
                "shown": len(shown),
                "exact": hits,
                "coverage": len(shown) / n if n else 0.0,
                "coverage_ci95": wilson(len(shown), n),
                "precision": hits / len(shown) if shown else 0.0,
                "precision_ci95": wilson(hits, len(shown)),
            }
        )
    return out


def _design(f: dict) -> list[float]:
    return [
        1.0,
        f["mean_logprob"],
        f["min_logprob"],
        math.log1p(f["tokens"]),
        min(f["syntax_errors"], 3),
        min(f["static_issues"], 3),
        f["agreement"] - 1.0,
    ]


def fit_weights(
    results: list[dict], arm: str = "builder", *, l2: float = 0.01, steps: int = 3000, lr: float = 0.5
) -> dict[str, float]:
    """Logistic regression of exact match on the confidence features (gradient descent, L2 off the bias);
    how confidence.WEIGHTS was obtained (`--fit-weights`)."""
    rows = [
        (_design(r["features"]), 1.0 if r["exact"] else 0.0)
        for r in results
        if r["arm"] == arm and r.get("features")
    ]
    names = list(confidence.WEIGHTS)
    w = [0.0] * len(names)
    if not rows:
        return dict(zip(names, w, strict=True))
    for _ in range(steps):
        grad = [0.0] * len(w)
        for x, y in rows:
            z = max(-50.0, min(50.0, sum(a * b for a, b in zip(w, x, strict=True))))
            err = 1.0 / (1.0 + math.exp(-z)) - y
            for j, xj in enumerate(x):
                grad[j] += err * xj
        for j in range(len(w)):
            w[j] -= lr * (grad[j] / len(rows) + (l2 * w[j] if j else 0.0))
    return {k: round(v, 3) for k, v in zip(names, w, strict=True)}


def choose_threshold(curve: list[dict], *, lift: float = 2.0, min_coverage: float = 0.4) -> dict | None:
    """The lowest threshold whose precision is >= ``lift`` x the precision with everything shown while the
    coverage stays >= ``min_coverage``; None when no threshold reaches both."""
    base = curve[0]["precision"]
    for row in curve:
        if row["coverage"] >= min_coverage and row["precision"] >= lift * base and row["shown"]:
            return row
    return None


def curve_table(curve: list[dict], default: float) -> str:
    def pct(x: float) -> str:
        return f"{100 * x:.1f}"

    rows = [
        "| minConfidence | shown / requests | coverage % (95% CI) | exact among shown % (95% CI) |",
        "|---:|---:|---:|---:|",
    ]
    for c in curve:
        mark = " **(default)**" if abs(c["threshold"] - default) < 1e-9 else ""
        rows.append(
            f"| {c['threshold']:.2f}{mark} | {c['shown']} / {c['requests']} | {pct(c['coverage'])} "
            f"({pct(c['coverage_ci95'][0])}–{pct(c['coverage_ci95'][1])}) | {pct(c['precision'])} "
            f"({pct(c['precision_ci95'][0])}–{pct(c['precision_ci95'][1])}) |"
        )
    return "\n".join(rows) + "\n"


async def run_all(args: argparse.Namespace, cases: list[Case], out: Path) -> list[dict]:
    from copilot_ls.backend import BackendClient, BackendError

    results_path = out / "results.jsonl"
    done: dict[tuple[str, str], dict] = {}
    if results_path.exists():
        for line in results_path.read_text().splitlines():
            try:
                r = json.loads(line)
                done[(r["case"], r["arm"])] = r
            except (json.JSONDecodeError, KeyError):
                continue
    client = BackendClient(args.backend, timeout=args.timeout, endpoint=args.endpoint)
    try:
        meta = await client.meta()
        use_chat = await client.endpoint_mode() == "chat"
        budget = PromptBudget(
            max_prompt_tokens=args.max_prompt_tokens,
            max_tokens_out=args.max_tokens,
            snippet_fraction=args.snippet_fraction,
            keep_in_prefix=args.keep_in_prefix,
            window_step=args.window_step,
            edit_fraction=args.edit_fraction,
        )
        sem = asyncio.Semaphore(args.concurrency)
        todo = [(c, a) for c in cases for a in args.arms if (c.id, a) not in done]
        progress = {"n": 0}

        async def one(case: Case, arm: str) -> None:
            async with sem:
                try:
                    r = await run_case(
                        case, arm, client, meta, budget, args.max_tokens, args.snippet_style, use_chat
                    )
                except BackendError as exc:  # left out of results.jsonl: a rerun retries it
                    print(f"{case.id} {arm}: backend error, skipped: {exc}", file=sys.stderr)
                    return
            done[(case.id, arm)] = r
            with results_path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
            progress["n"] += 1
            print(
                f"[{progress['n']}/{len(todo)}] {case.id} {arm}: {'OK ' if r['exact'] else '   '} {r['got'][:60]!r}",
                file=sys.stderr,
            )

        await asyncio.gather(*(one(c, a) for c, a in todo))
        args._model = meta.id or "?"
        fim = fim_template(meta)
        args._fim = "chat messages" if use_chat else fim.family if fim is not None else "none (prefix-only)"
    finally:
        await client.aclose()
    return [done[(c.id, a)] for c in cases for a in args.arms if (c.id, a) in done]


def add_arguments(parser: argparse.ArgumentParser) -> None:  # long: a flat list of options
    parser.add_argument(
        "--backend", default=DEFAULT_BACKEND, help=f"OpenAI-compatible server (default {DEFAULT_BACKEND})"
    )
    parser.add_argument("--cases", type=int, default=100, help="number of cases (default 100)")
    parser.add_argument(
        "--packages",
        default=",".join(DEFAULT_PACKAGES),
        help="installed packages (or package directories, by path) whose tests to use",
    )
    parser.add_argument("--seed", type=int, default=0, help="case selection seed (default 0)")
    parser.add_argument("--max-prompt-tokens", type=int, default=1024, help="prompt budget (default 1024)")
    parser.add_argument("--max-tokens", type=int, default=40, help="new tokens per completion (default 40)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per request (default 1800)")
    parser.add_argument(
        "--snippet-style",
        choices=SNIPPET_STYLES,
        default=DEFAULT_SNIPPET_STYLE,
        help=f"how snippets appear (default {DEFAULT_SNIPPET_STYLE})",
    )
    parser.add_argument(
        "--keep-in-prefix",
        choices=KEEP_IN_PREFIX,
        default=PromptBudget().keep_in_prefix,
        help="what snippets may never push out of the prefix window (default "
        f"{PromptBudget().keep_in_prefix})",
    )
    parser.add_argument(
        "--snippet-fraction",
        type=float,
        default=PromptBudget().snippet_fraction,
        help=f"share of the budget snippets may take (default {PromptBudget().snippet_fraction})",
    )
    parser.add_argument(
        "--window-step",
        type=float,
        default=PromptBudget().window_step,
        help=f"share of the prefix window its anchored start moves by (0: slides; default {PromptBudget().window_step})",
    )
    parser.add_argument(
        "--edit-fraction",
        type=float,
        default=PromptBudget().edit_fraction,
        help="share of the budget recent edits may take besides the snippets' room (the edits arm; default "
        f"{PromptBudget().edit_fraction})",
    )
    parser.add_argument(
        "--arms",
        default=None,
        help=f"prompt arms to run, comma-separated, of {','.join(ALL_ARMS)} (default {','.join(ARMS)}; with "
        f"--case-set edits all three; the confidence curve is the builder arm's)",
    )
    parser.add_argument(
        "--fit-weights",
        action="store_true",
        help="also fit the confidence weights to these results (logistic regression) and print them",
    )
    parser.add_argument(
        "--case-set",
        choices=sorted([*CASE_SETS, "edits"]),
        default="calls",
        help="which lines: calls of an imported function (default), uses of a member of an instance of an "
        "imported class (class-members), or lines that repeat a pattern just written elsewhere, replayed as a "
        "recent edit (edits)",
    )
    parser.add_argument(
        "--endpoint",
        choices=ENDPOINTS,
        default="completions",
        help="the server's API (the LS's `endpoint` setting; default completions)",
    )
    parser.add_argument("--out", type=Path, default=Path("out/context-eval"), help="output directory")
    parser.add_argument("--list", action="store_true", help="only build and print the cases")


def run(args: argparse.Namespace) -> int:
    packages = [p.strip() for p in args.packages.split(",") if p.strip()]
    if args.arms is None:
        args.arms = list(ALL_ARMS if getattr(args, "case_set", "calls") == "edits" else ARMS)
    args.arms = (
        [a.strip() for a in args.arms.split(",") if a.strip()] if isinstance(args.arms, str) else args.arms
    )
    error = _bad_arguments(args, packages)
    if error:
        print(f"copilot-ls eval context: {error}", file=sys.stderr)
        return 2
    cases = build_cases(packages, args.cases, args.seed, getattr(args, "case_set", "calls"))
    if args.list:
        for c in cases:
            print(json.dumps(asdict(c), ensure_ascii=False))
        return 0
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "cases.jsonl").write_text("".join(json.dumps(asdict(c), ensure_ascii=False) + "\n" for c in cases))
    from copilot_ls.backend import BackendError

    try:
        results = asyncio.run(run_all(args, cases, out))
    except BackendError as exc:
        print(f"copilot-ls eval context: backend {args.backend}: {exc}", file=sys.stderr)
        return 1
    strata = EDIT_STRATA if getattr(args, "case_set", "calls") == "edits" else STRATA
    summary = summarize(results, ARMS, strata) if set(ARMS) <= set(args.arms) else {"cases": 0, "arms": {}}
    if {"builder", EDITS_ARM} <= set(args.arms):  # what the recent edits add to the builder
        summary["edits"] = summarize(results, ("builder", EDITS_ARM), EDIT_STRATA)
    meta = run_meta(args, packages)
    if "builder" in args.arms:
        summary.update(confidence_report(results, out, fit=args.fit_weights))
    (out / "summary.json").write_text(json.dumps({**summary, "meta": meta}, indent=2))
    if not summary["arms"] and "edits" not in summary:
        return 0
    table = markdown_table(summary, meta) if summary["arms"] else ""
    if "edits" in summary:
        table = (table + "\n" + markdown_table(summary["edits"], meta)).lstrip("\n")
    (out / "summary.md").write_text(table)
    print(table)
    return 0


def _bad_arguments(args: argparse.Namespace, packages: list[str]) -> str | None:
    """What is wrong with the command line, or None."""
    if not package_dirs(packages):
        return f"none of {packages} is installed"
    if args.cases < 1 or args.concurrency < 1 or args.max_prompt_tokens < 64:
        return "--cases and --concurrency must be >= 1, --max-prompt-tokens >= 64"
    if not args.arms or set(args.arms) - set(ALL_ARMS):
        return f"--arms must name some of {', '.join(ALL_ARMS)}"
    return None


def run_meta(args: argparse.Namespace, packages: list[str]) -> dict:
    """The run's settings, as summary.json records them under "meta"."""
    return {
        "packages": packages,
        "model": getattr(args, "_model", "?"),
        "fim_template": getattr(args, "_fim", "?"),
        "max_prompt_tokens": args.max_prompt_tokens,
        "max_tokens": args.max_tokens,
        "snippet_fraction": args.snippet_fraction,
        "snippet_style": args.snippet_style,
        "keep_in_prefix": args.keep_in_prefix,
        "edit_fraction": args.edit_fraction,
        "seed": args.seed,
        "case_set": getattr(args, "case_set", "calls"),
    }


def confidence_report(results: list[dict], out: Path, *, fit: bool) -> dict:
    """The builder arm's precision / coverage curve, printed and written to confidence.md; the summary keys."""
    from copilot_ls.settings import DEFAULT_MIN_CONFIDENCE

    keys: dict = {}
    if fit:
        fitted = fit_weights(results)
        print("weights fitted on these results (for confidence.WEIGHTS): " + json.dumps(fitted))
        keys["fitted_weights"] = fitted
    curve = confidence_curve(results)
    chosen = choose_threshold(curve)
    keys["confidence_curve"] = curve
    keys["confidence_target_met_at"] = chosen["threshold"] if chosen else None
    curve_md = curve_table(curve, DEFAULT_MIN_CONFIDENCE)
    note = (
        f"lowest minConfidence with exact-among-shown >= 2x the all-shown {100 * curve[0]['precision']:.1f}% "
        f"and coverage >= 40%: " + (f"{chosen['threshold']:.2f}" if chosen else "none")
    )
    (out / "confidence.md").write_text(curve_md + "\n" + note + "\n")
    print("precision / coverage of the confidence (builder arm):\n" + curve_md + note + "\n")
    return keys
