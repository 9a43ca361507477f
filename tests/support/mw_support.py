"""Helpers for the middleware unit tests: validated params from HCL, requests and responses built by hand."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from a3s_gateway.config import GatewayConfig
from a3s_gateway.middleware.chain import Chain, Reply, Request, Response

BASE = """
entrypoints "web" { address = ":8080" }
routers "r" { rule = "PathPrefix(`/`)"; service = "s" }
services "s" { load_balancer { servers = [{ url = "http://127.0.0.1:9000" }] } }
"""


def params(kind: str, body: str = "") -> Mapping[str, Any]:
    """The params the validator gives ``middlewares "m" { type = kind; <body> }`` (every default applied)."""
    config = GatewayConfig.from_hcl(f'{BASE}middlewares "m" {{\n  type = "{kind}"\n{body}\n}}\n', "g.hcl", env={})
    return config.middlewares["m"].params


def request(
    method: bytes = b"GET",
    path: bytes = b"/",
    query: bytes | None = None,
    headers: Sequence[tuple[bytes, bytes]] = (),
    client_ip: str = "10.0.0.1",
    body_length: int = 0,
    slots: int = 1,
    trusted: bool = False,
    peer: str = "",
) -> Request:
    return Request(method, path, query, b"example.com", list(headers), client_ip, "r", b"http", body_length, slots,
                   trusted, peer)


def response(status: int = 200, headers: Sequence[tuple[bytes, bytes]] = (), local: bool = False) -> Response:
    return Response(status, list(headers), local)


def reply_response(reply: Reply) -> Response:
    """A middleware's reply as the response phase of the middlewares before it sees it."""
    return Response(reply.status, list(reply.headers), True)


def body(reply: Reply | None) -> Any:
    assert reply is not None
    return orjson.loads(reply.body)


def drive(chain: Chain, req: Request, now: float, upstream: Response | None = None) -> Response:
    """Run a chain as the proxy does: request phase until a reply, else ``upstream``; then the response phase."""
    for i, mw in enumerate(chain.middlewares):
        reply = mw.request(req, now) if mw.has_request else None
        if reply is not None:
            resp = reply_response(reply)
            chain.run_response(req, resp, i, now)
            return resp
    resp = upstream if upstream is not None else response(200)
    chain.run_response(req, resp, len(chain), now)
    return resp
