"""``ws-mux`` (SPEC §6.16, §9.4): WebSocket channel multiplexing terminated in the gateway.

The HTTP/1.1 path answers the upgrade itself (:func:`handshake_response`) and hands the downstream transport to a
:class:`MuxConnection`, which speaks the text protocol of §9.4 and is attached to the router's :class:`Hub`. The hub
keeps the subscriptions (``channels``), fans a publish out to the other subscribers with one frame encoding per
message, and optionally keeps one backend link (:class:`_BackendLink`) at ``upstream_path``.

Frames are encoded and decoded with wsproto: the downstream side uses ``wsproto.connection.Connection`` directly
(the handshake is ours), the backend link uses ``WSConnection`` as a client over ``loop.create_connection``.

Memory per client is bounded: an incoming message is counted while it streams in (close 1009 above
``max_message_bytes``); outbound frames go straight to the transport until its buffer passes ``HIGH_WATER``, then to
a queue of at most ``send_queue`` frames (close 1008 ``slow consumer`` beyond it), drained on ``resume_writing``.
When the backend link's buffer is high, reading from every client of the hub pauses until it drains.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, cast
from urllib.parse import urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import ProtocolError

from .._aio import cancel_and_wait

log: Final = logging.getLogger("a3s_gateway.wsmux")

WS_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
HIGH_WATER: Final = 64 * 1024  # transport write buffer above which a client's frames are queued
CLOSE_TIMEOUT: Final = 5.0  # after our Close frame, abort the connection if the peer has not answered by then
LINK_OPEN_TIMEOUT: Final = 10.0  # backend link: TCP connect + handshake
MAX_CHANNEL_LEN: Final = 128

CLOSE_GOING_AWAY: Final = 1001
CLOSE_POLICY: Final = 1008
CLOSE_TOO_BIG: Final = 1009

# 1-128 characters of [A-Za-z0-9._/-], not starting with "_" (the explicit ranges are ASCII-only)
_CHANNEL: Final = re.compile(r"[A-Za-z0-9./-][A-Za-z0-9._/-]{0,127}")
_SUB: Final = "_sub:"
_UNSUB: Final = "_unsub:"

# server frames are unmasked and no extension is negotiated, so a frame encoded once is valid for every client;
# a Connection in the OPEN state is stateless for finished messages
_ENCODER: Final = Connection(ConnectionType.SERVER)


def encode_text(text: str) -> bytes:
    """One unfragmented server-to-client text frame."""
    return _ENCODER.send(TextMessage(data=text))


_PONG: Final = encode_text("_pong")
_ERR_FORMAT: Final = encode_text("_error:invalid message format")
_ERR_BINARY: Final = encode_text("_error:binary frames not supported")
_ERR_CHANNEL: Final = encode_text("_error:invalid channel name")


def valid_channel(name: str) -> bool:
    """Whether ``name`` is a channel name (§9.4)."""
    return _CHANNEL.fullmatch(name) is not None


def _text_size(part: str) -> int:
    return len(part) if part.isascii() else len(part.encode("utf-8", "surrogatepass"))


@dataclass(frozen=True)
class MuxConfig:
    """The ``ws-mux`` middleware keys (SPEC §6.16)."""

    max_channels: int = 64
    upstream_path: str = ""
    send_queue: int = 256
    max_message_bytes: int = 1048576

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> MuxConfig:
        """Build from validated middleware params (missing keys take their defaults); ValueError when out of range."""
        cfg = cls(
            max_channels=_int_param(params, "max_channels", cls.max_channels, 1, 1024),
            upstream_path=str(params.get("upstream_path") or ""),
            send_queue=_int_param(params, "send_queue", cls.send_queue, 1, None),
            max_message_bytes=_int_param(params, "max_message_bytes", cls.max_message_bytes, 1, None),
        )
        if cfg.upstream_path and not cfg.upstream_path.startswith("/"):
            raise ValueError(f'ws-mux upstream_path must start with "/", got {cfg.upstream_path!r}')
        return cfg


def _int_param(params: Mapping[str, Any], key: str, default: int, lo: int, hi: int | None) -> int:
    value = params.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"ws-mux {key} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        bounds = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise ValueError(f"ws-mux {key} must be {bounds}, got {value}")
    return value


def accept_key(sec_websocket_key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` value for a ``Sec-WebSocket-Key`` (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(sec_websocket_key.strip() + WS_GUID).digest())


def handshake_response(sec_websocket_key: bytes, extra_headers: bytes = b"") -> bytes:
    """The complete ``101`` head (no subprotocol, no extension); ``extra_headers`` are CRLF-terminated lines."""
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "
        + accept_key(sec_websocket_key)
        + b"\r\n"
        + extra_headers
        + b"\r\n"
    )


class Hub:
    """The subscriptions of one router's ws-mux connections, and its backend link.

    ``backend_url()`` returns ``"ws://host:port" + upstream_path`` of a backend picked now, or None when none is
    eligible; it is called on each (re)connect. The link runs while the hub has clients (and ``linger`` seconds
    after the last one left) when ``cfg.upstream_path`` is set and ``backend_url`` is given.
    """

    def __init__(
        self,
        name: str,
        cfg: MuxConfig,
        loop: asyncio.AbstractEventLoop,
        *,
        backend_url: Callable[[], str | None] | None = None,
        linger: float = 60.0,
        backoff: tuple[float, float] = (1.0, 30.0),
    ) -> None:
        self.name = name
        self.cfg = cfg  # replaceable on reload: read on every use
        self.loop = loop
        self.clients: set[MuxConnection] = set()
        self.channels: dict[str, set[MuxConnection]] = {}
        self._backend_url = backend_url
        self._linger = linger
        self._backoff = backoff
        self._link: _BackendLink | None = None  # the open link, if any
        self._link_task: asyncio.Task[None] | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._link_paused = False
        self._closed = False

    # --- clients ---------------------------------------------------------------------------------------------

    def attach(self, conn: MuxConnection) -> None:
        """A client connection is open (called by :meth:`MuxConnection.connection_made`)."""
        if self._closed:
            conn.close(CLOSE_GOING_AWAY, "going away")
            return
        self.clients.add(conn)
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        if self._link_paused:
            conn.pause_reading()
        if self._link_task is None and self._backend_url is not None and self.cfg.upstream_path:
            self._link_task = self.loop.create_task(self._run_link(), name=f"ws-mux link {self.name}")
            self._link_task.add_done_callback(self._link_done)

    def detach(self, conn: MuxConnection) -> None:
        """Drop ``conn`` and its subscriptions (idempotent)."""
        if conn not in self.clients:
            return
        self.clients.discard(conn)
        for channel in conn.channels:
            self._leave(conn, channel)
        conn.channels.clear()
        if not self.clients and self._link_task is not None and not self._closed:
            self._linger_timer = self.loop.call_later(self._linger, self._stop_link)

    def subscribe(self, conn: MuxConnection, channel: str) -> None:
        """Add ``conn`` to ``channel``; the backend hears ``_sub`` for the channel's first subscriber."""
        subs = self.channels.get(channel)
        if subs is None:
            subs = self.channels[channel] = set()
            if self._link is not None:
                self._link.send_text(_SUB + channel)
        subs.add(conn)
        conn.channels.add(channel)

    def unsubscribe(self, conn: MuxConnection, channel: str) -> None:
        """Remove ``conn`` from ``channel``; the backend hears ``_unsub`` when its last subscriber left."""
        conn.channels.discard(channel)
        self._leave(conn, channel)

    def _leave(self, conn: MuxConnection, channel: str) -> None:
        subs = self.channels.get(channel)
        if subs is None:
            return
        subs.discard(conn)
        if not subs:
            del self.channels[channel]
            if self._link is not None:
                self._link.send_text(_UNSUB + channel)

    def publish(self, sender: MuxConnection, channel: str, text: str) -> None:
        """A client's ``<channel>:<payload>``: to every other subscriber, and to the backend link."""
        subs = self.channels.get(channel)
        if subs is not None and (len(subs) > 1 or sender not in subs):
            frame = encode_text(text)
            for conn in tuple(subs):  # a send may close a slow consumer, which leaves the set
                if conn is not sender:
                    conn.send_frame(frame)
        if self._link is not None:
            self._link.send_text(text)

    def deliver(self, channel: str, text: str) -> None:
        """A backend's ``<channel>:<payload>``: to every subscriber of ``channel``."""
        subs = self.channels.get(channel)
        if subs:
            frame = encode_text(text)
            for conn in tuple(subs):
                conn.send_frame(frame)

    async def close(self) -> None:
        """Close every client (1001 going away) and the backend link; returns when all have ended."""
        self._closed = True
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        conns = list(self.clients)
        for conn in conns:
            conn.close(CLOSE_GOING_AWAY, "going away")
        task, self._link_task = self._link_task, None
        if task is not None:
            await cancel_and_wait([task])
        waiters = [c.closed for c in conns if not c.closed.done()]
        if waiters:
            await asyncio.wait(waiters, timeout=CLOSE_TIMEOUT + 1.0)

    # --- backend link ----------------------------------------------------------------------------------------

    def _stop_link(self) -> None:
        self._linger_timer = None
        task, self._link_task = self._link_task, None
        if task is not None:
            task.cancel()

    def _link_done(self, task: asyncio.Task[None]) -> None:
        if self._link_task is task:
            self._link_task = None
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("ws-mux %s: backend link task failed", self.name, exc_info=exc)

    def _set_link_paused(self, paused: bool) -> None:
        """Backpressure from the backend link: stop reading client publishes while its buffer is high."""
        if paused is self._link_paused:
            return
        self._link_paused = paused
        for conn in self.clients:
            if paused:
                conn.pause_reading()
            else:
                conn.resume_reading()

    async def _run_link(self) -> None:
        first, most = self._backoff
        delay = first
        while True:
            url = self._backend_url() if self._backend_url is not None else None
            link: _BackendLink | None = None
            if url is None:
                log.warning("ws-mux %s: no eligible backend for the backend link", self.name)
            else:
                try:
                    link = await asyncio.wait_for(_BackendLink.open(self, url), LINK_OPEN_TIMEOUT)
                except (OSError, asyncio.TimeoutError, LinkError) as exc:
                    why = str(exc) or type(exc).__name__
                    log.warning("ws-mux %s: backend link to %s failed: %s", self.name, url, why)
            if link is not None:
                log.info("ws-mux %s: backend link to %s open", self.name, url)
                delay = first
                self._link = link
                try:
                    for channel in sorted(self.channels):  # (re)subscribe what the hub has now
                        link.send_text(_SUB + channel)
                    await link.lost
                finally:
                    self._link = None
                    self._set_link_paused(False)
                    link.close()
                log.info("ws-mux %s: backend link to %s closed", self.name, url)
            await asyncio.sleep(delay)
            delay = min(delay * 2.0, most)


