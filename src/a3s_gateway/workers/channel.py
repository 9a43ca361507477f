"""The control channel between the supervisor and one worker (SPEC §13.4): length-prefixed messages on a socketpair.

A frame is a 4-byte big-endian length and a pickled dict with an ``op``. Both ends are processes of the same
installation started by the supervisor, so pickle's reach (configurations are frozen dataclasses) is not a trust
boundary. A request that expects an answer carries an ``id``; the answer is ``{"op": "reply", "id": …, "ok": …}``.
"""

from __future__ import annotations

import asyncio
import copyreg
import pickle
import socket
import struct
import types
from collections.abc import Callable
from typing import Any, Final

MAX_FRAME: Final = 256 * 1024 * 1024
_LEN: Final = struct.Struct(">I")


def read_only(items: dict[Any, Any]) -> types.MappingProxyType[Any, Any]:
    return types.MappingProxyType(items)


def _mappingproxy(m: types.MappingProxyType[Any, Any]) -> tuple[Any, tuple[dict[Any, Any]]]:
    return read_only, (dict(m),)


# the configuration model keeps read-only maps (MappingProxyType), which pickle does not know by itself
copyreg.pickle(types.MappingProxyType, _mappingproxy)


class ChannelClosed(Exception):
    """The other end is gone (its process exited, or the channel was closed)."""


class Channel:
    """One end of a control channel, in the running event loop."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.closed = False

    @classmethod
    async def open(cls, sock: socket.socket) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_FRAME)
        return cls(reader, writer)

    def send(self, message: dict[str, Any]) -> None:
        """Queue one message (never blocks; a closed channel drops it)."""
        if self.closed:
            return
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self._writer.write(_LEN.pack(len(data)) + data)

    async def call(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send a request and wait for its reply (ChannelClosed, or TimeoutError after ``timeout`` s)."""
        if self.closed:
            raise ChannelClosed("channel closed")
        self._next_id += 1
        ident = self._next_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = future
        try:
            self.send({**message, "id": ident})
            return await asyncio.wait_for(future, timeout)
        finally:
            self._waiting.pop(ident, None)

    def reply(self, request: dict[str, Any], ok: bool = True, **fields: Any) -> None:
        if "id" in request:
            self.send({"op": "reply", "id": request["id"], "ok": ok, **fields})

    async def receive(self) -> dict[str, Any]:
        """The next message that is not a reply (replies resolve their ``call``); ChannelClosed at the end."""
        while True:
            try:
                head = await self._reader.readexactly(4)
                (length,) = _LEN.unpack(head)
                if length > MAX_FRAME:
                    raise ChannelClosed(f"frame of {length} bytes")
                message: dict[str, Any] = pickle.loads(await self._reader.readexactly(length))
            except (asyncio.IncompleteReadError, ConnectionError, OSError) as e:
                self._close(ChannelClosed(str(e) or "end of channel"))
                raise ChannelClosed("end of channel") from e
            if message.get("op") == "reply":
                future = self._waiting.get(message.get("id", -1))
                if future is not None and not future.done():
                    future.set_result(message)
                continue
            return message

    async def serve(self, handle: Callable[[dict[str, Any]], None]) -> None:
        """Pass every message to ``handle`` until the channel ends (then returns)."""
        while True:
            try:
                message = await self.receive()
            except ChannelClosed:
                return
            handle(message)

    def _close(self, exc: BaseException) -> None:
        self.closed = True
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ChannelClosed(str(exc)))
        self._waiting.clear()

    def close(self) -> None:
        if not self.closed:
            self._close(ChannelClosed("channel closed"))
        self._writer.close()
