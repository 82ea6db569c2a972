"""Why a request reused less than it could have: a value with fields, stored as fields."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

CauseKind = Literal[
    "cold",
    "evicted",
    "diverged",
    "edited-history",
    "system-mutation",
    "needs-session",
    "over-budget",
    "rewrite-skipped",
    "rewrite-refused",
]


@dataclass(frozen=True)
class MissCause:
    kind: CauseKind
    token: int | None = None  # first prompt token not reused
    message: int | None = None  # first client message that differs from its lineage
    reason: str | None = None  # for skipped or refused rewrites: which rule, and why

    def fields(self) -> dict[str, Any]:
        """The record's fields: ``miss_cause`` is the kind alone."""
        return {
            "miss_cause": self.kind,
            "miss_token": self.token,
            "miss_message": self.message,
            "miss_reason": self.reason,
        }

    def __str__(self) -> str:
        out = self.kind
        if self.token is not None:
            out += f" at token {self.token}"
        if self.reason:
            out += f" ({self.reason})"
        return out


NO_CAUSE: dict[str, Any] = {"miss_cause": None, "miss_token": None, "miss_message": None,
                            "miss_reason": None}  # fmt: skip
