"""gRPC through the gateway (SPEC §9.2) with grpcio on both ends (no generated code: raw-bytes methods): unary and
bidirectional streaming over h2c end to end, status and trailing metadata passed through, the client deadline
reaching the backend, and gateway errors as trailers-only responses with the mapped grpc-status."""

from __future__ import annotations

import asyncio
import time
from concurrent import futures

import grpc
import pytest
from support import gateway_port

pytestmark = pytest.mark.timeout(60)


def start_grpc_backend() -> tuple[grpc.Server, int]:
    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        if request == b"missing":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such model")
        if request == b"slow":
            time.sleep(2)
        context.set_trailing_metadata((("x-served-by", "backend-1"),))
        remaining = context.time_remaining()
        return b"echo:" + request + (b" deadline" if remaining is not None and remaining < 30 else b"")

    def bidi(requests, context: grpc.ServicerContext):  # type: ignore[no-untyped-def]
        for request in requests:
            yield b"token:" + request

    handler = grpc.method_handlers_generic_handler("llm.Generate", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.stream_stream_rpc_method_handler(bidi),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def config(backend_port: int, scheme: str = "h2c") -> str:
    return f'''
entrypoints "web" {{ address = "127.0.0.1:0" }}
routers "llm" {{
  rule    = "PathPrefix(`/llm.Generate/`)"
  service = "llm"
}}
services "llm" {{
  load_balancer {{ servers = [{{ url = "{scheme}://127.0.0.1:{backend_port}" }}] }}
}}
'''


async def test_unary_and_bidi_streaming_with_status_and_trailers(start_gateway) -> None:
    server, port = start_grpc_backend()
    gw = await start_gateway(config(port))
    target = f"127.0.0.1:{gateway_port(gw)}"

    def calls() -> dict:
        out: dict = {}
        with grpc.insecure_channel(target) as channel:
            unary = channel.unary_unary("/llm.Generate/Unary")
            reply, call = unary.with_call(b"hello", timeout=10)
            out["unary"] = reply
            out["trailers"] = dict(call.trailing_metadata())
            stream = channel.stream_stream("/llm.Generate/Stream")
            out["stream"] = list(stream(iter([b"a", b"b", b"c"]), timeout=10))
            try:
                unary(b"missing", timeout=10)
            except grpc.RpcError as e:
                out["missing"] = (e.code(), e.details())
            try:
                unary(b"slow", timeout=0.5)
            except grpc.RpcError as e:
                out["slow"] = e.code()
            out["unary_no_deadline"] = unary(b"x")
        return out

    out = await asyncio.to_thread(calls)
    assert out["unary"] == b"echo:hello deadline"  # grpc-timeout reached the backend
    assert out["trailers"]["x-served-by"] == "backend-1"
    assert out["stream"] == [b"token:a", b"token:b", b"token:c"]
    assert out["missing"] == (grpc.StatusCode.NOT_FOUND, "no such model")  # upstream status untouched
    assert out["slow"] == grpc.StatusCode.DEADLINE_EXCEEDED
    assert out["unary_no_deadline"] == b"echo:x"
    server.stop(0)


@pytest.mark.parametrize("scheme", ["http", "h2c"])
async def test_gateway_errors_are_trailers_only_grpc_statuses(start_gateway, scheme: str) -> None:
    server, port = start_grpc_backend()
    gw = await start_gateway(config(port, scheme))
    target = f"127.0.0.1:{gateway_port(gw)}"
    server.stop(0)  # the backend is gone: UNAVAILABLE

    def calls() -> dict:
        out: dict = {}
        with grpc.insecure_channel(target) as channel:
            for name, method in (("down", "/llm.Generate/Unary"), ("no_route", "/other.Service/Call")):
                try:
                    channel.unary_unary(method)(b"x", timeout=10)
                except grpc.RpcError as e:
                    out[name] = (e.code(), e.details())
        return out

    out = await asyncio.to_thread(calls)
    assert out["down"][0] == grpc.StatusCode.UNAVAILABLE and "Upstream connection failed" in out["down"][1]
    assert out["no_route"] == (grpc.StatusCode.UNIMPLEMENTED, "No route matched")


async def test_the_gateway_enforces_grpc_timeout(start_gateway) -> None:
    """A client that sends grpc-timeout but does not enforce it still gets DEADLINE_EXCEEDED from the gateway."""
    import h2.config
    import h2.connection
    import h2.events

    server, port = start_grpc_backend()
    gw = await start_gateway(config(port))
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway_port(gw))
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "POST"), (":path", "/llm.Generate/Unary"), (":scheme", "http"),
                          (":authority", "gw"), ("content-type", "application/grpc"), ("te", "trailers"),
                          ("grpc-timeout", "300m")])
    conn.send_data(1, b"\x00\x00\x00\x00\x04slow", end_stream=True)  # one length-prefixed message
    writer.write(conn.data_to_send())
    t0 = time.monotonic()
    headers: dict = {}
    ended = False
    while not ended:
        data = await asyncio.wait_for(reader.read(65536), 5)
        assert data
        for event in conn.receive_data(data):
            if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                headers.update(dict(event.headers))
            ended = ended or isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset))
        writer.write(conn.data_to_send())
    elapsed = time.monotonic() - t0
    writer.close()
    assert headers[b"grpc-status"] == b"4" and headers[b":status"] == b"200"
    assert 0.25 < elapsed < 1.5  # the backend would have taken 2 s
    server.stop(0)
