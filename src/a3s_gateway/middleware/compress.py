"""The ``compress`` middleware (SPEC §6.14): streaming gzip / deflate / brotli of upstream response bodies.

The request phase negotiates a coding from ``Accept-Encoding`` and keeps it in ``req.notes``; the response phase
decides whether this response may be compressed and, if so, installs a ``BodyFilter`` that compresses and flushes
every chunk as it passes, so streamed bodies (LLM tokens, NDJSON) reach the client without being held back. The
proxy re-frames a filtered body as chunked.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Mapping
from typing import Any, Final

from a3s_gateway.middleware.chain import BodyFilter, Middleware, Request, Response

try:
    import brotli  # type: ignore[import-untyped]
except ImportError:  # optional dependency: without it "br" is never negotiated
    brotli = None

__all__ = [
    "BrotliFilter",
    "Compress",
    "DeflateFilter",
    "GzipFilter",
    "add_vary",
    "choose_encoding",
]

EVENT_STREAM: Final = "text/event-stream"
ZLIB_LEVEL: Final = 6
BROTLI_QUALITY: Final = 4
_NO_STATUS: Final = frozenset((204, 206, 304))
# RFC 9110 §12.4.2 qvalue: 0[.ddd] or 1[.000]
_QVALUE: Final = re.compile(r"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)\Z")


class _ZlibFilter:
    """zlib-family compressor; each ``feed`` ends with a sync flush so the output is decodable right away."""

    __slots__ = ("_c",)

    def __init__(self, wbits: int) -> None:
        self._c = zlib.compressobj(ZLIB_LEVEL, zlib.DEFLATED, wbits)

    def feed(self, data: bytes) -> bytes:
        if not data:
            return b""  # a sync flush without input would still emit an empty stored block
        return self._c.compress(data) + self._c.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._c.flush(zlib.Z_FINISH)


class GzipFilter(_ZlibFilter):
    """gzip (RFC 1952) stream, level 6, sync-flushed per chunk."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(31)


class DeflateFilter(_ZlibFilter):
    """HTTP ``deflate``: the zlib format (RFC 1950), level 6, sync-flushed per chunk."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(15)


class BrotliFilter:
    """Brotli stream, quality 4, flushed per chunk."""

    __slots__ = ("_c",)

    def __init__(self) -> None:
        self._c = brotli.Compressor(quality=BROTLI_QUALITY)

    def feed(self, data: bytes) -> bytes:
        if not data:
            return b""
        out: bytes = self._c.process(data) + self._c.flush()
        return out

    def finish(self) -> bytes:
        out: bytes = self._c.finish()
        return out


_FILTERS: Final[dict[str, type[BodyFilter]]] = {"gzip": GzipFilter, "deflate": DeflateFilter, "br": BrotliFilter}


def _parse_accept_encoding(values: Iterable[bytes]) -> tuple[dict[str, float], float | None]:
    """Explicit codings -> q (first listing wins) and the q of ``*`` (None if absent); bad elements are skipped."""
    explicit: dict[str, float] = {}
    star: float | None = None
    for value in values:
        for element in value.split(b","):
            coding, _, params = element.partition(b";")
            name = coding.strip().lower().decode("latin-1")
            if not name:
                continue
            q = 1.0
            bad = False
            for param in params.split(b";") if params else ():
                key, _, raw = param.partition(b"=")
                if key.strip().lower() == b"q":
                    text = raw.strip().decode("latin-1")
                    if not _QVALUE.match(text):
                        bad = True
                        break
                    q = float(text)
            if bad:
                continue
            if name == "*":
                if star is None:
                    star = q
            elif name not in explicit:
                explicit[name] = q
    return explicit, star


def choose_encoding(values: Iterable[bytes], encodings: Iterable[str]) -> str | None:
    """The coding of ``encodings`` with the highest q in ``Accept-Encoding`` ``values``; ties by ``encodings`` order.

    ``q=0`` excludes a coding; ``*`` gives its q to every coding not listed explicitly (RFC 9110 §12.5.3).
    """
    explicit, star = _parse_accept_encoding(values)
    best: str | None = None
    best_q = 0.0
    for enc in encodings:
        q = explicit.get(enc, star if star is not None else 0.0)
        if q > best_q:  # strict: an earlier coding keeps a tie
            best, best_q = enc, q
    return best


def _type_matcher(patterns: Iterable[str]) -> tuple[frozenset[str], re.Pattern[str] | None]:
    """Exact media types plus one regex for the wildcard patterns (``*`` stays inside a type or subtype)."""
    exact: set[str] = set()
    wild: list[str] = []
    for p in patterns:
        p = p.split(";", 1)[0].strip().lower()
        if p == "*":
            wild.append(".*")
        elif "*" in p:
            wild.append("[^/]*".join(re.escape(part) for part in p.split("*")))
        elif p:
            exact.add(p)
    return frozenset(exact), (re.compile("(?:" + "|".join(wild) + r")\Z") if wild else None)


def _has_token(values: Iterable[bytes], token: bytes) -> bool:
    """Whether a comma-separated header (all ``values``) lists ``token`` (lower-case; parameters ignored)."""
    for value in values:
        for item in value.split(b","):
            if item.split(b"=", 1)[0].strip().lower() == token:
                return True
    return False


def _header_values(resp: Response, low: bytes) -> list[bytes]:
    return [v for n, v in resp.headers if n.lower() == low]


def add_vary(resp: Response, token: bytes = b"Accept-Encoding") -> None:
    """Add ``token`` to the response's ``Vary`` (appended to the first one), unless listed or ``Vary: *``."""
    low = token.lower()
    headers = resp.headers
    first = -1
    for i, (n, v) in enumerate(headers):
        if n.lower() == b"vary":
            items = [item.strip().lower() for item in v.split(b",")]
            if low in items or b"*" in items:
                return
            if first < 0:
                first = i
    if first < 0:
        resp.add(b"Vary", token)
        return
    name, value = headers[first]
    headers[first] = (name, value + b", " + token if value.strip() else token)


