"""The transport side of an upstream HTTP/2 stream seen by an HTTP/1.1 protocol object (upstream_h2.py): an HTTP/1.1
message written to it is parsed head first, then body. (Downstream streams take the response as fields:
http2.StreamTransport.)"""

from __future__ import annotations

import asyncio
from typing import Any


class MessageTransport(asyncio.Transport):
    """Common plumbing; subclasses implement ``_head``, ``_body``, ``_done`` (nothing more may be written),
    ``_head_seen`` (the head was parsed), ``_resumed`` (reading resumed: acknowledge held data) and ``close``."""

    def __init__(self) -> None:
        super().__init__()
        self.reading_paused = False

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        return None

    def can_write_eof(self) -> bool:
        return False

    def pause_reading(self) -> None:
        self.reading_paused = True  # received DATA stays unacknowledged: the peer's window closes

    def resume_reading(self) -> None:
        if self.reading_paused:
            self.reading_paused = False
            self._resumed()

    def write(self, data: bytes) -> None:  # type: ignore[override]
        if self._done() or not data:
            return
        if self._head_seen():
            self._body(data)
        else:
            self._head(data)

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def abort(self) -> None:
        self.close()

    # -- for subclasses ---------------------------------------------------------------------------------------------
    def _done(self) -> bool:
        raise NotImplementedError

    def _head_seen(self) -> bool:
        raise NotImplementedError

    def _head(self, data: bytes) -> None:
        raise NotImplementedError

    def _body(self, data: bytes) -> None:
        raise NotImplementedError

    def _resumed(self) -> None:
        raise NotImplementedError
