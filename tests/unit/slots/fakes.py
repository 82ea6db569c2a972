"""Slot managers with no server: tokens come from the body, ``/slots`` answers what a test
sets (or fails), and slot saves and restores are answered in process (or never)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from proxy.core.conversation import Conversation
from proxy.core.errors import UpstreamUnavailable
from proxy.slots.actions import SlotAction
from proxy.slots.manager import SlotManager
from proxy.slots.mirror import Persist
from proxy.slots.routing import RoutePolicy
from proxy.slots.servers import Lease, ServerSlots

CHAT = Conversation(kind="chat")


class ListTokenizer:
    """Takes the tokens from the body: the manager's logic, not tokenization, is under test."""

    exact = True
    user_marker: tuple[int, ...] = ()

    async def prompt_tokens(self, conv: Conversation, body: dict[str, Any]) -> list[int] | None:
        return body.get("tokens")

    def text_tokens(self, text: str) -> list[int] | None:
        return [ord(c) for c in text]


class NoServer:
    """No server to reconcile with: /slots fails and the index is trusted, unless a test
    sets ``slots`` (what /slots answers); ``reads`` counts the /slots requests."""

    kind = "llama"
    url = "http://unused"

    def __init__(self) -> None:
        self.slots: list[dict[str, Any]] | None = None
        self.reads = 0

    async def get_json(self, path: str) -> Any:
        self.reads += 1
        if self.slots is None:
            raise UpstreamUnavailable("no server here")
        return self.slots


def answering(actions: list[str], hang: bool = False, ms: float | None = None) -> SlotAction:
    """Slot saves and restores answered in process (or never), each one noted; ``ms``:
    the server's timing for each, as llama-server reports it."""

    async def action(server: ServerSlots, slot: int, action: str, name: str) -> dict[str, Any]:
        actions.append(action)
        if hang:
            await asyncio.Event().wait()
        if ms is None:
            return {"n_written": 10}
        held = server.table.held.get(slot)
        tokens = len(held) if action == "save" and held is not None else 1000
        return {"n_written": 10, f"n_{action}d": tokens, "timings": {f"{action}_ms": ms}}

    return action


def manager(slots: int = 2, *, tokenizer: Any = None, can_save: bool = False,
            persist: Persist | None = None, slot_action: SlotAction | None = None,
            n_ctx: int = 4096, queue_timeout: float = 300.0,
            clock: Callable[[], float] | None = None) -> SlotManager:  # fmt: skip
    server = ServerSlots(0, NoServer(), tokenizer or ListTokenizer(), slots, n_ctx,  # type: ignore[arg-type]
                         can_save=can_save)  # fmt: skip
    extra: dict[str, Any] = {} if slot_action is None else {"slot_action": slot_action}
    return SlotManager([server], RoutePolicy(), 1 << 30,
                       clock=clock or iter(range(1, 10_000)).__next__,
                       queue_timeout=queue_timeout, persist=persist, **extra)  # fmt: skip


def saving_manager(slots: int, actions: list[str], hang: bool = False,
                   clock: Callable[[], float] | None = None) -> SlotManager:  # fmt: skip
    """A manager whose slot saves and restores are answered in process (or never)."""
    return manager(slots, can_save=True, slot_action=answering(actions, hang), clock=clock)


class Clock:
    """Seconds that move only when a test says so."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def slots_answer(*slots: tuple[int, int, int],
                 processing: int | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """What /slots says: (id, id_task, n_prompt_tokens) per slot, ``processing`` busy."""
    return [{"id": i, "id_task": task, "n_prompt_tokens": n, "is_processing": i == processing}
            for i, task, n in slots]  # fmt: skip


async def acquire(m: SlotManager, conv: Conversation, bodies: dict[int, dict[str, Any]]) -> Lease:
    """Tokens, then a slot: what the director does for a request."""
    return await m.acquire_prompts(await m.tokens_for(conv, bodies))
