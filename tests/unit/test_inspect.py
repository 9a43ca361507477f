"""Reading an LLM request body (SPEC §16.1): orjson on a whole body, a member scan on a held prefix."""

from __future__ import annotations

import json

import pytest

from a3s_gateway.http.inspect import is_json, read_request


def test_whole_body_members() -> None:
    info = read_request(b'{"model":"m","stream":true,"max_completion_tokens":300,'
                        b'"stream_options":{"include_usage":true}}', True)
    assert (info.model, info.stream, info.max_tokens, info.include_usage) == ("m", True, 300, True)
    info = read_request(b'{"model":"m","max_tokens":true,"stream":1}', True)
    assert (info.model, info.stream, info.max_tokens, info.include_usage) == ("m", False, None, False)


@pytest.mark.parametrize("body", [b"", b"not json", b'{"model": 3}', b'["model"]', b'{"model": "a"', b'"model"',
                                  b'{"model": null}', b'{"mode": "x"}'])
def test_no_model(body: bytes) -> None:
    assert read_request(body, True).model is None


def test_prefix_scan_finds_the_first_top_level_model() -> None:
    body = json.dumps({
        "messages": [{"role": "user", "content": 'say "model": "fake" }]{ \\'}],
        "tool": {"model": "nested"},
        "model": "llama\u00e9",
        "max_tokens": 12,
        "prompt": "x" * 1000,
    }).encode()
    cut = body.index(b'"prompt"') + 20
    info = read_request(body[:cut], False)
    assert info.model == "llama\u00e9" and info.max_tokens == 12
    assert read_request(b'  {"model" : "a", "model": "b", "x": [1, {"y": "', False).model == "a"


@pytest.mark.parametrize("prefix", [
    b'{"messages": [{"content": "a long prompt',  # cut before the model
    b'{"model": "llama-3',  # cut inside the value
    b'{"max_tokens": 12',  # a number that may go on
    b'x{"model": "a", ',  # not an object
    b'{"a": tru, "model": "m", ',  # not JSON before the model
])
def test_prefix_scan_without_a_whole_model(prefix: bytes) -> None:
    info = read_request(prefix, False)
    assert info.model is None and info.max_tokens is None


def test_content_type() -> None:
    assert is_json(b"application/json") and is_json(b"Application/JSON; charset=utf-8")
    assert not is_json(b"application/jsonl") and not is_json(b"text/json") and not is_json(b"")
