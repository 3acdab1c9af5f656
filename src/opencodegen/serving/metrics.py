"""Server metrics in the Prometheus text exposition format (no client library needed).

Counters, gauges and histograms are updated from the scheduler thread and the event loop, so
every update takes one lock; `render()` writes them all as ``text/plain; version=0.0.4``.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RATE_WINDOW_S = 10.0


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[next((i for i, b in enumerate(self.buckets) if value <= b), len(self.buckets))] += 1
        self.sum += value

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, count in zip((*self.buckets, math.inf), self.counts):
            running += count
            le = "+Inf" if bound == math.inf else repr(bound)
            out.append(f'{name}_bucket{{le="{le}"}} {running}')
        out += [f"{name}_sum {self.sum!r}", f"{name}_count {running}"]
        return out


class Metrics:
    """What /metrics reports: queue depth, batch size, tokens and tokens/s, latencies, outcomes."""

    def __init__(self, clock=time.monotonic):
        self._lock = threading.Lock()
        self._clock = clock
        self.queue_depth = 0
        self.running_sequences = 0
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.requests: dict[str, int] = {}
        self.latency = _Histogram(LATENCY_BUCKETS)
        self.first_token = _Histogram(LATENCY_BUCKETS)
        self.queue_wait = _Histogram(LATENCY_BUCKETS)
        self._recent: deque[tuple[float, int]] = deque()  # (time, tokens) of the last RATE_WINDOW_S

    def set_load(self, queue_depth: int, running_sequences: int) -> None:
        with self._lock:
            self.queue_depth, self.running_sequences = queue_depth, running_sequences

    def add_tokens(self, prompt: int = 0, generated: int = 0) -> None:
        with self._lock:
            self.prompt_tokens += prompt
            self.generated_tokens += generated
            if generated:
                self._recent.append((self._clock(), generated))

    def observe(self, *, latency: float | None = None, first_token: float | None = None,
                queue_wait: float | None = None) -> None:  # fmt: skip
        with self._lock:
            for hist, value in ((self.latency, latency), (self.first_token, first_token), (self.queue_wait, queue_wait)):
                if value is not None:
                    hist.observe(value)

    def count_request(self, outcome: str) -> None:
        with self._lock:
            self.requests[outcome] = self.requests.get(outcome, 0) + 1

    def tokens_per_second(self) -> float:
        """Generated tokens per second over the last RATE_WINDOW_S seconds."""
        with self._lock:
            now = self._clock()
            while self._recent and self._recent[0][0] < now - RATE_WINDOW_S:
                self._recent.popleft()
            return sum(n for _, n in self._recent) / RATE_WINDOW_S

    def render(self) -> str:
        rate = self.tokens_per_second()
        p = "opencodegen"
        with self._lock:
            lines = [
                f"# HELP {p}_queue_depth Requests waiting for a batch slot.",
                f"# TYPE {p}_queue_depth gauge",
                f"{p}_queue_depth {self.queue_depth}",
                f"# HELP {p}_running_sequences Sequences in the running batch.",
                f"# TYPE {p}_running_sequences gauge",
                f"{p}_running_sequences {self.running_sequences}",
                f"# HELP {p}_generation_tokens_per_second Generated tokens per second (last {RATE_WINDOW_S:g} s).",
                f"# TYPE {p}_generation_tokens_per_second gauge",
                f"{p}_generation_tokens_per_second {rate!r}",
                f"# HELP {p}_prompt_tokens_total Prompt tokens prefilled.",
                f"# TYPE {p}_prompt_tokens_total counter",
                f"{p}_prompt_tokens_total {self.prompt_tokens}",
                f"# HELP {p}_generation_tokens_total Tokens generated.",
                f"# TYPE {p}_generation_tokens_total counter",
                f"{p}_generation_tokens_total {self.generated_tokens}",
                f"# HELP {p}_requests_total Completion requests by outcome.",
                f"# TYPE {p}_requests_total counter",
                *(f'{p}_requests_total{{outcome="{k}"}} {v}' for k, v in sorted(self.requests.items())),
            ]
            for name, hist, text in (
                ("request_latency_seconds", self.latency, "Time from arrival to the last token."),
                ("time_to_first_token_seconds", self.first_token, "Time from arrival to the first token."),
                ("queue_wait_seconds", self.queue_wait, "Time from arrival to joining the batch."),
            ):
                lines += [f"# HELP {p}_{name} {text}", f"# TYPE {p}_{name} histogram", *hist.lines(f"{p}_{name}")]
        return "\n".join(lines) + "\n"
