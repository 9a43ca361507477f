"""Scale-to-zero, cold-start buffering, panic scale-up (SPEC §8.2–§8.5) through a real gateway whose ``process``
executor starts a small streaming OpenAI-style stand-in (tests/support/model_standin.py) as its replicas."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path

import pytest
from fake_scale_api import FakeApi, response

from support import Backend, Client, gateway_port, read_response, start_backend

STANDIN = Path(__file__).resolve().parent.parent / "support" / "model_standin.py"
CHAT = b"POST /v1/chat/completions HTTP/1.1\r\nHost: m\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"

pytestmark = pytest.mark.timeout(120)


def scaled(args: str = "", scaling: str = "", ports: str = "21200-21299") -> str:
    argv = ", ".join(json.dumps(a) for a in [sys.executable, str(STANDIN), "--port", "{port}", *args.split()])
    return f'''
entrypoints "web" {{ address = "127.0.0.1:0" }}
routers "llm" {{
  rule    = "PathPrefix(`/`)"
  service = "llm"
}}
services "llm" {{
  scaling {{
    max_replicas          = 3
    buffer_enabled        = true
    executor              = "process"
    {scaling}
    process {{
      command     = [{argv}]
      health_path = "/health"
      port_range  = "{ports}"
      stop_timeout = "2s"
    }}
  }}
}}
'''


def remote_scaled(executor: str, settings: str) -> str:
    """A buffered service at zero replicas whose executor (box, kubernetes) is an API server the test runs."""
    return f'''
entrypoints "web" {{ address = "127.0.0.1:0" }}
routers "r" {{
  rule    = "PathPrefix(`/`)"
  service = "llm"
}}
services "llm" {{
  scaling {{
    buffer_enabled = true
    executor       = "{executor}"
    {executor} {{
      {settings}
    }}
  }}
}}
'''


async def chat(port: int, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    c = await Client.connect(port)
    try:
        c.send(CHAT)
        r = await asyncio.wait_for(read_response(c.reader), timeout)
    finally:
        c.close()
    return r.status, {k.lower(): v for k, v in r.headers}, r.body


async def wait_until(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return bool(predicate())


def target_of(gw):  # type: ignore[no-untyped-def]
    return gw.runtime.scale_targets["llm"][1]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_cold_start_holds_20_requests_then_scales_to_zero_and_cold_starts_again(start_gateway) -> None:
    gw = await start_gateway(scaled("--startup-delay 0.4",
                                    'scale_down_delay_secs = 1\n    stable_window = "6s"', "21200-21249"))
    port = gateway_port(gw)
    target = target_of(gw)
    assert target.ready_count() == 0 and target.backends == []
    results = await asyncio.gather(*(chat(port) for _ in range(20)))
    assert [r[0] for r in results] == [200] * 20
    assert all(r[1].get("x-a3s-cold-start") == "1" for r in results)  # every one of them waited
    assert all(r[2].endswith(b"data: [DONE]\n\n") and b'"token": 4' in r[2] for r in results)
    pids = {r[1]["x-replica"] for r in results}
    assert len(pids) == 1  # one replica took them all (no concurrency limit)
    assert target.rejections == {"full": 0, "timeout": 0, "client_gone": 0, "shutdown": 0}
    assert target.wait.count() == 20
    # a request now finds the replica ready: no cold start
    status, headers, _ = await chat(port)
    assert status == 200 and "x-a3s-cold-start" not in headers
    # idle: after the stable window and the scale-down delay the replica is drained and stopped
    pid = int(pids.pop())
    assert await wait_until(lambda: not target.backends and not alive(pid), 20)
    services = gw.services()
    assert services[0]["scaling"]["ready_replicas"] == 0 and services[0]["scaling"]["desired_replicas"] == 0
    status, headers, _ = await chat(port)
    assert status == 200 and headers.get("x-a3s-cold-start") == "1" and int(headers["x-replica"]) != pid
    text = gw.metrics()
    assert 'gateway_buffer_wait_seconds_count{service="llm"} 21.0' in text
    assert 'gateway_autoscaler_ready_replicas{service="llm"} 1.0' in text


async def test_full_queue_answers_503_and_a_replica_never_ready_504(start_gateway,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="a3s_gateway.proxy")
    gw = await start_gateway(scaled("--never-ready", "buffer_size = 2\n    buffer_timeout_secs = 1", "21250-21269"))
    port = gateway_port(gw)
    t0 = time.monotonic()
    first = [asyncio.ensure_future(chat(port)) for _ in range(2)]
    await wait_until(lambda: len(target_of(gw).queue) == 2, 5)
    status, headers, body = await chat(port)
    assert status == 503 and headers["retry-after"] == "5" and json.loads(body) == {"error": "Request buffer full"}
    for status, headers, body in await asyncio.gather(*first):
        assert status == 504 and json.loads(body) == {"error": "Backend scale-up timed out"}
        assert headers.get("x-a3s-cold-start") == "1"
    assert 0.9 < time.monotonic() - t0 < 5
    target = target_of(gw)
    assert target.rejections["full"] == 1 and target.rejections["timeout"] == 2
    assert len(target.backends) == 1 and target.ready_count() == 0  # started, never ready
    # SPEC §5.7 / §11.5: the 504s in the process log, with a request id; the second one within 10 s is suppressed
    [line] = [r.fields for r in caplog.records  # type: ignore[attr-defined]
              if r.name == "a3s_gateway.proxy" and r.getMessage() == "Backend scale-up timed out"]
    assert line["status"] == 504 and line["router"] == "llm" and line["service"] == "llm"
    assert len(line["request_id"]) == 32 and line["backend"] is None


async def test_a_client_that_leaves_the_queue_is_removed_at_once(start_gateway) -> None:
    gw = await start_gateway(scaled("--never-ready", "buffer_timeout_secs = 30", "21270-21279"))
    port = gateway_port(gw)
    target = target_of(gw)
    c = await Client.connect(port)
    c.send(CHAT)
    assert await wait_until(lambda: len(target.queue) == 1, 5)
    c.close()
    assert await wait_until(lambda: len(target.queue) == 0, 5)
    assert target.rejections["client_gone"] == 1
    stats = gw.runtime.route_stats[("llm", "llm")]
    assert stats.gone_queued == 1


async def test_a_burst_panics_and_scales_up_to_max_replicas_that_all_take_traffic(start_gateway) -> None:
    gw = await start_gateway(scaled("--startup-delay 0.2 --ttfb 1.5",
                                    "container_concurrency = 1\n    buffer_timeout_secs = 60", "21280-21299"))
    port = gateway_port(gw)
    target = target_of(gw)
    panicked: list[bool] = []

    async def watch() -> None:
        while True:
            panicked.append(target.autoscaler.panic)
            await asyncio.sleep(0.1)

    watcher = asyncio.ensure_future(watch())
    try:
        results = await asyncio.gather(*(chat(port, 60) for _ in range(9)))
    finally:
        watcher.cancel()
    assert [r[0] for r in results] == [200] * 9
    assert any(panicked)
    assert target.autoscaler.desired == 3 and len(target.backends) == 3
    assert len({r[1]["x-replica"] for r in results}) == 3  # every replica served some of the burst


async def test_a_crashed_replica_leaves_the_pool_and_is_replaced(start_gateway) -> None:
    gw = await start_gateway(scaled("", "min_replicas = 1", "21300-21319"))
    port = gateway_port(gw)
    target = target_of(gw)
    assert await wait_until(lambda: target.ready_count() == 1, 15)  # min_replicas starts one without traffic
    status, headers, _ = await chat(port)
    assert status == 200 and "x-a3s-cold-start" not in headers
    pid = int(headers["x-replica"])
    os.kill(pid, 9)
    assert await wait_until(lambda: target.ready_count() == 1 and not alive(pid), 15)
    status, headers, _ = await chat(port)
    assert status == 200 and int(headers["x-replica"]) != pid


async def test_a_reload_keeps_the_replicas_of_an_unchanged_scaling_block(start_gateway) -> None:
    from a3s_gateway import GatewayConfig

    hcl = scaled("", "min_replicas = 1", "21320-21339")
    gw = await start_gateway(hcl)
    port = gateway_port(gw)
    target = target_of(gw)
    assert await wait_until(lambda: target.ready_count() == 1, 15)
    pid = int((await chat(port))[1]["x-replica"])
    await gw.reload(GatewayConfig.from_hcl(hcl.replace("PathPrefix(`/`)", "PathPrefix(`/v1`)"), filename="t.hcl"))
    assert target_of(gw) is target
    status, headers, _ = await chat(port)
    assert status == 200 and int(headers["x-replica"]) == pid and "x-a3s-cold-start" not in headers
    # a changed scaling block is a new target: the old replica stops, the new one starts
    await gw.reload(GatewayConfig.from_hcl(hcl.replace("max_replicas          = 3", "max_replicas = 2"),
                                           filename="t.hcl"))
    assert target_of(gw) is not target
    assert await wait_until(lambda: not alive(pid), 15)
    status, headers, _ = await chat(port)
    assert status == 200 and int(headers["x-replica"]) != pid


async def test_shutdown_answers_503_to_requests_still_queued(start_gateway) -> None:
    gw = await start_gateway(scaled("--never-ready", "buffer_timeout_secs = 30", "21340-21349"))
    port = gateway_port(gw)
    waiting = asyncio.ensure_future(chat(port))
    assert await wait_until(lambda: len(target_of(gw).queue) == 1, 5)
    target = target_of(gw)
    await gw.shutdown(0.3)
    status, headers, body = await waiting
    assert status == 503 and json.loads(body) == {"error": "Gateway shutting down"}
    assert headers.get("x-a3s-cold-start") == "1" and target.rejections["shutdown"] == 1
    assert not any(alive(r.proc.pid) for r in target.executor.replicas.values())


async def test_box_executor_scales_from_zero_and_the_held_request_reaches_the_new_replica(start_gateway) -> None:
    replicas: list = []

    async def box(req, writer) -> None:  # type: ignore[no-untyped-def]
        if req.method == "POST":
            desired = json.loads(req.body)["desired_replicas"]
            while len(replicas) < desired:
                replicas.append(await start_backend())
            writer.write(response(200, {"accepted": True, "actual_replicas": desired, "message": "ok"}))
        else:
            writer.write(response(200, {"replicas": len(replicas),
                                        "endpoints": [{"url": b.url, "ready": True} for b in replicas]}))

    async with FakeApi(box) as api:
        gw = await start_gateway(remote_scaled("box", f'url = "{api.url}"\n      token = "t0ken"'))
        status, headers, body = await chat(gateway_port(gw))
        assert status == 200 and body == b"hello from backend" and headers.get("x-a3s-cold-start") == "1"
        post = next(r for r in api.requests if r.method == "POST")
        assert post.path == "/v1/scale/llm" and post.header("authorization") == "Bearer t0ken"
        assert json.loads(post.body) == {"service": "llm", "direction": "Up", "current_replicas": 0,
                                         "desired_replicas": 1, "reason": "cold start: a request is waiting"}
        assert gw.services()[0]["scaling"]["ready_replicas"] == 1
        for b in replicas:
            await b.stop()


def quickstart_service(box_url: str, scaling: str = "") -> str:
    """The README quick start's ``llm-backend`` (§15.1) on two loopback servers, its Box API at ``box_url``."""
    return f'''
entrypoints "web" {{ address = "127.0.0.1:0" }}
routers "llm" {{
  rule    = "PathPrefix(`/v1`)"
  service = "llm-backend"
}}
services "llm-backend" {{
  load_balancer {{
    strategy = "least-connections"
    servers  = [{{ url = "{{s0}}" }}, {{ url = "{{s1}}" }}]
    health_check {{ path = "/health" }}
  }}
  scaling {{
    min_replicas          = 0
    max_replicas          = 4
    container_concurrency = 10
    buffer_enabled        = true
    executor              = "box"
    {scaling}
    box {{ url = "{box_url}" }}
  }}
}}
'''


