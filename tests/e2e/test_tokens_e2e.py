"""kvproxy's tokens equal llama-server's own, on varied conversations (real server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.backends.embedded import EmbeddedServer, bundled_model
from proxy.backends.upstream import Upstream, make_session
from proxy.core.conversation import Conversation
from proxy.tokens import LocalTokenizer, ServerTokenizer, tokenizer_for
from proxy.tokens.bpe import PieceTokenizer
from proxy.tokens.gguf import Vocab
from tests.conftest import start_proxy, stop_proxy

pytestmark = pytest.mark.e2e

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "description": "Read a file",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
        },
    }
]
LONG = " ".join(f"line {i}: the quick brown fox jumps over {i * 7} lazy dogs." for i in range(400))
CONVERSATIONS: dict[str, dict[str, Any]] = {
    "plain": {"messages": [{"role": "user", "content": "Hello there!"}]},
    "system and turns": {
        "messages": [
            {"role": "system", "content": "You are terse.\n\n  Indented\ttabs  "},
            {"role": "user", "content": "What's 2+2? I'll ask: they're, we've 12345"},
            {"role": "assistant", "content": "4."},
            {"role": "user", "content": "And 3+3?\n\n\n"},
        ]
    },
    "unicode": {
        "messages": [
            {"role": "user", "content": "émoji 🎉🎉 ünïcödé 中文 日本語 한국어 ∑∫√ — “quotes”"}
        ]
    },
    "special token text inside content": {
        "messages": [{"role": "user", "content": "literal <|im_start|>user and <|im_end|> here"}]
    },
    "long content": {"messages": [{"role": "user", "content": LONG}]},
    "assistant prefill": {  # the reply continues the last message (server-common.cpp)
        "messages": [
            {"role": "user", "content": "Colour of the sky?"},
            {"role": "assistant", "content": '{"colour": "'},
        ]
    },
    "tool call and result": {
        "messages": [
            {"role": "user", "content": "Read a.txt"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "read_file", "arguments": '{"path": "a.txt"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "file body ✓"},
        ],
        "tools": TOOLS,
    },
    "typed content parts": {
        "messages": [{"role": "user", "content": [{"type": "text", "text": "part one"}]}]
    },
}


def server_tokens(llama: EmbeddedServer, body: dict[str, Any]) -> list[int]:
    prompt = httpx.post(llama.url + "/apply-template", json=body, timeout=30).json()["prompt"]
    tokens = httpx.post(
        llama.url + "/tokenize", json={"content": prompt, "add_special": True}, timeout=30
    ).json()["tokens"]
    return tokens


@pytest.fixture
async def upstream(llama: EmbeddedServer) -> Any:
    session = make_session(10, 60)
    up = Upstream(url=llama.url, kind="llama", session=session)
    up.props = await up.get_json("/props")
    yield up
    await session.close()


@pytest.fixture(scope="module")
def pieces() -> PieceTokenizer:
    return PieceTokenizer(Vocab.from_gguf(bundled_model()))


@pytest.fixture
def local(pieces: PieceTokenizer, upstream: Upstream) -> LocalTokenizer:
    return LocalTokenizer(pieces, upstream.props["chat_template"], ServerTokenizer(upstream))


async def test_the_servers_own_gguf_is_used(upstream: Upstream) -> None:
    assert isinstance(await tokenizer_for(upstream, None), LocalTokenizer)


@pytest.mark.parametrize("name", list(CONVERSATIONS))
async def test_local_tokens_equal_the_servers(
    name: str, local: LocalTokenizer, llama: EmbeddedServer
) -> None:
    body = CONVERSATIONS[name]
    assert list(await local.prompt_tokens(Conversation(kind="chat"), body) or ()) == server_tokens(
        llama, body
    )


@pytest.mark.parametrize("name", ["system and turns", "tool call and result"])
async def test_server_tokenizer_equals_the_server(
    name: str, upstream: Upstream, llama: EmbeddedServer
) -> None:
    body = CONVERSATIONS[name]
    tok = ServerTokenizer(upstream)
    assert list(await tok.prompt_tokens(Conversation(kind="chat"), body) or ()) == server_tokens(
        llama, body
    )


async def test_completion_prompt_tokens(local: LocalTokenizer, llama: EmbeddedServer) -> None:
    tok = local
    text = "Once upon a time 🎉 in 1999,"
    direct = httpx.post(
        llama.url + "/tokenize", json={"content": text, "add_special": True}
    ).json()["tokens"]
    assert (
        list(await tok.prompt_tokens(Conversation(kind="completion"), {"prompt": text}) or ())
        == direct
    )


async def test_appending_a_message_tokenizes_only_the_new_piece(local: LocalTokenizer) -> None:
    tok = local
    messages = [{"role": "system", "content": "You are terse."}]
    messages += [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"{LONG[:2000]} turn {i}"}
        for i in range(40)
    ]
    conv = Conversation(kind="chat")
    await tok.prompt_tokens(conv, {"messages": messages})
    assert len(await tok.prompt_tokens(conv, {"messages": messages})) > 15_000
    before = tok.pieces.pieces_tokenized
    messages.append({"role": "user", "content": "one more question"})
    await tok.prompt_tokens(conv, {"messages": messages})
    # the new message's piece, and the generation prompt piece that moved after it
    assert tok.pieces.pieces_tokenized - before <= 2


def test_vocab_reads_the_gguf_metadata(pieces: PieceTokenizer) -> None:
    vocab = pieces.vocab
    assert len(vocab.tokens) == 49152 and vocab.pre == "smollm" and vocab.chat_template


def test_the_server_path_predicts_the_reply_too(llama: EmbeddedServer, tmp_path: Path) -> None:
    """``--tokenizer server``: every prompt tokenized by llama-server, and each reply asked of
    /tokenize after the response, so the next turn's prediction includes it (issue 11, 4)."""
    proxy = start_proxy(tmp_path, "--upstream", llama.url, "--tokenizer", "server")
    try:
        messages = [{"role": "system", "content": LONG[:3000]},
                    {"role": "user", "content": "Summarize the lines."}]  # fmt: skip
        seen = []
        for turn in range(3):
            body = {"messages": messages, "max_tokens": 24, "temperature": 0,
                    "user": "server-path"}  # fmt: skip
            resp = httpx.post(proxy.url + "/v1/chat/completions", json=body, timeout=120)
            resp.raise_for_status()
            predicted = int(resp.headers["x-kvproxy-cache"].split(";")[0].split("=")[1])
            cached = resp.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
            seen.append((predicted, cached))
            reply = resp.json()["choices"][0]["message"]["content"]
            messages = [*messages, {"role": "assistant", "content": reply},
                        {"role": "user", "content": f"And point {turn}?"}]  # fmt: skip
        assert "tokenizer_server" in "\n".join(proxy.log_lines())
        assert all(p == c for p, c in seen[1:]), seen
        assert seen[2][1] > seen[1][1] > 600  # the reply included: the prefix grows
    finally:
        stop_proxy(proxy)
