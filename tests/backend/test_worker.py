"""Timing logic of the engine worker (batching, continuous batching, cancellation, queue limit, shutdown).

These are unit tests with a tiny fake engine that records which requests each step() decoded; the real engine
behind the real HTTP server is tested end to end in test_server.py.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from model_backend.metrics import Metrics
from model_backend.worker import Job, NotReady, QueueFull, Worker


class FakeEngine:
    """One token ("x") per candidate per step, `step_s` seconds a step; records each step's batch."""

    def __init__(self, step_s: float = 0.01) -> None:
        self.step_s = step_s
        self.active: dict[str, dict[str, Any]] = {}
        self.added: list[str] = []
        self.aborted: list[str] = []
        self.batches: list[set[str]] = []
        self.fail_next_step = False

    def add_request(self, request_id: str, prompt: Any, params: Any) -> None:
        if params.max_tokens > 1000:
            raise ValueError("max_tokens too large")
        self.added.append(request_id)
        self.active[request_id] = {"left": params.max_tokens, "n": params.n, "text": ""}

    def step(self) -> list[Any]:
        time.sleep(self.step_s)
        if self.fail_next_step:
            self.fail_next_step = False
            raise RuntimeError("boom")
        self.batches.append(set(self.active))
        outs = []
        for rid, r in list(self.active.items()):
            r["left"] -= 1
            r["text"] += "x"
            done = r["left"] == 0
            for i in range(r["n"]):
                cand = None
                if done:
                    k = len(r["text"])
                    cand = SimpleNamespace(
                        index=i,
                        text=r["text"],
                        token_ids=[1] * k,
                        token_logprobs=[-0.5] * k,
                        tokens=["x"] * k,
                        mean_logprob=-0.5 - i,
                        finish_reason="length",
                    )
                outs.append(
                    SimpleNamespace(request_id=rid, index=i, delta="x", finished=done, candidate=cand)
                )
            if done:
                del self.active[rid]
        return outs

    def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)
        self.active.pop(request_id, None)

    def has_unfinished(self) -> bool:
        return bool(self.active)


class Sink:
    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.ended = threading.Event()

    def __call__(self, event: tuple) -> None:
        self.events.append(event)
        if event[0] in ("done", "error", "cancelled"):
            self.ended.set()

    def last(self, timeout: float = 5.0) -> tuple:
        assert self.ended.wait(timeout), f"no terminal event; got {self.events}"
        return self.events[-1]


def job(rid: str, max_tokens: int = 3, n: int = 1, stream: bool = False) -> tuple[Job, Sink]:
    sink = Sink()
    params = SimpleNamespace(max_tokens=max_tokens, n=n)
    return Job(
        id=rid, prompt="p", params=params, sink=sink, n_candidates=n, stream=stream, prompt_tokens=5
    ), sink


def start(engine: FakeEngine, **kw: Any) -> Worker:
    kw.setdefault("batch_window_s", 0.02)
    w = Worker(lambda: engine, metrics=Metrics(), **kw)
    w.start()
    deadline = time.monotonic() + 5
    while not w.ready:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    return w


