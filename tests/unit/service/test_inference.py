"""The ``inference`` strategy (SPEC §16.5): model-server metrics parsing, the score, ``max_queue`` eligibility,
stale metrics, prompt-prefix affinity, the supervisor → worker readings, and its configuration (§3.3, §16.3)."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from a3s_gateway.config import GatewayConfig
from a3s_gateway.errors import ConfigError
from a3s_gateway.http.inspect import prompt_key, read_request
from a3s_gateway.service.balancer import Backend, InferenceBalancer, make_balancer
from a3s_gateway.service.inference import apply_rows, parse_metrics, rows, store

VLLM = b"""# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="llama"} 7.0
vllm:num_requests_running{model_name="llama"} 3.0
vllm:gpu_cache_usage_perc{model_name="llama"} 0.25
vllm:kv_cache_usage_perc{model_name="llama"} 0.5
vllm:num_requests_waiting_by_reason{reason="capacity"} 99
vllm:prompt_tokens_total{model_name="llama"} 12345.0
"""


def test_parse_vllm_sums_labels_and_prefers_kv_cache_usage_perc() -> None:
    two = VLLM + b'vllm:num_requests_waiting{model_name="qwen"} 2\n'
    assert parse_metrics(VLLM) == (7.0, 3.0, 0.5)
    assert parse_metrics(two) == (9.0, 3.0, 0.5)
    older = VLLM.replace(b"vllm:kv_cache_usage_perc", b"vllm:other")
    assert parse_metrics(older) == (7.0, 3.0, 0.25)  # the older vLLM name


def test_parse_sglang_and_tgi() -> None:
    sglang = b"sglang:num_queue_reqs{model=\"m\"} 4\nsglang:num_running_reqs{model=\"m\"} 8\nsglang:token_usage 0.9\n"
    assert parse_metrics(sglang) == (4.0, 8.0, 0.9)
    tgi = b"# TYPE tgi_queue_size gauge\ntgi_queue_size 5\ntgi_batch_current_size 2\n"
    assert parse_metrics(tgi) == (5.0, 2.0, 0.0)


def test_parse_without_queue_series_or_garbage_is_none() -> None:
    assert parse_metrics(b"") is None
    assert parse_metrics(b"process_cpu_seconds_total 3\n") is None
    assert parse_metrics(b"vllm:num_requests_waiting{ 12\nvllm:num_requests_waiting abc\n") is None
    assert parse_metrics(b"vllm:num_requests_waiting NaN\nvllm:num_requests_waiting -1\n") is None


def pool(n: int) -> list[Backend]:
    return [Backend(f"http://10.0.0.{i + 1}:8000") for i in range(n)]


def report(b: Backend, waiting: float, running: float = 0.0, kv: float = 0.0, age: float = 0.0) -> None:
    store(b, waiting, running, kv, time.monotonic() - age)


def test_queue_of_50_gets_nothing_while_another_reports_0() -> None:
    a, b = pool(2)
    report(a, 50)
    report(b, 0)
    lb = InferenceBalancer([a, b])
    assert {lb.pick() for _ in range(20)} == {b}  # 20 picks since the scrape still score below 50


def test_picks_since_the_scrape_spread_a_burst() -> None:
    a, b = pool(2)
    report(a, 0)
    report(b, 0)
    lb = InferenceBalancer([a, b])
    for _ in range(10):  # in flight: each pick holds its backend
        chosen = lb.pick()
        assert chosen is not None
        chosen.acquire()
    assert (a.in_flight, b.in_flight) == (5, 5)
    report(a, 0)  # a new reading (which counts those requests itself) starts the count again
    assert a.sent_since_scrape == 0


def test_kv_cache_and_running_break_the_tie() -> None:
    a, b, c = pool(3)
    report(a, 1, kv=0.9)
    report(b, 1, kv=0.1)
    report(c, 2)
    assert InferenceBalancer([a, b, c]).pick() is b
    report(a, 1, running=10)
    report(b, 1, running=0)
    assert InferenceBalancer([a, b]).pick() is b


def test_max_queue_leaves_out_a_long_queue_while_another_is_eligible() -> None:
    a, b = pool(2)
    report(a, 200)
    report(b, 0)
    lb = InferenceBalancer([a, b], max_queue=128)
    for _ in range(300):  # b's picks since the scrape pass 200: a is still left out
        assert lb.pick() is b
    report(b, 300)  # both over: the lower score
    assert lb.pick() is a


def test_stale_metrics_are_ignored_least_connections_instead() -> None:
    a, b = pool(2)
    report(a, 0, age=5.0)  # stale: scored by in-flight alone
    report(b, 3)
    a.in_flight = 1
    lb = InferenceBalancer([a, b], stale_after=2.0)
    assert lb.pick() is a  # 1 in flight beats b's fresh queue of 3
    report(a, 10)  # fresh again: the queue counts
    assert lb.pick() is b
    none = pool(2)  # no metrics at all: least-connections (ties round-robin)
    lb = InferenceBalancer(none)
    assert [lb.pick() for _ in range(4)] == [none[0], none[1], none[0], none[1]]


def test_prefix_affinity_sticks_at_equal_load_and_yields_to_a_better_score() -> None:
    backends = pool(4)
    for b in backends:
        report(b, 0)
    lb = InferenceBalancer(backends)
    keys = [prompt_key(read_request(json.dumps({"messages": [{"role": "user", "content": f"doc {i} " * 80}]})
                                    .encode(), True), 256) for i in range(40)]
    chosen = {}
    for key in keys:
        chosen[key] = lb.pick_keyed(key)
        for _ in range(3):  # the same prefix again: the same backend
            assert lb.pick_keyed(key) is chosen[key]
    assert len(set(chosen.values())) == 4  # different prefixes spread over the pool
    assert sum(b.prefix_hits for b in backends) == 160
    key = keys[0]
    home = chosen[key]
    report(home, 2)  # more than 1.0 worse than the best: the best score wins
    assert lb.pick_keyed(key) is not home
    report(home, 0.5)
    assert lb.pick_keyed(key) is home


def test_prompt_key_reads_messages_prompt_parts_and_a_cut_body() -> None:
    def key(body: dict[str, object], limit: int = 256) -> int:
        return prompt_key(read_request(json.dumps(body).encode(), True), limit)

    long_a = {"messages": [{"role": "system", "content": "s" * 300}, {"role": "user", "content": "a"}]}
    long_b = {"messages": [{"role": "system", "content": "s" * 300}, {"role": "user", "content": "b"}]}
    assert key(long_a) == key(long_b) != -1  # the first 256 bytes are equal
    assert key(long_a, 1000) != key(long_b, 1000)
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]}
    assert key(parts) == key({"messages": [{"role": "user", "content": "hello"}]}) == key({"prompt": "hello"})
    assert key({"model": "m"}) == -1
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 2000}]}).encode()
    cut = read_request(body[:1024], False)
    assert prompt_key(cut, 256) == key({"prompt": "x" * 256})


def test_worker_takes_the_supervisors_readings_once_per_scrape() -> None:
    class Svc:
        def __init__(self, backends: list[Backend]) -> None:
            self.backends = backends

    (a,) = pool(1)
    a.sent_since_scrape = 4
    when = time.monotonic() - 0.1
    apply_rows({"s": Svc([a])}, [("s", a.url, 7, 3.0, 1.0, 0.5, when), ("gone", "http://x:1", 1, 0, 0, 0, 0)])
    assert (a.waiting, a.running, a.kv_usage, a.scrapes, a.sent_since_scrape, a.scraped_at) == (
        3.0, 1.0, 0.5, 7, 0, when)
    a.sent_since_scrape = 2
    apply_rows({"s": Svc([a])}, [("s", a.url, 7, 3.0, 1.0, 0.5, when)])  # the same scrape: picks keep counting
    assert a.sent_since_scrape == 2
    supervisor = Backend("http://10.0.0.9:8000")
    store(supervisor, 1.0, 2.0, 0.25, when)

    class Scr:
        def backends(self) -> list[Backend]:
            return [supervisor]

    assert rows({"s": Scr()}) == [("s", supervisor.url, 1, 1.0, 2.0, 0.25, when)]  # type: ignore[dict-item]


def test_make_balancer_inference() -> None:
    lb = make_balancer("inference", pool(2), None, 1.5, 7)
    assert isinstance(lb, InferenceBalancer) and (lb.stale_after, lb.max_queue) == (1.5, 7)
    assert Counter(b.host for b in (lb.pick(), lb.pick())) == {"10.0.0.1": 1, "10.0.0.2": 1}


BASE = """
entrypoints "web" { address = ":8080" }
routers "r" {
  rule = "PathPrefix(`/`)"
  service = "s"
  %s
}
services "s" {
  load_balancer {
    %s
    servers = [{ url = "http://127.0.0.1:9000" }]
  }
}
"""


def errors(router: str, lb: str) -> list[str]:
    try:
        GatewayConfig.from_hcl(BASE % (router, lb), "g.hcl", env={})
    except ConfigError as exc:
        return [str(i) for i in exc.issues]
    return []


def test_config_inference_block_and_ai_block() -> None:
    config = GatewayConfig.from_hcl(BASE % ('ai { queued_keepalive = "5s" }', '''strategy = "inference"
        inference {
          metrics_path          = "/m"
          scrape_interval       = "100ms"
          stale_after           = "1s"
          prefix_affinity_bytes = 0
          max_queue             = 3
        }'''), "g.hcl", env={})
    inf = config.services["s"].load_balancer.inference
    assert (inf.metrics_path, inf.scrape_interval, inf.stale_after, inf.prefix_affinity_bytes, inf.max_queue) == (
        "/m", 0.1, 1.0, 0, 3)
    assert config.routers["r"].ai is not None and config.routers["r"].ai.queued_keepalive == 5.0
    assert GatewayConfig.from_dict(config.to_dict()).services == config.services
    defaults = GatewayConfig.from_hcl(BASE % ("", 'strategy = "inference"'), "g.hcl", env={})
    inf = defaults.services["s"].load_balancer.inference
    assert (inf.metrics_path, inf.scrape_interval, inf.stale_after, inf.prefix_affinity_bytes, inf.max_queue) == (
        "/metrics", 0.25, 2.0, 256, 128)


@pytest.mark.parametrize(("router", "lb", "expected"), [
    ("", 'inference { max_queue = 3 }', 'the inference block needs strategy = "inference"'),
    ("", 'strategy = "inference"\ninference { scrape_interval = "20ms" }', "must be between 50ms and 10s"),
    ("", 'strategy = "inference"\ninference { metrics_path = "metrics" }', "invalid metrics_path"),
    ('ai { queued_keepalive = "-1s" }', "", "queued_keepalive"),
    ('ai { bogus = 1 }', "", "bogus"),
])
def test_config_errors(router: str, lb: str, expected: str) -> None:
    found = errors(router, lb)
    assert any(expected in e for e in found), found
