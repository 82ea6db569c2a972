"""``kvproxy`` command line: every flag also reads a KVPROXY_* environment variable."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import re
import shlex
import signal
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from proxy import __version__
from proxy.backends.embedded import EmbeddedError, resolve_model
from proxy.backends.ollama_keep import KeepPolicy, parse_duration
from proxy.backends.upstream import UpstreamSpec
from proxy.cli import dashboard, doctor, explain
from proxy.cli import tokenize as tokenize_command
from proxy.config.exposure import Exposure
from proxy.config.settings import KEEP_TAPES, EmbeddedSettings, Settings, default_data_dir
from proxy.core.errors import ProxyError
from proxy.core.log import LOG_FILE, LOG_FORMATS, configure, get_logger
from proxy.core.private import UMASK, secure_data_dir
from proxy.records.damage import guard_store
from proxy.records.read import read_counters, read_records
from proxy.records.stats import parse_since, render, summarize
from proxy.rewrite.engine import RewriteConfig
from proxy.slots.routing import RoutePolicy
from proxy.web.app import create_app
from proxy.web.components import LIFECYCLE, STORE
from proxy.web.lifecycle import CUT_WAIT, shutdown
from proxy.web.warm import WarmBody, load_bodies

log = get_logger("kvproxy.cli")


def env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"KVPROXY_{name}", default)


def env_list(name: str) -> list[str]:
    raw = env(name)
    return [part.strip() for part in raw.split(",") if part.strip()] if raw else []


# (flag, type, default, help): each flag's environment variable is KVPROXY_<FLAG>. Defaults
# are strings so that argparse converts a KVPROXY_* value with the flag's own type and
# rejects a bad one with a usage error instead of a traceback.
SERVE_OPTIONS: tuple[tuple[str, type, str, str], ...] = (
    ("--host", str, "127.0.0.1", "address to listen on"),
    ("--port", int, "11435", "port to listen on"),
    ("--data-dir", Path, None,
     "LMDB, slot files and logs; default: $XDG_STATE_HOME/kvproxy or ~/.local/state/kvproxy"),
    ("--max-body-bytes", int, str(32 * 1024 * 1024), "largest request body on dialect paths"),
    ("--max-inflight-body-bytes", int, str(256 * 1024 * 1024),
     "all request bodies held at once; beyond it a 503 with Retry-After"),
    ("--connect-timeout", float, "10", "seconds to connect to an upstream"),
    ("--idle-timeout", float, "30",
     "close a client connection that has not sent complete request headers within this many "
     "seconds (idle keep-alive and slow or partial headers alike)"),
    ("--body-timeout", float, "60", "seconds to receive a request body, else a 408"),
    ("--upstream-max-inflight", int, "0",
     "requests sent to one upstream at once (0: 4 per slot); more wait in kvproxy's queue"),
    ("--queue-timeout", float, "300",
     "seconds a request may wait in kvproxy's queue before a 503 with Retry-After"),
    ("--shutdown-grace", float, "15",
     "on SIGTERM/SIGINT: seconds the requests in flight may take to finish (new and queued "
     "ones get a 503) before they are cut; keep it below the service manager's stop timeout"),
    ("--upstream-timeout", float, "600",
     "seconds of upstream silence (before the first byte or between chunks) before a 504"),
    ("--ollama-num-ctx", int, "0",
     "in front of ollama: the num_ctx sent with every request (0: the loaded model's, else "
     "the first request's; -1: the client's own, which may make ollama reload)"),
    ("--ollama-keep-alive", str, "30m",
     "in front of ollama: the shortest keep_alive sent with every request ('off': the "
     "client's own)"),
    ("--log-level", str, "info", "debug, info, warning or error"),
    ("--log-format", str, "auto",
     "stderr lines: console (readable), json, or auto (console on a terminal, else json); "
     "the log file is always JSON"),
    ("--tokenizer", Path, None,
     "GGUF file or tokenizer directory for exact tokens; default: the server's own GGUF; "
     "'server': always ask the server (/apply-template, /tokenize)"),
    ("--slot-cache-max-bytes", int, str(4 * 1024**3),
     "disk budget for saved slot files (oldest-used deleted first)"),
    ("--slot-checkpoint-idle", float, "2",
     "save a slot's new content to disk once it has been idle this many seconds (0: only "
     "save when evicting)"),
    ("--slot-dir", Path, None,
     "an external llama-server's --slot-save-path, reachable from here: kvproxy then deletes "
     "the files its checkpoints supersede, and only then takes idle checkpoints"),
    ("--api-key", str, None,
     "require this key from clients (Authorization: Bearer KEY); see docs/security.md"),
    ("--api-key-file", Path, None,
     "read API keys from this file, one per line: each key is its own principal (clients "
     "with different keys never share a conversation or a cached prefix)"),
    ("--rewrite", str, "all",
     "rewrite rules: all, off (a pure router), a list (tape,volatile,compaction,tools) or "
     "removals (-volatile)"),
    ("--rewrite-reserve-tokens", int, "1024",
     "context kept free for the reply when a compaction summary is appended to the tape"),
    ("--max-tapes", int, "512", "conversation lineages remembered (least recently used out)"),
    ("--keep-tapes", str, "lmdb",
     "where tapes (earlier messages' text, re-sent by the compaction append) live: lmdb "
     "(survive a restart) or memory (never written to disk; a restart loses them)"),
    ("--records-max", int, "200000", "request records kept in LMDB (oldest pruned first)"),
    ("--records-max-bytes", int, str(1 << 30),
     "the LMDB map grows up to this size; past 80 percent of it the oldest records are pruned"),
    ("--route-hot-tokens", int, "512",
     "a slot that would lose this many recently used tokens is hot: restores and "
     "unrelated prompts go to empty or cold slots first"),
    ("--route-busy-wait-tokens", int, "2048",
     "load guard: queue behind a busy slot only when it saves more prefill tokens than this"),
    ("--route-max-queue", int, "2", "load guard: never queue this many requests on one slot"),
    ("--route-min-restore-gain", int, "256",
     "restore a saved prefix only when it beats every live slot by this many tokens"),
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
EMBEDDED_OPTIONS: tuple[tuple[str, type, str | None, str], ...] = (
    ("--model", str, None,
     "GGUF file to serve, or a packaged model by name (smollm2-135m, gemma3-270m); default: "
     "the bundled SmolLM2-135M-Instruct"),
    ("--slots", int, "4", "llama-server --parallel"),
    ("--ctx-per-slot", int, "8192", "context tokens per slot"),
    ("--llama-args", str, "", "extra llama-server arguments, shell-quoted"),
)


LOG_LEVELS = ("debug", "info", "warning", "error")


def add_options(
    group: argparse._ActionsContainer,
    options: tuple[tuple[str, type, str | None, str], ...],
    environ: Mapping[str, str],
) -> None:
    for flag, kind, default, text in options:
        var = flag[2:].upper().replace("-", "_")
        group.add_argument(flag, type=kind, default=environ.get(f"KVPROXY_{var}", default),
                           help=f"{text} [KVPROXY_{var}]")  # fmt: skip


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The command line; each serve option's default is its KVPROXY_* variable in
    ``environ`` (the process environment unless given), else its built-in value."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="kvproxy",
        description="Cache-aware proxy for llama-server and ollama. Point clients here.",
    )
    parser.add_argument("--version", action="version", version=f"kvproxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve", help="run the proxy", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_options(serve, SERVE_OPTIONS, environ)
    serve.add_argument(
        "--config", type=Path, default=environ.get("KVPROXY_CONFIG"), metavar="FILE",
        help="TOML file of serve options (keys as the flags without --: rewrite = "
        '"-volatile", volatile-pattern = ["..."]); flags and KVPROXY_* override it '
        "[KVPROXY_CONFIG]",
    )  # fmt: skip
    for flag, text in SWITCHES:
        var = flag[2:].upper().replace("-", "_")
        serve.add_argument(flag, action="store_true",
                           default=environ.get(f"KVPROXY_{var}", "") in ("1", "true"),
                           help=f"{text} [KVPROXY_{var}=1]")  # fmt: skip
    serve.add_argument(
        "--volatile-pattern", action="append", default=None, metavar="REGEX",
        help="system-message text matching this regex is volatile from the first turn; "
        "repeatable [KVPROXY_VOLATILE_PATTERN, newline-separated]",
    )  # fmt: skip
    serve.add_argument(
        "--cors-origin", action="append", default=None, metavar="ORIGIN",
        help="an origin (https://app.example) whose browser pages may call kvproxy; "
        "repeatable; none by default [KVPROXY_CORS_ORIGIN, comma-separated]",
    )  # fmt: skip
    serve.add_argument(
        "--allowed-host", action="append", default=None, metavar="NAME",
        help="a host name clients may use to reach kvproxy (IP addresses and localhost "
        "always work; any other Host is refused, against DNS rebinding); repeatable "
        "[KVPROXY_ALLOWED_HOST, comma-separated]",
    )  # fmt: skip
    serve.add_argument(
        "--warm", action="append", default=None, metavar="FILE",
        help="a chat request body (system prompt, tools, first messages) to prefill at start, "
        "after an upstream restart and after ollama unloads; repeatable; 'auto': the system "
        "prompts and tools of the busiest conversations of the last 7 days, in free slots "
        "[KVPROXY_WARM, comma-separated]",
    )  # fmt: skip
    serve.add_argument(
        "--upstream", action="append", default=None, metavar="URL",
        help="server to proxy, repeatable; kind auto-detected, or prefix llama: / ollama:. "
        "None: start the embedded llama-server [KVPROXY_UPSTREAM, comma-separated]",
    )  # fmt: skip
    add_options(
        serve.add_argument_group("embedded llama-server (used when no --upstream is given)"),
        EMBEDDED_OPTIONS,
        environ,
    )
    stats = sub.add_parser("stats", help="summarize the request records (hit rate, misses)")
    stats.add_argument("--since", default=None, help="30m, 2h, 1d or a Unix time; default: all")
    stats.add_argument("--json", action="store_true", help="print the totals as JSON")
    tail = sub.add_parser("tail", help="live dashboard from the log file of a running kvproxy")
    tail.add_argument("--once", action="store_true", help="print one frame and exit")
    explain = sub.add_parser("explain", help="why a request missed, from the records")
    explain.add_argument("request_id", nargs="?", default=None)
    explain.add_argument("--last-miss", action="store_true", help="the most recent miss")
    tokenize_command.add_parser(sub)
    doctor.add_parser(sub)
    for reader in (stats, tail, explain):
        reader.add_argument(
            "--data-dir", type=Path,
            default=environ.get("KVPROXY_DATA_DIR", str(default_data_dir())),
            help="the data dir of the kvproxy serve to read [KVPROXY_DATA_DIR]",
        )  # fmt: skip
    return parser


def run_tail(args: argparse.Namespace) -> int:
    return dashboard.tail(args.data_dir.expanduser() / LOG_FILE, once=args.once)


def run_explain(args: argparse.Namespace) -> int:
    records_dir = Settings(data_dir=args.data_dir.expanduser()).records_dir
    damage = guard_store(records_dir, writer=False)  # a damaged file would crash the read
    if damage is not None:
        print(f"kvproxy explain: {damage.message()}", file=sys.stderr)
    records = [] if damage else list(read_records(records_dir, guard=False))
    record = explain.find(records, args.request_id, args.last_miss)
    if record is None:
        what = args.request_id or ("miss" if args.last_miss else "request")
        print(f"kvproxy explain: no {what} in the records", file=sys.stderr)
        return 1
    print(explain.explain(records, record))
    return 0


def run_stats(args: argparse.Namespace) -> int:
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        print(f"kvproxy stats: {exc}", file=sys.stderr)
        return 2
    records_dir = Settings(data_dir=args.data_dir.expanduser()).records_dir
    damage = guard_store(records_dir, writer=False)  # a damaged file would crash the read
    if damage is not None:
        print(f"kvproxy stats: {damage.message()}", file=sys.stderr)
    total, per_slot = summarize([] if damage else read_records(records_dir, since, guard=False))
    losses = {} if damage else read_counters(records_dir, guard=False)
    if args.json:
        out = {k: v for k, v in vars(total).items() if k != "causes"}
        out["records_lost"] = losses
        out.update(causes=dict(total.causes), hit_rate=total.hit_rate)
        out["per_slot"] = {k: {"requests": t.requests, "hit_rate": t.hit_rate}
                           for k, t in per_slot.items()}  # fmt: skip
        print(json.dumps(out))
    else:
        print(render(total, per_slot))
        if any(losses.values()):
            # Records alone where the writer counted them apart (state changes aside).
            part = "records_" if "records_lost" in losses else ""
            print(f"records lost        dropped {losses.get(part + 'dropped', 0)} (queue full), "
                  f"skipped {losses.get(part + 'skipped', 0)} (unstorable), "
                  f"lost {losses.get(part + 'lost', 0)} (disk full or failing)")  # fmt: skip
    return 0


def rewrite_config(args: argparse.Namespace) -> RewriteConfig:
    patterns = args.volatile_pattern
    if patterns is None:
        patterns = [p for p in (env("VOLATILE_PATTERN") or "").splitlines() if p.strip()]
    try:
        return RewriteConfig.parse(args.rewrite, patterns, args.rewrite_reserve_tokens)
    except (ValueError, re.error) as exc:
        build_parser().error(f"--rewrite/--volatile-pattern: {exc}")
        raise


def ollama_policy(num_ctx: int, keep_alive: str) -> KeepPolicy:
    alive = "" if keep_alive.strip().lower() in ("off", "") else keep_alive.strip()
    if alive and parse_duration(alive) is None:
        build_parser().error(f"--ollama-keep-alive {keep_alive!r}: a duration like 30m or 1h")
    return KeepPolicy(num_ctx=num_ctx if num_ctx > 0 else None, keep_alive=alive,
                      stable_ctx=num_ctx >= 0)  # fmt: skip


def warm_bodies(paths: list[str]) -> tuple[WarmBody, ...]:
    """The ``--warm`` files (``auto`` is not a file: ``Settings.warm_auto``)."""
    try:
        return tuple(load_bodies([Path(p).expanduser() for p in paths if p != "auto"]))
    except ValueError as exc:
        build_parser().error(str(exc))
        raise


def keep_tapes(value: str) -> str:
    if value not in KEEP_TAPES:
        build_parser().error(f"--keep-tapes must be one of {', '.join(KEEP_TAPES)}")
    return value


def api_keys(text: str) -> frozenset[str]:
    """One key per line; blank lines and ``#`` comments skipped."""
    lines = (line.strip() for line in text.splitlines())
    return frozenset(line for line in lines if line and not line.startswith("#"))


