"""The typed keys under which the Application holds its components (no module globals)."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from proxy.backends.upstream import Upstream
from proxy.config.settings import Settings
from proxy.core.conversation import MessageMemo
from proxy.core.limits import BodyBudget
from proxy.flow.director import Director
from proxy.flow.responses import ResponseStore
from proxy.records.metrics import Metrics
from proxy.records.store import RecordStore
from proxy.rewrite.engine import Rewriter
from proxy.slots.manager import SlotManager
from proxy.web.lifecycle import Lifecycle, WarmToken


@dataclass
class Upstreams:
    """The upstreams behind this proxy; the first is the primary for forwarded paths."""

    upstreams: list[Upstream]

    @property
    def primary(self) -> Upstream:
        return self.upstreams[0]


SETTINGS = web.AppKey("settings", Settings)
UPSTREAMS = web.AppKey("upstreams", Upstreams)
SLOTS = web.AppKey("slots", SlotManager)
STORE = web.AppKey("store", RecordStore)
REWRITER = web.AppKey("rewriter", Rewriter)
METRICS = web.AppKey("metrics", Metrics)
BODIES = web.AppKey("bodies", BodyBudget)
MESSAGES = web.AppKey("messages", MessageMemo)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
WARM_TOKEN = web.AppKey("warm_token", WarmToken)
DIRECTOR = web.AppKey("director", Director)
RESPONSES = web.AppKey("responses", ResponseStore)