class FakeBox:
    """A Box API that runs ``replicas`` replicas (a POST sets the count) and lists no endpoints of its own."""

    def __init__(self) -> None:
        self.replicas = 0

    async def __call__(self, req, writer) -> None:  # type: ignore[no-untyped-def]
        if req.method == "POST":
            self.replicas = json.loads(req.body)["desired_replicas"]
            writer.write(response(200, {"accepted": True, "actual_replicas": self.replicas, "message": "ok"}))
        else:
            writer.write(response(200, {"replicas": self.replicas}))


async def test_the_quickstart_with_box_at_zero_replicas_cold_starts_on_its_servers_and_scales_back(
        start_gateway) -> None:
    """SPEC §8.5, §15.1: while Box reports no replica nothing is eligible: the first request waits, Box is asked for
    one at once, the request goes to a static server once Box reports it and the server is healthy, with
    ``X-A3S-Cold-Start: 1``; after ``scale_down_delay_secs`` without traffic the target goes back to zero."""
    servers = [await start_backend(), await start_backend()]
    box = FakeBox()
    async with FakeApi(box) as api:
        hcl = quickstart_service(api.url, 'scale_down_delay_secs = 1\n    stable_window = "6s"')
        gw = await start_gateway(hcl.replace("{s0}", servers[0].url).replace("{s1}", servers[1].url))
        target = gw.runtime.scale_targets["llm-backend"][1]
        assert await wait_until(lambda: any(r.method == "GET" for r in api.requests), 5)
        await asyncio.sleep(0.3)  # time for the servers' readiness probes, were they endpoints already
        assert target.backends == [] and not any(s.requests for s in servers)  # not even probed

        status, headers, body = await chat(gateway_port(gw))
        assert status == 200 and body == b"hello from backend" and headers.get("x-a3s-cold-start") == "1"
        posts = [json.loads(r.body) for r in api.requests if r.method == "POST"]
        assert posts == [{"service": "llm-backend", "direction": "Up", "current_replicas": 0, "desired_replicas": 1,
                          "reason": "cold start: a request is waiting"}]
        assert target.ready_count() == 2 and target.rejections["timeout"] == 0
        status, headers, _ = await chat(gateway_port(gw))
        assert status == 200 and "x-a3s-cold-start" not in headers  # the replica is up: no wait

        # idle: once the stable window has only zero samples and the delay has passed, Box is told to go to zero
        assert await wait_until(lambda: box.replicas == 0 and target.backends == [], 30)
        down = json.loads(next(r for r in reversed(api.requests) if r.method == "POST").body)
        assert (down["direction"], down["current_replicas"], down["desired_replicas"]) == ("Down", 1, 0)
        assert gw.services()[0]["scaling"]["ready_replicas"] == 0

        status, headers, _ = await chat(gateway_port(gw))  # and the next request cold-starts again
        assert status == 200 and headers.get("x-a3s-cold-start") == "1" and box.replicas == 1
    for server in servers:
        await server.stop()