def exposure_from(args: argparse.Namespace) -> Exposure:
    keys = frozenset({args.api_key}) if args.api_key else frozenset()
    if args.api_key_file is not None:
        try:
            keys |= api_keys(Path(args.api_key_file).expanduser().read_text())
        except (OSError, UnicodeError) as exc:
            build_parser().error(f"--api-key-file: {exc}")
    origins = args.cors_origin if args.cors_origin is not None else env_list("CORS_ORIGIN")
    hosts = args.allowed_host if args.allowed_host is not None else env_list("ALLOWED_HOST")
    return Exposure(api_keys=keys, cors_origins=frozenset(origins),
                    allow_slot_actions=args.allow_slot_actions, allow_admin=args.allow_admin,
                    allowed_hosts=frozenset(h.lower().rstrip(".") for h in hosts))  # fmt: skip


def embedded_model(value: str | None, llama_args: str) -> tuple[Path | None, tuple[str, ...]]:
    """The model to serve and llama-server's extra arguments (a named model's chat
    template unless the arguments name one)."""
    extra = tuple(shlex.split(llama_args))
    if value is None:
        return None, extra
    try:
        path, template = resolve_model(value)
    except EmbeddedError as exc:
        build_parser().error(str(exc))
        raise
    if template is not None and "--chat-template-file" not in extra:
        extra = (*extra, "--chat-template-file", str(template))
    return path, extra


