"""The one canonical request type that every dialect translates to and from.

Rewrite rules and routing see only this type, so they never care which API a client speaks.
Everything a dialect does not understand is kept verbatim (``Message.extra``,
``Conversation.params``, ``Conversation.extra``) so that rendering back loses nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal

Kind = Literal["chat", "completion"]

EMPTY: Mapping[str, Any] = MappingProxyType({})


def frozen_map(data: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """A read-only view of a copy, so a parsed body cannot be mutated behind our back."""
    return MappingProxyType(dict(data)) if data else EMPTY


@dataclass(frozen=True)
class Message:
    """One chat message. ``content`` is a string, a list of content parts, or None."""

    role: str
    content: Any = None
    extra: Mapping[str, Any] = field(default_factory=lambda: EMPTY)

    @classmethod
    def make(cls, role: str, content: Any = None, **extra: Any) -> Message:
        return cls(role=role, content=content, extra=frozen_map(extra))

    def text(self) -> str:
        """The message's text, content parts joined; images and other parts are skipped."""
        if isinstance(self.content, str):
            return self.content
        if isinstance(self.content, list):
            return "".join(
                part.get("text", "")
                for part in self.content
                if isinstance(part, Mapping) and part.get("type") == "text"
            )
        return ""


@dataclass(frozen=True)
class Conversation:
    """A request in canonical form.

    ``params`` holds generation parameters under their OpenAI names (the lingua franca that
    llama-server speaks too), plus any field the client sent that no rule needs to see.
    ``extra`` holds fields that only mean something in the client's own dialect
    (ollama's ``keep_alive``, say); they go back out when the upstream speaks that dialect.
    """

    kind: Kind
    model: str | None = None
    messages: tuple[Message, ...] = ()
    prompt: Any = None
    tools: tuple[Mapping[str, Any], ...] | None = None
    stream: bool = False
    params: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    extra: Mapping[str, Any] = field(default_factory=lambda: EMPTY)

    def with_params(self, **params: Any) -> Conversation:
        return replace(self, params=frozen_map({**self.params, **params}))


def thaw(value: Any) -> Any:
    """Plain JSON-serialisable copies of the read-only mappings kept in the canonical type.
    Scalars first, and the concrete mapping types before the (slow) ``Mapping`` ABC check:
    every request thaws every message of its conversation."""
    if value is None or isinstance(value, str | int | float):
        return value
    if isinstance(value, dict | MappingProxyType):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [thaw(v) for v in value]
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    return value