async def test_the_quickstart_without_a_box_api_serves_from_its_servers(start_gateway) -> None:
    """Box unreachable: the static servers serve once healthy; the failed calls are logged and counted (§8.5)."""
    servers = [await start_backend(), await start_backend()]
    gone = await start_backend()
    await gone.stop()  # a port nobody listens on
    hcl = quickstart_service(gone.url)
    gw = await start_gateway(hcl.replace("{s0}", servers[0].url).replace("{s1}", servers[1].url))
    target = gw.runtime.scale_targets["llm-backend"][1]
    status, _, body = await chat(gateway_port(gw))
    assert status == 200 and body == b"hello from backend"
    assert await wait_until(lambda: target.ready_count() == 2, 5)
    assert target.executor_errors >= 1
    assert 'gateway_executor_errors_total{executor="box",service="llm-backend"}' in gw.metrics()
    for server in servers:
        await server.stop()


async def test_a_scaled_revision_queues_its_share_until_its_server_is_ready(start_gateway) -> None:
    v1 = await start_backend()
    probe = await start_backend()
    await probe.stop()  # a port nobody listens on (yet)
    v2_port = probe.port
    hcl = f'''
entrypoints "web" {{ address = "127.0.0.1:0" }}
routers "r" {{
  rule    = "PathPrefix(`/`)"
  service = "llm"
}}
services "llm" {{
  revisions = [
    {{ name = "v1", traffic_percent = 50, servers = [{{ url = "{v1.url}" }}] }},
    {{ name = "v2", traffic_percent = 50, servers = [{{ url = "http://127.0.0.1:{v2_port}" }}] }},
  ]
  scaling {{
    buffer_enabled = true
    executor       = "static"
  }}
}}
'''
    gw = await start_gateway(hcl)
    port = gateway_port(gw)
    targets = gw.runtime.scale_targets
    assert sorted(targets) == ["llm-v1", "llm-v2"]
    assert await wait_until(lambda: targets["llm-v1"][1].ready_count() == 1, 5)
    pending = [asyncio.ensure_future(chat(port)) for _ in range(4)]
    assert await wait_until(lambda: len(targets["llm-v2"][1].queue) == 2, 5)  # v2's half waits, v1's is served
    v2 = Backend()
    v2.server = await asyncio.start_server(v2._serve, "127.0.0.1", v2_port)
    results = await asyncio.gather(*pending)
    assert [r[0] for r in results] == [200] * 4
    assert sum(1 for r in results if r[1].get("x-a3s-cold-start") == "1") == 2
    view = gw.services()[0]
    assert view["scaling"] is None and [r["scaling"]["ready_replicas"] for r in view["revisions"]] == [1, 1]
    await v2.stop()