class LinkError(Exception):
    """The backend link could not be opened (bad URL, handshake refused or broken)."""


class _BackendLink(asyncio.Protocol):
    """The hub's client WebSocket to one backend (wsproto ``WSConnection`` over a plain TCP transport)."""

    def __init__(self, hub: Hub, host: str, target: str) -> None:
        self.hub = hub
        self._ws = WSConnection(ConnectionType.CLIENT)
        self._host = host
        self._target = target
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = hub.loop.create_future()
        self.lost: asyncio.Future[None] = hub.loop.create_future()
        self._parts: list[str] = []
        self._size = 0
        self._dead = False  # handshake failed or Close sent: ignore what follows

    @classmethod
    async def open(cls, hub: Hub, url: str) -> _BackendLink:
        """Connect to ``url`` (``ws://`` only) and complete the handshake."""
        parts = urlsplit(url)
        if parts.scheme != "ws" or not parts.hostname:
            raise LinkError(f"unsupported backend link URL {url!r} (ws:// only)")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        transport, link = await hub.loop.create_connection(
            lambda: cls(hub, parts.netloc, target), parts.hostname, parts.port or 80
        )
        try:
            await link.opened
        except BaseException:
            transport.abort()
            raise
        return link

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=HIGH_WATER)
        self.transport.write(self._ws.send(Request(host=self._host, target=self._target)))

    def _fail(self, why: str) -> None:
        self._dead = True
        if not self.opened.done():
            self.opened.set_exception(LinkError(why))
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._dead:
            return
        ws = self._ws
        try:
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, TextMessage):
                    self._text(event)
                elif isinstance(event, BytesMessage):
                    pass  # not part of the protocol: ignored
                elif isinstance(event, Ping):
                    self._write(ws.send(event.response()))
                elif isinstance(event, AcceptConnection):
                    if not self.opened.done():
                        self.opened.set_result(None)
                elif isinstance(event, RejectConnection):
                    self._fail(f"handshake refused with status {event.status_code}")
                    return
                elif isinstance(event, CloseConnection):
                    if ws.state is ConnectionState.REMOTE_CLOSING:
                        self._write(ws.send(event.response()))
                    self._dead = True
                    if self.transport is not None:
                        self.transport.close()
                    return
        except ProtocolError as exc:
            self._fail(f"protocol error: {exc}")

    def _text(self, event: TextMessage) -> None:
        self._size += _text_size(event.data)
        if self._size > self.hub.cfg.max_message_bytes:
            log.warning("ws-mux %s: backend message over max_message_bytes, closing the link", self.hub.name)
            self.close(CLOSE_TOO_BIG)
            return
        if not event.message_finished:
            self._parts.append(event.data)
            return
        text = "".join(self._parts) + event.data if self._parts else event.data
        self._parts.clear()
        self._size = 0
        i = text.find(":")
        if 0 < i <= MAX_CHANNEL_LEN and not text.startswith("_"):  # replies such as "_ok:..." are not deliveries
            channel = text[:i]
            if valid_channel(channel):
                self.hub.deliver(channel, text)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def send_text(self, text: str) -> None:
        """Send one text message (dropped when the link is closing)."""
        if not self._dead and self._ws.state is ConnectionState.OPEN:
            self._write(self._ws.send(TextMessage(data=text)))

    def close(self, code: int = CLOSE_GOING_AWAY) -> None:
        """Send a Close frame and close the transport once its buffer is flushed."""
        if not self._dead and self._ws.state is ConnectionState.OPEN:
            self._write(self._ws.send(CloseConnection(code=code)))
        self._dead = True
        if self.transport is not None:
            self.transport.close()

    def pause_writing(self) -> None:
        self.hub._set_link_paused(True)

    def resume_writing(self) -> None:
        self.hub._set_link_paused(False)

    def connection_lost(self, exc: Exception | None) -> None:
        self._dead = True
        if not self.opened.done():
            self.opened.set_exception(LinkError("connection closed during the handshake"))
        if not self.lost.done():
            self.lost.set_result(None)


