"""The typed keys under which the Application holds its components (no module globals)."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from proxy.conversation import MessageMemo
from proxy.lifecycle import Lifecycle, WarmToken
from proxy.limits import BodyBudget
from proxy.metrics import Metrics
from proxy.rewrite.engine import Rewriter
from proxy.settings import Settings
from proxy.slots import SlotManager
from proxy.store import RecordStore
from proxy.upstream import Upstream


@dataclass
class UpstreamPool:
    """The upstreams behind this proxy; the first is the primary for forwarded paths."""

    upstreams: list[Upstream]

    @property
    def primary(self) -> Upstream:
        return self.upstreams[0]


SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", UpstreamPool)
SLOTS = web.AppKey("slots", SlotManager)
STORE = web.AppKey("store", RecordStore)
REWRITER = web.AppKey("rewriter", Rewriter)
METRICS = web.AppKey("metrics", Metrics)
BODIES = web.AppKey("bodies", BodyBudget)
MESSAGES = web.AppKey("messages", MessageMemo)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
WARM_TOKEN = web.AppKey("warm_token", WarmToken)
