"""The servers behind kvproxy: their kind, one HTTP client session each, and error mapping."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
from aiohttp.payload import BytesPayload
from yarl import URL

from proxy.core import jsonio
from proxy.core.errors import UpstreamError, UpstreamProtocol, UpstreamTimeout, UpstreamUnavailable

UpstreamKind = Literal["llama", "ollama"]
KIND_PREFIXES: dict[str, UpstreamKind] = {"llama:": "llama", "ollama:": "ollama"}

# Headers that describe one hop, not the message (RFC 9110 7.6.1), plus the ones aiohttp sets.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


@dataclass(frozen=True)
class UpstreamSpec:
    """An upstream as given on the command line: its URL and, if known, its kind."""

    url: str
    kind: UpstreamKind | None = None

    @classmethod
    def parse(cls, text: str) -> UpstreamSpec:
        for prefix, kind in KIND_PREFIXES.items():
            if text.startswith(prefix):
                return cls(url=text[len(prefix) :].rstrip("/"), kind=kind)
        return cls(url=text.rstrip("/"))


# The headers a client presents kvproxy's own key in (proxy/security.py presented_key).
CREDENTIALS = frozenset({"authorization", "x-api-key", "api-key"})
# What /props may say and still be believed: more slots than this, or a context longer than
# this, is a server that lies (50,000,000 slots once took 3.1 GB before kvproxy listened).
MAX_SLOTS = 1024
MAX_CTX = 1 << 26


def forwardable_headers(headers: Any) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}


def is_count(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def shown(value: Any) -> str:
    return repr(value)[:40]


def sane_props(props: Any) -> tuple[dict[str, Any], list[str]]:
    """llama-server's ``/props`` with every field kvproxy reads checked for type and range,
    and what was wrong, in words (a field that fails is dropped or taken at a safe value:
    one slot, an unknown context). Fields kvproxy does not read pass as they are."""
    if not isinstance(props, dict):
        return {}, [f"/props is not a JSON object but {type(props).__name__}; ignored"]
    out, notes = dict(props), []
    slots = props.get("total_slots")
    if slots is not None and not is_count(slots, 1, MAX_SLOTS):
        notes.append(f"total_slots {shown(slots)} is no count of 1 to {MAX_SLOTS}; taken as 1")
        out["total_slots"] = 1
    generation = props.get("default_generation_settings")
    if generation is not None and not isinstance(generation, dict):
        notes.append("default_generation_settings is not an object; ignored")
        generation = out["default_generation_settings"] = {}
    n_ctx = (generation or {}).get("n_ctx")
    if n_ctx is not None and not is_count(n_ctx, 1, MAX_CTX):
        notes.append(f"n_ctx {shown(n_ctx)} is no context of 1 to {MAX_CTX} tokens; "
                     "taken as unknown")  # fmt: skip
        out["default_generation_settings"] = {k: v for k, v in (generation or {}).items()
                                              if k != "n_ctx"}  # fmt: skip
    for key, kind in (("model_path", str), ("chat_template", str), ("endpoint_slots", bool),
                      ("endpoint_metrics", bool)):  # fmt: skip
        if props.get(key) is not None and not isinstance(props[key], kind):
            notes.append(f"{key} {shown(props[key])} is not a {kind.__name__}; ignored")
            del out[key]
    return out, notes


MIB = 1024 * 1024


@dataclass(frozen=True)
class UpstreamLimits:
    """Bounds on what kvproxy takes from an upstream: it is trusted to answer, not to
    answer sanely (docs/deploy.md, "An untrusted upstream")."""

    max_event_bytes: int = 8 * MIB  # one SSE event or NDJSON line
    max_stream_bytes: int = 256 * MIB  # a whole answer, streamed or not
    json_max_bytes: int = 16 * MIB  # /props, /slots, /api/ps and friends
    json_deadline: float = 30.0  # seconds for one such read, however it trickles


@dataclass
class Upstream:
    """One server, with its own connection pool."""

    url: str
    kind: UpstreamKind
    session: aiohttp.ClientSession = field(repr=False)
    props: dict[str, Any] = field(default_factory=dict)
    limits: UpstreamLimits = field(default_factory=UpstreamLimits)
    # kvproxy has API keys of its own: the client's credential headers carry one of them,
    # which is kvproxy's secret and not the upstream's business; none is forwarded.
    drop_credentials: bool = False
    # Streamed calls' own pool (``make_session(pooled=False)``): llama-server drops the
    # connection after a chunked answer, so taking the kept-alive one would make the next
    # /slots read before routing open a connection of its own, in the request's time.
    streams: aiohttp.ClientSession | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.url

    @asynccontextmanager
    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
        stream: bool = False,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A response whose body the caller reads; connection and timeout failures are
        mapped to 502/504. Leaving the block early closes the upstream connection, which is
        how llama-server learns that a client went away. ``stream``: a streamed answer,
        whose connection is closed after it (``streams``)."""
        url = URL(self.url + path, encoded=True)
        if headers is not None and self.drop_credentials:
            headers = {k: v for k, v in headers.items() if k.lower() not in CREDENTIALS}
        session = self.streams if stream and self.streams is not None else self.session
        resp = await self._send(session, method, url, json_body, data, headers)
        try:
            yield resp
        except (TimeoutError, aiohttp.ClientError) as exc:
            resp.close()
            raise self.failure(exc) from exc
        except BaseException:
            resp.close()
            raise
        finally:
            resp.release()

    async def _send(self, session: aiohttp.ClientSession, method: str, url: URL,
                    json_body: Any, data: Any,
                    headers: dict[str, str] | None) -> aiohttp.ClientResponse:  # fmt: skip
        """Send once more when a pooled connection turns out to be closed by the server
        before it answered (a keep-alive race: the request was never read). A JSON body is
        encoded once, by orjson (``jsonio.dumps``), not by aiohttp's ``json.dumps``."""
        if json_body is not None:
            data = BytesPayload(jsonio.dumps(json_body), content_type="application/json")
        for attempt in (1, 2):
            try:
                return await session.request(
                    method, url, data=data, headers=headers, allow_redirects=False
                )
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                if attempt == 2 or isinstance(exc, aiohttp.ClientConnectorError):
                    raise self.failure(exc) from exc
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise self.failure(exc) from exc
        raise AssertionError("unreachable")

    def failure(self, exc: BaseException) -> UpstreamError:
        """The 502 or 504 that an aiohttp failure talking to this upstream maps to."""
        if isinstance(exc, TimeoutError):
            return UpstreamTimeout(f"upstream {self.url} did not answer in time")
        return UpstreamUnavailable(f"upstream {self.url} failed: {describe(exc)}")

    async def read(self, resp: aiohttp.ClientResponse, limit: int) -> bytes:
        """A whole answer, refused (502) past ``limit`` bytes instead of held in memory."""
        if resp.content_length is not None and resp.content_length > limit:
            raise self.oversize(limit)
        chunks, size = [], 0
        async for chunk in resp.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise self.oversize(limit)
            chunks.append(chunk)
        return b"".join(chunks)

    def oversize(self, limit: int) -> UpstreamProtocol:
        return UpstreamProtocol(f"upstream {self.url} sent an answer of over {limit} bytes")

    async def get_json(self, path: str) -> Any:
        """A small JSON answer (``/props``, ``/slots``, ``/api/ps``), bounded in size
        (``json_max_bytes``) and in total time (``json_deadline``): the session's idle
        timeout alone lets a server that trickles a byte at a time hold kvproxy forever."""
        deadline = self.limits.json_deadline
        try:
            async with asyncio.timeout(deadline):
                async with self.request("GET", path) as resp:
                    if resp.status != 200:
                        raise UpstreamUnavailable(
                            f"upstream {self.url}{path} answered {resp.status}"
                        )
                    raw = await self.read(resp, self.limits.json_max_bytes)
        except TimeoutError as exc:
            raise UpstreamTimeout(
                f"upstream {self.url}{path} did not answer within {deadline:g} s"
            ) from exc
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise UpstreamUnavailable(f"upstream {self.url}{path} sent invalid JSON") from exc


def describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


def make_session(connect_timeout: float, read_timeout: float,
                 pooled: bool = True) -> aiohttp.ClientSession:  # fmt: skip
    """Bytes pass through undecoded (``auto_decompress=False``) so forwarded bodies keep
    their content-encoding; ``sock_read`` bounds the silence between two chunks. Not
    ``pooled``: every request on a connection of its own, closed after it (streams)."""
    timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=read_timeout)
    connector = (
        # Idle pooled connections are dropped before llama-server's 5 s keep-alive timeout.
        aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=4)
        if pooled
        else aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, force_close=True)
    )
    return aiohttp.ClientSession(
        timeout=timeout, connector=connector, auto_decompress=False, trust_env=False
    )


async def detect_kind(
    session: aiohttp.ClientSession, url: str, limits: UpstreamLimits | None = None
) -> UpstreamKind:
    """llama-server answers ``GET /props``; ollama answers ``GET /api/version``."""
    probe = Upstream(url=url, kind="llama", session=session, limits=limits or UpstreamLimits())
    try:
        props = await probe.get_json("/props")
        if isinstance(props, dict) and "default_generation_settings" in props:
            return "llama"
    except UpstreamError:
        pass
    version = await probe.get_json("/api/version")
    if isinstance(version, dict) and "version" in version:
        return "ollama"
    raise UpstreamUnavailable(f"{url} answers neither as llama-server nor as ollama")
