"""The engine worker: ONE thread that loads the Engine and is the only caller of it.

The HTTP layer (asyncio) never touches the engine. It hands a ``Job`` to ``Worker.submit`` and receives events
through the job's ``sink`` (a thread-safe callable; the server passes ``loop.call_soon_threadsafe``-wrapped
``asyncio.Queue.put_nowait``). The loop, between two engine steps:

1. applies cancellations (a queued job is dropped, a running one is ``engine.abort``-ed),
2. admits queued jobs while fewer than ``max_active`` run (continuous batching: they join the running batch),
3. runs ONE ``engine.step()`` (prefill of the newly admitted + one decode step for all) and routes its outputs.

So a cancellation takes effect within one decode step, and a queued job whose client left never starts. A
step that prefills a long prompt asks ``engine.interrupt`` between prefill chunks and ends early when a
cancellation waits, so an abandoned prompt stops costing prefill within one chunk (its prefilled part stays in
the KV slot as a cached prefix).

Events sent to a job's sink (plain tuples, data flowing one way):
  ("delta", StepOutput)            only for jobs with stream=True
  ("done", list[Candidate])        all candidates, by index
  ("error", status, message)       400 for parameters the engine rejects, 500 for an engine failure,
                                   503 when the server shuts down before the job ran
  ("cancelled", reason)            after ``cancel()``
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from model_backend.metrics import Metrics

Event = tuple


class QueueFull(Exception):
    """The wait queue holds max_queue jobs already (HTTP 429)."""


class NotReady(Exception):
    """The engine is still loading, failed to load, or the worker is stopping (HTTP 503)."""


@dataclass
class Job:
    id: str
    prompt: str | list[int]
    params: Any  # engine.SamplingParams
    sink: Callable[[Event], None]
    n_candidates: int  # candidates the engine returns for this job (n, or best_of)
    stream: bool = False
    prompt_tokens: int = 0
    submitted: float = field(default_factory=time.monotonic)
    admitted: float | None = None
    first_output: float | None = None
    finished: dict[int, Any] = field(default_factory=dict)


class Worker:
    def __init__(
        self,
        load: Callable[[], Any],
        *,
        max_queue: int = 64,
        max_active: int = 8,
        metrics: Metrics | None = None,
        batch_window_s: float = 0.002,
        on_ready: Callable[[Any], None] | None = None,
        on_failed: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._load = load
        self.max_queue = max_queue
        self.max_active = max_active
        self.metrics = metrics or Metrics()
        self.batch_window_s = batch_window_s
        self.on_ready = on_ready  # called in the worker thread with the engine, before requests flow
        self.on_failed = on_failed
        self.engine: Any = None
        self.state = "loading"  # loading -> ready -> stopped, or loading -> failed
        self.error: str | None = None
        self._cond = threading.Condition()
        self._pending: dict[str, Job] = {}  # insertion-ordered wait queue (FIFO)
        self._cancels: dict[str, str] = {}  # job id -> reason, for running jobs
        self._active: dict[str, Job] = {}  # owned by the worker thread only
        self._stopping = False
        self._thread = threading.Thread(target=self._main, name="engine-worker", daemon=True)

    # -- called from any thread ------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def submit(self, job: Job) -> None:
        with self._cond:
            if self.state != "ready" or self._stopping:
                raise NotReady(self.error or self.state)
            free = max(
                0, self.max_active - len(self._active)
            )  # pending jobs up to this start at the next step
            if len(self._pending) >= self.max_queue + free:
                raise QueueFull(f"the queue holds {self.max_queue} requests")
            self._pending[job.id] = job
            self._publish_depth()
            self._cond.notify()

    def cancel(self, job_id: str, reason: str = "disconnect") -> None:
        """Stop a job: a queued one is dropped now; a running one is aborted before the next engine step."""
        with self._cond:
            job = self._pending.pop(job_id, None)
            if job is not None:
                self._publish_depth()
            else:
                self._cancels[job_id] = reason
                self._cond.notify()
        if job is not None:
            self.metrics.count_cancellation(reason)
            _send(job, ("cancelled", reason))

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel everything still queued or running and end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def running(self) -> int:
        return len(self._active)

    # -- the worker thread -----------------------------------------------------------------------------
    def _main(self) -> None:
        try:
            self.engine = self._load()
            if hasattr(self.engine, "interrupt"):
                # a cancellation (or shutdown) ends a long prefill between its chunks, not after the whole prompt
                self.engine.interrupt = lambda: bool(self._cancels) or self._stopping
            if self.on_ready:
                self.on_ready(self.engine)  # before "ready": the server reads the tokenizer, context, ...
        except BaseException as exc:  # noqa: BLE001 - reported to the server, which exits non-zero
            self.error = f"{type(exc).__name__}: {exc}"
            self.state = "failed"
            if self.on_failed:
                self.on_failed(exc)
            return
        with self._cond:
            if not self._stopping:
                self.state = "ready"
        try:
            self._loop()
        finally:
            self.state = "stopped"

    def _loop(self) -> None:
        while True:
            with self._cond:
                idle = not self._active
                while not (self._pending or self._cancels or self._active or self._stopping):
                    self._cond.wait()
                if self._stopping:
                    self._shutdown_locked()
                    return
            if idle and self.batch_window_s > 0:
                time.sleep(self.batch_window_s)  # let requests that arrive together start together
            with self._cond:
                cancels, self._cancels = self._cancels, {}
            for job_id, reason in cancels.items():
                self._abort(job_id, reason)
            admitted = self._admit()
            if not self._active:
                continue
            if not self.engine.has_unfinished():
                self._finish_stragglers()
                continue
            t0 = time.monotonic()
            try:
                outputs = self.engine.step()
            except Exception as exc:  # noqa: BLE001 - an engine bug must not kill the server
                traceback.print_exc(file=sys.stderr)
                self._fail_all(f"engine step failed: {type(exc).__name__}: {exc}")
                continue
            now = time.monotonic()
            if not admitted:
                self.metrics.observe(self.metrics.decode_step_seconds, now - t0)
            self._route(outputs, now)
            if not self.engine.has_unfinished():
                self._finish_stragglers()

    def _admit(self) -> bool:
        admitted = False
        while len(self._active) < self.max_active:
            with self._cond:
                if not self._pending:
                    break
                job = self._pending.pop(next(iter(self._pending)))
                self._active[job.id] = job  # in the same lock: submit() never sees it in neither
                self._publish_depth()
            try:
                self.engine.add_request(job.id, job.prompt, job.params)
            except Exception as exc:  # noqa: BLE001
                self._active.pop(job.id, None)
                if isinstance(exc, ValueError):
                    _send(job, ("error", 400, str(exc)))
                else:
                    traceback.print_exc(file=sys.stderr)
                    _send(job, ("error", 500, f"engine rejected the request: {type(exc).__name__}: {exc}"))
                continue
            job.admitted = time.monotonic()
            self.metrics.observe(self.metrics.queue_wait_seconds, job.admitted - job.submitted)
            self.metrics.add_tokens(prompt=job.prompt_tokens)
            admitted = True
        self._publish_depth()
        return admitted

    def _route(self, outputs: list[Any], now: float) -> None:
        short: list[Job] = []
        for out in outputs:
            job = self._active.get(out.request_id)
            if job is None:
                continue  # aborted this step
            if job.first_output is None:
                job.first_output = now
                self.metrics.observe(self.metrics.prefill_seconds, now - (job.admitted or now))
            if job.stream:
                _send(job, ("delta", out))
            if out.finished and out.candidate is not None:
                job.finished[out.index] = out.candidate
                if len(job.finished) >= job.n_candidates:
                    self._complete(job, now)
                else:
                    short.append(job)
        for (
            job
        ) in short:  # the engine ended it with fewer candidates (beam search with fewer hypotheses than n)
            if job.id in self._active and not self.engine.is_unfinished(job.id):
                self._complete(job, now)

    def _complete(self, job: Job, now: float) -> None:
        self._active.pop(job.id, None)
        candidates = [job.finished[i] for i in sorted(job.finished)]
        self.metrics.add_tokens(completion=sum(len(c.token_ids) for c in candidates))
        self.metrics.observe(self.metrics.request_seconds, now - job.submitted)
        self._publish_depth()
        _send(job, ("done", candidates))

    def _finish_stragglers(self) -> None:
        """The engine has nothing left: jobs still open got every candidate it will give them."""
        now = time.monotonic()
        for job in list(self._active.values()):
            if job.finished:
                self._complete(job, now)
            else:
                self._active.pop(job.id, None)
                _send(job, ("error", 500, "the engine finished the request without a result"))
        self._publish_depth()

    def _abort(self, job_id: str, reason: str) -> None:
        job = self._active.pop(job_id, None)
        if job is None:
            return  # already finished (or never admitted and already dropped)
        try:
            self.engine.abort(job_id)
        except Exception:  # noqa: BLE001
            traceback.print_exc(file=sys.stderr)
        self.metrics.count_cancellation(reason)
        self._publish_depth()
        _send(job, ("cancelled", reason))

    def _fail_all(self, message: str) -> None:
        for job_id in list(self._active):
            job = self._active.pop(job_id)
            try:
                self.engine.abort(job_id)
            except Exception:  # noqa: BLE001
                pass
            _send(job, ("error", 500, message))
        self._publish_depth()

    def _shutdown_locked(self) -> None:
        pending, self._pending = list(self._pending.values()), {}
        for job in pending:
            self.metrics.count_cancellation("shutdown")
            _send(job, ("error", 503, "the server is shutting down"))
        for job_id in list(self._active):
            self._abort(job_id, "shutdown")
        self._publish_depth()

    def _publish_depth(self) -> None:
        self.metrics.set_queue(len(self._pending), len(self._active))


def _send(job: Job, event: Event) -> None:
    try:
        job.sink(event)
    except RuntimeError:
        pass  # the event loop is closed: nobody is listening any more
