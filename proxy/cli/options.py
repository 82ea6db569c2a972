"""The ``kvproxy`` command line. ``serve``'s flags have no argparse defaults: a flag the
command line does not give is absent, so one given equal to its default still wins over a
variable or the file (``proxy.config.resolve``); ``--help`` shows the built-in defaults."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from proxy import __version__
from proxy.cli import doctor
from proxy.cli import tokenize as tokenize_command
from proxy.config.resolve import ServeOptions, variable
from proxy.config.settings import default_data_dir
from proxy.records.stats import GROUPS

# (flag, type, help); each flag's variable is KVPROXY_<FLAG>, its default ServeOptions'.
SERVE_OPTIONS: tuple[tuple[str, type, str], ...] = (
    ("--host", str, "address to listen on"),
    ("--port", int, "port to listen on"),
    ("--data-dir", Path,
     "LMDB, slot files and logs; default: $XDG_STATE_HOME/kvproxy or ~/.local/state/kvproxy"),
    ("--max-body-bytes", int, "largest request body on dialect paths"),
    ("--max-inflight-body-bytes", int,
     "all request bodies held at once; beyond it a 503 with Retry-After"),
    ("--connect-timeout", float, "seconds to connect to an upstream"),
    ("--idle-timeout", float,
     "close a client connection that has not sent complete request headers within this many "
     "seconds (idle keep-alive and slow or partial headers alike)"),
    ("--body-timeout", float, "seconds to receive a request body, else a 408"),
    ("--upstream-max-inflight", int,
     "requests sent to one upstream at once (0: 4 per slot); more wait in kvproxy's queue"),
    ("--queue-timeout", float,
     "seconds a request may wait in kvproxy's queue before a 503 with Retry-After"),
    ("--shutdown-grace", float,
     "on SIGTERM/SIGINT: seconds the requests in flight may take to finish (new and queued "
     "ones get a 503) before they are cut; keep it below the service manager's stop timeout"),
    ("--upstream-timeout", float,
     "seconds of upstream silence (before the first byte or between chunks) before a 504"),
    ("--ollama-num-ctx", int,
     "in front of ollama: the num_ctx sent with every request (0: the loaded model's, else "
     "the first request's; -1: the client's own, which may make ollama reload)"),
    ("--ollama-keep-alive", str,
     "in front of ollama: the shortest keep_alive sent with every request ('off': the "
     "client's own)"),
    ("--log-level", str, "debug, info, warning or error"),
    ("--log-format", str,
     "stderr lines: console (readable), json, or auto (console on a terminal, else json); "
     "the log file is always JSON"),
    ("--tokenizer", Path,
     "GGUF file or tokenizer directory for exact tokens; default: the server's own GGUF; "
     "'server': always ask the server (/apply-template, /tokenize)"),
    ("--slot-cache-max-bytes", int,
     "disk budget for saved slot files (oldest-used deleted first)"),
    ("--slot-checkpoint-idle", float,
     "save a slot's new content to disk once it has been idle this many seconds (0: only "
     "save when evicting)"),
    ("--slot-dir", Path,
     "an external llama-server's --slot-save-path, reachable from here: kvproxy then deletes "
     "the files its checkpoints supersede, and only then takes idle checkpoints"),
    ("--api-key", str,
     "require this key from clients (Authorization: Bearer KEY); see docs/security.md"),
    ("--api-key-file", Path,
     "read API keys from this file, one per line: each key is its own principal (clients "
     "with different keys never share a conversation or a cached prefix)"),
    ("--rewrite", str,
     "rewrite rules: all, off (a pure router), a list (tape,volatile,compaction,tools) or "
     "removals (-volatile); the opt-in summarizer rule is added by name (all,summarizer)"),
    ("--rewrite-reserve-tokens", int,
     "context kept free for the reply when a compaction summary is appended to the tape"),
    ("--max-tapes", int, "conversation lineages remembered (least recently used out)"),
    ("--keep-tapes", str,
     "where tapes (earlier messages' text, re-sent by the compaction append) live: lmdb "
     "(survive a restart) or memory (never written to disk; a restart loses them)"),
    ("--records-max", int, "request records kept in LMDB (oldest pruned first)"),
    ("--records-max-bytes", int,
     "the LMDB map grows up to this size; past 80 percent of it the oldest records are pruned"),
    ("--route-hot-tokens", int,
     "a slot that would lose this many recently used tokens is hot (the route's reason "
     "says evict); the slot given up is the one cheapest to bring back"),
    ("--route-busy-wait-tokens", int,
     "load guard: queue behind a busy slot only when it saves more prefill tokens than this"),
    ("--route-max-queue", int, "load guard: never queue this many requests on one slot"),
    ("--route-min-restore-gain", int,
     "restore a saved prefix only when that saves this many tokens of prefill over the best "
     "live slot, net of reading the file and of what the replaced slot loses"),
    ("--upstream-cache-ram", int,
     "an external llama-server's --cache-ram in MiB (-1: no limit, 0: off): its host-RAM "
     "prompt cache, which routing counts on; unset: its default, counted on once a request "
     "shows a RAM load; the embedded server's comes from --llama-args"),
)  # fmt: skip
# Switches (off unless given): each also reads KVPROXY_<FLAG>=1.
SWITCHES: tuple[tuple[str, str], ...] = (
    ("--log-content",
     "put short prompt snippets in the records and the log, for kvproxy explain"),
    ("--allow-slot-actions",
     "let clients call /slots/{id}?action=save|restore|erase (kvproxy's cache state)"),
    ("--upstream-swa-full",
     "the upstream llama-server runs with --swa-full: predict sliding-window models as dense"),
    ("--allow-admin",
     "let clients call model management endpoints (ollama pull/push/create/copy/delete, "
     "llama-server model and adapter changes)"),
)  # fmt: skip
# Repeatable options: (flag, metavar, help, how the variable separates them).
LISTS: tuple[tuple[str, str, str, str], ...] = (
    ("--volatile-pattern", "REGEX",
     "system-message text matching this regex is volatile from the first turn; repeatable",
     "newline-separated"),
    ("--cors-origin", "ORIGIN",
     "an origin (https://app.example) whose browser pages may call kvproxy; repeatable; none "
     "by default", "comma-separated"),
    ("--allowed-host", "NAME",
     "a host name clients may use to reach kvproxy (IP addresses and localhost always work; "
     "any other Host is refused, against DNS rebinding); repeatable", "comma-separated"),
    ("--warm", "FILE",
     "a chat request body (system prompt, tools, first messages) to prefill at start, after "
     "an upstream restart and after ollama unloads; repeatable; 'auto': the system prompts "
     "and tools of the busiest conversations of the last 7 days, in free slots",
     "comma-separated"),
    ("--upstream", "URL",
     "server to proxy, repeatable; kind auto-detected, or prefix llama: / ollama:. None: "
     "start the embedded llama-server", "comma-separated"),
)  # fmt: skip
EMBEDDED_OPTIONS: tuple[tuple[str, type, str], ...] = (
    ("--model", str,
     "GGUF file to serve, or a packaged model by name (smollm2-135m, gemma3-270m); default: "
     "the bundled SmolLM2-135M-Instruct"),
    ("--slots", int, "llama-server --parallel"),
    ("--ctx-per-slot", int, "context tokens per slot"),
    ("--llama-args", str, "extra llama-server arguments, shell-quoted"),
)  # fmt: skip
CONFIG_HELP = (
    'TOML file of serve options (keys as the flags without --: rewrite = "-volatile", '
    'volatile-pattern = ["..."]); flags and KVPROXY_* override it'
)


class Parser(argparse.ArgumentParser):
    """A usage error is one line (``kvproxy serve: error: ...``), not the usage again."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def dest(option: str) -> str:
    return option[2:].replace("-", "_")


