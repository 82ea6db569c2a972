"""The servers behind kvproxy: their kind, one HTTP client session each, and error mapping."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
from yarl import URL

from proxy.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable

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


def forwardable_headers(headers: Any) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}


@dataclass
class Upstream:
    """One server, with its own connection pool."""

    url: str
    kind: UpstreamKind
    session: aiohttp.ClientSession = field(repr=False)
    props: dict[str, Any] = field(default_factory=dict)

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
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A response whose body the caller reads; connection and timeout failures are
        mapped to 502/504. Leaving the block early closes the upstream connection, which is
        how llama-server learns that a client went away."""
        url = URL(self.url + path, encoded=True)
        resp = await self._send(method, url, json_body, data, headers)
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

    async def _send(
        self, method: str, url: URL, json_body: Any, data: Any, headers: dict[str, str] | None
    ) -> aiohttp.ClientResponse:
        """Send once more when a pooled connection turns out to be closed by the server
        before it answered (a keep-alive race: the request was never read)."""
        for attempt in (1, 2):
            try:
                return await self.session.request(
                    method, url, json=json_body, data=data, headers=headers, allow_redirects=False
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

    async def get_json(self, path: str) -> Any:
        async with self.request("GET", path) as resp:
            if resp.status != 200:
                raise UpstreamUnavailable(f"upstream {self.url}{path} answered {resp.status}")
            try:
                return await resp.json(content_type=None)
            except ValueError as exc:
                raise UpstreamUnavailable(f"upstream {self.url}{path} sent invalid JSON") from exc


def describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


def make_session(connect_timeout: float, read_timeout: float) -> aiohttp.ClientSession:
    """Bytes pass through undecoded (``auto_decompress=False``) so forwarded bodies keep
    their content-encoding; ``sock_read`` bounds the silence between two chunks."""
    timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=read_timeout)
    # Idle pooled connections are dropped before llama-server's 5 s keep-alive timeout.
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=4)
    return aiohttp.ClientSession(
        timeout=timeout, connector=connector, auto_decompress=False, trust_env=False
    )


async def detect_kind(session: aiohttp.ClientSession, url: str) -> UpstreamKind:
    """llama-server answers ``GET /props``; ollama answers ``GET /api/version``."""
    probe = Upstream(url=url, kind="llama", session=session)
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
