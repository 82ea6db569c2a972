"""``kvproxy serve``'s options resolved once, by a pure function of what it is given: the
flags the command line gave, an environment mapping (``KVPROXY_*``) and the ``--config``
file's table. A flag wins over a variable, a variable over the file, the file over the
built-in default; pydantic types each value once and a bad one is named by where it came
from (``--port``, ``KVPROXY_PORT``, ``kvproxy.toml: port``). docs/config.md says why this is
pydantic and not pydantic-settings."""

from __future__ import annotations

import re
import shlex
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from proxy.backends.embedded import EmbeddedSettings
from proxy.backends.ollama_keep import KeepPolicy, parse_duration
from proxy.backends.upstream import UpstreamSpec
from proxy.config.exposure import Exposure
from proxy.config.settings import KEEP_TAPES, Settings, WarmBody, default_data_dir
from proxy.core.log import LOG_FORMATS
from proxy.rewrite.engine import RewriteConfig
from proxy.slots.routing import RoutePolicy

PREFIX = "KVPROXY_"
LOG_LEVELS = ("debug", "info", "warning", "error")
SECRETS = frozenset({"api_key"})  # never echoed in an error


class ConfigError(Exception):
    """Bad configuration: one line per bad key, each naming where the value came from."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = tuple(lines)


def one_of(*choices: str) -> AfterValidator:
    def check(value: str) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return AfterValidator(check)


def one_item(value: Any) -> Any:
    """A string where a list is expected is one item, not its characters."""
    return (value,) if isinstance(value, str) else value


def compiles(pattern: str) -> str:
    try:
        re.compile(pattern, re.S)
    except re.error as exc:  # not a ValueError: pydantic would not catch it
        raise ValueError(f"not a regex: {exc}") from None
    return pattern


def rewrite_spec(spec: str) -> str:
    RewriteConfig.parse(spec)  # its ValueError names the unknown rule
    return spec


def keep_alive(value: str) -> str:
    alive = value.strip()
    if alive.lower() not in ("off", "") and parse_duration(alive) is None:
        raise ValueError("a duration like 30m or 1h, or off")
    return value


def shell_words(value: str) -> str:
    shlex.split(value)  # its ValueError says what is unbalanced
    return value


Items = Annotated[tuple[str, ...], BeforeValidator(one_item)]
Regex = Annotated[str, AfterValidator(compiles)]
Patterns = Annotated[tuple[Regex, ...], BeforeValidator(one_item)]


class ServeOptions(BaseModel):
    """Every ``kvproxy serve`` option (field ``max_tapes`` is flag ``--max-tapes``, variable
    ``KVPROXY_MAX_TAPES``, file key ``max-tapes``), with its built-in default: the one
    ``--help`` shows. ``data_dir`` None is the state dir of the environment given."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = 11435
    data_dir: Path | None = None
    max_body_bytes: int = 32 * 1024 * 1024
    max_inflight_body_bytes: int = 256 * 1024 * 1024
    connect_timeout: float = 10.0
    idle_timeout: float = 30.0
    body_timeout: float = 60.0
    upstream_max_inflight: int = 0
    queue_timeout: float = 300.0
    shutdown_grace: float = 15.0
    upstream_timeout: float = 600.0
    ollama_num_ctx: int = 0
    ollama_keep_alive: Annotated[str, AfterValidator(keep_alive)] = "30m"
    log_level: Annotated[str, one_of(*LOG_LEVELS)] = "info"
    log_format: Annotated[str, one_of(*LOG_FORMATS)] = "auto"
    tokenizer: Path | None = None
    slot_cache_max_bytes: int = 4 * 1024**3
    slot_checkpoint_idle: float = 2.0
    slot_dir: Path | None = None
    api_key: str | None = None
    api_key_file: Path | None = None
    rewrite: Annotated[str, AfterValidator(rewrite_spec)] = "all"
    rewrite_reserve_tokens: int = 1024
    max_tapes: int = 512
    keep_tapes: Annotated[str, one_of(*KEEP_TAPES)] = "lmdb"
    records_max: int = 200_000
    records_max_bytes: int = 1 << 30
    route_hot_tokens: int = 512
    route_busy_wait_tokens: int = 2048
    route_max_queue: int = 2
    route_min_restore_gain: int = 32
    log_content: bool = False
    allow_slot_actions: bool = False
    upstream_swa_full: bool = False
    upstream_cache_ram: Annotated[int | None, Field(ge=-1)] = None
    allow_admin: bool = False
    volatile_pattern: Patterns = ()
    cors_origin: Items = ()
    allowed_host: Items = ()
    warm: Items = ()
    upstream: Items = ()
    model: str | None = None
    slots: int = 4
    ctx_per_slot: int = 8192
    llama_args: Annotated[str, AfterValidator(shell_words)] = ""

    @field_validator("*", mode="before")
    @classmethod
    def no_switch_as_value(cls, value: Any, info: ValidationInfo) -> Any:
        """A file's ``true`` is no port or path (pydantic alone would read it as 1)."""
        switch = cls.model_fields[str(info.field_name)].annotation is bool
        if isinstance(value, bool) and not switch:
            raise ValueError("takes a value, not true or false")
        return value


def commas(raw: str) -> list[str]:
    return [part.strip() for part in raw.split(",") if part.strip()]


def lines(raw: str) -> list[str]:
    return [line for line in raw.splitlines() if line.strip()]


# How a variable holds a list option (a file or the command line gives a list itself).
SPLIT: dict[str, Callable[[str], list[str]]] = {
    "volatile_pattern": lines, "cors_origin": commas, "allowed_host": commas,
    "warm": commas, "upstream": commas,
}  # fmt: skip


