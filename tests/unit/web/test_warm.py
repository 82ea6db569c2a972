"""Warm start's decisions: when the warmed prefixes are gone, and what is sent."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from proxy.web.warm import WarmBody, load_bodies, lost_cache, warm_request


@pytest.mark.parametrize(
    ("kind", "answer", "lost"),
    [
        ("llama", [{"id": 0, "n_prompt_tokens": 0}, {"id": 1, "n_prompt_tokens": 0}], True),
        ("llama", [{"id": 0}, {"id": 1}], True),  # a restarted server: nothing held
        ("llama", [{"id": 0, "n_prompt_tokens": 0}, {"id": 1, "n_prompt_tokens": 900}], False),
        ("llama", [{"id": 0, "is_processing": True}], False),  # busy: it holds something
        ("llama", [], False),  # no slots reported: unknown
        ("llama", {"error": "x"}, False),
        ("ollama", {"models": []}, True),  # unloaded (keep_alive ran out) or restarted
        ("ollama", {"models": [{"name": "qwen2.5:7b"}]}, False),
        ("ollama", "garbage", False),
    ],
)
def test_lost_cache(kind: str, answer: Any, lost: bool) -> None:
    assert lost_cache(kind, answer) is lost


def test_warm_bodies_are_chat_bodies(tmp_path: Path) -> None:
    good = tmp_path / "full.json"
    good.write_text(json.dumps({"messages": [{"role": "system", "content": "x"}],
                                "stream": True}))  # fmt: skip
    assert load_bodies([good])[0].name == "full.json"
    for text, error in (("{", "full2.json"), ('{"messages": []}', "not a chat body"),
                        ("[1]", "not a chat body")):  # fmt: skip
        bad = tmp_path / "full2.json"
        bad.write_text(text)
        with pytest.raises(ValueError, match=re.escape(error)):
            load_bodies([bad])
    with pytest.raises(ValueError, match=re.escape("missing.json")):
        load_bodies([tmp_path / "missing.json"])


def test_the_reply_is_one_token_unstreamed() -> None:
    body = {"messages": [{"role": "system", "content": "x"}], "stream": True, "tools": []}
    sent = warm_request(WarmBody("w", body))
    assert sent["max_tokens"] == 1 and sent["stream"] is False and sent["tools"] == []
    assert sent["messages"] == body["messages"]


def test_busiest_counts_answered_client_requests_since() -> None:
    from proxy.web.warm import busiest

    now = 1000.0
    records = [
        {"lineage": "a", "status": 200, "time": now},
        {"lineage": "b", "status": 200, "time": now},
        {"lineage": "b", "status": 200, "time": now},
        {"lineage": "c", "status": 200, "time": now - 10},  # too old
        {"lineage": "a", "status": 500, "time": now},  # failed
        {"lineage": "d", "status": 200, "time": now, "warm": "agent.json"},  # a warm-up
        {"lineage": "d", "status": 200, "time": now, "warm": "agent.json"},
        {"lineage": None, "status": 200, "time": now},
    ]
    assert busiest(records, since=now - 5) == ["b", "a"]


def test_auto_bodies_are_distinct_prefixes_within_the_budget() -> None:
    from proxy.core.conversation import Message
    from proxy.rewrite.tape import Tape
    from proxy.web.warm import auto_bodies

    tool = json.dumps({"type": "function", "function": {"name": "run"}})

    def tape(lineage: str, system: str | None) -> Tape:
        sent = [Message("system", system)] if system else []
        return Tape(lineage, [], [], [*sent, Message("user", "hi")], tools=[tool])

    tapes = {"a": tape("a", "Agent A."), "b": tape("b", "Agent A."), "c": tape("c", None),
             "d": tape("d", "Agent D."), "e": tape("e", "Agent E.")}  # fmt: skip
    bodies = auto_bodies(["a", "b", "c", "x", "d", "e"], tapes.get, budget=2)
    assert [b.name for b in bodies] == ["auto:a", "auto:d"]  # b repeats a; c has no system
    assert bodies[0].body == {"messages": [{"role": "system", "content": "Agent A."}],
                              "tools": [json.loads(tool)]}  # fmt: skip
    assert auto_bodies(["a"], tapes.get, budget=0) == []
