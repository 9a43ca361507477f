"""A fake ACME CA for the errors pebble cannot produce: the directory, nonces and account registration of RFC 8555,
then every new order refused with ``urn:ietf:params:acme:error:rateLimited`` and a ``Retry-After`` header, as Let's
Encrypt answers when a rate limit is hit. Plain HTTP on 127.0.0.1 in a thread; signatures are not checked.
``orders`` records when (monotonic seconds) each new-order request arrived."""

from __future__ import annotations

import base64
import http.server
import json
import os
import threading
import time

RATE_LIMITED = "urn:ietf:params:acme:error:rateLimited"


class FakeAcme:
    def __init__(self, retry_after: int, detail: str = "too many new orders recently") -> None:
        self.retry_after = retry_after
        self.detail = detail
        self.orders: list[float] = []
        ca = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _reply(self, status: int, body: dict[str, object] | None, ctype: str = "application/json",
                       headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                self.send_header("Replay-Nonce", base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode())
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def do_HEAD(self) -> None:
                self._reply(200, None)

            def do_GET(self) -> None:
                if self.path == "/dir":
                    self._reply(200, {"newNonce": f"{ca.url}/nonce", "newAccount": f"{ca.url}/account",
                                      "newOrder": f"{ca.url}/order", "revokeCert": f"{ca.url}/revoke",
                                      "keyChange": f"{ca.url}/key-change", "meta": {}})
                else:
                    self._reply(404, {"type": "urn:ietf:params:acme:error:malformed", "detail": "not found"},
                                "application/problem+json")

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == "/account":
                    self._reply(201, {"status": "valid", "contact": ["mailto:ops@example.com"]},
                                headers={"Location": f"{ca.url}/account/1"})
                elif self.path == "/order":
                    ca.orders.append(time.monotonic())
                    self._reply(429, {"type": RATE_LIMITED, "detail": ca.detail, "status": 429},
                                "application/problem+json", {"Retry-After": str(ca.retry_after)})
                else:
                    self._reply(404, {"type": "urn:ietf:params:acme:error:malformed", "detail": "not found"},
                                "application/problem+json")

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.directory_url = f"{self.url}/dir"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
