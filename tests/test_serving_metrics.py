"""The Prometheus text of /metrics: cumulative histogram buckets, the windowed token rate, counters."""

import math

from opencodegen.serving.metrics import RATE_WINDOW_S, Metrics


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_histograms_rates_and_counters():
    clock = Clock()
    m = Metrics(clock=clock)
    for latency in (0.003, 0.2, 100.0):
        m.observe(latency=latency)
    m.observe(first_token=0.01, queue_wait=0.0)
    m.add_tokens(prompt=7, generated=50)
    clock.now = RATE_WINDOW_S / 2
    m.add_tokens(generated=30)
    m.count_request("ok")
    m.count_request("ok")
    m.count_request("rejected")
    m.set_load(queue_depth=3, running_sequences=5)
    clock.now = RATE_WINDOW_S / 2 + 1
    assert m.tokens_per_second() == 80 / RATE_WINDOW_S
    text = m.render()
    s = samples(text)
    h = "opencodegen_request_latency_seconds"
    assert s[f'{h}_bucket{{le="0.005"}}'] == 1 and s[f'{h}_bucket{{le="0.25"}}'] == 2
    assert s[f'{h}_bucket{{le="60.0"}}'] == 2 and s[f'{h}_bucket{{le="+Inf"}}'] == 3 == s[f"{h}_count"]
    assert math.isclose(s[f"{h}_sum"], 100.203)
    assert s['opencodegen_time_to_first_token_seconds_bucket{le="0.01"}'] == 1
    assert s['opencodegen_requests_total{outcome="ok"}'] == 2 and s['opencodegen_requests_total{outcome="rejected"}'] == 1
    assert (s["opencodegen_queue_depth"], s["opencodegen_running_sequences"]) == (3, 5)
    assert (s["opencodegen_prompt_tokens_total"], s["opencodegen_generation_tokens_total"]) == (7, 80)
    for name in ("queue_depth", "request_latency_seconds", "requests_total", "generation_tokens_per_second"):
        assert f"# TYPE opencodegen_{name} " in text and f"# HELP opencodegen_{name} " in text
    clock.now = RATE_WINDOW_S * 2  # both token batches fell out of the window
    assert m.tokens_per_second() == 0


# The exposition of the hand-written renderer that prometheus-client replaced: every metric's
# name and type, and every sample name (labels aside). Dashboards depend on these.
NAMES_BEFORE_PROMETHEUS_CLIENT = {
    "opencodegen_queue_depth": "gauge",
    "opencodegen_running_sequences": "gauge",
    "opencodegen_generation_tokens_per_second": "gauge",
    "opencodegen_prompt_tokens_total": "counter",
    "opencodegen_generation_tokens_total": "counter",
    "opencodegen_requests_total": "counter",
    "opencodegen_request_latency_seconds": "histogram",
    "opencodegen_time_to_first_token_seconds": "histogram",
    "opencodegen_queue_wait_seconds": "histogram",
}


def test_metric_names_and_types_are_unchanged():
    m = Metrics()
    m.count_request("ok")
    m.observe(latency=0.1, first_token=0.1, queue_wait=0.1)
    text = m.render()
    types = dict(line.split(" ")[2:4] for line in text.splitlines() if line.startswith("# TYPE "))
    assert types == NAMES_BEFORE_PROMETHEUS_CLIENT
    histograms = [n for n, t in types.items() if t == "histogram"]
    expected = {n for n, t in types.items() if t != "histogram"}
    expected |= {f"{n}_{part}" for n in histograms for part in ("bucket", "sum", "count")}
    sample_names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#")}
    assert sample_names == expected  # no _created or other new series
    assert {line.split(" ")[2] for line in text.splitlines() if line.startswith("# HELP ")} == set(types)
