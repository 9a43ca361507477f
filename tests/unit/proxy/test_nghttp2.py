"""The libnghttp2 engine (proxy/_nghttp2.pyx, issue 19) driven by a real HTTP/2 client (the ``h2`` library, client
side) in process, no sockets: the settings, requests and responses, flow control both ways, trailers, resets,
GOAWAY, the malformed requests and the abuse limits of SPEC §9.1, with the exact RFC 9113 error codes."""

from __future__ import annotations

import os
import shutil
from typing import Any

import h2.config
import h2.connection
import h2.events
import hpack
import pytest

from a3s_gateway import _compat

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# frame types and error codes (RFC 9113 §6, §7)
DATA_T, HEADERS_T, RST_T, SETTINGS_T, PING_T, GOAWAY_T, WINDOW_UPDATE_T, CONTINUATION_T = 0, 1, 3, 4, 6, 7, 8, 9
NO_ERROR, PROTOCOL_ERROR, CANCEL, REFUSED_STREAM, ENHANCE_YOUR_CALM = 0, 1, 8, 7, 11


def _engine() -> Any:
    if _compat.NO_EXTENSIONS:
        pytest.skip("A3S_GATEWAY_NO_EXTENSIONS=1: the native HTTP/2 engine is disabled", allow_module_level=True)
    mod = _compat.native("http2 engine")
    if mod is None:
        compiled_build = _compat.is_compiled(_compat.load("http parser"))
        hint = ("the libnghttp2 engine is not built: install libnghttp2 with `apt-get install -y libnghttp2-dev "
                "pkg-config` and rebuild (make build)")
        if compiled_build and os.environ.get("A3S_REQUIRE_SERVICES") == "1":
            have = shutil.which("pkg-config") is not None and os.system("pkg-config --exists libnghttp2") == 0
            pytest.fail(hint + ("" if have else " (libnghttp2 missing)") + " (A3S_REQUIRE_SERVICES=1)", pytrace=False)
        pytest.skip(hint, allow_module_level=True)
    return mod


ng = _engine()


