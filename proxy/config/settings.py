"""Runtime configuration, built once by the CLI from flags, KVPROXY_* variables and the
--config file (``proxy.config.resolve``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy.backends.embedded import EmbeddedSettings
from proxy.backends.ollama_keep import KeepPolicy
from proxy.backends.upstream import UpstreamSpec
from proxy.config.exposure import Exposure
from proxy.rewrite.engine import RewriteConfig
from proxy.slots.routing import RoutePolicy

KEEP_TAPES = ("lmdb", "memory")


def default_data_dir(environ: Mapping[str, str]) -> Path:
    """$XDG_STATE_HOME/kvproxy, else ~/.local/state/kvproxy (the user's state dir), from
    the environment the CLI was given (nothing here reads the process's)."""
    base = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "kvproxy"


@dataclass(frozen=True)
class WarmBody:
    name: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 11435
    upstreams: tuple[UpstreamSpec, ...] = ()
    data_dir: Path = field(default_factory=lambda: default_data_dir({}))
    max_body_bytes: int = 32 * 1024 * 1024
    max_inflight_body_bytes: int = 256 * 1024 * 1024  # all request bodies held at once
    connect_timeout: float = 10.0
    upstream_max_inflight: int = 0  # per upstream; 0: 4 per slot
    queue_timeout: float = 300.0  # waiting in kvproxy's queue beyond this: a 503
    idle_timeout: float = 30.0  # a connection with no complete request headers this long
    body_timeout: float = 60.0  # a request body not read completely within this
    # After SIGTERM: how long requests in flight may take to finish before they are cut.
    shutdown_grace: float = 15.0
    upstream_timeout: float = 600.0
    log_level: str = "info"
    embedded: EmbeddedSettings = field(default_factory=EmbeddedSettings)
    # Exact tokens: a GGUF file or a Hugging Face tokenizer directory; default: the GGUF the
    # llama-server reports in /props when it is readable here, else the server's endpoints.
    tokenizer: Path | None = None
    server_tokens: bool = False  # --tokenizer server: never tokenize here (llama-server)
    slot_cache_max_bytes: int = 4 * 1024**3
    slot_checkpoint_idle: float = 2.0
    # An external llama-server's --slot-save-path, when it is reachable here: superseded
    # files can then be deleted, so idle checkpoints are taken.
    shared_slot_dir: Path | None = None
    records_max: int = 200_000
    records_max_bytes: int = 1 << 30
    route: RoutePolicy = field(default_factory=RoutePolicy)
    rewrite: RewriteConfig = field(default_factory=RewriteConfig)
    max_tapes: int = 512
    exposure: Exposure = field(default_factory=Exposure)
    keep_tapes: str = "lmdb"  # or "memory": tapes never reach the disk
    # Put short text snippets into the records and the log (off: hashes and counts only).
    log_content: bool = False
    # The upstream llama-server runs with --swa-full: sliding-window models keep every
    # position, so any common prefix is reused (predicted as dense).
    upstream_swa_full: bool = False
    # The external upstream llama-server's --cache-ram in MiB (-1: no limit, 0: off): its
    # host-RAM prompt cache, modelled in routing (proxy/slots/ram_cache.py); None: not
    # known, the server's default counted on once a request shows a RAM load.
    upstream_cache_ram: int | None = None
    # Request bodies prefilled at start and whenever an upstream lost them (proxy/warm.py).
    warm: tuple[WarmBody, ...] = ()
    warm_auto: bool = False  # --warm auto: also the busiest conversations' prefixes
    # In front of ollama: a stable num_ctx per model and a minimum keep_alive.
    ollama_keep: KeepPolicy = field(default_factory=KeepPolicy)

    @property
    def records_dir(self) -> Path:
        return self.data_dir / "records"

    @property
    def slot_dir(self) -> Path:
        """Where the embedded llama-server saves slots (--slot-save-path)."""
        return self.data_dir / "slots"