def settings_from(args: argparse.Namespace) -> Settings:
    upstreams = args.upstream if args.upstream is not None else env_list("UPSTREAM")
    server_tokens = str(args.tokenizer) == "server"
    model, llama_args = embedded_model(args.model, args.llama_args)
    warm = args.warm if args.warm is not None else env_list("WARM")
    return Settings(
        exposure=exposure_from(args),
        host=args.host,
        port=args.port,
        upstreams=tuple(UpstreamSpec.parse(u) for u in upstreams),
        warm=warm_bodies(warm),
        warm_auto="auto" in warm,
        ollama_keep=ollama_policy(args.ollama_num_ctx, args.ollama_keep_alive),
        data_dir=(args.data_dir or default_data_dir()).expanduser(),
        max_body_bytes=args.max_body_bytes,
        max_inflight_body_bytes=args.max_inflight_body_bytes,
        connect_timeout=args.connect_timeout,
        idle_timeout=args.idle_timeout,
        body_timeout=args.body_timeout,
        shutdown_grace=args.shutdown_grace,
        upstream_max_inflight=args.upstream_max_inflight,
        queue_timeout=args.queue_timeout,
        upstream_timeout=args.upstream_timeout,
        log_level=args.log_level,
        tokenizer=None if server_tokens else args.tokenizer and args.tokenizer.expanduser(),
        server_tokens=server_tokens,
        slot_cache_max_bytes=args.slot_cache_max_bytes,
        slot_checkpoint_idle=args.slot_checkpoint_idle,
        shared_slot_dir=args.slot_dir.expanduser() if args.slot_dir else None,
        records_max=args.records_max,
        records_max_bytes=args.records_max_bytes,
        rewrite=rewrite_config(args),
        log_content=args.log_content,
        upstream_swa_full=args.upstream_swa_full,
        max_tapes=args.max_tapes,
        keep_tapes=keep_tapes(args.keep_tapes),
        route=RoutePolicy(
            hot_tokens=args.route_hot_tokens,
            busy_wait_tokens=args.route_busy_wait_tokens,
            max_queue=args.route_max_queue,
            min_restore_gain=args.route_min_restore_gain,
        ),
        embedded=EmbeddedSettings(
            model=model,
            parallel=args.slots,
            ctx_per_slot=args.ctx_per_slot,
            extra_args=llama_args,
        ),
    )