def shown(option: str) -> str:
    """The built-in default as ``--help`` prints it: 10 for 10.0, None for no items."""
    value = ServeOptions.model_fields[dest(option)].default
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "None" if value == () else str(value)


def described(option: str, text: str, note: str = "") -> str:
    """``text [KVPROXY_X<note>] (default: D)``, as argparse's defaults formatter wrote it."""
    return f"{text} [{variable(dest(option))}{note}] (default: {shown(option)})"


def add_options(
    group: argparse._ActionsContainer, options: Sequence[tuple[str, type, str]]
) -> None:
    for option, kind, text in options:
        group.add_argument(option, type=kind, help=described(option, text))


def add_serve(sub: argparse._SubParsersAction) -> None:
    """``serve``: every option of ServeOptions, plus ``--config``."""
    serve = sub.add_parser("serve", help="run the proxy", argument_default=argparse.SUPPRESS)
    add_options(serve, SERVE_OPTIONS)
    serve.add_argument("--config", type=Path, metavar="FILE",
                       help=f"{CONFIG_HELP} [{variable('config')}] (default: None)")  # fmt: skip
    for option, text in SWITCHES:
        serve.add_argument(option, action="store_true", help=described(option, text, "=1"))
    for option, metavar, text, separated in LISTS:
        serve.add_argument(option, action="append", metavar=metavar,
                           help=described(option, text, f", {separated}"))  # fmt: skip
    add_options(
        serve.add_argument_group("embedded llama-server (used when no --upstream is given)"),
        EMBEDDED_OPTIONS,
    )


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    """The command line; ``environ`` gives the reading commands their ``--data-dir``."""
    parser = Parser(
        prog="kvproxy",
        description="Cache-aware proxy for llama-server and ollama. Point clients here.",
    )
    parser.add_argument("--version", action="version", version=f"kvproxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_serve(sub)
    stats = sub.add_parser("stats", help="summarize the request records (hit rate, misses)")
    stats.add_argument("--since", default=None, help="30m, 2h, 1d or a Unix time; default: all")
    stats.add_argument("--json", action="store_true", help="print the totals as JSON")
    stats.add_argument(
        "--by",
        choices=GROUPS,
        default="slot",
        help="one row per slot, client (User-Agent) or session",
    )
    tail = sub.add_parser("tail", help="live dashboard from the log file of a running kvproxy")
    tail.add_argument("--once", action="store_true", help="print one frame and exit")
    explain = sub.add_parser("explain", help="why a request missed, from the records")
    explain.add_argument("request_id", nargs="?", default=None)
    explain.add_argument("--last-miss", action="store_true", help="the most recent miss")
    tokenize_command.add_parser(sub)
    doctor.add_parser(sub)
    data_dir = environ.get(variable("data_dir"), str(default_data_dir(environ)))
    text = "the data dir of the kvproxy serve to read [KVPROXY_DATA_DIR]"
    for reader in (stats, tail, explain):
        reader.add_argument("--data-dir", type=Path, default=data_dir, help=text)
    return parser


def given(args: argparse.Namespace) -> dict[str, Any]:
    """The serve options the command line gave (a flag not given is absent)."""
    return {k: v for k, v in vars(args).items() if k != "command"}


def explicit_flags(argv: Sequence[str]) -> dict[str, Any]:
    return given(build_parser({}).parse_args(argv))
