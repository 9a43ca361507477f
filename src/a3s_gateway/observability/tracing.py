"""Trace context propagation and OTLP/HTTP JSON span export (SPEC §3.8, §11.4).

:meth:`Tracer.begin` runs for every request. Without incoming trace headers (the usual case, decided by one C-level
``header_ids.rstrip``) it slices ids from a pre-hexed pool of random bytes and fills a precomputed byte template:
no regex, no per-header loop. Only requests that carry trace headers take the parsing path.

:meth:`Tracer.finish` appends a tuple to a bounded deque; a background task turns queued spans into OTLP/HTTP JSON
batches and POSTs them with a minimal HTTP/1.1 client, so the request path never waits on the collector.

Interpreted, not mypyc-compiled: the per-request work is a handful of C-level builtins (``rstrip``, slicing,
``bytes %``) that mypyc would not speed up, and the exporter is I/O bound.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from .._version import __version__
from ..http import hdrs
from .redact import redact_url

if TYPE_CHECKING:
    from ..config.model import TracingConfig

log = logging.getLogger("a3s_gateway.tracing")

#: bits of :attr:`Tracer.mask`, one per propagation format
W3C: Final = 1
B3: Final = 2
B3MULTI: Final = 4
_FORMATS: Final[dict[str, int]] = {"w3c": W3C, "b3": B3, "b3multi": B3MULTI}

BATCH_SIZE: Final = 512
QUEUE_CAPACITY: Final = 2048
BATCH_INTERVAL: Final = 5.0  # seconds between flushes of a partial batch
POST_TIMEOUT: Final = 10.0
CLOSE_TIMEOUT: Final = 2.0
WARN_INTERVAL: Final = 10.0  # at most one drop / export-failure warning per this many seconds

_POOL_BYTES: Final = 4096
_POOL_HEX: Final = 2 * _POOL_BYTES
_ROOT_HEX: Final = 48  # 16-byte trace id + 8-byte span id, as hex digits
_SPAN_HEX: Final = 16
_ZERO_TRACE: Final = "0" * 32
_ZERO_SPAN: Final = "0" * 16
_ZERO_TRACE_B: Final = b"0" * 32
_ZERO_SPAN_B: Final = b"0" * 16
_PAD64: Final = b"0" * 16

#: the lowest header id of a trace header; no other id is >= this
_FIRST_TRACE_ID: Final = hdrs.TRACEPARENT
#: every id below the trace headers: ``header_ids.rstrip(_NON_TRACE_IDS)`` is empty iff no trace header is present
#: (one C call, several times cheaper than ``max(header_ids) >= _FIRST_TRACE_ID`` on a typical head)
_NON_TRACE_IDS: Final = bytes(range(_FIRST_TRACE_ID))

_W3C_RE: Final = re.compile(rb"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_B3_RE: Final = re.compile(rb"([0-9a-f]{32}|[0-9a-f]{16})-([0-9a-f]{16})(?:-([01d])(?:-[0-9a-f]{16})?)?")
_TRACE_RE: Final = re.compile(rb"[0-9a-f]{32}|[0-9a-f]{16}")
_SPAN_RE: Final = re.compile(rb"[0-9a-f]{16}")
#: the value of a trace header that occurs more than once: ambiguous, so invalid
_DUPLICATE: Final = b"\x00"

#: B3 sampling words -> decision; B3 single uses the first three, X-B3-Sampled the others plus "1"/"0"
_B3_SINGLE_SAMPLED: Final[dict[bytes, bool]] = {b"1": True, b"d": True, b"0": False}
_B3_MULTI_SAMPLED: Final[dict[bytes, bool]] = {b"1": True, b"true": True, b"0": False, b"false": False}

# headers the exporter writes itself; an otlp_headers entry with one of these names is ignored
_RESERVED_HEADERS: Final = frozenset({"host", "content-length", "content-type", "connection", "transfer-encoding"})


class TraceContext:
    """The trace of one request: ids of the gateway's new span, the incoming span, and the header lines to inject."""

    __slots__ = ("inject", "parent_span_id", "sampled", "span_id", "trace_id")

    def __init__(self, trace_id: str, span_id: str, parent_span_id: str | None, sampled: bool, inject: bytes) -> None:
        #: 32 lower-case hex digits
        self.trace_id = trace_id
        #: 16 hex digits: the gateway's span, the parent of everything upstream
        self.span_id = span_id
        #: the incoming span id, None for a new root
        self.parent_span_id = parent_span_id
        self.sampled = sampled
        #: ``Name: value\r\n`` lines for the upstream head, one set per format of :attr:`Tracer.mask`
        self.inject = inject

    def __repr__(self) -> str:
        return (f"TraceContext({self.trace_id}, span={self.span_id}, parent={self.parent_span_id}, "
                f"sampled={self.sampled})")