async def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM, then shut down in bounded time without losing a record:
    stop accepting, refuse what has not started (503), let what is in flight finish within
    --shutdown-grace, cut the rest, flush the records; cleanup contexts then stop the
    embedded server. A second signal ends the grace period at once."""
    app = create_app(settings)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                           keepalive_timeout=settings.idle_timeout,
                           shutdown_timeout=CUT_WAIT)  # fmt: skip
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        base = f"http://{settings.host}:{settings.port}"
        say(
            f"kvproxy {__version__} listening on {base}\n"
            f"  OpenAI base URL: {base}/v1\n"
            f"  ollama base URL: {base}\n"
            f"  try: curl -s {base}/v1/chat/completions -H 'Content-Type: application/json' "
            '-d \'{"messages":[{"role":"user","content":"Say hi"}],"max_tokens":16}\''
        )
        stop = asyncio.Event()
        lifecycle = app[LIFECYCLE]

        def on_signal() -> None:
            if stop.is_set():
                lifecycle.hurry()
            stop.set()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        await stop.wait()
        await shutdown(lifecycle, runner, app[STORE])
    finally:
        await runner.cleanup()


def say(text: str) -> None:
    """The start-up banner; a closed stdout must not stop the proxy from serving."""
    try:
        print(text, flush=True)
    except (OSError, ValueError):
        log.warning("stdout_broken", detail="start-up banner not shown")


def serve_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in subparsers.choices["serve"]._actions}


def config_defaults(path: Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Serve options from a TOML file, converted by each option's own type."""
    actions = serve_actions(parser)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        parser.error(f"--config {path}: {exc}")
    out: dict[str, Any] = {}
    for key, value in data.items():
        action = actions.get(key.replace("-", "_"))
        if action is None or action.dest in ("config", "help"):
            parser.error(f"--config {path}: unknown option {key!r}")
        many = isinstance(action, argparse._AppendAction)
        if many:  # a list option: one string is one item, not its characters
            out[action.dest] = [str(v) for v in (value if isinstance(value, list) else [value])]
        elif isinstance(value, list | dict):
            parser.error(f"--config {path}: {key} takes one value, not {type(value).__name__}")
        elif isinstance(value, bool) or action.type is None:
            out[action.dest] = value
        else:
            try:
                out[action.dest] = action.type(str(value))  # type: ignore[operator]
            except (TypeError, ValueError) as exc:
                parser.error(f"--config {path}: {key}: {exc}")
    return out


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Flags, then KVPROXY_* variables, then the --config file, then built-in defaults.
    A flag given on the command line wins even when it equals its default."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None) is None:
        return args
    given = explicit(argv)
    for dest, value in config_defaults(Path(args.config).expanduser(), parser).items():
        if dest not in given and f"KVPROXY_{dest.upper()}" not in os.environ:
            setattr(args, dest, value)
    return args