async def test_kubernetes_executor_scales_the_deployment_and_follows_endpointslices(start_gateway, tmp_path) -> None:
    """No cluster runs here: a fake API server speaks the Deployment scale and EndpointSlice list/watch paths."""
    replicas: list = []
    watchers: list[asyncio.StreamWriter] = []

    def slice_() -> dict:
        return {"metadata": {"name": "llm-abc", "resourceVersion": "5"},
                "ports": [{"name": "http", "port": replicas[0].port if replicas else 8000}],
                "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}} for _ in replicas]}

    async def api(req, writer) -> None:  # type: ignore[no-untyped-def]
        if req.method == "PATCH":
            n = json.loads(req.body)["spec"]["replicas"]
            while len(replicas) < n:
                replicas.append(await start_backend())
            writer.write(response(200, {"spec": {"replicas": n}}))
            for w in watchers:  # the watch tells about the new ready endpoint
                line = json.dumps({"type": "MODIFIED", "object": slice_()}).encode() + b"\n"
                w.write(b"%x\r\n%s\r\n" % (len(line), line))
        elif req.query.get("watch"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            watchers.append(writer)
            if replicas:  # changed since the list this watch continues from
                line = json.dumps({"type": "MODIFIED", "object": slice_()}).encode() + b"\n"
                writer.write(b"%x\r\n%s\r\n" % (len(line), line))
            await asyncio.sleep(30)
        else:
            writer.write(response(200, {"metadata": {"resourceVersion": "5"}, "items": [slice_()]}))

    token = tmp_path / "token"
    token.write_text("k8s-token\n")
    async with FakeApi(api) as server:
        k8s = f'namespace = "models"\n      api_url = "{server.url}"\n      token_file = "{token}"\n      port = "http"'
        gw = await start_gateway(remote_scaled("kubernetes", k8s))
        status, headers, body = await chat(gateway_port(gw))
        assert status == 200 and body == b"hello from backend" and headers.get("x-a3s-cold-start") == "1"
        patch = next(r for r in server.requests if r.method == "PATCH")
        assert patch.path == "/apis/apps/v1/namespaces/models/deployments/llm/scale"
        assert patch.header("content-type") == "application/merge-patch+json"
        assert patch.header("authorization") == "Bearer k8s-token"
        assert json.loads(patch.body) == {"spec": {"replicas": 1}}
        await gw.shutdown(0.2)
        for b in replicas:
            await b.stop()
