"""A ``headers`` middleware overrides or deletes the forwarding headers (issue 16 item 1; SPEC §5.2, §6.8): the
gateway sets them before middlewares run, so what the middleware leaves is what the backend receives — on HTTP/1.1
and on HTTP/2 requests."""

from __future__ import annotations

import asyncio

import pytest
from support import Client, Request, gateway_port, ok, start_backend
from test_http2_e2e import H2Client

pytestmark = pytest.mark.timeout(60)

FORWARDING = ["X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-Port", "X-Real-IP",
              "X-Request-Id"]
OVERRIDES = {
    "X-Forwarded-For": "203.0.113.9",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "front.example",
    "X-Forwarded-Port": "443",
    "X-Real-IP": "203.0.113.9",
    "X-Request-Id": "fixed-id-1",
}


def _config(backend_url: str, request_headers: dict[str, str], trusted: bool = False) -> str:
    edits = ", ".join(f'"{k}" = "{v}"' for k, v in request_headers.items())
    return f'''
entrypoints "web" {{
  address = "127.0.0.1:0"
  {'trusted_ips = ["127.0.0.1"]' if trusted else ""}
}}
routers "r" {{
  rule        = "PathPrefix(`/`)"
  service     = "s"
  middlewares = ["hdr"]
}}
services "s" {{ load_balancer {{ servers = [{{ url = "{backend_url}" }}] }} }}
middlewares "hdr" {{
  type            = "headers"
  request_headers = {{ {edits} }}
}}
'''


def _values(req: Request, name: str) -> list[str]:
    return [v for k, v in req.headers if k.lower() == name.lower()]


async def _backend() -> object:
    async def answer(req: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(ok())
        return True

    return await start_backend(answer)


# what the client sends: every forwarding header, which an untrusted peer cannot set
_CLIENT = (b"X-Forwarded-For: 10.9.9.9\r\nX-Forwarded-Proto: ftp\r\nX-Forwarded-Host: spoof\r\n"
           b"X-Forwarded-Port: 1\r\nX-Real-IP: 10.9.9.9\r\nX-Request-Id: client-id\r\n")


@pytest.mark.parametrize("name", FORWARDING)
async def test_headers_middleware_sets_a_forwarding_header_http1(start_gateway, name: str) -> None:
    backend = await _backend()
    gw = await start_gateway(_config(backend.url, {name: OVERRIDES[name]}))  # type: ignore[attr-defined]
    c = await Client.connect(gateway_port(gw))
    assert (await c.request(b"GET / HTTP/1.1\r\nHost: a:81\r\n" + _CLIENT + b"\r\n")).status == 200
    req = backend.requests[0]  # type: ignore[attr-defined]
    assert _values(req, name) == [OVERRIDES[name]]
    # the others are still the gateway's own
    gateway_values = {"X-Forwarded-For": ["10.9.9.9, 127.0.0.1"], "X-Forwarded-Proto": ["http"],
                      "X-Forwarded-Host": ["a:81"], "X-Forwarded-Port": [str(gateway_port(gw))],
                      "X-Real-IP": ["127.0.0.1"]}
    for other, expected in gateway_values.items():
        if other != name:
            assert _values(req, other) == expected, other
    if name != "X-Request-Id":
        assert _values(req, "X-Request-Id") == ["client-id"]
    c.close()


@pytest.mark.parametrize("name", FORWARDING)
async def test_headers_middleware_deletes_a_forwarding_header_http1(start_gateway, name: str) -> None:
    backend = await _backend()
    gw = await start_gateway(_config(backend.url, {name: ""}))
    c = await Client.connect(gateway_port(gw))
    # sent by the client or not, a deleted forwarding header does not reach the backend
    for extra in (_CLIENT, b""):
        assert (await c.request(b"GET / HTTP/1.1\r\nHost: a\r\n" + extra + b"\r\n")).status == 200
        req = backend.requests[-1]  # type: ignore[attr-defined]
        assert _values(req, name) == [], (name, extra)
        assert len(_values(req, "X-Forwarded-Proto" if name != "X-Forwarded-Proto" else "X-Real-IP")) == 1
    c.close()


async def test_all_forwarding_headers_set_and_deleted_http2(start_gateway) -> None:
    """The same on an h2c stream (converted to the HTTP/1.1 path): set all six, then delete all six."""
    backend = await _backend()
    gw = await start_gateway(_config(backend.url, OVERRIDES))
    h2 = await H2Client.connect(gateway_port(gw))
    client = [(k.lower(), v) for k, v in (line.split(": ") for line in _CLIENT.decode().split("\r\n") if line)]
    s = await h2.request("GET", "/", headers=client)
    assert s["headers"][b":status"] == b"200"
    req = backend.requests[0]  # type: ignore[attr-defined]
    for name, value in OVERRIDES.items():
        assert _values(req, name) == [value], name
    h2.close()

    backend = await _backend()
    gw = await start_gateway(_config(backend.url, dict.fromkeys(FORWARDING, "")))
    h2 = await H2Client.connect(gateway_port(gw))
    s = await h2.request("GET", "/", headers=client)
    assert s["headers"][b":status"] == b"200"
    req = backend.requests[0]  # type: ignore[attr-defined]
    for name in FORWARDING:
        assert _values(req, name) == [], name
    h2.close()


async def test_override_wins_over_a_trusted_peer(start_gateway) -> None:
    """Behind a TLS-terminating load balancer (a trusted peer saying ``X-Forwarded-Proto: http``), the middleware's
    ``https`` is what the backend sees; the other trusted values pass."""
    backend = await _backend()
    gw = await start_gateway(_config(backend.url, {"X-Forwarded-Proto": "https"}, trusted=True))
    c = await Client.connect(gateway_port(gw))
    r = await c.request(b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: lb.example\r\n"
                        b"X-Forwarded-For: 198.51.100.7\r\n\r\n")
    assert r.status == 200
    req = backend.requests[0]  # type: ignore[attr-defined]
    assert _values(req, "X-Forwarded-Proto") == ["https"]
    assert _values(req, "X-Forwarded-Host") == ["lb.example"]
    assert _values(req, "X-Forwarded-For") == ["198.51.100.7, 127.0.0.1"]
    assert _values(req, "X-Real-IP") == ["198.51.100.7"]
    c.close()
