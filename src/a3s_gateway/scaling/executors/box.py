"""The ``box`` scale executor: the A3S Box scale API (SPEC §8.5).

:meth:`BoxExecutor.scale` POSTs a scale request; :meth:`BoxExecutor.poll` GETs the target's replica count and
endpoints and reports the ready ones to the sink (the target's static ``servers`` when Box reports none);
:meth:`BoxExecutor.run` polls every second while the autoscaler is active, else every 10 s. Each call is one
:func:`~a3s_gateway.http.client.fetch` bounded by ``timeout``; every failure is an :class:`ExecutorError`
whose message names the call, the URL and what went wrong.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import quote

from ..._version import __version__
from ...config.model import BoxExecutorConfig
from ...http.client import FetchError, Target, fetch
from . import EndpointSink, ExecutorError

FAST_POLL: Final = 1.0  # while requests are queued or desired != actual
SLOW_POLL: Final = 10.0
MAX_BODY: Final = 1 << 20
USER_AGENT: Final = f"a3s-gateway/{__version__}".encode("ascii")


class BoxExecutor:
    """Scales one target through the Box API and reports its ready replica URLs to ``sink``."""

    kind = "box"

    def __init__(self, target: str, cfg: BoxExecutorConfig, sink: EndpointSink, static_urls: list[str]) -> None:
        self.target = target
        self._sink = sink
        self._static = list(static_urls)
        self._timeout = cfg.timeout
        self._api = Target(f"{cfg.url.rstrip('/')}/v1/scale/{quote(target, safe='')}")
        headers = [(b"Accept", b"application/json"), (b"User-Agent", USER_AGENT)]
        if cfg.token:
            headers.append((b"Authorization", b"Bearer " + _token_bytes(cfg.token)))
        self._get_headers = headers
        self._post_headers = [*headers, (b"Content-Type", b"application/json")]
        self._listed = False  # the last answered poll listed endpoints of Box's own
        self._poll_now = asyncio.Event()  # an accepted scale request: poll without waiting for the period

    async def scale(self, desired: int, current: int, reason: str) -> int:
        """Ask Box for ``desired`` replicas; the ``actual_replicas`` of an accepted request, else ExecutorError."""
        body = json.dumps(
            {
                "service": self.target,
                "direction": "Up" if desired > current else "Down",
                "current_replicas": current,
                "desired_replicas": desired,
                "reason": reason,
            },
            separators=(",", ":"),
        ).encode()
        reply = await self._call(b"POST", self._post_headers, body)
        what = f"box POST {self._api.url}"
        accepted = reply.get("accepted")
        if not isinstance(accepted, bool):
            raise ExecutorError(f"{what}: response has no boolean 'accepted'")
        message = reply.get("message")
        if not accepted:
            text = message if isinstance(message, str) and message else "no message"
            raise ExecutorError(f"box did not accept scaling {self.target} to {desired} replicas: {text}")
        actual = _count(reply.get("actual_replicas"))
        if actual is None:
            raise ExecutorError(f"{what}: response has no valid 'actual_replicas'")
        if desired == 0 and not self._listed:
            self._sink.set_endpoints([])  # the static servers stood in for replicas that Box now stops
        self._poll_now.set()
        return actual

    async def poll(self) -> int:
        """GET the target's state, report its replica endpoints to the sink (see the module docstring); the replicas."""
        reply = await self._call(b"GET", self._get_headers, b"")
        what = f"box GET {self._api.url}"
        replicas = _count(reply.get("replicas"))
        if replicas is None:
            raise ExecutorError(f"{what}: response has no valid 'replicas'")
        endpoints = reply.get("endpoints")
        if endpoints is None:
            endpoints = []
        elif not isinstance(endpoints, list):
            raise ExecutorError(f"{what}: 'endpoints' is not a list")
        urls: list[str] = []
        for endpoint in endpoints:
            url = endpoint.get("url") if isinstance(endpoint, dict) else None
            if not isinstance(url, str) or not url:
                raise ExecutorError(f"{what}: an endpoint has no 'url'")
            if endpoint.get("ready") is True and url not in urls:
                urls.append(url)
        # "reports none" = no endpoints listed at all; listed but none ready means no replica is ready yet
        self._listed = bool(endpoints)
        if endpoints:
            self._sink.set_endpoints(urls)
        elif replicas > 0:
            self._sink.set_endpoints(list(self._static), replicas)
        else:
            self._sink.set_endpoints([])  # no replica runs: nothing is eligible until Box starts one
        return replicas

    async def run(self, fast: Callable[[], bool], on_error: Callable[[str], None]) -> None:
        """Poll forever: again after 1 s while ``fast()``, else after 10 s, and at once after an accepted scale
        request; errors go to ``on_error``. Cancel to stop.

        ``fast()`` is checked every second, so a request queued during a slow period is polled for within 1 s.
        """
        loop = asyncio.get_running_loop()
        poll_now = self._poll_now
        while True:
            polled = loop.time()
            poll_now.clear()
            try:
                await self.poll()
            except ExecutorError as exc:
                on_error(str(exc))
                if not self._listed:
                    self._sink.set_endpoints(list(self._static))  # Box cannot be asked: the servers serve
            while not poll_now.is_set():
                try:
                    await asyncio.wait_for(poll_now.wait(), FAST_POLL)
                except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                    pass
                if fast() or loop.time() - polled >= SLOW_POLL - 0.01:
                    break

    async def close(self) -> None:
        """Nothing to release: each call uses its own connection (``run`` is stopped by cancelling its task)."""

    async def _call(self, method: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> dict[str, Any]:
        what = f"box {method.decode()} {self._api.url}"
        try:
            result = await asyncio.wait_for(fetch(self._api, method, headers, MAX_BODY, body=body), self._timeout)
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            raise ExecutorError(f"{what}: timed out after {self._timeout:g}s") from None
        except FetchError as exc:
            raise ExecutorError(f"{what}: {exc}") from exc
        if not 200 <= result.status < 300:
            detail = result.body[:200].decode("utf-8", "replace").strip()
            raise ExecutorError(f"{what}: status {result.status}" + (f": {detail}" if detail else ""))
        try:
            reply = json.loads(result.body)
        except ValueError as exc:  # also UnicodeDecodeError
            raise ExecutorError(f"{what}: invalid JSON in response: {exc}") from None
        if not isinstance(reply, dict):
            raise ExecutorError(f"{what}: response is not a JSON object")
        return reply


def _count(value: object) -> int | None:
    """``value`` if it is a JSON integer >= 0, else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _token_bytes(token: str) -> bytes:
    data = token.encode("utf-8")
    if any(b < 0x21 or b > 0x7E for b in data):  # a CR/LF would split the request head
        raise ValueError("box token must be visible ASCII characters")
    return data
