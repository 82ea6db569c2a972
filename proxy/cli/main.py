"""``kvproxy`` command: the configuration step (the only code that reads the process's
environment: once, in ``main``, passed on as a mapping), then serve or a reading command."""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import json
import logging
import os
import shlex
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from aiohttp import web

from proxy import __version__
from proxy.backends.embedded import EmbeddedError, resolve_model
from proxy.cli import dashboard, doctor, explain
from proxy.cli import tokenize as tokenize_command
from proxy.cli.options import build_parser, given
from proxy.config.resolve import (
    ConfigError,
    ServeOptions,
    config_path,
    read_config,
    resolve,
    settings_from,
)
from proxy.config.settings import Settings
from proxy.core.errors import ProxyError
from proxy.core.log import LOG_FILE, configure, get_logger
from proxy.core.private import UMASK, secure_data_dir
from proxy.records.damage import guard_store
from proxy.records.read import read_counters, read_records
from proxy.records.stats import parse_since, render, summarize
from proxy.web.app import create_app
from proxy.web.components import LIFECYCLE, STORE
from proxy.web.lifecycle import CUT_WAIT, shutdown
from proxy.web.warm import WarmBody, load_bodies

log = get_logger("kvproxy.cli")


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
    records = [] if damage else read_records(records_dir, since, guard=False)
    total, per_slot = summarize(records, args.by)
    losses = {} if damage else read_counters(records_dir, guard=False)
    if args.json:
        out = {k: v for k, v in vars(total).items() if k != "causes"}
        out["records_lost"] = losses
        out.update(
            causes=dict(total.causes),
            hit_rate=total.hit_rate,
            lost_ms=dict(total.lost_ms),
            ceiling_share=total.ceiling_share,
        )
        out[f"per_{args.by}"] = {k: {"requests": t.requests, "hit_rate": t.hit_rate,
                                     "ceiling_share": t.ceiling_share,
                                     "lost_ms": dict(t.lost_ms)}
                                 for k, t in per_slot.items()}  # fmt: skip
        print(json.dumps(out))
    else:
        print(render(total, per_slot, args.by))
        if any(losses.values()):
            # Records alone where the writer counted them apart (state changes aside).
            part = "records_" if "records_lost" in losses else ""
            print(f"records lost        dropped {losses.get(part + 'dropped', 0)} (queue full), "
                  f"skipped {losses.get(part + 'skipped', 0)} (unstorable), "
                  f"lost {losses.get(part + 'lost', 0)} (disk full or failing)")  # fmt: skip
    return 0


def api_keys(text: str) -> frozenset[str]:
    """One key per line; blank lines and ``#`` comments skipped."""
    lines = (line.strip() for line in text.splitlines())
    return frozenset(line for line in lines if line and not line.startswith("#"))


def read_keys(options: ServeOptions) -> frozenset[str]:
    """``--api-key`` and the keys of ``--api-key-file``."""
    keys = frozenset({options.api_key}) if options.api_key else frozenset()
    if options.api_key_file is None:
        return keys
    try:
        return keys | api_keys(options.api_key_file.expanduser().read_text())
    except (OSError, UnicodeError) as exc:
        raise ConfigError([f"--api-key-file: {exc}"]) from None


def warm_bodies(paths: Sequence[str]) -> tuple[WarmBody, ...]:
    """The ``--warm`` files (``auto`` is not a file: ``Settings.warm_auto``)."""
    try:
        return tuple(load_bodies([Path(p).expanduser() for p in paths if p != "auto"]))
    except ValueError as exc:
        raise ConfigError([str(exc)]) from None


def embedded_model(value: str | None, llama_args: str) -> tuple[Path | None, tuple[str, ...]]:
    """The model to serve and llama-server's extra arguments (a named model's chat
    template unless the arguments name one)."""
    extra = tuple(shlex.split(llama_args))
    if value is None:
        return None, extra
    try:
        path, template = resolve_model(value)
    except EmbeddedError as exc:
        raise ConfigError([str(exc)]) from None
    if template is not None and "--chat-template-file" not in extra:
        extra = (*extra, "--chat-template-file", str(template))
    return path, extra


def configured(
    args: argparse.Namespace, environ: Mapping[str, str]
) -> tuple[ServeOptions, Settings]:
    """Flag > KVPROXY_* variable > --config file > default, resolved once; then the files
    the options name are read. A bad value: one line per key naming it, exit 2."""
    try:
        flags = given(args)
        path = config_path(flags, environ)
        options = resolve(flags, environ, read_config(path) if path else {}, path)
        model, extra = embedded_model(options.model, options.llama_args)
        keys, warm = read_keys(options), warm_bodies(options.warm)
        settings = settings_from(options, api_keys=keys, warm=warm, model=model, llama_args=extra)
    except ConfigError as exc:
        for line in exc.lines:
            print(f"kvproxy serve: error: {line}", file=sys.stderr)
        raise SystemExit(2) from None
    return options, settings


def tune_collector() -> None:
    """What start-up built (vocabularies, templates: hundreds of thousands of objects) lives
    as long as the process: kept out of the cyclic collector's scans (``gc.freeze``), which
    otherwise walk it while a request's JSON is decoded (bench/own_time.py: decode 1.2 ms,
    0.4 without). The thresholds stay Python's: raising the youngest generation's to 50,000
    moved nothing ``make bench-tokens`` can tell from noise (docs/benchmarks.md)."""
    gc.freeze()


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
    tune_collector()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        base = f"http://{settings.host}:{settings.port}"
        say(
            f"kvproxy {__version__} listening on {base}\n"
            f'  OpenAI base URL: {base}/v1 (Codex: a provider with wire_api = "responses")\n'
            f"  Anthropic base URL: {base} (Claude Code: ANTHROPIC_BASE_URL)\n"
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


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


def quiet_transformers() -> None:
    """transformers warns "PyTorch was not found" when imported (kvproxy uses only its
    tokenizer and Jinja parts): its logger passes errors only. A logging filter rather
    than TRANSFORMERS_VERBOSITY, because nothing writes os.environ."""
    logging.getLogger("transformers").addFilter(errors_only)


def start(options: ServeOptions, settings: Settings) -> int:
    """Serve until stopped; a start that fails says why once (exit 1)."""
    os.umask(UMASK)
    tightened = secure_data_dir(settings.data_dir)
    configure(settings.log_level, settings.data_dir / LOG_FILE, options.log_format)
    if not is_loopback(settings.host) and not settings.exposure.api_key:
        log.warning("listening_beyond_loopback_without_api_key", host=settings.host,
                    advice="set --api-key or --api-key-file")  # fmt: skip
    if tightened:
        log.warning("data_dir_tightened", paths=len(tightened), example=tightened[0],
                    modes="directories 0700, files 0600")  # fmt: skip
    try:
        asyncio.run(serve(settings))
    except (EmbeddedError, ProxyError, OSError) as exc:
        print(f"kvproxy: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """``environ``: the process environment unless given (read here, nowhere else)."""
    environ = os.environ if environ is None else environ
    quiet_transformers()
    args = build_parser(environ).parse_args(argv)
    readers = {"stats": run_stats, "tail": run_tail, "explain": run_explain,
               "tokenize": tokenize_command.run, "doctor": doctor.run}  # fmt: skip
    if args.command in readers:
        return readers[args.command](args)
    return start(*configured(args, environ))
