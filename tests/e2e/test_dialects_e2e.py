"""Every dialect through kvproxy against the real llama-server, with the real client SDKs."""

from __future__ import annotations

import json

import httpx
import ollama
import openai
import pytest

from proxy.backends.embedded import EmbeddedServer
from tests.conftest import Proxy

pytestmark = pytest.mark.e2e

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name three colours."},
]
# A reply that cannot end within a few tokens, so a token limit is what stops it: a greedy
# "Name three colours." ended after 7 tokens on one CPU build ("There are no three colours.").
COUNTING = [{"role": "user", "content": "Count from 1 to 100, separated by commas."}]


def oai(proxy: Proxy) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0)


def test_openai_sdk_chat_matches_direct(proxy: Proxy, llama: EmbeddedServer) -> None:
    """Greedy decoding through kvproxy gives exactly what the server gives directly."""
    direct = openai.OpenAI(base_url=llama.url + "/v1", api_key="unused", max_retries=0)
    kwargs = {"model": "smollm2", "messages": MESSAGES, "max_tokens": 12, "temperature": 0}
    via_proxy = oai(proxy).chat.completions.create(**kwargs)
    straight = direct.chat.completions.create(**kwargs)
    assert via_proxy.choices[0].message.content
    assert via_proxy.choices[0].message.content == straight.choices[0].message.content
    assert (
        via_proxy.usage is not None
        and via_proxy.usage.prompt_tokens == straight.usage.prompt_tokens
    )


def test_openai_sdk_chat_stream(proxy: Proxy) -> None:
    stream = oai(proxy).chat.completions.create(
        model="smollm2",
        messages=MESSAGES,
        max_tokens=10,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert len(chunks) > 3 and text
    assert finishes in (["length"], ["stop"])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_openai_sdk_tools_reach_the_server(proxy: Proxy) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "now",
                "description": "time",
                "parameters": {"type": "object", "properties": {}},
            },
        }
    ]
    resp = oai(proxy).chat.completions.create(
        model="smollm2", messages=MESSAGES, tools=tools, tool_choice="auto", max_tokens=8
    )
    assert resp.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_openai_sdk_completions(proxy: Proxy) -> None:
    resp = oai(proxy).completions.create(model="smollm2", prompt="Once upon a time", max_tokens=6)
    assert resp.choices[0].text
    stream = oai(proxy).completions.create(
        model="smollm2", prompt="Once upon a time", max_tokens=6, stream=True
    )
    assert "".join(c.choices[0].text for c in stream if c.choices)


@pytest.mark.parametrize("path", ["/completion", "/completions"])
def test_llamacpp_completion_native(proxy: Proxy, path: str) -> None:
    body = {"prompt": "The sky is", "n_predict": 6, "cache_prompt": True}
    resp = httpx.post(proxy.url + path, json=body, timeout=60)
    assert resp.status_code == 200
    data = resp.json()
    assert data["content"] and data["timings"]["predicted_n"] == 6
    with httpx.stream("POST", proxy.url + path, json={**body, "stream": True}, timeout=60) as s:
        assert s.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: ")]
    assert events[-1]["stop"] is True and "timings" in events[-1]


def test_ollama_client_chat_generate_and_listing(proxy: Proxy) -> None:
    client = ollama.Client(host=proxy.url)
    reply = client.chat(model="smollm2", messages=COUNTING,
                        options={"num_predict": 8, "temperature": 0})  # fmt: skip
    assert reply.message.role == "assistant" and reply.message.content
    assert reply.done and reply.done_reason == "length"
    assert reply.prompt_eval_count and reply.prompt_eval_count > 10
    assert reply.eval_count == 8 and reply.eval_duration and reply.total_duration

    parts = list(
        client.chat(
            model="smollm2",
            messages=COUNTING,
            stream=True,
            options={"num_predict": 8, "temperature": 0},
        )
    )
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done
    assert "".join(p.message.content or "" for p in parts)
    assert parts[-1].prompt_eval_duration is not None and parts[-1].eval_count == 8

    gen = client.generate(
        model="smollm2", prompt="Why is the sky blue?", options={"num_predict": 6, "temperature": 0}
    )
    assert gen.response and gen.done and gen.eval_count == 6
    raw = list(
        client.generate(
            model="smollm2", prompt="1, 2, 3,", raw=True, stream=True, options={"num_predict": 4}
        )
    )
    assert raw[-1].done and "".join(p.response for p in raw)

    listed = client.list()
    assert (listed.models and listed.models[0].model == "smollm2-135m-instruct") or listed.models
    shown = client.show("smollm2")
    assert shown.template and "im_start" in shown.template


def test_ollama_version_endpoint(proxy: Proxy) -> None:
    resp = httpx.get(proxy.url + "/api/version")
    assert resp.status_code == 200 and resp.json()["version"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/health", None),
        ("GET", "/props", None),
        ("GET", "/slots", None),
        ("POST", "/tokenize", {"content": "Hello kvproxy, ünïcode ✓"}),
        ("POST", "/detokenize", {"tokens": [1, 2, 3]}),
        ("POST", "/apply-template", {"messages": MESSAGES}),
        ("GET", "/no/such/path?x=1", None),
        ("DELETE", "/v1/chat/completions", None),
    ],
)
def test_other_paths_forward_byte_for_byte(
    proxy: Proxy, llama: EmbeddedServer, method: str, path: str, body: dict | None
) -> None:
    content = json.dumps(body).encode() if body is not None else None
    via = httpx.request(method, proxy.url + path, content=content, timeout=30)
    direct = httpx.request(method, llama.url + path, content=content, timeout=30)
    assert via.status_code == direct.status_code
    assert via.content == direct.content
    assert via.headers.get("content-type") == direct.headers.get("content-type")


def test_metrics_of_the_upstream_pass_through(proxy: Proxy) -> None:
    resp = httpx.get(proxy.url + "/upstream/metrics")
    assert resp.status_code == 200 and "llamacpp:" in resp.text


def test_each_request_logs_one_record_with_server_counters(proxy: Proxy) -> None:
    body = {"messages": MESSAGES, "max_tokens": 4, "stream": True}
    resp = httpx.post(proxy.url + "/v1/chat/completions", json=body, timeout=60)
    assert resp.status_code == 200
    again = httpx.post(proxy.url + "/v1/chat/completions", json=body, timeout=60)
    assert again.status_code == 200
    records = [json.loads(line) for line in proxy.log_lines() if '"request_done"' in line]
    last = records[-1]
    assert last["dialect"] == "openai_chat" and last["stream"] is True and last["status"] == 200
    assert last["prompt_tokens"] > 10 and last["ttft_ms"] is not None
    # The second identical prompt reuses the first one's cache (server's own cache_n).
    assert last["cached_tokens"] > 0 and last["prefilled_tokens"] < last["prompt_tokens"]
