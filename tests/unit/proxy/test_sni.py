"""ClientHello peeking (SPEC §9.5): real hellos from the ssl module, every split point, multi-record, garbage."""

from __future__ import annotations

import ssl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from a3s_gateway.proxy.sni import MAX_HELLO, NEED_MORE, Hello, peek_hello


def client_hello(server_hostname: str | None = None, alpn: list[str] | None = None) -> bytes:
    """The first flight of a TLS client made by the ssl module: the ClientHello record(s)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def records(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """Split a byte string into TLS records: (content type, version bytes, fragment)."""
    out = []
    pos = 0
    while pos < len(data):
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        out.append((data[pos], data[pos + 1 : pos + 3], data[pos + 5 : pos + 5 + length]))
        pos += 5 + length
    return out


def reframe(hello: bytes, size: int) -> bytes:
    """The same handshake message, re-sent as handshake records of at most ``size`` bytes each."""
    (kind, version, message), = records(hello)
    assert kind == 0x16
    out = bytearray()
    for i in range(0, len(message), size):
        fragment = message[i : i + size]
        out += bytes([0x16]) + version + len(fragment).to_bytes(2, "big") + fragment
    return bytes(out)


HELLO = client_hello("api.example.com", ["h2", "http/1.1"])


def test_sni_and_alpn_from_a_real_client_hello() -> None:
    assert peek_hello(HELLO) == Hello("api.example.com", ("h2", "http/1.1"))


def test_sni_keeps_the_name_as_sent() -> None:
    assert peek_hello(client_hello("Mixed.Example.COM")) == Hello("Mixed.Example.COM", ())


def test_no_sni_and_no_alpn() -> None:
    assert peek_hello(client_hello(None)) == Hello(None, ())


def test_an_ip_address_server_hostname_sends_no_sni() -> None:
    assert peek_hello(client_hello("127.0.0.1", ["h2"])) == Hello(None, ("h2",))


def test_bytes_after_the_hello_are_ignored() -> None:
    assert peek_hello(HELLO + b"\x17\x03\x03\x00\x05hello") == Hello("api.example.com", ("h2", "http/1.1"))


def test_every_split_point_needs_more_until_the_hello_is_complete() -> None:
    for i in range(len(HELLO)):
        assert peek_hello(HELLO[:i]) is NEED_MORE, i
    assert peek_hello(HELLO) == Hello("api.example.com", ("h2", "http/1.1"))


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 100, 511])
def test_hello_spanning_several_records(size: int) -> None:
    data = reframe(HELLO, size)
    assert len(records(data)) > 1
    for i in range(len(data)):
        assert peek_hello(data[:i]) is NEED_MORE, i
    assert peek_hello(data) == Hello("api.example.com", ("h2", "http/1.1"))


def test_another_record_type_inside_a_fragmented_hello_is_not_a_hello() -> None:
    data = reframe(HELLO, 50)
    first = 5 + 50
    alert = b"\x15" + data[first + 1 :]  # the second record claims to be an alert
    assert peek_hello(data[:first] + alert) is None


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"G",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"\x15\x03\x03\x00\x02\x02\x28",  # an alert record
        b"\x17\x03\x03\x00\x05hello",  # application data
        b"\x16\x02\x00",  # wrong major version
        b"\x16\x03\x09",  # unknown minor version
        b"\x16\x03\x01\x00\x00",  # empty record
        b"\x16\x03\x01\x40\x01",  # record longer than 2^14
        b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",  # a ServerHello, not a ClientHello
        b"\x80\x2e\x01\x00\x02",  # SSLv2-compatible hello
    ],
)
def test_not_a_client_hello(data: bytes) -> None:
    assert peek_hello(data) is None


def test_empty_input_needs_more() -> None:
    assert peek_hello(b"") is NEED_MORE


def test_hello_larger_than_the_bound_is_refused() -> None:
    # 80 ALPN names of 255 bytes: a ~20 KiB hello that OpenSSL itself sends as two records
    big = client_hello("big.example.com", [chr(ord("a") + i % 26) * 255 for i in range(80)])
    assert len(records(big)) >= 2
    assert len(big) > MAX_HELLO
    assert peek_hello(big) is None
    assert peek_hello(big[:10]) is None  # refused as soon as the handshake header is in


def test_hello_just_under_the_bound_is_accepted() -> None:
    names = [chr(ord("a") + i % 26) * 255 for i in range(56)]
    data = client_hello("big.example.com", names)
    assert peek_hello(data) == Hello("big.example.com", tuple(names))


def test_lengths_that_disagree_are_malformed() -> None:
    # cut the extensions block short by one byte while keeping the outer lengths consistent
    (_, version, message), = records(HELLO)
    body = message[4:-1]
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    data = b"\x16" + version + len(message).to_bytes(2, "big") + message
    assert peek_hello(data) is None


@given(st.binary(max_size=2048))
def test_garbage_never_raises(data: bytes) -> None:
    result = peek_hello(data)
    assert result is None or result is NEED_MORE or isinstance(result, Hello)


@given(st.binary(max_size=600), st.integers(min_value=1, max_value=600))
def test_garbage_in_a_handshake_record_never_raises(body: bytes, declared: int) -> None:
    message = b"\x01" + declared.to_bytes(3, "big") + body
    data = b"\x16\x03\x01" + len(message).to_bytes(2, "big") + message
    result = peek_hello(data)
    assert result is None or result is NEED_MORE or isinstance(result, Hello)


@given(st.integers(min_value=5, max_value=len(HELLO) - 1), st.integers(min_value=0, max_value=255))
def test_a_mutated_real_hello_never_raises(index: int, value: int) -> None:
    data = bytearray(HELLO)
    data[index] = value
    result = peek_hello(bytes(data))
    assert result is None or result is NEED_MORE or isinstance(result, Hello)


@given(st.lists(st.integers(min_value=1, max_value=len(HELLO)), max_size=8))
def test_any_chunking_gives_the_same_answer(cuts: list[int]) -> None:
    # the caller re-peeks the accumulated bytes after each read: every prefix before the end needs more
    for cut in sorted(set(cuts)):
        expected = NEED_MORE if cut < len(HELLO) else Hello("api.example.com", ("h2", "http/1.1"))
        assert peek_hello(HELLO[:cut]) == expected