# (trace, span, parent, start, end, method, path, host, status, client, router, service, backend, retries, cold)
_Span = tuple[str, str, str | None, float, float, bytes, bytes | None, bytes | None, int, str, str, str, str | None,
              int, bool]


class Tracer:
    """Extracts and injects trace context (SPEC §11.4) and exports sampled spans over OTLP/HTTP JSON."""

    def __init__(self, cfg: TracingConfig, *, batch_interval: float = BATCH_INTERVAL,
                 rand: Callable[[], float] = random.random, urandom: Callable[[int], bytes] = os.urandom,
                 clock: Callable[[], float] = time.monotonic) -> None:
        mask = 0
        for name in cfg.propagation:
            if name not in _FORMATS:
                raise ValueError(f"tracing.propagation: unknown format {name!r}; use w3c, b3 or b3multi")
            mask |= _FORMATS[name]
        if not 0.0 <= cfg.sample_rate <= 1.0:
            raise ValueError(f"tracing.sample_rate: {cfg.sample_rate} is not between 0 and 1")
        #: formats injected upstream (W3C | B3 | B3MULTI bits)
        self.mask = mask
        self._rate = float(cfg.sample_rate)
        self._rand = rand
        self._urandom = urandom
        self._clock = clock
        # one template per (has parent, sampled); each format takes (trace, span) in W3C, B3, B3MULTI order
        self._pairs = bin(mask).count("1")
        self._templates = (_templates(mask, False), _templates(mask, True))
        self._parent_arg = bool(mask & B3MULTI)
        self._hex = ""
        self._hexb = b""
        self._pos = _POOL_HEX
        # export
        self._endpoint = _Endpoint(cfg) if cfg.otlp_endpoint else None
        #: True when spans are exported (``otlp_endpoint`` set)
        self.exporting = self._endpoint is not None
        #: spans dropped because the export queue was full
        self.dropped = 0
        self._accepting = self.exporting
        self._queue: deque[_Span] = deque()
        self._interval = batch_interval
        self._resource = [{"key": "service.name", "value": {"stringValue": cfg.service_name}}]
        self._task: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._closing = False
        self._drop_warned = -WARN_INTERVAL
        self._dropped_since_warning = 0
        self._fail_warned = -WARN_INTERVAL
        self._failed_since_warning = 0

    # --- request path ---------------------------------------------------------------------------------------------

    def begin(self, headers: list[tuple[bytes, bytes]], header_ids: bytes) -> TraceContext:
        """The trace context of a request: the incoming one continued (first valid format wins) or a new root."""
        if header_ids.rstrip(_NON_TRACE_IDS):
            return self._extract(headers, header_ids)
        pos = self._pos
        end = pos + _ROOT_HEX
        if end > _POOL_HEX:
            self._refill()
            pos = 0
            end = _ROOT_HEX
        self._pos = end
        mid = pos + 32
        trace = self._hex[pos:mid]
        span = self._hex[mid:end]
        if trace == _ZERO_TRACE or span == _ZERO_SPAN:  # an all-zero id is invalid; chance 2**-64
            return self._root(None)
        rate = self._rate
        sampled = rate >= 1.0 or (rate > 0.0 and self._rand() < rate)
        hexb = self._hexb
        args = (hexb[pos:mid], hexb[mid:end]) * self._pairs
        return TraceContext(trace, span, None, sampled, self._templates[0][sampled] % args)

    def _refill(self) -> None:
        raw = self._urandom(_POOL_BYTES)
        self._hex = raw.hex()
        self._hexb = self._hex.encode("ascii")
        self._pos = 0

    def _draw(self, n: int) -> tuple[str, bytes]:
        """``n`` random hex digits, never all zero, as str and bytes."""
        while True:
            if self._pos + n > _POOL_HEX:
                self._refill()
            pos = self._pos
            self._pos = pos + n
            h = self._hex[pos:pos + n]
            if h.strip("0"):
                return h, self._hexb[pos:pos + n]

    def _root(self, sampled: bool | None) -> TraceContext:
        """A new trace; ``sampled`` None defers to ``sample_rate``."""
        trace, trace_b = self._draw(32)
        return self._child(trace, trace_b, None, sampled)

    def _child(self, trace: str, trace_b: bytes, parent_b: bytes | None, sampled: bool | None) -> TraceContext:
        if sampled is None:
            rate = self._rate
            sampled = rate >= 1.0 or (rate > 0.0 and self._rand() < rate)
        span, span_b = self._draw(_SPAN_HEX)
        args = (trace_b, span_b) * self._pairs
        if parent_b is not None and self._parent_arg:
            inject = self._templates[1][sampled] % (*args, parent_b)
        else:
            inject = self._templates[0][sampled] % args
        parent = parent_b.decode("ascii") if parent_b is not None else None
        return TraceContext(trace, span, parent, sampled, inject)

    def _extract(self, headers: list[tuple[bytes, bytes]], header_ids: bytes) -> TraceContext:
        found: dict[int, bytes] = {}
        for i, hid in enumerate(header_ids):
            if hid >= _FIRST_TRACE_ID:
                found[hid] = _DUPLICATE if hid in found else headers[i][1]
        # W3C trace context
        value = found.get(hdrs.TRACEPARENT)
        if value is not None:
            m = _W3C_RE.fullmatch(value)
            if m is not None and m[1] != _ZERO_TRACE_B and m[2] != _ZERO_SPAN_B:
                return self._child(m[1].decode("ascii"), m[1], m[2], bool(int(m[3], 16) & 1))
        # B3 single header, or its sampling-only form
        value = found.get(hdrs.B3)
        if value is not None:
            if value in _B3_SINGLE_SAMPLED:
                return self._root(_B3_SINGLE_SAMPLED[value])
            m = _B3_RE.fullmatch(value)
            if m is not None:
                trace_b = m[1] if len(m[1]) == 32 else _PAD64 + m[1]
                if trace_b != _ZERO_TRACE_B and m[2] != _ZERO_SPAN_B:
                    sampled = _B3_SINGLE_SAMPLED[m[3]] if m[3] is not None else None
                    return self._child(trace_b.decode("ascii"), trace_b, m[2], sampled)
        # B3 multi headers; X-B3-Flags: 1 (debug) implies sampled
        decision = _B3_MULTI_SAMPLED.get(found.get(hdrs.X_B3_SAMPLED, b""))
        if found.get(hdrs.X_B3_FLAGS) == b"1":
            decision = True
        trace_v = found.get(hdrs.X_B3_TRACEID)
        span_v = found.get(hdrs.X_B3_SPANID)
        if (trace_v is not None and span_v is not None and _TRACE_RE.fullmatch(trace_v)
                and _SPAN_RE.fullmatch(span_v) and span_v != _ZERO_SPAN_B):
            trace_b = trace_v if len(trace_v) == 32 else _PAD64 + trace_v
            if trace_b != _ZERO_TRACE_B:
                return self._child(trace_b.decode("ascii"), trace_b, span_v, decision)
        return self._root(decision)

    def finish(self, ctx: TraceContext, *, start_wall: float, end_wall: float, method: bytes, path: bytes | None,
               host: bytes | None, status: int, client_ip: str, router: str, service: str, backend: str | None,
               retries: int, cold_start: bool) -> None:
        """Queue the request's span for export when it is sampled and spans are exported; never blocks."""
        if not ctx.sampled or not self._accepting:
            return
        queue = self._queue
        if len(queue) >= QUEUE_CAPACITY:
            self._drop()
            return
        queue.append((ctx.trace_id, ctx.span_id, ctx.parent_span_id, start_wall, end_wall, method, path, host,
                      status, client_ip, router, service, backend, retries, cold_start))
        if len(queue) == BATCH_SIZE:
            _wake(self._waiter)

    def _drop(self) -> None:
        self.dropped += 1
        self._dropped_since_warning += 1
        now = self._clock()
        if now - self._drop_warned >= WARN_INTERVAL:
            log.warning("tracing: export queue full (%d spans), dropped %d span(s); %d dropped in total",
                        QUEUE_CAPACITY, self._dropped_since_warning, self.dropped)
            self._drop_warned = now
            self._dropped_since_warning = 0

    # --- exporter -------------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the export task in the running loop; a no-op without ``otlp_endpoint`` or when already started."""
        if self._endpoint is None or self._task is not None or self._closing:
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name="a3s-gateway tracing export")

    async def close(self) -> None:
        """Stop accepting spans, send the queued ones (waiting at most ``CLOSE_TIMEOUT`` seconds) and stop."""
        if self._closing:
            return
        self._closing = True
        self._accepting = False
        task = self._task
        if task is None:
            if not self._queue or self._endpoint is None:
                return
            task = self._task = asyncio.get_running_loop().create_task(self._run())
        _wake(self._waiter)
        done, _ = await asyncio.wait({task}, timeout=CLOSE_TIMEOUT)
        if not done:
            task.cancel()
            await asyncio.wait({task})
            lost = len(self._queue)
            self._queue.clear()
            log.warning("tracing: export did not finish within %g s at shutdown; %d queued span(s) lost",
                        CLOSE_TIMEOUT, lost)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        while True:
            if not self._closing and len(queue) < BATCH_SIZE:
                waiter = self._waiter = loop.create_future()
                timer = loop.call_later(self._interval, _wake, waiter)
                try:
                    await waiter
                finally:
                    timer.cancel()
                    self._waiter = None
            while queue:
                batch = [queue.popleft() for _ in range(min(len(queue), BATCH_SIZE))]
                await self._send(batch)
            if self._closing:
                return

    async def _send(self, batch: list[_Span]) -> None:
        endpoint = self._endpoint
        assert endpoint is not None
        body = encode_spans(batch, self._resource)
        try:
            status, reply = await asyncio.wait_for(endpoint.post(body), POST_TIMEOUT)
        except asyncio.TimeoutError:
            self._failed(len(batch), f"no answer within {POST_TIMEOUT:g} s")
        except (OSError, ValueError, asyncio.IncompleteReadError) as e:
            self._failed(len(batch), f"{type(e).__name__}: {e}")
        except Exception as e:  # the exporter's boundary: log and keep the loop and the task alive
            self._failed(len(batch), f"unexpected {type(e).__name__}: {e}")
        else:
            if not 200 <= status < 300:
                self._failed(len(batch), f"HTTP {status} {reply[:200]!r}")

    def _failed(self, n: int, why: str) -> None:
        self._failed_since_warning += 1
        now = self._clock()
        if now - self._fail_warned >= WARN_INTERVAL:
            endpoint = self._endpoint
            url = endpoint.url if endpoint is not None else ""
            log.warning("tracing: OTLP export to %s failed (%s); batch of %d span(s) discarded, %d failed batch(es)"
                        " since the last warning", url, why, n, self._failed_since_warning)
            self._fail_warned = now
            self._failed_since_warning = 0


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def _templates(mask: int, with_parent: bool) -> tuple[bytes, bytes]:
    """``(unsampled, sampled)`` %-templates of the injected lines; each format takes ``(trace, span)`` in order."""
    out = []
    for sampled in (False, True):
        t = b""
        if mask & W3C:
            t += b"traceparent: 00-%s-%s-" + (b"01" if sampled else b"00") + b"\r\n"
        if mask & B3:
            t += b"b3: %s-%s-" + (b"1" if sampled else b"0") + b"\r\n"
        if mask & B3MULTI:
            t += b"X-B3-TraceId: %s\r\nX-B3-SpanId: %s\r\nX-B3-Sampled: " + (b"1" if sampled else b"0") + b"\r\n"
            if with_parent:
                t += b"X-B3-ParentSpanId: %s\r\n"
        out.append(t)
    return out[0], out[1]


