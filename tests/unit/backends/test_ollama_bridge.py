"""ollama requests and responses translated to and from llama-server's OpenAI API."""

from __future__ import annotations

import json

from proxy.backends import ollama_bridge
from proxy.dialects.ollama_chat import DIALECT as OLLAMA_CHAT
from proxy.dialects.ollama_generate import DIALECT as OLLAMA_GENERATE


def test_chat_request_maps_messages_options_and_tool_calls() -> None:
    conv = OLLAMA_CHAT.parse(
        {
            "model": "smollm2",
            "messages": [
                {"role": "user", "content": "see", "images": ["QUJD"]},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}],
                },
                {"role": "tool", "content": "42", "tool_name": "f"},
            ],
            "options": {"num_predict": 5, "temperature": 0},
            "keep_alive": "1m",
        }
    )
    path, body = ollama_bridge.upstream_request(conv, "chat")
    assert path == "/v1/chat/completions"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 5 and body["temperature"] == 0
    assert "keep_alive" not in body
    user, assistant, tool = body["messages"]
    assert user["content"][0] == {"type": "text", "text": "see"}
    assert user["content"][1]["image_url"]["url"] == "data:image/png;base64,QUJD"
    call = assistant["tool_calls"][0]
    assert json.loads(call["function"]["arguments"]) == {"x": 1} and call["type"] == "function"
    assert tool == {"role": "tool", "content": "42", "name": "f"}


def test_generate_request_uses_chat_unless_raw() -> None:
    templated = OLLAMA_GENERATE.parse(
        {"model": "m", "prompt": "hi", "system": "sys", "stream": False}
    )
    path, body = ollama_bridge.upstream_request(templated, "generate")
    assert path == "/v1/chat/completions"
    assert body["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "hi"},
    ]
    raw = OLLAMA_GENERATE.parse({"model": "m", "prompt": "hi", "raw": True})
    path, body = ollama_bridge.upstream_request(raw, "generate")
    assert path == "/v1/completions" and body["prompt"] == "hi"


def test_stream_translation_ends_with_done_and_ollama_units() -> None:
    responder = ollama_bridge.OllamaResponder(endpoint="chat", model="smollm2")
    out = responder.on_event({"choices": [{"delta": {"content": "Hel"}}]})
    out += responder.on_event(
        {"choices": [{"delta": {"content": "lo"}, "finish_reason": "length"}]}
    )
    out += responder.on_event(
        {
            "choices": [],
            "usage": {"prompt_tokens": 20, "completion_tokens": 2},
            "timings": {
                "prompt_n": 5,
                "cache_n": 15,
                "prompt_ms": 2.5,
                "predicted_n": 2,
                "predicted_ms": 4.0,
            },
        }
    )
    out += responder.closing_frames()
    assert [o["message"]["content"] for o in out[:2]] == ["Hel", "lo"]
    final = out[-1]
    assert final["done"] is True and final["done_reason"] == "length"
    assert final["prompt_eval_count"] == 20
    assert final["prompt_eval_duration"] == 2_500_000
    assert final["eval_count"] == 2 and final["eval_duration"] == 4_000_000
    assert final["total_duration"] > 0 and final["load_duration"] == 0


def test_streamed_tool_call_pieces_are_joined() -> None:
    responder = ollama_bridge.OllamaResponder(endpoint="chat", model="m")
    responder.on_event(
        {
            "choices": [
                {
                    "delta": {
                        "tool_calls": [
                            {"index": 0, "function": {"name": "read", "arguments": '{"pa'}}
                        ]
                    }
                }
            ]
        }
    )
    responder.on_event(
        {
            "choices": [
                {
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": 'th":"a"}'}}]},
                    "finish_reason": "tool_calls",
                }
            ]
        }
    )
    calls_chunk, done = responder.closing_frames()
    assert calls_chunk["message"]["tool_calls"] == [
        {"function": {"name": "read", "arguments": {"path": "a"}}}
    ]
    assert done["done"] is True


def test_whole_generate_answer() -> None:
    responder = ollama_bridge.OllamaResponder(endpoint="generate", model="m")
    out = responder.whole(
        {
            "choices": [{"message": {"content": "Blue."}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 2},
        }
    )
    assert out["response"] == "Blue." and out["done"] is True and out["prompt_eval_count"] == 9


def test_tags_and_show_from_llama_server_metadata() -> None:
    models = {
        "data": [
            {"id": "SmolLM2.gguf", "meta": {"size": 1000, "n_params": 135, "n_ctx_train": 8192}}
        ]
    }
    props = {"chat_template": "{{x}}", "default_generation_settings": {"n_ctx": 4096}}
    tags = ollama_bridge.tags(models, props)
    assert tags["models"][0]["name"] == "SmolLM2.gguf" and tags["models"][0]["size"] == 1000
    show = ollama_bridge.show(models, props)
    assert show["template"] == "{{x}}" and show["parameters"] == "num_ctx 4096"
    assert show["model_info"]["general.parameter_count"] == 135