class MuxConnection(asyncio.Protocol):
    """Takes over an accepted downstream transport after the gateway wrote the 101.

    The lead calls ``transport.set_protocol(conn)`` then ``conn.connection_made(transport)``; ``initial`` bytes that
    arrived after the upgrade request are fed first. ``on_close`` runs once, when the transport is gone.
    """

    def __init__(self, hub: Hub, initial: bytes = b"", on_close: Callable[[], None] | None = None) -> None:
        self.hub = hub
        self.channels: set[str] = set()
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = hub.loop.create_future()  # done when the transport is gone
        self._ws = Connection(ConnectionType.SERVER)
        self._initial = initial
        self._on_close = on_close
        self._queue: deque[bytes] = deque()
        self._paused = False  # transport buffer above HIGH_WATER
        self._closing = False  # our Close frame is out (or the transport is gone): deliver nothing more
        self._parts: list[str] = []
        self._size = 0  # bytes of the message being received
        self._close_timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol ------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=HIGH_WATER)
        self.hub.attach(self)
        data, self._initial = self._initial, b""
        if data:
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        ws = self._ws
        if ws.state is ConnectionState.CLOSED:
            return
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, CloseConnection):
                self._peer_close(event)
                return
            if self._closing:
                continue  # waiting for the peer's Close: the rest is discarded
            if isinstance(event, TextMessage):
                self._text(event)
            elif isinstance(event, BytesMessage):
                self._size += len(event.data)
                if self._size > self.hub.cfg.max_message_bytes:
                    self.close(CLOSE_TOO_BIG, "message too big")
                elif event.message_finished:
                    self._size = 0
                    self.send_frame(_ERR_BINARY)
            elif isinstance(event, Ping):
                self.send_frame(ws.send(event.response()))

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        queue = self._queue
        transport = self.transport
        while queue and not self._paused and transport is not None:
            transport.write(queue.popleft())  # may call pause_writing again

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._queue.clear()
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self.hub.detach(self)
        if not self.closed.done():
            self.closed.set_result(None)
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()

    # --- sending and closing ---------------------------------------------------------------------------------

    def send_frame(self, frame: bytes) -> None:
        """Write an encoded frame, or queue it while the transport is paused; close 1008 past ``send_queue``."""
        if self._closing or self.transport is None:
            return
        if self._paused or self._queue:
            if len(self._queue) >= self.hub.cfg.send_queue:
                log.info("ws-mux %s: closing a slow consumer (%d messages queued)", self.hub.name, len(self._queue))
                self.close(CLOSE_POLICY, "slow consumer")
                return
            self._queue.append(frame)
        else:
            self.transport.write(frame)

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake: drop the queue, leave the hub, send Close; abort after CLOSE_TIMEOUT."""
        if self._closing:
            return
        self._closing = True
        self._queue.clear()
        self._parts.clear()
        self.hub.detach(self)
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._ws.state is ConnectionState.OPEN:
            transport.write(self._ws.send(CloseConnection(code=code, reason=reason or None)))
        self._close_timer = self.hub.loop.call_later(CLOSE_TIMEOUT, transport.abort)

    def pause_reading(self) -> None:
        """Stop reading from the client (backend link backpressure)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        """Read from the client again."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _peer_close(self, event: CloseConnection) -> None:
        ws = self._ws
        transport = self.transport
        if ws.state is ConnectionState.OPEN:  # not a Close frame: wsproto reports a protocol error this way
            self.close(event.code, event.reason or "")
            return
        self._closing = True
        self._queue.clear()
        self.hub.detach(self)
        if transport is None:
            return
        if ws.state is ConnectionState.REMOTE_CLOSING:
            transport.write(ws.send(event.response()))
        transport.close()

    # --- the §9.4 text protocol ------------------------------------------------------------------------------

    def _reply(self, text: str) -> None:
        self.send_frame(encode_text(text))

    def _text(self, event: TextMessage) -> None:
        self._size += _text_size(event.data)
        if self._size > self.hub.cfg.max_message_bytes:
            self.close(CLOSE_TOO_BIG, "message too big")
            return
        if not event.message_finished:
            self._parts.append(event.data)
            return
        text = "".join(self._parts) + event.data if self._parts else event.data
        self._parts.clear()
        self._size = 0
        self._handle(text)

    def _handle(self, text: str) -> None:
        if text.startswith("_"):
            if text.startswith(_SUB):
                self._subscribe(text[len(_SUB) :])
            elif text.startswith(_UNSUB):
                self._unsubscribe(text[len(_UNSUB) :])
            elif text == "_ping":
                self.send_frame(_PONG)
            elif text == "_list":
                self._reply("_channels:" + json.dumps(sorted(self.channels), separators=(",", ":")))
            else:
                self.send_frame(_ERR_FORMAT)
            return
        i = text.find(":")
        if i < 0:
            self.send_frame(_ERR_FORMAT)
            return
        # a publish to a name that can never be subscribed gets the more precise answer
        channel = text[:i] if i <= MAX_CHANNEL_LEN else ""
        if not valid_channel(channel):
            self.send_frame(_ERR_CHANNEL)
        elif channel not in self.channels:
            self._reply(f"_error:not subscribed to {channel}")
        else:
            self.hub.publish(self, channel, text)

    def _subscribe(self, channel: str) -> None:
        if not valid_channel(channel):
            self.send_frame(_ERR_CHANNEL)
        elif channel in self.channels:
            self._reply(f"_ok:already subscribed to {channel}")
        elif len(self.channels) >= self.hub.cfg.max_channels:
            self._reply(f"_error:max channels ({self.hub.cfg.max_channels}) reached")
        else:
            self.hub.subscribe(self, channel)
            self._reply(f"_ok:subscribed to {channel}")

    def _unsubscribe(self, channel: str) -> None:
        if channel in self.channels:
            self.hub.unsubscribe(self, channel)
            self._reply(f"_ok:unsubscribed from {channel}")
        else:
            # an invalid name is never subscribed; the table has no other answer for _unsub
            self._reply(f"_ok:not subscribed to {channel}")