def explicit(argv: Sequence[str] | None) -> set[str]:
    """The serve options the command line itself gives (not their defaults)."""
    parser = build_parser({})
    for action in serve_actions(parser).values():
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv))) - {"command"}


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main(argv: Sequence[str] | None = None) -> int:
    # transformers prints "PyTorch was not found" on import unless told not to: once, here,
    # in the configuration step (the only place the environment is touched).
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args = parse(argv)
    readers = {"stats": run_stats, "tail": run_tail, "explain": run_explain,
               "tokenize": tokenize_command.run, "doctor": doctor.run}  # fmt: skip
    if args.command in readers:
        return readers[args.command](args)
    if args.log_level not in LOG_LEVELS:
        build_parser().error(f"--log-level must be one of {', '.join(LOG_LEVELS)}")
    settings = settings_from(args)
    os.umask(UMASK)
    tightened = secure_data_dir(settings.data_dir)
    if args.log_format not in LOG_FORMATS:
        build_parser().error(f"--log-format must be one of {', '.join(LOG_FORMATS)}")
    configure(settings.log_level, settings.data_dir / LOG_FILE, args.log_format)
    if not is_loopback(settings.host) and not settings.exposure.api_key:
        log.warning("listening_beyond_loopback_without_api_key", host=settings.host,
                    advice="set --api-key or --api-key-file")  # fmt: skip
    if tightened:
        log.warning("data_dir_tightened", paths=len(tightened), example=tightened[0],
                    modes="directories 0700, files 0600")  # fmt: skip
    if args.command == "serve":
        try:
            asyncio.run(serve(settings))
        except (EmbeddedError, ProxyError, OSError) as exc:
            print(f"kvproxy: {exc}", file=sys.stderr)
            return 1
    return 0