# --- OTLP/HTTP JSON -----------------------------------------------------------------------------------------------


def _str_attr(key: str, value: str) -> dict[str, Any]:
    return {"key": key, "value": {"stringValue": value}}


def _int_attr(key: str, value: int) -> dict[str, Any]:
    # int64 is a decimal string in the protobuf JSON mapping OTLP/JSON follows
    return {"key": key, "value": {"intValue": str(value)}}


def _split_host(host: str) -> tuple[str, int | None]:
    """``host[:port]`` (IPv6 in brackets) -> (address, port or None)."""
    if host.startswith("["):
        addr, _, rest = host[1:].partition("]")
        return addr, int(rest[1:]) if rest[1:].isdigit() else None
    addr, sep, port = host.rpartition(":")
    if sep and port.isdigit():
        return addr, int(port)
    return host, None


def _unix_nanos(t: float) -> str:
    # split first: t * 1e9 would round to a multiple of 256 ns and print noise digits
    seconds = int(t)
    return str(seconds * 1_000_000_000 + round((t - seconds) * 1e9))


def _span_json(s: _Span) -> dict[str, Any]:
    (trace, span, parent, start, end, method_b, path, host, status, client, router, service, backend, retries,
     cold) = s
    method = method_b.decode("latin-1")
    attrs = [_str_attr("http.request.method", method)]
    if path is not None:
        attrs.append(_str_attr("url.path", path.decode("latin-1")))
    if host:
        address, port = _split_host(host.decode("latin-1"))
        attrs.append(_str_attr("server.address", address))
        if port is not None:
            attrs.append(_int_attr("server.port", port))
    attrs += [_int_attr("http.response.status_code", status), _str_attr("client.address", client),
              _str_attr("a3s.router", router), _str_attr("a3s.service", service)]
    if backend is not None:
        attrs.append(_str_attr("a3s.backend", backend))
    attrs += [_int_attr("a3s.retries", retries), {"key": "a3s.cold_start", "value": {"boolValue": cold}}]
    out: dict[str, Any] = {
        "traceId": trace,
        "spanId": span,
        # an unmatched request has no router: the name is the method alone rather than "GET "
        "name": f"{method} {router}" if router else method,
        "kind": 2,  # SPAN_KIND_SERVER
        "startTimeUnixNano": _unix_nanos(start),
        "endTimeUnixNano": _unix_nanos(end),
        "attributes": attrs,
    }
    if parent is not None:
        out["parentSpanId"] = parent
    if status >= 500:
        out["status"] = {"code": 2}  # STATUS_CODE_ERROR
    return out