def wait_until(pred: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def test_requests_arriving_together_decode_in_the_same_step() -> None:
    eng = FakeEngine()
    w = start(eng, max_active=8)
    jobs = [job(f"r{i}", max_tokens=3) for i in range(5)]
    for j, _ in jobs:
        w.submit(j)
    for _, s in jobs:
        assert s.last()[0] == "done"
    assert eng.batches[0] == {f"r{i}" for i in range(5)}
    assert len(eng.batches) == 3  # 3 tokens each, all five decoded together
    w.stop()


def test_new_request_joins_running_batch_between_steps() -> None:
    eng = FakeEngine(step_s=0.01)
    w = start(eng, max_active=8)
    a, sa = job("a", max_tokens=30)
    w.submit(a)
    wait_until(lambda: len(eng.batches) >= 3)
    b, sb = job("b", max_tokens=3)
    w.submit(b)
    assert sb.last()[0] == "done"
    assert not sa.ended.is_set()  # b finished while a was still generating
    assert any(batch == {"a", "b"} for batch in eng.batches)
    assert sa.last()[0] == "done"
    w.stop()


class FewerCandidates(FakeEngine):
    """Ends a request with at most 2 candidates whatever its n (beam search when few hypotheses exist)."""

    def step(self) -> list[Any]:
        return [o for o in super().step() if not (o.finished and o.index >= 2)]

    def is_unfinished(self, request_id: str) -> bool:
        return request_id in self.active


def test_a_job_the_engine_ends_with_fewer_candidates_is_done_at_once() -> None:
    eng = FewerCandidates(step_s=0.01)
    w = start(eng, max_active=8)
    a, sa = job("a", max_tokens=300)
    w.submit(a)
    b, sb = job("b", max_tokens=2, n=4)
    w.submit(b)
    kind, candidates = sb.last()
    assert kind == "done" and len(candidates) == 2
    assert not sa.ended.is_set()  # b did not wait for the engine to go idle
    w.cancel("a")
    w.stop()


def test_max_active_limits_the_batch_and_the_rest_waits_in_order() -> None:
    eng = FakeEngine(step_s=0.002)
    w = start(eng, max_active=2)
    jobs = [job(f"r{i}", max_tokens=2) for i in range(6)]
    for j, _ in jobs:
        w.submit(j)
    for _, s in jobs:
        assert s.last()[0] == "done"
    assert max(len(b) for b in eng.batches) <= 2
    assert eng.added == [f"r{i}" for i in range(6)]
    w.stop()


def test_cancel_running_job_aborts_within_one_step() -> None:
    eng = FakeEngine(step_s=0.02)
    w = start(eng, max_active=8)
    j, s = job("a", max_tokens=500, stream=True)
    w.submit(j)
    wait_until(lambda: len(s.events) >= 2)
    steps_before = len(eng.batches)
    w.cancel("a", "disconnect")
    assert s.last() == ("cancelled", "disconnect")
    assert eng.aborted == ["a"]
    assert len(eng.batches) - steps_before <= 1
    assert w.metrics.cancellation_count() == 1
    wait_until(lambda: w.running() == 0)
    j2, s2 = job("b", max_tokens=2)  # the slot is free again
    w.submit(j2)
    assert s2.last()[0] == "done"
    w.stop()


def test_cancelled_queued_job_never_reaches_the_engine() -> None:
    eng = FakeEngine(step_s=0.01)
    w = start(eng, max_active=1)
    a, sa = job("a", max_tokens=20)
    b, sb = job("b", max_tokens=2)
    w.submit(a)
    w.submit(b)
    w.cancel("b")
    assert sb.last() == ("cancelled", "disconnect")
    assert sa.last()[0] == "done"
    assert "b" not in eng.added
    assert w.metrics.cancellation_count() == 1
    w.stop()


def test_queue_full_raises() -> None:
    eng = FakeEngine(step_s=0.05)
    w = start(eng, max_active=1, max_queue=2)
    running, _ = job("run", max_tokens=50)
    w.submit(running)
    wait_until(lambda: w.running() == 1)
    w.submit(job("q1")[0])
    w.submit(job("q2")[0])
    with pytest.raises(QueueFull):
        w.submit(job("q3")[0])
    w.stop()


def test_free_slots_take_requests_beyond_the_queue_limit() -> None:
    """--max-queue counts requests that wait for a slot: with free slots (a burst, or --max-queue 0) it is not full."""
    eng = FakeEngine(step_s=0.05)
    w = start(eng, max_active=2, max_queue=0)
    a, sa = job("a", max_tokens=50)
    b, _ = job("b", max_tokens=50)
    w.submit(a)  # an idle server with --max-queue 0 takes a request per free slot
    w.submit(b)
    with pytest.raises(QueueFull):
        w.submit(job("c")[0])  # both slots are taken now (or about to be): c would have to wait
    w.cancel("a")
    assert sa.last()[0] == "cancelled"
    wait_until(lambda: w.running() == 1)
    w.submit(job("d", max_tokens=2)[0])  # a slot is free again
    w.stop()


def test_stream_jobs_get_deltas_and_others_do_not() -> None:
    eng = FakeEngine(step_s=0.001)
    w = start(eng)
    a, sa = job("a", max_tokens=4, n=2, stream=True)
    b, sb = job("b", max_tokens=4, n=2)
    w.submit(a)
    w.submit(b)
    done_a, done_b = sa.last(), sb.last()
    assert [e[0] for e in sa.events].count("delta") == 8
    assert [e[0] for e in sb.events] == ["done"]
    assert [c.index for c in done_a[1]] == [0, 1] and done_b[1][0].text == "xxxx"
    w.stop()


def test_engine_value_error_is_a_400_for_that_job_only() -> None:
    eng = FakeEngine(step_s=0.001)
    w = start(eng)
    bad, sbad = job("bad", max_tokens=5000)
    good, sgood = job("good", max_tokens=2)
    w.submit(bad)
    w.submit(good)
    assert sbad.last()[:2] == ("error", 400)
    assert sgood.last()[0] == "done"
    w.stop()


def test_engine_step_failure_fails_active_jobs_and_worker_survives() -> None:
    eng = FakeEngine(step_s=0.001)
    w = start(eng)
    eng.fail_next_step = True
    a, sa = job("a", max_tokens=3)
    w.submit(a)
    assert sa.last()[:2] == ("error", 500)
    b, sb = job("b", max_tokens=3)
    w.submit(b)
    assert sb.last()[0] == "done"
    w.stop()


def test_stop_cancels_queued_and_running_and_ends_the_thread() -> None:
    eng = FakeEngine(step_s=0.01)
    w = start(eng, max_active=1)
    a, sa = job("a", max_tokens=1000)
    b, sb = job("b", max_tokens=3)
    w.submit(a)
    w.submit(b)
    wait_until(lambda: w.running() == 1)
    w.stop(timeout=5)
    assert sa.last() == ("cancelled", "shutdown")
    assert sb.last()[:2] == ("error", 503)
    assert w.state == "stopped"
    with pytest.raises(NotReady):
        w.submit(job("c")[0])


def test_not_ready_while_loading_and_failed_load_is_reported() -> None:
    gate = threading.Event()
    failures: list[BaseException] = []

    def load() -> Any:
        gate.wait(5)
        raise OSError("no such model file")

    w = Worker(load, on_failed=failures.append)
    w.start()
    assert w.state == "loading"
    with pytest.raises(NotReady):
        w.submit(job("a")[0])
    gate.set()
    wait_until(lambda: w.state == "failed")
    assert "no such model file" in (w.error or "")
    assert isinstance(failures[0], OSError)


def test_metrics_track_queue_tokens_and_latencies() -> None:
    eng = FakeEngine(step_s=0.002)
    w = start(eng, max_active=4)
    jobs = [job(f"r{i}", max_tokens=3) for i in range(3)]
    for j, _ in jobs:
        w.submit(j)
    for _, s in jobs:
        s.last()
    m = w.metrics
    assert m.prompt_tokens == 15 and m.completion_tokens == 9
    assert m.prefill_seconds.n == 3 and m.request_seconds.n == 3 and m.decode_step_seconds.n >= 1
    wait_until(lambda: m.active_requests == 0 and m.queue_depth == 0)
    text = m.render()
    assert 'copilot_backend_cancellations_total{reason="disconnect"} 0' in text
    assert "copilot_backend_prefill_seconds_bucket" in text
    w.stop()


def test_on_ready_runs_before_requests_are_accepted() -> None:
    seen: list[str] = []
    eng = FakeEngine()
    w = Worker(lambda: eng, metrics=Metrics())
    w.on_ready = lambda engine: seen.append(w.state)
    w.start()
    wait_until(lambda: w.ready)
    assert seen == ["loading"]  # the server's state (tokenizer, context) is set before "ready"
    w.stop()
