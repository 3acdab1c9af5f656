"""Server metrics, exposed through prometheus-client in the Prometheus text format.

Counters, gauges and histograms are updated from the scheduler thread and the event loop, so
every update takes one lock; a custom collector reads them under that lock when /metrics is
scraped, and `render()` writes them with prometheus-client as ``text/plain; version=0.0.4``
(the metric names are part of the server's interface: dashboards use them).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RATE_WINDOW_S = 10.0
PREFIX = "opencodegen"
#: The media type of `Metrics.render()`.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[next((i for i, b in enumerate(self.buckets) if value <= b), len(self.buckets))] += 1
        self.sum += value

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        cumulative, running = [], 0
        for bound, count in zip((*self.buckets, float("inf")), self.counts):
            running += count
            cumulative.append((floatToGoString(bound), running))
        return HistogramMetricFamily(name, documentation, buckets=cumulative, sum_value=self.sum)


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
                queue_wait: float | None = None) -> None:
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

    def collect(self) -> Iterator[Metric]:
        """The current values as metric families (prometheus-client's collector protocol)."""
        rate = self.tokens_per_second()
        p = PREFIX
        with self._lock:
            gauges = (
                ("queue_depth", "Requests waiting for a batch slot.", self.queue_depth),
                ("running_sequences", "Sequences in the running batch.", self.running_sequences),
                ("generation_tokens_per_second", f"Generated tokens per second (last {RATE_WINDOW_S:g} s).", rate),
            )
            for name, text, value in gauges:
                yield GaugeMetricFamily(f"{p}_{name}", text, value=value)
            yield CounterMetricFamily(f"{p}_prompt_tokens", "Prompt tokens prefilled.", value=self.prompt_tokens)
            yield CounterMetricFamily(f"{p}_generation_tokens", "Tokens generated.", value=self.generated_tokens)
            requests = CounterMetricFamily(f"{p}_requests", "Completion requests by outcome.", labels=["outcome"])
            for outcome, count in sorted(self.requests.items()):
                requests.add_metric([outcome], count)
            yield requests
            for name, hist, text in (
                ("request_latency_seconds", self.latency, "Time from arrival to the last token."),
                ("time_to_first_token_seconds", self.first_token, "Time from arrival to the first token."),
                ("queue_wait_seconds", self.queue_wait, "Time from arrival to joining the batch."),
            ):
                yield hist.family(f"{p}_{name}", text)

    def render(self) -> str:
        """The Prometheus text exposition (version 0.0.4) of every metric."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        return generate_latest(registry).decode("utf-8")
