"""HTTP/1.1 request-path defects found by a hostile-client probe (issue 24): raw bytes on a socket, the exact
status, header and bytes the backend receives (SPEC §5.3, §5.5, §9.1)."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

from support import Client, Request, gateway_port, ok, start_backend

from certs import make_san_cert


async def _echo_host(req: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
    """A backend with two virtual hosts: it serves the admin page to whoever says ``Host: admin.local``."""
    host = req.header("host") or ""
    w.write(ok(b"admin page" if host == "admin.local" else b"public page: " + host.encode()))
    return True


def _two_hosts(backend_url: str, public_mws: str = "", pass_host: bool = True) -> str:
    return f'''
entrypoints "web" {{ address = "127.0.0.1:0" }}
routers "admin" {{
  rule        = "Host(`admin.local`)"
  service     = "s"
  middlewares = ["auth"]
}}
routers "public" {{
  rule        = "Host(`public.local`)"
  service     = "s"
  middlewares = [{public_mws}]
}}
services "s" {{
  load_balancer {{
    servers = [{{ url = "{backend_url}" }}]
    pass_host_header = {"true" if pass_host else "false"}
  }}
}}
middlewares "auth" {{
  type     = "basic-auth"
  username = "ada"
  password = "lovelace"
}}
middlewares "hdr" {{
  type            = "headers"
  request_headers = {{ "X-Extra" = "1" }}
}}
'''


async def test_absolute_form_authority_replaces_host_so_auth_cannot_be_bypassed(start_gateway) -> None:
    """D2: routed as public.local, so forwarded as public.local — never with the client's ``Host: admin.local``."""
    for public_mws in ('', '"hdr"'):  # the fast path and the middleware-chain path
        backend = await start_backend(_echo_host)
        gw = await start_gateway(_two_hosts(backend.url, public_mws))
        c = await Client.connect(gateway_port(gw))
        r = await c.request(b"GET http://public.local/x?y=1 HTTP/1.1\r\nHost: admin.local\r\n\r\n")
        assert r.status == 200 and r.body == b"public page: public.local"
        req = backend.requests[0]
        assert req.target == "/x?y=1"  # origin-form upstream
        assert [v for k, v in req.headers if k.lower() == "host"] == ["public.local"]
        assert req.header("x-forwarded-host") == "public.local"
        assert "admin.local" not in req.raw_head.decode()
        # the admin virtual host still needs credentials, whichever form the target takes
        r = await c.request(b"GET http://admin.local/ HTTP/1.1\r\nHost: public.local\r\n\r\n")
        assert r.status == 401
        r = await c.request(b"GET / HTTP/1.1\r\nHost: admin.local\r\n\r\n")
        assert r.status == 401
        good = base64.b64encode(b"ada:lovelace")
        r = await c.request(b"GET http://admin.local/ HTTP/1.1\r\nHost: public.local\r\nAuthorization: Basic "
                            + good + b"\r\n\r\n")
        assert r.status == 200 and r.body == b"admin page"
        assert len(backend.requests) == 2
        c.close()


async def test_absolute_form_with_pass_host_header_false(start_gateway) -> None:
    """D2: ``pass_host_header = false`` sends the backend's host; X-Forwarded-Host is still the authority."""
    backend = await start_backend(_echo_host)
    gw = await start_gateway(_two_hosts(backend.url, pass_host=False))
    c = await Client.connect(gateway_port(gw))
    r = await c.request(b"GET http://public.local:8080/ HTTP/1.1\r\nHost: admin.local\r\n\r\n")
    assert r.status == 200
    req = backend.requests[0]
    assert req.header("host") == f"127.0.0.1:{backend.port}"
    assert req.header("x-forwarded-host") == "public.local:8080"
    c.close()