class Compress(Middleware):
    """Negotiates a content coding and compresses eligible responses as they stream (SPEC §6.14)."""

    kind = "compress"
    has_request = True
    has_response = True

    def __init__(self, name: str, router: str, params: Mapping[str, Any]) -> None:
        super().__init__(name, router)
        self.min_size = int(params["min_size"])
        encodings = tuple(str(e) for e in params["encodings"])
        # decided here, once: without the brotli package "br" is simply not offered
        self.encodings = tuple(e for e in encodings if e in _FILTERS and (e != "br" or brotli is not None))
        self.content_types = tuple(str(t) for t in params["content_types"])
        self.include_event_stream = bool(params["include_event_stream"])
        self._exact, self._wild = _type_matcher(self.content_types)
        self._coding_bytes = {e: e.encode("ascii") for e in self.encodings}

    def compressible(self, content_type: bytes) -> bool:
        """Whether a ``Content-Type`` value is a compressible media type (parameters ignored)."""
        media = content_type.split(b";", 1)[0].strip().lower().decode("latin-1")
        if media == EVENT_STREAM and not self.include_event_stream:
            return False
        if media in self._exact:
            return True
        return self._wild is not None and self._wild.match(media) is not None

    def request(self, req: Request, now: float) -> None:
        values = req.get_all(b"accept-encoding")
        req.notes[self.slot] = choose_encoding(values, self.encodings) if values else None
        return None

    def response(self, req: Request, resp: Response, now: float) -> None:
        content_type = resp.get(b"content-type")
        if content_type is None or not self.compressible(content_type):
            return
        add_vary(resp)
        coding: str | None = req.notes[self.slot]
        if coding is None or resp.local or resp.body_filter is not None:
            return
        status = resp.status
        if status < 200 or status in _NO_STATUS or req.method == b"HEAD":
            return
        if resp.get(b"content-encoding") is not None:
            return
        if _has_token(_header_values(resp, b"cache-control"), b"no-transform"):
            return
        length = resp.get(b"content-length")
        if length is not None:
            try:
                if int(length) < self.min_size:
                    return
            except ValueError:
                return  # the proxy rejects such upstream heads; never compress what we cannot size
        resp.body_filter = _FILTERS[coding]()
        resp.set(b"Content-Encoding", self._coding_bytes[coding])
        resp.remove(b"content-length")
        _weaken_etag(resp)


def _weaken_etag(resp: Response) -> None:
    """A compressed body is not byte-identical to the upstream's: a strong validator becomes weak (RFC 9110 §8.8.1)."""
    headers = resp.headers
    for i, (n, v) in enumerate(headers):
        if n.lower() == b"etag" and not v.startswith(b"W/"):
            headers[i] = (n, b"W/" + v)
