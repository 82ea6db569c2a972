"""Incremental framing: events come out whole however the bytes were cut."""

from __future__ import annotations

import json

import pytest

from proxy.core.errors import UpstreamProtocol
from proxy.core.streaming import NDJSONSplitter, SSESplitter, UsageObserver, server_counters

SSE = (
    b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\n'
    b'data: {"choices":[],"usage":{"prompt_tokens":12},"timings":{"prompt_n":4,"cache_n":8,'
    b'"prompt_ms":1.5,"predicted_n":3}}\n\n'
    b"data: [DONE]\n\n"
)


@pytest.mark.parametrize("cut", [1, 2, 7, 50, len(SSE)])
def test_sse_events_survive_any_chunking(cut: int) -> None:
    splitter = SSESplitter()
    payloads = []
    for i in range(0, len(SSE), cut):
        payloads.extend(splitter.feed(SSE[i : i + cut]))
    assert payloads[-1] == b"[DONE]"
    assert json.loads(payloads[0])["choices"][0]["delta"]["content"] == "Hi"
    assert len(payloads) == 3


def test_sse_handles_crlf_and_multiline_data() -> None:
    out = list(SSESplitter().feed(b"event: x\r\ndata: a\r\ndata: b\r\n\r\n"))
    assert out == [b"a\nb"]


def test_ndjson_lines_split_across_chunks() -> None:
    splitter = NDJSONSplitter()
    assert list(splitter.feed(b'{"a":1}\n{"b"')) == [b'{"a":1}']
    assert list(splitter.feed(b":2}\n\n")) == [b'{"b":2}']


@pytest.mark.parametrize("cut", [3, len(SSE)])
def test_observer_reads_llama_timings_from_a_stream(cut: int) -> None:
    obs = UsageObserver("sse")
    for i in range(0, len(SSE), cut):
        obs.feed(SSE[i : i + cut])
    counters = obs.counters()
    assert counters["cached_tokens"] == 8
    assert counters["prefilled_tokens"] == 4
    assert counters["prompt_tokens"] == 12


def test_observer_reads_a_whole_json_body() -> None:
    obs = UsageObserver("sse")
    obs.observe_body(b'{"usage":{"prompt_tokens":9,"prompt_tokens_details":{"cached_tokens":5}}}')
    assert obs.counters()["cached_tokens"] == 5


def test_observer_reads_ollama_counters() -> None:
    obs = UsageObserver("ndjson")
    obs.feed(b'{"done":false}\n{"done":true,"prompt_eval_count":30,"eval_count":4}\n')
    assert obs.counters() == {"prompt_tokens": 30, "decode_tokens": 4}


@pytest.mark.parametrize(
    ("timings", "usage", "expected"),
    [
        ({}, {}, {}),
        (
            {"prompt_n": 2, "cache_n": 10},
            {},
            {"prefilled_tokens": 2, "cached_tokens": 10, "prompt_tokens": 12},
        ),
        (
            {},
            {"prompt_tokens": 7, "completion_tokens": 2},
            {"prompt_tokens": 7, "decode_tokens": 2},
        ),
    ],
)
def test_server_counters(timings: dict, usage: dict, expected: dict) -> None:
    got = server_counters(timings, usage)
    assert {k: got[k] for k in expected} == expected


def test_cached_tokens_are_filled_from_the_servers_figure_only_when_missing() -> None:
    from proxy.core.streaming import with_cached_tokens

    body = json.dumps({"usage": {"prompt_tokens": 10, "completion_tokens": 2}}).encode()
    filled = json.loads(with_cached_tokens(body, 7))
    assert filled["usage"]["prompt_tokens_details"] == {"cached_tokens": 7}
    present = json.dumps({"usage": {"prompt_tokens_details": {"cached_tokens": 3}}}).encode()
    assert with_cached_tokens(present, 7) == present
    assert with_cached_tokens(body, None) == body


def test_observer_collects_generated_text_and_finish_reason() -> None:
    from proxy.core.streaming import UsageObserver

    observer = UsageObserver("sse")
    for delta, reason in (("Hel", None), ("lo", None), ("", "length")):
        event = {"choices": [{"delta": {"content": delta}, "finish_reason": reason}]}
        observer.feed(b"data: " + json.dumps(event).encode() + b"\n\n")
    observer.feed(b'data: {"content": "", "stop": true, "stop_type": "eos"}\n\n')
    assert observer.text == "Hello" and observer.finish_reason == "stop"


# --- issue 21: the upstream is untrusted -------------------------------------------------


def test_an_event_over_the_bound_raises_however_it_is_cut() -> None:
    """It is refused once the buffer passes the bound, not held until it ends."""
    splitter = SSESplitter(max_event_bytes=1000)
    list(splitter.events(b"data: " + b"x" * 900))
    with pytest.raises(UpstreamProtocol, match="over 1000 bytes"):
        list(splitter.events(b"x" * 200))
    lines = NDJSONSplitter(max_event_bytes=1000)
    with pytest.raises(UpstreamProtocol):
        list(lines.events(b"y" * 1001))


def test_a_large_event_in_small_chunks_comes_out_whole() -> None:
    splitter = SSESplitter()
    event = b"data: " + b"z" * 200_000 + b"\n\n"
    out = [p for i in range(0, len(event), 97) for p in splitter.feed(event[i : i + 97])]
    assert out == [b"z" * 200_000]


def test_crlf_cut_between_chunks_still_ends_an_event() -> None:
    splitter = SSESplitter()
    assert list(splitter.feed(b"data: a\r\n\r")) == []
    assert list(splitter.feed(b"\ndata: b\r\n\r\n")) == [b"a", b"b"]


@pytest.mark.parametrize(
    "bad", [b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n", b"garbage\n\n"]
)
def test_a_line_that_is_no_sse_field_raises(bad: bytes) -> None:
    with pytest.raises(UpstreamProtocol, match="SSE framing"):
        list(SSESplitter().feed(bad))


def test_llama_server_error_field_and_comments_are_sound() -> None:
    events = list(SSESplitter().events(b': ping\n\nerror: {"message":"x"}\n\nid: 1\ndata: 2\n\n'))
    assert [payload for _raw, payload in events] == [None, None, b"2"]


def test_the_relay_forwards_the_good_events_before_a_bad_one() -> None:
    obs = UsageObserver("sse")
    out = []
    with pytest.raises(UpstreamProtocol, match="no JSON object"):
        for piece in obs.relay(SSE[:48] + b"data: {oops\n\n" + SSE[48:]):
            out.append(piece)
    assert out == [SSE[:48]] and obs.text == "Hi"


def test_the_observer_keeps_no_text_past_its_bound() -> None:
    obs = UsageObserver("sse", max_text_chars=10)
    for _ in range(5):
        obs.observe({"choices": [{"delta": {"content": "abcd"}}]})
    assert obs.text == "" and obs.text_truncated
