"""The ceiling of a session's cache reuse: how many of a prompt's leading tokens the session
already sent (or was answered) earlier, which a cache that never evicted would serve.

Kept per session (a principal and its session name, or its conversation when unnamed):
the last few token sequences it sent, each with the reply generated for it, in a
``PrefixIndex``. A request's ceiling is its longest prefix match among them. Bounded in
sessions and sequences; pure, no I/O.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Protocol

from proxy.core.prefix_index import PrefixIndex, Prompt, as_tokens
from proxy.rewrite.identity import Identity

MAX_SESSIONS = 512
# The User-Agent's first product token ("claude-cli/2.1.328", "codex_exec/0.169.0").
PRODUCT = re.compile(r"[A-Za-z0-9._-]{1,40}(?:/[A-Za-z0-9._+-]{1,40})?")


class Planned(Protocol):
    identity: Identity

    @property
    def tape(self) -> object: ...


def client_label(headers: Mapping[str, str]) -> str | None:
    """Which client asked, for grouping: the User-Agent's first product token only."""
    agent = next((v for k, v in headers.items() if k.lower() == "user-agent"), "")
    found = PRODUCT.match(agent.strip())
    return found.group(0) if found else None


def session_of(plan: Planned) -> str:
    """A session for the ceiling: the principal and its session name, else the
    conversation (its tape's lineage)."""
    lineage = getattr(plan.tape, "lineage", None)
    return f"{plan.identity.principal}|{plan.identity.session or lineage or '-'}"


SEQUENCES_PER_SESSION = 4


class SessionCeiling:
    def __init__(self, max_sessions: int = MAX_SESSIONS,
                 per_session: int = SEQUENCES_PER_SESSION) -> None:  # fmt: skip
        self.max_sessions, self.per_session = max_sessions, per_session
        self._sessions: OrderedDict[str, tuple[PrefixIndex, list[int]]] = OrderedDict()

    def reached(self, session: str, prompt: Prompt) -> int:
        """Leading tokens of ``prompt`` the session sent or was answered before."""
        found = self._sessions.get(session)
        if found is None:
            return 0
        self._sessions.move_to_end(session)
        index, order = found
        # whole blocks are indexed: a short prompt is compared with the newest directly
        return max(index.longest(prompt)[1], index.match(order[-1], prompt))

    def remember(self, session: str, prompt: Prompt, generated: list[int] | None) -> None:
        """What the session's slot now holds: the prompt, then the reply's tokens."""
        index, order = self._sessions.pop(session, None) or (PrefixIndex(), [])
        held = prompt
        if generated:
            held = Prompt.of(prompt.tokens + as_tokens(generated), like=(prompt,))
        key = (order[-1] + 1) if order else 0
        index.put(key, held)
        order.append(key)
        while len(order) > self.per_session:
            index.remove(order.pop(0))
        self._sessions[session] = (index, order)
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
