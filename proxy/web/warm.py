"""Warm start: prefill the prompts agents will send before they send them.

``--warm FILE`` (repeatable) names chat request bodies (system prompt, tools, optional first
messages; the seeds' prompt tiers are one file each). Each is sent through kvproxy itself,
over loopback, at start, after the upstream restarted (every llama-server slot empty) and
after ollama unloaded the model (``/api/ps`` lists none): so it is rewritten, routed, saved
and recorded like any request, lands in a slot of its own while there are free ones, and
is saved to disk and restored on demand when there are not. The reply is one token (the
server always samples one), never fed back into the slot.

``lost_cache`` decides, from the server's answer, that the warmed prefixes are gone; it is
pure and table-tested. ``Warmer`` is the thin async shell around it.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from proxy.backends.kinds import backend_for
from proxy.backends.upstream import Upstream
from proxy.config.settings import WarmBody
from proxy.core.errors import ProxyError
from proxy.core.log import get_logger
from proxy.rewrite.tape import Tape

log = get_logger("kvproxy.warm")

WARM_HEADER = "x-kvproxy-warm"
CHECK_INTERVAL = 5.0  # seconds between checks that the warmed prefixes are still there
AUTO_DAYS = 7  # --warm auto looks at the records of the last days
AUTO_MAX = 4  # and warms at most this many prefixes (and never more than free slots)


def load_bodies(paths: list[Path]) -> list[WarmBody]:
    """The warm files as chat bodies; ValueError names the file and what is wrong."""
    out = []
    for path in paths:
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"--warm {path}: {exc}") from exc
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not messages:
            raise ValueError(f"--warm {path}: not a chat body (an object with messages)")
        out.append(WarmBody(path.name, body))
    return out


def busiest(records: Iterable[Mapping[str, Any]], since: float) -> list[str]:
    """Conversation lineages by how many answered client requests they had since ``since``
    (warm-ups not counted), busiest first."""
    counts = Counter(
        r["lineage"] for r in records
        if r.get("lineage") and r.get("status") == 200 and not r.get("warm")
        and (r.get("time") or 0) >= since
    )  # fmt: skip
    return [lineage for lineage, _ in counts.most_common()]


def auto_bodies(lineages: list[str], tape_of: Callable[[str], Tape | None],
                budget: int) -> list[WarmBody]:  # fmt: skip
    """``--warm auto``: the system prompt and tools of the busiest conversations, as their
    tapes hold them (the form last sent upstream, so the form the next request will have),
    one body per distinct prefix, at most ``budget``."""
    out: list[WarmBody] = []
    seen: set[str] = set()
    for lineage in lineages:
        if len(out) >= budget:
            break
        tape = tape_of(lineage)
        system = tape.sent_system if tape is not None else None
        if tape is None or system is None:
            continue
        body: dict[str, Any] = {"messages": [{"role": "system", "content": system}]}
        try:
            tools = [json.loads(t) for t in tape.tools]
        except ValueError:
            continue
        if tools:
            body["tools"] = tools
        key = json.dumps(body, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(WarmBody(f"auto:{lineage}", body))
    return out


def header_name(name: str) -> str:
    """The warm body's name as a header value: percent-encoded UTF-8 (a header is ASCII;
    a file name need not be, nor even valid UTF-8, which surrogateescape keeps)."""
    return quote(name.encode("utf-8", "surrogateescape"), safe=" !#$&'()*+,./:;=?@[]^_`{|}~")


def warm_request(warm: WarmBody) -> dict[str, Any]:
    """The body sent: the file's, with the shortest reply the server allows, unstreamed."""
    keep = {k: v for k, v in warm.body.items() if k not in ("stream", "stream_options", "n")}
    return {**keep, "max_tokens": 1, "temperature": 0, "stream": False}


def lost_cache(kind: str, answer: Any) -> bool:
    """Whether the upstream no longer holds anything warmed (``Backend.lost_cache``)."""
    return backend_for(kind).lost_cache(answer)


class Warmer:
    """Sends the warm bodies through kvproxy at start and whenever an upstream lost them."""

    def __init__(self, bodies: list[WarmBody], base_url: str, api_key: str | None,
                 upstreams: list[Upstream], interval: float = CHECK_INTERVAL,
                 token: str = "") -> None:  # fmt: skip
        self.bodies = bodies
        self.token = token  # kvproxy's per-process secret: only it marks a warm-up
        self.base_url = base_url
        self.headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.upstreams = upstreams
        self.interval = interval
        self.rounds = 0  # completed warm-ups (start included)

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(600, connect=5)) as client:
            await self._until_listening(client)
            await self.warm(client, "start")
            while True:
                await asyncio.sleep(self.interval)
                for upstream in self.upstreams:
                    if await self._lost(upstream):
                        await self.warm(client, "upstream lost its cache", upstream.url)
                        break

    async def _until_listening(self, client: httpx.AsyncClient) -> None:
        while True:
            try:
                await client.get(self.base_url + "/metrics", headers=self.headers)
                return
            except httpx.HTTPError:
                await asyncio.sleep(0.2)

    async def _lost(self, upstream: Upstream) -> bool:
        try:
            path = backend_for(upstream.kind).state_path
            return lost_cache(upstream.kind, await upstream.get_json(path))
        except ProxyError:
            return False  # down: checked again once it answers

    async def warm(self, client: httpx.AsyncClient, reason: str, upstream: str = "") -> None:
        for warm in self.bodies:
            try:
                name = header_name(warm.name)
                mark = f"{self.token} {name}" if self.token else name
                headers = {**self.headers, WARM_HEADER: mark}
                resp = await client.post(
                    self.base_url + "/v1/chat/completions", json=warm_request(warm), headers=headers
                )
                cache = resp.headers.get("x-kvproxy-cache")
                log.info("warmed", file=warm.name, reason=reason, upstream=upstream or None,
                         status=resp.status_code, cache=cache)  # fmt: skip
            except Exception as exc:  # one body that fails must not stop the others
                log.warning("warm_failed", file=warm.name, reason=reason, error=repr(exc)[:300])
        self.rounds += 1