async def test_absolute_form_host_in_access_log_and_redirect(start_gateway, tmp_path: Path) -> None:
    """D2: the access log and an entrypoint redirect use the authority, as routing does."""
    backend = await start_backend(_echo_host)
    log_path = tmp_path / "access.log"
    cert, key = make_san_cert(tmp_path, "d-", ["public.local"])
    hcl = _two_hosts(backend.url) + f'''
entrypoints "plain" {{
  address  = "127.0.0.1:0"
  redirect {{ entrypoint = "websecure" }}
}}
entrypoints "websecure" {{
  address = "127.0.0.1:0"
  tls {{
    cert_file = "{cert}"
    key_file  = "{key}"
  }}
}}
access_log {{ path = "{log_path}" }}
'''
    gw = await start_gateway(hcl)
    secure_port = gw._config.entrypoints["websecure"].port  # the configured port, as the redirect says
    c = await Client.connect(gateway_port(gw))
    assert (await c.request(b"GET http://public.local/p HTTP/1.1\r\nHost: admin.local\r\n\r\n")).status == 200
    c.close()
    c = await Client.connect(gateway_port(gw, "plain"))
    r = await c.request(b"GET http://public.local/p?q HTTP/1.1\r\nHost: admin.local\r\n\r\n")
    assert r.status == 308 and r.header("location") == f"https://public.local:{secure_port}/p?q"
    c.close()
    await gw.shutdown(0.5)
    entries = [json.loads(line) for line in log_path.read_text().splitlines() if line]
    assert [e["host"] for e in entries] == ["public.local", "public.local"]


async def test_http10_request_without_host_gets_the_backend_host(start_gateway) -> None:
    """D6: an HTTP/1.0 request without Host goes upstream as HTTP/1.1 with the backend URL's host[:port]."""
    for pass_host in (True, False):
        backend = await start_backend(_echo_host)
        hcl = _two_hosts(backend.url, pass_host=pass_host).replace("Host(`public.local`)", "PathPrefix(`/`)")
        gw = await start_gateway(hcl)
        c = await Client.connect(gateway_port(gw))
        r = await c.request(b"GET /ten HTTP/1.0\r\n\r\n")
        assert r.status == 200
        req = backend.requests[0]
        assert req.version == "HTTP/1.1"
        assert [v for k, v in req.headers if k.lower() == "host"] == [f"127.0.0.1:{backend.port}"]
        assert req.header("x-forwarded-host") is None  # the client sent no host to report
        c.close()


async def _echo_body(req: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
    w.write(ok(b"got " + req.body + b" expect=" + (req.header("expect") or "-").encode()))
    return True


async def test_expect_100_continue_on_http10_is_ignored(start_gateway) -> None:
    """D7: HTTP/1.0 has no 100 Continue (RFC 9110 §10.1.1): the first thing the client reads is the response."""
    backend = await start_backend(_echo_body)
    gw = await start_gateway(_two_hosts(backend.url).replace("Host(`public.local`)", "PathPrefix(`/`)"))
    c = await Client.connect(gateway_port(gw))
    r = await c.request(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\nbody")
    assert r.status == 200 and r.body == b"got body expect=-"
    assert await c.closed()
    c = await Client.connect(gateway_port(gw))  # HTTP/1.1 still gets its 100 first
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
    assert await asyncio.wait_for(c.reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
    c.send(b"body")
    r = await c.response()
    assert r.status == 200 and r.body == b"got body expect=-"
    c.close()


async def test_final_response_without_100_continue_closes_the_connection(start_gateway) -> None:
    """D11: a request waiting for 100 Continue that is answered without it (a middleware's 401, a gateway 404)
    gets ``Connection: close`` and the connection closes: the client may never send the announced body, and
    draining it would eat the client's next request."""
    backend = await start_backend(_echo_body)
    gw = await start_gateway(_two_hosts(backend.url))
    for host in (b"admin.local", b"nowhere.local"):  # basic-auth 401 (middleware reply), 404 (gateway error)
        c = await Client.connect(gateway_port(gw))
        r = await c.request(b"POST / HTTP/1.1\r\nHost: " + host + b"\r\nExpect: 100-continue\r\n"
                            b"Content-Length: 40\r\n\r\n")
        assert r.status == (401 if host == b"admin.local" else 404)
        assert r.header("connection") == "close"
        # the client correctly did not send the body; its next request is not read as body bytes
        c.send(b"GET / HTTP/1.1\r\nHost: public.local\r\n\r\n")
        assert await c.closed()
    assert backend.requests == []
    # without Expect, a small announced body is still drained and the connection kept
    c = await Client.connect(gateway_port(gw))
    r = await c.request(b"POST / HTTP/1.1\r\nHost: admin.local\r\nContent-Length: 4\r\n\r\nbody")
    assert r.status == 401 and r.header("connection") is None
    r = await c.request(b"POST / HTTP/1.1\r\nHost: public.local\r\nContent-Length: 4\r\n\r\nbody")
    assert r.status == 200 and r.body == b"got body expect=-"
    c.close()


async def test_h2_preface_after_an_http11_request_is_a_malformed_request_line(start_gateway) -> None:
    """D8: the HTTP/2 preface counts only as a connection's first bytes (SPEC §9.1); later it is 400 and close."""
    backend = await start_backend(_echo_host)
    gw = await start_gateway(_two_hosts(backend.url))
    c = await Client.connect(gateway_port(gw))
    assert (await c.request(b"GET / HTTP/1.1\r\nHost: public.local\r\n\r\n")).status == 200
    r = await c.request(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert r.status == 400 and json.loads(r.body) == {"error": "Bad request: malformed request line"}
    assert r.header("connection") == "close"
    assert await c.closed()
    # as the first bytes of a connection it still starts h2c: the server's SETTINGS frame comes back
    c = await Client.connect(gateway_port(gw))
    c.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    frame = await asyncio.wait_for(c.reader.readexactly(9), 5)
    assert frame[3] == 0x4  # SETTINGS
    c.close()
    assert len(backend.requests) == 1


async def test_only_the_exact_websocket_token_upgrades(start_gateway) -> None:
    """D9: ``Upgrade: foo-websocket-bar`` is no WebSocket upgrade: a plain request, Upgrade and Connection removed;
    ``websocket`` as one element of the list (any case) is (SPEC §5.5, §9.3)."""
    async def answer(req: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(ok(f"{req.header('upgrade')}|{req.header('connection')}".encode()))
        return True

    backend = await start_backend(answer)
    gw = await start_gateway(_two_hosts(backend.url))
    c = await Client.connect(gateway_port(gw))
    for value in (b"foo-websocket-bar", b"websocket2", b"xwebsocket", b"websocket/13"):
        r = await c.request(b"GET / HTTP/1.1\r\nHost: public.local\r\nConnection: Upgrade\r\nUpgrade: " + value
                            + b"\r\n\r\n")
        assert r.status == 200 and r.body == b"None|None", value
        assert "upgrade" not in backend.requests[-1].raw_head.decode().lower()
    c.close()
    for value in (b"WebSocket", b"h2c, websocket", b" websocket ,foo"):
        c = await Client.connect(gateway_port(gw))
        r = await c.request(b"GET / HTTP/1.1\r\nHost: public.local\r\nConnection: keep-alive, Upgrade\r\nUpgrade: "
                            + value + b"\r\n\r\n")
        assert r.status == 200 and r.body.lower() == b"websocket|upgrade", value
        c.close()


async def test_forward_auth_judges_the_host_routing_used(start_gateway) -> None:
    """D2 audit: forward-auth tells its auth service the host routing used (and the scheme and peer of SPEC §5.2),
    not an X-Forwarded-Host an untrusted client sent — an auth service that bypasses public.local would otherwise
    let the admin virtual host through."""
    async def auth(req: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        public = req.header("x-forwarded-host") == "public.local"
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" if public else
                b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
        return True

    auth_server = await start_backend(auth)
    backend = await start_backend(_echo_host)
    hcl = _two_hosts(backend.url).replace('type     = "basic-auth"', f'type = "forward-auth"\n  forward_auth_url = '
                                                                       f'"{auth_server.url}/check"')
    hcl = hcl.replace('  username = "ada"\n  password = "lovelace"\n', "")
    gw = await start_gateway(hcl)
    c = await Client.connect(gateway_port(gw))
    for raw in (b"GET / HTTP/1.1\r\nHost: admin.local\r\nX-Forwarded-Host: public.local\r\n"
                b"X-Forwarded-Proto: https\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n",
                b"GET http://admin.local/ HTTP/1.1\r\nHost: public.local\r\nX-Forwarded-Host: public.local\r\n\r\n"):
        assert (await c.request(raw)).status == 401
    seen = auth_server.requests[0]
    assert seen.header("x-forwarded-host") == "admin.local" and seen.header("x-forwarded-proto") == "http"
    assert seen.header("x-forwarded-for") == "10.0.0.1, 127.0.0.1"
    assert auth_server.requests[1].header("x-forwarded-host") == "admin.local"
    assert backend.requests == []
    c.close()
