"""Token usage accounting (SPEC §16.2): JSON bodies, SSE streams split anywhere, estimates; per-model counters
(§16.6) and their bounded model label."""

from __future__ import annotations

import json

import pytest

from a3s_gateway.http.usage import MAX_JSON, UsageMeter
from a3s_gateway.observability.stats import MAX_MODELS, ModelStats, RouteStats


def sse(*events: object, eol: str = "\n") -> bytes:
    out = []
    for e in events:
        data = e if isinstance(e, str) else json.dumps(e)
        out.append(f"data: {data}{eol}{eol}")
    return "".join(out).encode()


def chunk(text: str) -> dict[str, object]:
    return {"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]}


OPENAI_STREAM = [
    {"id": "c1", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},  # not content
    chunk("Hel"), chunk("lo"), chunk(" wor"), chunk("ld"),
    {"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    {"id": "c1", "choices": [], "usage": {"prompt_tokens": 17, "completion_tokens": 4, "total_tokens": 21}},
    "[DONE]",
]


def meter_for(body: bytes, pieces: list[bytes], ctype: bytes = b"text/event-stream",
              request_bytes: int = 0) -> UsageMeter:
    assert b"".join(pieces) == body
    m = UsageMeter(ModelStats("m"))
    m.begin(ctype, 0.0)
    for i, p in enumerate(pieces):
        m.feed([p], 1.0 + i)
    m.finish(request_bytes)
    return m


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"])
def test_sse_usage_counted_exactly_at_every_split_position(eol: str) -> None:
    body = sse(*OPENAI_STREAM, eol=eol)
    for i in range(len(body) + 1):
        m = meter_for(body, [body[:i], body[i:]])
        assert (m.input_tokens, m.output_tokens, m.source) == (17, 4, "reported"), i
    for i in range(0, len(body), 7):  # three pieces: both cut points move
        for j in range(i, len(body), 13):
            m = meter_for(body, [body[:i], body[i:j], body[j:]])
            assert (m.input_tokens, m.output_tokens, m.source) == (17, 4, "reported"), (i, j)


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"])
def test_sse_one_byte_pieces_and_estimate_at_every_split(eol: str) -> None:
    body = sse(*OPENAI_STREAM[:-2], "[DONE]", eol=eol)  # no usage event: estimated
    m = meter_for(body, [body[i : i + 1] for i in range(len(body))], request_bytes=101)
    assert (m.input_tokens, m.output_tokens, m.source) == (26, 4, "estimated")
    for i in range(len(body) + 1):
        m = meter_for(body, [body[:i], body[i:]], request_bytes=100)
        assert (m.input_tokens, m.output_tokens, m.source) == (25, 4, "estimated"), i


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_sse_several_data_lines_comments_and_other_fields(eol: bytes) -> None:
    lines = [b": keep-alive", b"", b"event: message", b"id: 1", b'data: {"choices": [{"delta":',
             b'data: {"content": "x"}}]}', b"", b"retry: 10", b"data:" + json.dumps(chunk("y")).encode(), b"", b""]
    body = eol.join(lines)
    m = meter_for(body, [body[i : i + 1] for i in range(len(body))], request_bytes=8)
    assert (m.input_tokens, m.output_tokens, m.source) == (2, 2, "estimated")
    for i in range(len(body) + 1):  # a "\r\n" cut in two is one line end
        m = meter_for(body, [body[:i], body[i:]], request_bytes=8)
        assert (m.input_tokens, m.output_tokens, m.source) == (2, 2, "estimated"), i


def test_vllm_continuous_usage_last_event_wins() -> None:
    events = [dict(chunk(t), usage={"prompt_tokens": 9, "completion_tokens": n}) for n, t in enumerate("abc", 1)]
    events.append({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}})
    events.append({"choices": [{"delta": {"content": "z"}}], "usage": None})  # usage: null carries nothing
    body = sse(*events, "[DONE]")
    m = meter_for(body, [body[i : i + 3] for i in range(0, len(body), 3)])
    assert (m.input_tokens, m.output_tokens, m.source) == (9, 3, "reported")


def test_anthropic_stream_input_from_message_start_output_from_message_delta() -> None:
    events = [
        {"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 25, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 15}},
        {"type": "message_stop"},
    ]
    body = b"".join(b"event: " + e["type"].encode() + b"\n" + sse(e) for e in events)  # type: ignore[attr-defined]
    for i in range(len(body) + 1):
        m = meter_for(body, [body[:i], body[i:]])
        assert (m.input_tokens, m.output_tokens, m.source) == (25, 15, "reported"), i
    assert m.events == 2


def test_responses_api_stream_usage_under_response() -> None:
    body = sse({"type": "response.output_text.delta", "delta": "Hi"},
               {"type": "response.completed", "response": {"usage": {"input_tokens": 5, "output_tokens": 2}}})
    m = meter_for(body, [body])
    assert (m.input_tokens, m.output_tokens, m.source) == (5, 2, "reported")


@pytest.mark.parametrize(("doc", "expected"), [
    ({"object": "chat.completion", "usage": {"prompt_tokens": 11, "completion_tokens": 7}}, (11, 7, "reported")),
    ({"object": "response", "usage": {"input_tokens": 3, "output_tokens": 8}}, (3, 8, "reported")),
    ({"type": "message", "usage": {"input_tokens": 12, "output_tokens": 6}}, (12, 6, "reported")),
    ({"object": "chat.completion", "choices": []}, (None, None, None)),  # no usage, not a stream: unknown
])
def test_json_usage_across_pieces(doc: dict[str, object], expected: tuple[object, ...]) -> None:
    body = json.dumps(doc).encode()
    m = meter_for(body, [body[i : i + 1] for i in range(len(body))], ctype=b"application/json; charset=utf-8")
    assert (m.input_tokens, m.output_tokens, m.source) == expected


def test_json_larger_than_the_parse_limit_is_unknown_and_other_types_are_ignored() -> None:
    body = b'{"usage": {"prompt_tokens": 1, "completion_tokens": 1}, "pad": "' + b"x" * MAX_JSON + b'"}'
    m = meter_for(body, [body[:1000], body[1000:]], ctype=b"application/json")
    assert (m.input_tokens, m.output_tokens, m.source) == (None, None, None)
    small = json.dumps({"usage": {"prompt_tokens": 1, "completion_tokens": 1}}).encode()
    m = meter_for(small, [small], ctype=b"text/plain")
    assert m.source is None


def test_stream_timing_and_tokens_go_to_the_model_stats() -> None:
    body = sse(*OPENAI_STREAM)
    events = [e + b"\n\n" for e in body.split(b"\n\n") if e]
    stats = ModelStats("m")
    m = UsageMeter(stats)
    m.begin(b"text/event-stream", 10.0)
    for i, e in enumerate(events):  # one event per 0.5 s from t=11
        m.feed([e], 11.0 + 0.5 * i)
    m.finish(0)
    # content events at t = 11.5, 12.0, 12.5, 13.0: TTFT 1.5 s, three gaps of 0.5 s, 4 tokens / 1.5 s
    assert stats.ttft.count() == 1 and stats.ttft.total == pytest.approx(1.5)
    assert stats.inter_token.count() == 3 and stats.inter_token.total == pytest.approx(1.5)
    assert stats.tokens_per_second.counts == [0, 1, 0, 0, 0, 0, 0, 0, 0]  # 2.67/s in the (1, 5] bucket
    assert (stats.input_reported, stats.output_reported, stats.input_estimated, stats.output_estimated) == (
        17, 4, 0, 0)


def test_model_label_cardinality_is_bounded() -> None:
    st = RouteStats("r", "s")
    for i in range(MAX_MODELS + 20):
        st.model_stats(f"model-{i}").codes.add(200)
    assert len(st.models) == MAX_MODELS + 1
    assert st.model_stats("model-5").model == "model-5"
    assert st.model_stats("another").model == "other"
    assert dict(st.models["other"].codes.items()) == {200: 20}
