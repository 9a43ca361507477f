"""Body framing of the relay, compiled and pure."""

from __future__ import annotations

from types import ModuleType

import pytest

from a3s_gateway.errors import ProtocolError
from a3s_gateway.http import _parser_py
from impls import load, twins


@pytest.fixture(params=twins("body relay"))
def relay(request: pytest.FixtureRequest) -> ModuleType:
    return load(request.param)


def test_length_body_split_across_feeds(relay: ModuleType) -> None:
    r = relay.BodyReader(relay.LENGTH, 10, None)
    assert not r.done
    assert r.feed(b"abcd") == ([b"abcd"], 4)
    assert r.feed(b"efghijNEXT") == ([b"efghij"], 6)
    assert r.done and r.received == 10 and r.remaining == 0


def test_zero_length_and_none_are_done(relay: ModuleType) -> None:
    assert relay.BodyReader(relay.LENGTH, 0, None).done
    assert relay.BodyReader(relay.NONE, 0, None).done


def test_until_close_takes_everything(relay: ModuleType) -> None:
    r = relay.BodyReader(relay.UNTIL_CLOSE, 0, None)
    assert r.feed(b"xyz") == ([b"xyz"], 3)
    assert not r.done and r.received == 3


def test_chunked_body_with_trailers(relay: ModuleType) -> None:
    r = relay.BodyReader(relay.CHUNKED, 0, _parser_py.ChunkedDecoder())
    data = b"3\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\nGET /next"
    pieces, consumed = r.feed(data)
    assert b"".join(pieces) == b"abcde" and data[consumed:] == b"GET /next"
    assert r.done and r.received == 5 and r.trailers() == [(b"X-T", b"1")]


def test_chunked_error_propagates(relay: ModuleType) -> None:
    r = relay.BodyReader(relay.CHUNKED, 0, _parser_py.ChunkedDecoder())
    with pytest.raises(ProtocolError):
        r.feed(b"zz\r\n")


def test_chunk_frames_and_last_chunk(relay: ModuleType) -> None:
    assert relay.chunk_frames([b"hello", b"", b"x" * 26]) == [
        b"5\r\n",
        b"hello",
        b"\r\n",
        b"1a\r\n",
        b"x" * 26,
        b"\r\n",
    ]
    assert relay.last_chunk([]) == b"0\r\n\r\n"
    assert relay.last_chunk([(b"X-A", b"1"), (b"X-B", b"2")]) == b"0\r\nX-A: 1\r\nX-B: 2\r\n\r\n"
