"""Prometheus text-format metrics for the backend server, without a client library.

Counters, gauges and histograms live in one ``Metrics`` object guarded by a lock: the HTTP event loop and the
engine worker thread both write to it. ``render()`` produces the text exposition format (version 0.0.4).
Label sets stay small and fixed (status codes, endpoint names, cancellation reasons), so memory is bounded.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

# Latency buckets in seconds: a CPU prefill of 2,000 tokens takes seconds, a GPU decode step milliseconds.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

PREFIX = "copilot_backend"


@dataclass
class Histogram:
    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        i = bisect.bisect_left(self.buckets, value)
        if i < len(self.counts):
            self.counts[i] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, count in zip(self.buckets, self.counts, strict=True):
            running += count
            out.append(f'{name}_bucket{{le="{_num(bound)}"}} {running}')
        out.append(f'{name}_bucket{{le="+Inf"}} {self.n}')
        out.append(f"{name}_sum {_num(self.total)}")
        out.append(f"{name}_count {self.n}")
        return out


def _num(v: float) -> str:
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
    return "{" + body + "}"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    """All server metrics. Every method is thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str], int] = {}  # (endpoint, status) -> count
        self.cancellations: dict[str, int] = {}  # reason -> count
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.queue_depth = 0
        self.active_requests = 0
        self.prefill_seconds = Histogram()  # per request: admission -> first output (the prefill)
        self.decode_step_seconds = Histogram()  # per engine step without new admissions
        self.queue_wait_seconds = Histogram()  # per request: submitted -> admitted to the engine
        self.request_seconds = Histogram()  # per request: submitted -> finished
        # Read from the engine's stats at render time (the engine owns the prefix cache).
        self.engine_stats: Callable[[], dict[str, float]] | None = None

    # -- writers -------------------------------------------------------------------------------------
    def count_request(self, endpoint: str, status: int) -> None:
        with self._lock:
            key = (endpoint, str(status))
            self.requests[key] = self.requests.get(key, 0) + 1

    def count_cancellation(self, reason: str) -> None:
        with self._lock:
            self.cancellations[reason] = self.cancellations.get(reason, 0) + 1

    def add_tokens(self, prompt: int = 0, completion: int = 0) -> None:
        with self._lock:
            self.prompt_tokens += prompt
            self.completion_tokens += completion

    def set_queue(self, queued: int, active: int) -> None:
        with self._lock:
            self.queue_depth = queued
            self.active_requests = active

    def observe(self, histogram: Histogram, seconds: float) -> None:
        with self._lock:
            histogram.observe(seconds)

    # -- readers -------------------------------------------------------------------------------------
    def cancellation_count(self) -> int:
        with self._lock:
            return sum(self.cancellations.values())

    def render(self) -> str:  # long: one block per metric family, in exposition order
        engine = _safe_stats(self.engine_stats)
        with self._lock:
            out: list[str] = []

            def family(name: str, kind: str, help_text: str, samples: Sequence[str]) -> None:
                out.append(f"# HELP {PREFIX}_{name} {help_text}")
                out.append(f"# TYPE {PREFIX}_{name} {kind}")
                out.extend(samples)

            family(
                "requests_total",
                "counter",
                "HTTP requests by endpoint and status code.",
                [
                    f"{PREFIX}_requests_total{_labels({'endpoint': e, 'status': s})} {c}"
                    for (e, s), c in sorted(self.requests.items())
                ],
            )
            family(
                "cancellations_total",
                "counter",
                "Generations stopped before they finished (client gone, shutdown).",
                [
                    f"{PREFIX}_cancellations_total{_labels({'reason': r})} {c}"
                    for r, c in sorted(self.cancellations.items())
                ]
                or [f'{PREFIX}_cancellations_total{{reason="disconnect"}} 0'],
            )
            family(
                "prompt_tokens_total",
                "counter",
                "Prompt tokens received.",
                [f"{PREFIX}_prompt_tokens_total {self.prompt_tokens}"],
            )
            family(
                "completion_tokens_total",
                "counter",
                "Completion tokens generated.",
                [f"{PREFIX}_completion_tokens_total {self.completion_tokens}"],
            )
            family(
                "queue_depth",
                "gauge",
                "Requests waiting for the engine.",
                [f"{PREFIX}_queue_depth {self.queue_depth}"],
            )
            family(
                "active_requests",
                "gauge",
                "Requests the engine is generating.",
                [f"{PREFIX}_active_requests {self.active_requests}"],
            )
            for name, hist, help_text in (
                (
                    "prefill_seconds",
                    self.prefill_seconds,
                    "Per request: time from admission to its first output (prefill).",
                ),
                ("decode_step_seconds", self.decode_step_seconds, "Duration of engine decode steps."),
                ("queue_wait_seconds", self.queue_wait_seconds, "Per request: time queued before admission."),
                ("request_seconds", self.request_seconds, "Per request: time from submission to finish."),
            ):
                family(name, "histogram", help_text, hist.lines(f"{PREFIX}_{name}"))
            hit, looked = engine.get("prefix_cache_hit_tokens"), engine.get("prefix_cache_query_tokens")
            if hit is not None and looked is not None:
                family(
                    "prefix_cache_hit_tokens_total",
                    "counter",
                    "Prompt tokens served from the prefix cache.",
                    [f"{PREFIX}_prefix_cache_hit_tokens_total {_num(hit)}"],
                )
                family(
                    "prefix_cache_query_tokens_total",
                    "counter",
                    "Prompt tokens looked up in the prefix cache.",
                    [f"{PREFIX}_prefix_cache_query_tokens_total {_num(looked)}"],
                )
            ratio = engine.get("prefix_cache_hit_ratio")
            family(
                "prefix_cache_hit_ratio",
                "gauge",
                "Fraction of prompt tokens served from the prefix cache (NaN before any prompt).",
                [f"{PREFIX}_prefix_cache_hit_ratio {_num(ratio if ratio is not None else math.nan)}"],
            )
            return "\n".join(out) + "\n"


def _safe_stats(fn: Callable[[], dict[str, float]] | None) -> dict[str, float]:
    if fn is None:
        return {}
    try:
        return fn()
    except Exception:  # metrics must never break the endpoint
        return {}


def parse(text: str) -> dict[str, float]:
    """Parse Prometheus text into {'name{labels}': value} (used by tests and the benchmark)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        values[key] = float(value)
    return values
