"""``kvproxy`` command line: every flag also reads a KVPROXY_* environment variable."""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from proxy import __version__
from proxy.app import create_app
from proxy.embedded import EmbeddedError
from proxy.errors import ProxyError
from proxy.log import configure, get_logger
from proxy.settings import EmbeddedSettings, Settings, default_data_dir
from proxy.upstream import UpstreamSpec

log = get_logger("kvproxy.cli")


def env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"KVPROXY_{name}", default)


def env_list(name: str) -> list[str]:
    raw = env(name)
    return [part.strip() for part in raw.split(",") if part.strip()] if raw else []


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvproxy",
        description="Cache-aware proxy for llama-server and ollama. Point clients here.",
    )
    parser.add_argument("--version", action="version", version=f"kvproxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve", help="run the proxy", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    serve.add_argument(
        "--host", default=env("HOST", "127.0.0.1"), help="address to listen on [KVPROXY_HOST]"
    )
    serve.add_argument(
        "--port",
        type=int,
        default=int(env("PORT", "11435") or 11435),
        help="port to listen on [KVPROXY_PORT]",
    )
    serve.add_argument(
        "--upstream",
        action="append",
        default=None,
        metavar="URL",
        help="server to proxy, repeatable; kind auto-detected, or prefix llama: / ollama:. "
        "None: start the embedded llama-server [KVPROXY_UPSTREAM, comma-separated]",
    )
    serve.add_argument(
        "--data-dir",
        type=Path,
        default=Path(env("DATA_DIR", str(default_data_dir())) or ""),
        help="LMDB, slot files and logs [KVPROXY_DATA_DIR]",
    )
    serve.add_argument(
        "--max-body-bytes",
        type=int,
        default=int(env("MAX_BODY_BYTES", str(32 * 1024 * 1024)) or 0),
        help="largest request body accepted on dialect paths [KVPROXY_MAX_BODY_BYTES]",
    )
    serve.add_argument(
        "--connect-timeout",
        type=float,
        default=float(env("CONNECT_TIMEOUT", "10") or 10),
        help="seconds to connect to an upstream [KVPROXY_CONNECT_TIMEOUT]",
    )
    serve.add_argument(
        "--upstream-timeout",
        type=float,
        default=float(env("UPSTREAM_TIMEOUT", "600") or 600),
        help="seconds of upstream silence (before the first byte or between chunks) "
        "before a 504 [KVPROXY_UPSTREAM_TIMEOUT]",
    )
    serve.add_argument(
        "--log-level",
        default=env("LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
        help="[KVPROXY_LOG_LEVEL]",
    )
    emb = serve.add_argument_group("embedded llama-server (used when no --upstream is given)")
    emb.add_argument(
        "--model",
        type=Path,
        default=env("MODEL"),
        help="GGUF file to serve; default: the bundled SmolLM2-135M-Instruct [KVPROXY_MODEL]",
    )
    emb.add_argument(
        "--slots",
        type=int,
        default=int(env("SLOTS", "4") or 4),
        help="llama-server --parallel [KVPROXY_SLOTS]",
    )
    emb.add_argument(
        "--ctx-per-slot",
        type=int,
        default=int(env("CTX_PER_SLOT", "8192") or 8192),
        help="context tokens per slot [KVPROXY_CTX_PER_SLOT]",
    )
    emb.add_argument(
        "--llama-args",
        default=env("LLAMA_ARGS", ""),
        help="extra llama-server arguments, shell-quoted [KVPROXY_LLAMA_ARGS]",
    )
    return parser  # fmt: skip


def settings_from(args: argparse.Namespace) -> Settings:
    upstreams = args.upstream if args.upstream is not None else env_list("UPSTREAM")
    return Settings(
        host=args.host,
        port=args.port,
        upstreams=tuple(UpstreamSpec.parse(u) for u in upstreams),
        data_dir=args.data_dir.expanduser(),
        max_body_bytes=args.max_body_bytes,
        connect_timeout=args.connect_timeout,
        upstream_timeout=args.upstream_timeout,
        log_level=args.log_level,
        embedded=EmbeddedSettings(
            model=args.model,
            parallel=args.slots,
            ctx_per_slot=args.ctx_per_slot,
            extra_args=tuple(shlex.split(args.llama_args)),
        ),
    )


async def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM; cleanup contexts stop the embedded server on the way out."""
    app = create_app(settings)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        base = f"http://{settings.host}:{settings.port}"
        print(
            f"kvproxy {__version__} listening on {base}\n"
            f"  OpenAI base URL: {base}/v1\n"
            f"  ollama base URL: {base}\n"
            f"  try: curl -s {base}/v1/chat/completions -H 'Content-Type: application/json' "
            '-d \'{"messages":[{"role":"user","content":"Say hi"}],"max_tokens":16}\'',
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting_down")
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from(args)
    configure(settings.log_level)
    if args.command == "serve":
        try:
            asyncio.run(serve(settings))
        except (EmbeddedError, ProxyError, OSError) as exc:
            print(f"kvproxy: {exc}", file=sys.stderr)
            return 1
    return 0
