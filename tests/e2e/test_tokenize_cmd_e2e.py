"""``kvproxy tokenize`` prints what llama.cpp's own ``llama-tokenize --ids`` prints, on both
real models (a BPE and an SPM vocabulary), and agrees with a running llama-server on a
chat body (issue 11, point 6)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.backends.embedded import EmbeddedServer, bundled_model, gemma3_270m, llama_server_binary

pytestmark = pytest.mark.e2e

TEXTS = [
    "Hello world",
    " leading space and  double  spaces",
    "<|im_start|>user\\nhi<|im_end|>\\n<start_of_turn>model",
    "émoji 🎉 中文 ∑ \\t tab",
    "a\\x41b \\q",
]
FLAGS = [[], ["--no-bos"], ["--no-parse-special"], ["--no-escape"]]


def llama_tokenize(model: Path, text: str, flags: list[str]) -> str:
    binary = llama_server_binary().parent / "llama-tokenize"
    env = {**os.environ, "LD_LIBRARY_PATH": str(binary.parent)}
    args = [str(binary), "-m", str(model), "-p", text, "--ids", "--log-disable", *flags]
    return subprocess.run(args, capture_output=True, text=True, env=env, check=True).stdout


def kvproxy(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", "tokenize", *args], input=stdin,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_the_same_ids_as_llama_tokenize(model: str) -> None:
    path = bundled_model() if model == "smollm2" else gemma3_270m()
    for text in TEXTS:
        for flags in FLAGS:
            want = llama_tokenize(path, text, flags)
            got = kvproxy("--model", str(path), *flags, text)
            assert got.returncode == 0, got.stderr
            assert got.stdout == want, (text, flags)


def test_standard_input() -> None:
    path = bundled_model()
    got = kvproxy("--model", str(path), "-", stdin="line one\nline two\\n")
    assert got.stdout == llama_tokenize(path, "line one\nline two\\n", [])


def test_a_chat_body_equals_the_servers_tokens(llama: EmbeddedServer, tmp_path: Path) -> None:
    body = {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Read a.txt"},
            {"role": "assistant", "content": None, "tool_calls": [{
                "id": "c1", "type": "function",
                "function": {"name": "read_file", "arguments": '{"path": "a.txt"}'}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "hello ünïcödé"},
        ],
        "tools": [{"type": "function", "function": {
            "name": "read_file", "parameters": {"type": "object", "properties": {}}}}],
    }  # fmt: skip
    path = tmp_path / "body.json"
    path.write_text(json.dumps(body))
    checked = kvproxy("--model", str(bundled_model()), "--chat", str(path), "--upstream",
                      llama.url)  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    assert "server: equal" in checked.stderr
    offline = kvproxy("--model", str(bundled_model()), "--chat", str(path))
    assert offline.stdout == checked.stdout and len(json.loads(offline.stdout)) > 30


def test_bad_input_is_a_plain_error(tmp_path: Path) -> None:
    missing = kvproxy("--model", str(tmp_path / "none.gguf"), "hi")
    assert missing.returncode == 2 and "kvproxy tokenize:" in missing.stderr
    assert "Traceback" not in missing.stderr
    both = kvproxy("--model", str(bundled_model()))
    assert both.returncode == 2 and "one of the two" in both.stderr
    (tmp_path / "bad.json").write_text("[1, 2]")
    bad = kvproxy("--model", str(bundled_model()), "--chat", str(tmp_path / "bad.json"))
    assert bad.returncode == 2 and "not a chat body" in bad.stderr