# -- helpers --------------------------------------------------------------------------------------------------------
def frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream id, payload) of each frame in ``data``."""
    out = []
    at = 0
    while at + 9 <= len(data):
        length = int.from_bytes(data[at : at + 3], "big")
        out.append((data[at + 3], data[at + 4], int.from_bytes(data[at + 5 : at + 9], "big") & 0x7FFFFFFF,
                    data[at + 9 : at + 9 + length]))
        at += 9 + length
    assert at == len(data), "a partial frame"
    return out


def raw(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + sid.to_bytes(4, "big") + payload


def settings_of(payload: bytes) -> dict[int, int]:
    return {int.from_bytes(payload[i : i + 2], "big"): int.from_bytes(payload[i + 2 : i + 6], "big")
            for i in range(0, len(payload), 6)}


def goaway_of(out: bytes) -> tuple[int, int]:
    """(last stream id, error code) of the GOAWAY in ``out``."""
    found = [p for t, _, _, p in frames(out) if t == GOAWAY_T]
    assert found, f"no GOAWAY in {frames(out)}"
    return int.from_bytes(found[-1][:4], "big"), int.from_bytes(found[-1][4:8], "big")


def resets_of(out: bytes) -> dict[int, int]:
    return {sid: int.from_bytes(p, "big") for t, _, sid, p in frames(out) if t == RST_T}


def request(path: str = "/", method: str = "GET", extra: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    return [(":method", method), (":scheme", "http"), (":authority", "example.test"), (":path", path),
            *(extra or [])]


class Pair:
    """An NgServerSession and an h2 client, bytes moved between them by pump()."""

    def __init__(self, **settings: Any) -> None:
        self.server = ng.NgServerSession(**settings)
        config = h2.config.H2Configuration(client_side=True, header_encoding=None, validate_outbound_headers=False,
                                           normalize_outbound_headers=False, validate_inbound_headers=False)
        self.client = h2.connection.H2Connection(config)
        self.client.initiate_connection()
        self.events: list[tuple[Any, ...]] = []  # the server's
        self.client_events: list[Any] = []
        self.wire: list[bytes] = []  # every byte the server sent
        self.pump()

    def pump(self) -> list[tuple[Any, ...]]:
        """Move bytes both ways until neither side has any; the server events of this call."""
        new: list[tuple[Any, ...]] = []
        for _ in range(1000):
            out = self.client.data_to_send()
            if out:
                new += self.server.receive(out)
            back = self.server.data_to_send()
            new += self.server.sent_events()
            if back:
                self.wire.append(back)
                self.client_events += self.client.receive_data(back)
            if not out and not back:
                break
        self.events += new
        return new

    def send_raw(self, data: bytes) -> tuple[list[tuple[Any, ...]], bytes]:
        """Bytes straight to the server: its events and what it answered."""
        events = self.server.receive(data)
        self.events += events
        return events, self.server.data_to_send()

    def of(self, kind: int, sid: int | None = None) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[0] == kind and (sid is None or e[1] == sid)]

    def client_of(self, cls: type, sid: int | None = None) -> list[Any]:
        return [e for e in self.client_events if isinstance(e, cls)
                and (sid is None or getattr(e, "stream_id", None) == sid)]


def raw_session(**settings: Any) -> tuple[Any, bytes]:
    """A server that has read a bare client preface (empty SETTINGS); its answer."""
    server = ng.NgServerSession(**settings)
    assert server.receive(PREFACE + raw(SETTINGS_T, 0, 0)) == []
    return server, server.data_to_send()


def headers_frame(sid: int, fields: list[tuple[str, str]], end_stream: bool = True, end_headers: bool = True,
                  encoder: hpack.Encoder | None = None) -> bytes:
    block = (encoder or hpack.Encoder()).encode(fields)
    return raw(HEADERS_T, (0x1 if end_stream else 0) | (0x4 if end_headers else 0), sid, block)


# -- preface, settings ------------------------------------------------------------------------------------------
def test_server_preface_carries_the_spec_settings_and_the_connection_window() -> None:
    _, out = raw_session(max_concurrent_streams=7, max_header_bytes=12345)
    fs = frames(out)
    kind, flags, sid, payload = fs[0]
    assert (kind, flags, sid) == (SETTINGS_T, 0, 0)
    assert settings_of(payload) == {0x2: 0, 0x3: 7, 0x6: 12345, 0x4: 1 << 20}  # no ENABLE_CONNECT_PROTOCOL (0x8)
    updates = [p for t, _, s, p in fs if t == WINDOW_UPDATE_T and s == 0]
    assert updates == [((16 << 20) - 65535).to_bytes(4, "big")]
    assert any(t == SETTINGS_T and f & 0x1 for t, f, _, _ in fs)  # the client's SETTINGS acknowledged


def test_client_acknowledges_the_settings() -> None:
    pair = Pair()
    assert pair.of(ng.ACKED) and pair.client_of(h2.events.SettingsAcknowledged)
    assert pair.client.remote_settings.max_concurrent_streams == 100


def test_bad_preface_is_goaway_protocol_error() -> None:
    server = ng.NgServerSession()
    server.receive(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
    assert goaway_of(server.data_to_send()) == (0, PROTOCOL_ERROR)
    assert not server.want_read() and not server.want_write()


def test_first_frame_not_settings_is_goaway_protocol_error() -> None:
    server = ng.NgServerSession()
    server.receive(PREFACE + raw(PING_T, 0, 0, b"12345678"))
    assert goaway_of(server.data_to_send())[1] == PROTOCOL_ERROR


def test_settings_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError):
        ng.NgServerSession(max_concurrent_streams=0)
    with pytest.raises(ValueError):
        ng.NgServerSession(max_frame_size=100)


# -- requests and responses -------------------------------------------------------------------------------------
def test_get_and_its_response() -> None:
    pair = Pair()
    pair.client.send_headers(1, request("/hello", extra=[("cookie", "a=1"), ("cookie", "b=2")]), end_stream=True)
    (event,) = pair.pump()
    kind, sid, fields, end = event
    assert (kind, sid, end) == (ng.REQUEST, 1, True)
    assert fields[:4] == [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"example.test"),
                          (b":path", b"/hello")]
    assert (b"cookie", b"a=1") in fields and (b"cookie", b"b=2") in fields
    assert pair.server.submit_response(1, [(b":status", b"200"), (b"content-type", b"text/plain")])
    assert pair.server.send_data(1, b"hello ", False) == 6
    pair.pump()
    assert pair.server.send_data(1, memoryview(b"world"), True) >= 0
    pair.pump()
    (resp,) = pair.client_of(h2.events.ResponseReceived)
    assert resp.headers == [(b":status", b"200"), (b"content-type", b"text/plain")]
    assert b"".join(e.data for e in pair.client_of(h2.events.DataReceived)) == b"hello world"
    assert pair.client_of(h2.events.StreamEnded, 1)
    assert pair.of(ng.CLOSED, 1) == [(ng.CLOSED, 1, NO_ERROR, None)]
    assert pair.server.open_streams == 0
    assert pair.server.send_data(1, b"late") == -1  # the stream is gone


def test_response_without_body_ends_with_its_headers() -> None:
    pair = Pair()
    pair.client.send_headers(1, request(), end_stream=True)
    pair.pump()
    pair.server.submit_response(1, [(b":status", b"204")], True)
    assert pair.server.send_data(1, b"no body") == -1 and not pair.server.submit_trailers(1, [(b"x", b"1")])
    pair.pump()
    assert len(pair.client_of(h2.events.StreamEnded, 1)) == 1
    assert not pair.client_of(h2.events.DataReceived)
    assert pair.of(ng.CLOSED, 1)


def test_interim_response_then_final() -> None:
    pair = Pair()
    pair.client.send_headers(1, request(), end_stream=True)
    pair.pump()
    pair.server.submit_response(1, [(b":status", b"103"), (b"link", b"</a.css>; rel=preload")])
    pair.server.submit_response(1, [(b":status", b"200")], True)
    pair.pump()
    (interim,) = pair.client_of(h2.events.InformationalResponseReceived)
    (final,) = pair.client_of(h2.events.ResponseReceived)
    assert interim.headers[0] == (b":status", b"103") and final.headers == [(b":status", b"200")]


def test_request_body_window_stays_closed_until_consumed() -> None:
    pair = Pair()
    pair.client.update_settings({h2.settings.SettingCodes.MAX_FRAME_SIZE: 16384})
    pair.client.send_headers(1, request("/upload", "POST"), end_stream=False)
    pair.pump()
    window = pair.client.local_flow_control_window(1)
    assert window == 1 << 20  # SPEC §9.1: 1 MiB per stream
    body = b"x" * window
    for at in range(0, window, 16384):
        pair.client.send_data(1, body[at : at + 16384])
    pair.pump()
    received = b"".join(e[2] for e in pair.of(ng.DATA, 1))
    assert received == body
    assert pair.client.local_flow_control_window(1) == 0  # nothing consumed: no WINDOW_UPDATE
    pair.pump()
    assert pair.client.local_flow_control_window(1) == 0
    pair.server.consume(1, len(body) // 4)  # a quarter: nghttp2 waits for half the window
    pair.pump()
    assert pair.client.local_flow_control_window(1) == 0
    pair.server.consume(1, len(body) // 4)
    pair.pump()
    assert pair.client.local_flow_control_window(1) == len(body) // 2
    pair.client.end_stream(1)
    pair.pump()
    assert pair.of(ng.END, 1)


def test_padded_data_counts_only_the_body() -> None:
    pair = Pair()
    pair.client.send_headers(1, request("/upload", "POST"), end_stream=False)
    pair.client.send_data(1, b"abc", pad_length=40, end_stream=True)
    pair.pump()
    assert [e[2] for e in pair.of(ng.DATA, 1)] == [b"abc"]
    pair.server.consume(1, 3)  # the padding was given back by nghttp2 itself


def test_response_waits_for_the_client_window_and_reports_drained() -> None:
    pair = Pair(high_water=100_000, low_water=20_000)
    pair.client.send_headers(1, request(), end_stream=True)
    pair.pump()
    pair.server.submit_response(1, [(b":status", b"200")])
    assert pair.server.send_data(1, b"y" * 200_000, True) == 200_000
    pair.pump()
    got = sum(len(e.data) for e in pair.client_of(h2.events.DataReceived))
    assert got == 65535  # the client's default stream window
    assert pair.server.queued(1) == 200_000 - 65535
    assert pair.server.remote_window(1) == 0
    assert pair.server.drained() == []
    for _ in range(20):
        for e in pair.client_of(h2.events.DataReceived):
            if e.flow_controlled_length:
                pair.client.acknowledge_received_data(e.flow_controlled_length, 1)
                e.flow_controlled_length = 0
        pair.pump()
        if pair.client_of(h2.events.StreamEnded, 1):
            break
    assert sum(len(e.data) for e in pair.client_of(h2.events.DataReceived)) == 200_000
    assert pair.server.drained() == [1]


def test_a_slow_stream_does_not_block_another() -> None:
    pair = Pair()
    pair.client.send_headers(1, request("/slow"), end_stream=True)
    pair.client.send_headers(3, request("/fast"), end_stream=True)
    pair.pump()
    pair.server.submit_response(1, [(b":status", b"200")])  # its body has not arrived: the provider defers
    pair.server.submit_response(3, [(b":status", b"200")])
    pair.server.send_data(3, b"fast", True)
    pair.pump()
    assert pair.client_of(h2.events.StreamEnded, 3) and not pair.client_of(h2.events.StreamEnded, 1)
    pair.server.send_data(1, b"slow", True)
    pair.pump()
    assert [e.data for e in pair.client_of(h2.events.DataReceived, 1)] == [b"slow"]


def test_trailers_both_ways() -> None:
    pair = Pair()
    pair.client.send_headers(1, request("/grpc", "POST", [("content-type", "application/grpc"), ("te", "trailers")]))
    pair.client.send_data(1, b"\x00\x00\x00\x00\x01a")
    pair.client.send_headers(1, [("x-checksum", "42")], end_stream=True)
    pair.pump()
    assert [e[0] for e in pair.events if e[1] == 1] == [ng.REQUEST, ng.DATA, ng.TRAILERS]
    assert pair.of(ng.TRAILERS, 1)[0][2] == [(b"x-checksum", b"42")]
    assert (b"te", b"trailers") in pair.of(ng.REQUEST, 1)[0][2]
    pair.server.submit_response(1, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    pair.server.send_data(1, b"\x00\x00\x00\x00\x01b")
    pair.pump()
    assert pair.server.submit_trailers(1, [(b"grpc-status", b"0"), (b"grpc-message", b"ok")])
    pair.pump()
    (trailers,) = pair.client_of(h2.events.TrailersReceived, 1)
    assert trailers.headers == [(b"grpc-status", b"0"), (b"grpc-message", b"ok")]
    assert pair.client_of(h2.events.StreamEnded, 1)
    assert [e.data for e in pair.client_of(h2.events.DataReceived, 1)] == [b"\x00\x00\x00\x00\x01b"]


def test_many_concurrent_streams() -> None:
    pair = Pair(max_concurrent_streams=100)
    sids = [1 + 2 * i for i in range(100)]
    for sid in sids:
        pair.client.send_headers(sid, request(f"/m{sid}"), end_stream=True)
    pair.pump()
    assert [e[1] for e in pair.of(ng.REQUEST)] == sids
    assert pair.server.open_streams == 100
    for sid in reversed(sids):
        pair.server.submit_response(sid, [(b":status", b"200")])
        pair.server.send_data(sid, b"body %d" % sid, True)
    pair.pump()
    assert {e.stream_id: e.data for e in pair.client_of(h2.events.DataReceived)} == {
        sid: b"body %d" % sid for sid in sids}
    assert pair.server.open_streams == 0 and len(pair.of(ng.CLOSED)) == 100


def test_stream_beyond_max_concurrent_streams_is_refused_alone() -> None:
    server, _ = raw_session(max_concurrent_streams=2)
    enc = hpack.Encoder()
    events, out = [], b""
    for sid in (1, 3, 5):
        e, o = server.receive(headers_frame(sid, request(f"/s{sid}"), encoder=enc)), server.data_to_send()
        events += e
        out += o
    assert [e[1] for e in events if e[0] == ng.REQUEST] == [1, 3]
    assert resets_of(out) == {5: REFUSED_STREAM}
    assert not [t for t, _, _, _ in frames(out) if t == GOAWAY_T]
    server.submit_response(1, [(b":status", b"200")], True)  # a slot frees: the next stream is served
    server.data_to_send()
    assert server.sent_events() == [(ng.CLOSED, 1, NO_ERROR, None)]
    events = server.receive(headers_frame(7, request("/s7"), encoder=enc))
    assert [e[:2] for e in events] == [(ng.REQUEST, 7)]


# -- resets, GOAWAY ---------------------------------------------------------------------------------------------
def test_client_reset_is_reported_and_ends_the_stream() -> None:
    pair = Pair()
    pair.client.send_headers(1, request(), end_stream=True)
    pair.pump()
    pair.server.submit_response(1, [(b":status", b"200")])
    pair.server.send_data(1, b"partial")
    pair.pump()
    pair.client.reset_stream(1, CANCEL)
    pair.pump()
    assert pair.of(ng.RESET, 1) == [(ng.RESET, 1, CANCEL, None)]
    assert pair.of(ng.CLOSED, 1) == [(ng.CLOSED, 1, CANCEL, None)]
    assert pair.server.send_data(1, b"more") == -1 and pair.server.queued(1) == -1
    assert pair.server.early_resets == 1 and pair.server.abuse is None


def test_server_reset_sends_the_code() -> None:
    pair = Pair()
    pair.client.send_headers(1, request(), end_stream=True)
    pair.pump()
    assert pair.server.reset(1, ng.INTERNAL_ERROR)
    pair.pump()
    (reset,) = pair.client_of(h2.events.StreamReset, 1)
    assert reset.error_code == ng.INTERNAL_ERROR
    assert pair.of(ng.CLOSED, 1) == [(ng.CLOSED, 1, ng.INTERNAL_ERROR, None)]


def test_graceful_goaway_lets_the_open_stream_finish_and_ignores_new_ones() -> None:
    pair = Pair()
    pair.client.send_headers(1, request("/slow"), end_stream=True)
    pair.pump()
    pair.server.goaway()
    pair.pump()
    (term,) = pair.client_of(h2.events.ConnectionTerminated)
    assert (term.error_code, term.last_stream_id) == (NO_ERROR, 1)
    events, out = pair.send_raw(headers_frame(3, request("/after"), encoder=pair.client.encoder))
    assert not [e for e in events if e[0] == ng.REQUEST]
    assert resets_of(out) == {3: REFUSED_STREAM}  # beyond the GOAWAY's last stream: never processed
    pair.server.submit_response(1, [(b":status", b"200")])
    pair.server.send_data(1, b"done", True)
    out = pair.server.data_to_send()
    assert [(t, s) for t, _, s, _ in frames(out) if t in (HEADERS_T, DATA_T)] == [(HEADERS_T, 1), (DATA_T, 1)]
    assert pair.server.sent_events() == [(ng.CLOSED, 1, NO_ERROR, None)]
    assert not pair.server.want_read() and not pair.server.want_write()  # the transport can close


def test_goaway_with_an_error_ends_the_connection() -> None:
    pair = Pair()
    pair.server.goaway(PROTOCOL_ERROR)
    out = pair.server.data_to_send()
    assert goaway_of(out)[1] == PROTOCOL_ERROR
    assert not pair.server.want_read() and not pair.server.want_write()


def test_client_goaway_is_reported() -> None:
    pair = Pair()
    pair.client.close_connection(error_code=NO_ERROR, additional_data=b"bye", last_stream_id=0)
    pair.pump()
    assert pair.of(ng.GOAWAY) == [(ng.GOAWAY, 0, NO_ERROR, b"bye")]


# -- malformed requests: stream errors (RFC 9113 §8.1.1) ----------------------------------------------------------
@pytest.mark.parametrize("fields", [
    request("/up", extra=[("X-Upper", "1")]),
    request("/conn", extra=[("connection", "keep-alive")]),
    request("/te", extra=[("te", "gzip")]),
    [(":method", "GET"), (":scheme", "http"), (":authority", "example.test")],  # no :path
    request("/twice", extra=[(":path", "/again")]),
    request("http://example.test/absolute"),
    request("/crlf", extra=[("x-bad", "a\r\nb")]),
], ids=["uppercase", "connection", "te-not-trailers", "missing-path", "duplicate-path", "absolute-path", "crlf"])
def test_malformed_request_is_reset_protocol_error_and_others_continue(fields: list[tuple[str, str]]) -> None:
    server, _ = raw_session()
    enc = hpack.Encoder()
    events = server.receive(headers_frame(1, fields, encoder=enc) + headers_frame(3, request("/ok"), encoder=enc))
    out = server.data_to_send()
    assert resets_of(out) == {1: PROTOCOL_ERROR}
    assert [e[:2] for e in events if e[0] == ng.REQUEST] == [(ng.REQUEST, 3)]
    assert not [t for t, _, _, _ in frames(out) if t == GOAWAY_T]


def test_data_beyond_content_length_is_reset_protocol_error() -> None:
    pair = Pair()
    pair.client.send_headers(1, request("/up", "POST", [("content-length", "3")]), end_stream=False)
    pair.client.send_data(1, b"abcdef", end_stream=True)
    pair.pump()
    (reset,) = pair.client_of(h2.events.StreamReset, 1)
    assert reset.error_code == PROTOCOL_ERROR
    assert not pair.of(ng.END, 1)


# -- abuse limits (SPEC §9.1) -----------------------------------------------------------------------------------
def test_header_list_over_max_header_bytes_is_enhance_your_calm() -> None:
    server, _ = raw_session(max_header_bytes=1000)
    # Huffman-coded on the wire well under 1000 bytes; decoded, over it
    events = server.receive(headers_frame(1, request("/big", extra=[("x-long", "l" * 1500)])))
    assert (ng.ABUSE, 0, "header_block", ENHANCE_YOUR_CALM) in events
    assert not [e for e in events if e[0] == ng.REQUEST]
    assert goaway_of(server.data_to_send())[1] == ENHANCE_YOUR_CALM
    assert server.abuse == "header_block" and not server.want_read()


def test_hpack_bomb_is_bounded_by_max_header_bytes() -> None:
    server, _ = raw_session(max_header_bytes=16384)
    literal = b"\x40\x06x-bomb\x7f\x85\x06" + b"v" * 900  # indexed once (900 = 127 + 773: 0x7f, 0x85 0x06)
    block = b"\x82\x84\x86\x41\x01a" + literal + bytes([0x80 | 62]) * 100  # then referenced 100 times: ~93 KB
    events = server.receive(raw(HEADERS_T, 0x5, 1, block))
    assert [e[2] for e in events if e[0] == ng.ABUSE] == ["header_block"]
    assert goaway_of(server.data_to_send())[1] == ENHANCE_YOUR_CALM


def test_continuation_flood_is_enhance_your_calm() -> None:
    server, _ = raw_session()
    flood = headers_frame(1, request("/never"), end_headers=False) + raw(CONTINUATION_T, 0, 1) * 100
    events = server.receive(flood)
    assert [e[2] for e in events if e[0] == ng.ABUSE] == ["header_block"]
    assert goaway_of(server.data_to_send())[1] == ENHANCE_YOUR_CALM
    assert not server.want_read() and not server.want_write()


def test_header_block_over_a_few_continuations_is_served() -> None:
    server, _ = raw_session()
    block = hpack.Encoder().encode(request("/split", extra=[("x-a", "1"), ("x-b", "2")]))
    third = len(block) // 3
    wire = (raw(HEADERS_T, 0x1, 1, block[:third]) + raw(CONTINUATION_T, 0, 1, block[third : 2 * third])
            + raw(CONTINUATION_T, 0x4, 1, block[2 * third :]))
    events = server.receive(wire)
    assert [e[:2] for e in events] == [(ng.REQUEST, 1)]


def test_rapid_reset_is_enhance_your_calm() -> None:
    # CVE-2023-44487: more than 200 streams reset by the client within a second
    server, _ = raw_session(max_concurrent_streams=1000)
    enc = hpack.Encoder()
    burst = b"".join(headers_frame(sid, request("/r"), encoder=enc) + raw(RST_T, 0, sid, CANCEL.to_bytes(4, "big"))
                     for sid in range(1, 2 * 205, 2))
    events = server.receive(burst)
    assert [e[2] for e in events if e[0] == ng.ABUSE] == ["rapid_reset"]
    assert len([e for e in events if e[0] == ng.RESET]) == 201  # nothing read after the 201st
    last, code = goaway_of(server.data_to_send())
    assert code == ENHANCE_YOUR_CALM and last == 401
    assert server.receive(headers_frame(501, request("/after"), encoder=enc)) == []


def test_resets_of_most_streams_over_twice_the_stream_limit_is_enhance_your_calm() -> None:
    server, _ = raw_session(max_concurrent_streams=10)
    enc = hpack.Encoder()
    burst = b"".join(headers_frame(sid, request("/r"), encoder=enc) + raw(RST_T, 0, sid, CANCEL.to_bytes(4, "big"))
                     for sid in range(1, 2 * 30, 2))
    events = server.receive(burst)
    assert [e[2] for e in events if e[0] == ng.ABUSE] == ["reset_ratio"]
    assert len([e for e in events if e[0] == ng.RESET]) == 21
    assert goaway_of(server.data_to_send())[1] == ENHANCE_YOUR_CALM


def test_resets_after_the_response_ended_cost_nothing() -> None:
    server, _ = raw_session(max_concurrent_streams=10)
    enc = hpack.Encoder()
    for sid in range(1, 2 * 40, 2):
        # the request stays open (no END_STREAM); the response ends; then the client resets
        server.receive(headers_frame(sid, request("/ok", "POST"), end_stream=False, encoder=enc))
        server.submit_response(sid, [(b":status", b"200")], True)
        server.data_to_send()
        server.receive(raw(RST_T, 0, sid, CANCEL.to_bytes(4, "big")))
    assert server.abuse is None and server.early_resets == 0
    assert not [t for t, _, _, _ in frames(server.data_to_send()) if t == GOAWAY_T]


@pytest.mark.parametrize(("frame", "kind"), [
    (raw(PING_T, 0, 0, b"12345678"), "ping_flood"),
    (raw(SETTINGS_T, 0, 0), "settings_flood"),
], ids=["ping", "settings"])
def test_control_frame_flood_is_enhance_your_calm(frame: bytes, kind: str) -> None:
    server, _ = raw_session()
    already = 1 if kind == "settings_flood" else 0  # the preface's SETTINGS
    assert server.receive(frame * (1000 - already)) == []  # SPEC §9.1: more than 1,000 per 10 s
    acks = [f for f in frames(server.data_to_send()) if f[0] == frame[3] and f[1] & 0x1]
    assert len(acks) == 1000 - already and server.abuse is None
    events = server.receive(frame)
    assert [e[2] for e in events if e[0] == ng.ABUSE] == [kind]
    assert goaway_of(server.data_to_send())[1] == ENHANCE_YOUR_CALM


def test_empty_data_flood_is_enhance_your_calm() -> None:
    server, _ = raw_session()
    server.receive(headers_frame(1, request("/up", "POST"), end_stream=False))
    events = server.receive(raw(DATA_T, 0, 1) * 1001)
    assert [e[2] for e in events if e[0] == ng.ABUSE] == ["empty_data_flood"]
    assert goaway_of(server.data_to_send())[1] == ENHANCE_YOUR_CALM


def test_frame_errors_are_connection_errors_with_the_rfc_code() -> None:
    server, _ = raw_session()
    server.receive(raw(DATA_T, 0, 1, b"x"))  # DATA on an idle stream: PROTOCOL_ERROR (RFC 9113 §5.1)
    assert goaway_of(server.data_to_send())[1] == PROTOCOL_ERROR
    server, _ = raw_session()
    server.receive(raw(SETTINGS_T, 0, 0, b"\x00\x04\x00\x00\x01"))  # length not a multiple of 6: FRAME_SIZE_ERROR
    assert goaway_of(server.data_to_send())[1] == 0x6


# -- stream errors nghttp2 would make connection errors (RFC 9113 §5.3.1, §6.3, §6.9) -----------------------------
PRIORITY_T, FRAME_SIZE_ERROR = 2, 6


@pytest.mark.parametrize(("frame", "code"), [
    (raw(PRIORITY_T, 0, 1, b"\x00\x00\x00\x01\x10"), PROTOCOL_ERROR),  # depends on itself
    (raw(PRIORITY_T, 0, 1, b"\x00\x00\x00\x03"), FRAME_SIZE_ERROR),  # not 5 bytes
    (raw(WINDOW_UPDATE_T, 0, 1, b"\x00\x00\x00\x00"), PROTOCOL_ERROR),  # a 0 increment
], ids=["priority-self", "priority-length", "window-update-0"])
def test_stream_level_frame_errors_reset_that_stream_only(frame: bytes, code: int) -> None:
    server, _ = raw_session()
    enc = hpack.Encoder()
    events = server.receive(headers_frame(1, request("/up", "POST"), end_stream=False, encoder=enc) + frame
                            + headers_frame(3, request("/other"), encoder=enc))
    out = server.data_to_send()
    assert resets_of(out) == {1: code}
    assert not [t for t, _, _, _ in frames(out) if t == GOAWAY_T]
    assert [e[1] for e in events if e[0] == ng.REQUEST] == [1, 3]
    assert server.submit_response(3, [(b":status", b"200")], True)
    assert [s for t, _, s, _ in frames(server.data_to_send()) if t == HEADERS_T] == [3]


@pytest.mark.parametrize("padded", [False, True])
def test_headers_depending_on_their_own_stream_reset_that_stream_only(padded: bool) -> None:
    server, _ = raw_session()
    enc = hpack.Encoder()
    block = enc.encode(request("/self"))
    payload = b"\x00\x00\x00\x01\x10" + block  # exclusive 0, depends on 1, weight 17
    flags = 0x1 | 0x4 | 0x20 | (0x8 if padded else 0)
    frame = raw(HEADERS_T, flags, 1, (b"\x02" + payload + b"\x00\x00") if padded else payload)
    events = server.receive(frame + headers_frame(3, request("/next", extra=[("x-same", "1")]), encoder=enc))
    out = server.data_to_send()
    assert resets_of(out) == {1: PROTOCOL_ERROR}
    assert not [t for t, _, _, _ in frames(out) if t == GOAWAY_T]
    (req,) = [e for e in events if e[0] == ng.REQUEST]  # the block of 1 was decoded: 3's refers to its entries
    assert req[1] == 3 and (b":path", b"/next") in req[2]


def test_headers_with_a_priority_on_another_stream_are_served() -> None:
    server, _ = raw_session()
    frame = raw(HEADERS_T, 0x1 | 0x4 | 0x20, 3, b"\x00\x00\x00\x01\x10" + hpack.Encoder().encode(request("/p")))
    assert [e[:2] for e in server.receive(frame)] == [(ng.REQUEST, 3)]


def test_priority_of_the_wrong_length_on_an_idle_stream_is_reset_too() -> None:
    server, _ = raw_session()
    server.receive(raw(PRIORITY_T, 0, 9, b"\x00\x00\x00\x03"))
    assert resets_of(server.data_to_send()) == {9: FRAME_SIZE_ERROR}
    assert server.want_read()


def test_window_update_0_on_an_idle_stream_is_a_connection_error() -> None:
    server, _ = raw_session()
    server.receive(raw(WINDOW_UPDATE_T, 0, 9, b"\x00\x00\x00\x00"))
    assert goaway_of(server.data_to_send())[1] == PROTOCOL_ERROR


def test_priority_inside_a_header_block_is_a_connection_error() -> None:
    server, _ = raw_session()
    server.receive(headers_frame(1, request("/"), end_headers=False) + raw(PRIORITY_T, 0, 1, b"\x00\x00\x00\x03"))
    assert goaway_of(server.data_to_send())[1] == PROTOCOL_ERROR


def test_input_split_anywhere_gives_the_same_events() -> None:
    enc = hpack.Encoder()
    block = enc.encode(request("/split", "POST", [("x-pad", "p" * 40)]))
    wire = (PREFACE + raw(SETTINGS_T, 0, 0) + raw(HEADERS_T, 0, 1, block[:10]) + raw(CONTINUATION_T, 0x4, 1, block[10:])
            + raw(DATA_T, 0, 1, b"a" * 30) + raw(WINDOW_UPDATE_T, 0, 1, b"\x00\x00\x10\x00")
            + raw(PRIORITY_T, 0, 1, b"\x00\x00\x00\x00\x10") + raw(PRIORITY_T, 0, 5, b"\x00\x00")
            + raw(PING_T, 0, 0, b"12345678") + headers_frame(3, request("/b"), end_stream=False, encoder=enc)
            + raw(WINDOW_UPDATE_T, 0, 3, b"\x00\x00\x00\x00") + raw(DATA_T, 0x1, 1, b"b" * 7))

    def run(sizes: int) -> tuple[list[Any], dict[int, int], list[int]]:
        server = ng.NgServerSession()
        events: list[Any] = []
        out = b""
        for at in range(0, len(wire), sizes):
            events += server.receive(wire[at : at + sizes])
            out += server.data_to_send()
            events += server.sent_events()
        merged: list[Any] = [e for e in events if e[0] == ng.CLOSED]  # when the reset went out differs
        for e in events:  # DATA arrives in as many pieces as the input was cut into
            if e[0] == ng.CLOSED:
                continue
            if e[0] == ng.DATA and merged and merged[-1][0] == ng.DATA and merged[-1][1] == e[1]:
                merged[-1] = (ng.DATA, e[1], merged[-1][2] + e[2], None)
            else:
                merged.append(e)
        return merged, resets_of(out), [t for t, _, _, _ in frames(out) if t in (GOAWAY_T, PING_T)]

    whole = run(len(wire))
    assert whole[1] == {5: FRAME_SIZE_ERROR, 3: PROTOCOL_ERROR} and whole[2] == [PING_T]
    assert [e[0] for e in whole[0]] == [ng.CLOSED, ng.REQUEST, ng.DATA, ng.REQUEST, ng.DATA, ng.END]
    for size in (1, 2, 5, 9, 10, 13, 17):
        assert run(size) == whole, size


def test_type_stub_matches_the_module() -> None:
    import ast
    from pathlib import Path

    stub = ast.parse((Path(ng.__file__).parent / "_nghttp2.pyi").read_text())
    names = {t.target.id for t in stub.body if isinstance(t, ast.AnnAssign) and isinstance(t.target, ast.Name)}
    assert names and all(hasattr(ng, n) for n in names), sorted(n for n in names if not hasattr(ng, n))
    (cls,) = [c for c in stub.body if isinstance(c, ast.ClassDef) and c.name == "NgServerSession"]
    members = {f.name for f in cls.body if isinstance(f, ast.FunctionDef)} - {"__init__"}
    members |= {a.target.id for a in cls.body if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name)}
    session = ng.NgServerSession()
    assert all(hasattr(session, m) for m in members), sorted(m for m in members if not hasattr(session, m))