def encode_spans(spans: list[_Span], resource: list[dict[str, Any]]) -> bytes:
    """An ``ExportTraceServiceRequest`` in OTLP/JSON for ``spans`` (ids as hex, per the OTLP/JSON rules)."""
    doc = {"resourceSpans": [{
        "resource": {"attributes": resource},
        "scopeSpans": [{"scope": {"name": "a3s-gateway", "version": __version__},
                        "spans": [_span_json(s) for s in spans]}],
    }]}
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


class _Endpoint:
    """``<otlp_endpoint>/v1/traces`` and a one-request-per-connection HTTP/1.1 POST to it."""

    def __init__(self, cfg: TracingConfig) -> None:
        parts = urlsplit(cfg.otlp_endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"tracing.otlp_endpoint: {redact_url(cfg.otlp_endpoint)!r} is not an http(s) URL")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        path = parts.path.rstrip("/") + "/v1/traces"
        authority = parts.netloc.rpartition("@")[2]
        self.url = f"{parts.scheme}://{authority}{path}"
        lines = [f"POST {path} HTTP/1.1", f"Host: {authority}", f"User-Agent: a3s-gateway/{__version__}",
                 "Content-Type: application/json", "Connection: close"]
        for name, value in cfg.otlp_headers.items():
            if name.lower() in _RESERVED_HEADERS:
                log.warning("tracing.otlp_headers: %r is set by the exporter itself; ignored", name)
                continue
            if not name or any(c in name for c in " \t:\r\n\0") or any(c in value for c in "\r\n\0"):
                raise ValueError(f"tracing.otlp_headers: invalid header {name!r}")
            lines.append(f"{name}: {value}")
        lines.append("Content-Length: ")
        self.head = "\r\n".join(lines).encode("latin-1")

    async def post(self, body: bytes) -> tuple[int, bytes]:
        """POST ``body``; the response status and the start of its body."""
        reader, writer = await asyncio.open_connection(
            self.host, self.port, ssl=self.ssl, server_hostname=self.host if self.ssl is not None else None)
        try:
            writer.write(b"%s%d\r\n\r\n%s" % (self.head, len(body), body))
            await writer.drain()
            parts = (await reader.readline()).split(None, 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
                raise ValueError(f"bad status line {b' '.join(parts)[:100]!r}")
            for _ in range(100):  # skip the response header fields
                if (await reader.readline()) in (b"\r\n", b"\n", b""):
                    break
            return int(parts[1]), await reader.read(512)
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass
