"""Token usage accounting (SPEC §16.2): JSON bodies, SSE streams split anywhere, estimates; per-model counters
(§16.6) and their bounded model label."""

from __future__ import annotations

import json
from typing import Any

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


# -- compact streams (the bytes model servers write): the byte scan and the per-stream template -----------------

def compact(*events: object, eol: bytes = b"\n") -> list[bytes]:
    """One piece per event, JSON written as vLLM / SGLang / OpenAI write it (no spaces)."""
    return [b"data: " + (e.encode() if isinstance(e, str) else json.dumps(e, separators=(",", ":")).encode())
            + eol + eol for e in events]


def vllm_chunk(text: str, **extra: object) -> dict[str, object]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "llama",
            "choices": [{"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}], **extra}


VLLM_TOKENS = ["Hel", "lo", ' "quoted"', "back\\slash", "tab\there", "caf\u00e9 \U0001f600", "", "x"]  # "": none


def vllm_stream(usage: bool, null_usage: bool = False) -> list[object]:
    extra: dict[str, object] = {"usage": None} if null_usage else {}
    events: list[object] = [
        {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "llama",
         "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                      "finish_reason": None}], **extra},
        *(vllm_chunk(t, **extra) for t in VLLM_TOKENS),
        {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "llama",
         "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}], **extra},
    ]
    if usage:
        events.append({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "llama",
                       "choices": [], "usage": {"prompt_tokens": 31, "completion_tokens": 7, "total_tokens": 38}})
    events.append("[DONE]")
    return events


def reference(body: bytes) -> tuple[int, int, int]:
    """(prompt tokens, completion tokens, content events) of a whole SSE body, by the text of SPEC §16.2: lines
    end at "\\r\\n", "\\n" or "\\r"; a blank line ends an event; its data lines joined by "\\n" parsed as JSON."""
    import re

    prompt = completion = -1
    content = 0
    data: list[bytes] = []
    for line in re.split(rb"\r\n|\r|\n", body):
        if line.startswith(b"data:"):
            data.append(line[6:] if line[5:6] == b" " else line[5:])
            continue
        if line or not data:
            continue
        try:
            event = json.loads(b"\n".join(data))
        except ValueError:
            event = None
        data = []
        if not isinstance(event, dict):
            continue
        usage = event.get("usage") or (event.get("response") or {}).get("usage") or \
            (event.get("message") or {}).get("usage")
        if isinstance(usage, dict):
            prompt = usage.get("prompt_tokens", usage.get("input_tokens", prompt))
            completion = usage.get("completion_tokens", usage.get("output_tokens", completion))
        deltas = [c.get("delta") or {} for c in event.get("choices") or []]
        if any(d.get("content") or d.get("text") for d in deltas) or \
                any(c.get("text") for c in event.get("choices") or []) or (event.get("delta") or {}).get("text"):
            content += 1
    return prompt, completion, content


def feed_all(pieces: list[bytes], request_bytes: int = 40) -> UsageMeter:
    m = UsageMeter(ModelStats("m"))
    m.begin(b"text/event-stream", 0.0)
    for i, p in enumerate(pieces):
        m.feed([p], 1.0 + i)
    m.finish(request_bytes)
    return m


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
@pytest.mark.parametrize("usage", [True, False])
@pytest.mark.parametrize("null_usage", [False, True])
def test_compact_stream_counted_exactly_one_event_per_read_and_split_anywhere(
        eol: bytes, usage: bool, null_usage: bool) -> None:
    pieces = compact(*vllm_stream(usage, null_usage), eol=eol)
    body = b"".join(pieces)
    prompt, completion, content = reference(body)
    assert content == 7  # the role chunk and the empty token are no content events
    expected = (31, 7, "reported") if usage else (10, 7, "estimated")
    assert (prompt, completion) == ((31, 7) if usage else (-1, -1))
    splits = [pieces, [body], [body[i : i + 1] for i in range(len(body))]]
    splits += [[body[:i], body[i:]] for i in range(len(body) + 1)]
    # the stream's template is learned from the first pieces, then every event is cut at every byte
    for i in range(len(pieces[2]) + 1):
        splits.append([*pieces[:2], pieces[2][:i], pieces[2][i:], *pieces[3:]])
        splits.append([*pieces[:4], pieces[4][:i], pieces[4][i:] + pieces[5][: i % 7], pieces[5][i % 7 :],
                       *pieces[6:]])
    for n, split in enumerate(splits):
        assert b"".join(split) == body
        m = feed_all(split)
        assert (m.input_tokens, m.output_tokens, m.source, m.events) == (*expected, content), n


def test_compact_events_in_one_read_comments_fields_and_several_data_lines() -> None:
    one = compact(vllm_chunk("a"))[0]
    pieces = [
        *compact(vllm_chunk("first")),  # learns the stream's template
        one + one,  # two events in one read
        b": keep-alive\n\n", b": " + one,  # a comment, and a comment line holding an event's bytes: no event
        b"event: message\nid: 7\n" + one,  # fields before the data line
        one[:-1] + b"retry: 10\n\n",  # a field line after the data line
        one.replace(b',"delta"', b',\ndata: "delta"'),  # several data lines joined by "\n": still valid JSON
        one.replace(b'{"index"', b'\ndata: {"index"').replace(b"data: ", b"data:", 1),
        one.replace(b'"a"', b'"a\\""'),  # an escaped quote in the text
        one.replace(b'"a"', b'""'),  # the template with empty text: no content
        one.replace(b'"a"', b'"a","x":"y"'),  # not a JSON string body between head and tail: looked at again
        one[:-2] + b"\r\n\r\n",
        one[:-2] + b"\r\r" + one,  # two events, the first ended by "\r" line ends
        b"data: x\r" + one,  # "\r" ends the line "data: x": two data lines, not JSON, yet a content delta
        *compact({"choices": [{"index": 0, "delta": {"content": ""}}, {"index": 1, "delta": {"content": "b"}}]}),
        *compact({"choices": [{"index": 0, "delta": {"content": "c"}}, {"index": 1, "delta": {"content": ""}}]}),
        *compact({"choices": [{"index": 0, "text": "completion"}]}),
        *compact({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "anthropic"}}),
        *compact({"choices": [{"index": 0, "delta": {"reasoning_content": "thinking"}}]}),
        *compact({"choices": [{"index": 0, "delta": {"content": "not json"}}]}, "not json"),
        b'data: {"choices":[{"delta":{"content":"unterminated"}}\n\n',  # invalid JSON, yet a content delta
    ]
    body = b"".join(pieces)
    _, _, content = reference(body)
    assert content == 17
    for split in (pieces, [body], [body[i : i + 1] for i in range(len(body))],
                  [body[i : i + 5] for i in range(0, len(body), 5)]):
        m = feed_all(split, request_bytes=8)
        # the byte scan does not validate the JSON of a content delta: the two invalid events count too
        assert (m.output_tokens, m.source, m.events) == (content + 2, "estimated", content + 2)


def test_compact_usage_in_every_chunk_and_after_a_null_usage_last_event_wins() -> None:
    events: list[object] = [vllm_chunk(t, usage={"prompt_tokens": 9, "completion_tokens": n})
                            for n, t in enumerate("abc", 1)]
    events.append(vllm_chunk("d", usage=None, response={"usage": {"input_tokens": 4, "output_tokens": 5}}))
    for split in (compact(*events), [b"".join(compact(*events))]):
        m = feed_all(split)
        assert (m.input_tokens, m.output_tokens, m.source, m.events) == (4, 5, "reported", 4)
    pieces = compact(*events[:3], vllm_chunk("d", usage=None), vllm_chunk("e", usage=None))
    m = feed_all(pieces)
    assert (m.input_tokens, m.output_tokens, m.source, m.events) == (9, 3, "reported", 5)


def test_compact_stream_timing_one_observation_per_content_event() -> None:
    pieces = compact(*vllm_stream(usage=True))  # role, 8 tokens (one empty), finish, usage, [DONE]
    one = compact(vllm_chunk("z"))[0]
    stats = ModelStats("m")
    m = UsageMeter(stats)
    m.begin(b"text/event-stream", 10.0)
    t = 10.0
    for p in pieces[:-3]:
        t += 0.5
        m.feed([p], t)
    m.feed([one + one, one], 20.0)  # three content events read at once: gaps 5.5, 0, 0
    for p in pieces[-3:]:
        m.feed([p], 21.0)
    m.finish(0)
    # content events at 11.0 (TTFT 1.0), 11.5 ... 14.5 but the empty token at 14.0, then three at 20.0
    assert stats.ttft.count() == 1 and stats.ttft.total == pytest.approx(1.0)
    assert stats.inter_token.count() == 9
    assert stats.inter_token.total == pytest.approx(0.5 * 5 + 1.0 + 5.5)
    assert m.events == 10 and (m.input_tokens, m.output_tokens) == (31, 7)
    assert stats.tokens_per_second.counts == [1, 0, 0, 0, 0, 0, 0, 0, 0]  # 7 reported tokens / 9 s: ≤ 1


@pytest.mark.parametrize("choices", [
    # another content member after the text (n > 1 choices), before it in another form, or a "text" member
    lambda t: [{"index": 0, "delta": {"content": t}}, {"index": 1, "delta": {"content": "b"}}],
    lambda t: [{"index": 0, "delta": {"role": "assistant", "content": "b"}}, {"index": 1, "delta": {"content": t}}],
    lambda t: [{"index": 0, "text": "b"}, {"index": 1, "delta": {"content": t}}],
    lambda t: [{"index": 0, "delta": {"content": t}}, {"index": 1, "text": "b"}],
])
def test_an_event_with_other_content_members_is_no_template(choices: Any) -> None:
    pieces = compact(*({"id": "c", "choices": choices(t)} for t in ["a", "", "c", ""]))
    assert reference(b"".join(pieces))[2] == 4  # every event carries text in its other choice
    m = feed_all(pieces)
    assert m.events == 4


def test_events_that_differ_outside_their_text_are_counted_each() -> None:
    # OpenAI's per-chunk "obfuscation" member (no template ever matches), then llama.cpp's "created" that changes
    # between reads (the template is learned again); empty texts among them are no content events
    texts = ["a", "", "b", "c", "", "d", "e", "f"]
    events = [vllm_chunk(t, obfuscation="x" * (i % 3 + 1)) for i, t in enumerate(texts)]
    events += [dict(vllm_chunk(t), created=2 + i // 3) for i, t in enumerate(texts)]
    pieces = compact(*events)
    assert reference(b"".join(pieces))[2] == 12
    assert feed_all(pieces).events == 12