def variable(name: str) -> str:
    return PREFIX + name.upper()


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def environ_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """The options set by ``KVPROXY_*`` variables, as given (an empty one is unset)."""
    out: dict[str, Any] = {}
    for name in ServeOptions.model_fields:
        raw = environ.get(variable(name), "")
        if raw != "":
            out[name] = SPLIT[name](raw) if name in SPLIT else raw
    return out


def config_path(flags: Mapping[str, Any], environ: Mapping[str, str]) -> Path | None:
    """``--config``, else ``KVPROXY_CONFIG``: the file cannot name itself."""
    given = flags.get("config") or environ.get(variable("config")) or None
    return None if given is None else Path(given).expanduser()


def read_config(path: Path) -> dict[str, Any]:
    """The ``--config`` file's table, as written."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError([f"--config {path}: {exc}"]) from None


def resolve(
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
    file: Mapping[str, Any],
    source: Path | None = None,
) -> ServeOptions:
    """Flag > variable > file > default, typed; ``source`` names the file in errors.
    ``flags`` holds only what the command line gave (``config`` is ``config_path``'s)."""
    given = {k: v for k, v in flags.items() if k != "config"}
    env = environ_values(environ)
    written = {key.replace("-", "_"): key for key in file}
    origins = {name: f"{source or '--config'}: {key}" for name, key in written.items()}
    origins |= {name: variable(name) for name in env} | {name: flag(name) for name in given}
    merged = {name: file[key] for name, key in written.items()} | env | given
    try:
        options = ServeOptions.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError([error_line(e, origins) for e in exc.errors()]) from None
    if options.data_dir is None:
        options = options.model_copy(update={"data_dir": default_data_dir(environ)})
    return options


def error_line(error: Any, origins: Mapping[str, str]) -> str:
    """One pydantic error as ``where[ item N]: what (got value)``."""
    loc = error["loc"]
    name = str(loc[0]) if loc else ""
    where = origins.get(name, name or "options")
    item = f" item {loc[1] + 1}" if len(loc) > 1 and isinstance(loc[1], int) else ""
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown option"
    what = str(error["ctx"]["error"]) if error["type"] == "value_error" else error["msg"]
    got = "" if name in SECRETS else f" (got {error['input']!r:.80})"
    return f"{where}{item}: {what}{got}"


def settings_from(
    options: ServeOptions,
    *,
    api_keys: frozenset[str],
    warm: tuple[WarmBody, ...],
    model: Path | None,
    llama_args: tuple[str, ...],
) -> Settings:
    """The frozen Settings from resolved options and what the CLI read for them (the key
    file's keys, the warm bodies, the model file and its template arguments)."""
    o = options
    server_tokens = str(o.tokenizer) == "server"
    return Settings(
        exposure=Exposure(api_keys=api_keys, cors_origins=frozenset(o.cors_origin),
                          allow_slot_actions=o.allow_slot_actions, allow_admin=o.allow_admin,
                          allowed_hosts=frozenset(h.lower().rstrip(".") for h in o.allowed_host)),
        host=o.host, port=o.port,
        upstreams=tuple(UpstreamSpec.parse(u) for u in o.upstream),
        warm=warm, warm_auto="auto" in o.warm,
        ollama_keep=keep_policy(o.ollama_num_ctx, o.ollama_keep_alive),
        data_dir=(o.data_dir or default_data_dir({})).expanduser(),
        max_body_bytes=o.max_body_bytes, max_inflight_body_bytes=o.max_inflight_body_bytes,
        connect_timeout=o.connect_timeout, idle_timeout=o.idle_timeout,
        body_timeout=o.body_timeout, shutdown_grace=o.shutdown_grace,
        upstream_max_inflight=o.upstream_max_inflight, queue_timeout=o.queue_timeout,
        upstream_timeout=o.upstream_timeout, log_level=o.log_level,
        tokenizer=None if server_tokens or o.tokenizer is None else o.tokenizer.expanduser(),
        server_tokens=server_tokens,
        slot_cache_max_bytes=o.slot_cache_max_bytes, slot_checkpoint_idle=o.slot_checkpoint_idle,
        shared_slot_dir=o.slot_dir.expanduser() if o.slot_dir else None,
        records_max=o.records_max, records_max_bytes=o.records_max_bytes,
        rewrite=RewriteConfig.parse(o.rewrite, o.volatile_pattern, o.rewrite_reserve_tokens),
        log_content=o.log_content, upstream_swa_full=o.upstream_swa_full,
        upstream_cache_ram=o.upstream_cache_ram,
        max_tapes=o.max_tapes, keep_tapes=o.keep_tapes,
        route=RoutePolicy(hot_tokens=o.route_hot_tokens,
                          busy_wait_tokens=o.route_busy_wait_tokens,
                          max_queue=o.route_max_queue, min_restore_gain=o.route_min_restore_gain),
        embedded=EmbeddedSettings(model=model, parallel=o.slots, ctx_per_slot=o.ctx_per_slot,
                                  extra_args=llama_args),
    )  # fmt: skip


def keep_policy(num_ctx: int, keep_alive: str) -> KeepPolicy:
    alive = "" if keep_alive.strip().lower() in ("off", "") else keep_alive.strip()
    return KeepPolicy(num_ctx=num_ctx if num_ctx > 0 else None, keep_alive=alive,
                      stable_ctx=num_ctx >= 0)  # fmt: skip
