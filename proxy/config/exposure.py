"""What clients may reach, as the security middleware (``proxy.web.security``) enforces it."""

from __future__ import annotations

import hmac
from dataclasses import dataclass


@dataclass(frozen=True)
class Exposure:
    """The security settings the middleware enforces (from the CLI's configuration)."""

    api_keys: frozenset[str] = frozenset()
    cors_origins: frozenset[str] = frozenset()
    allow_slot_actions: bool = False
    allow_admin: bool = False
    allowed_hosts: frozenset[str] = frozenset()  # names beyond IP addresses and localhost

    @property
    def api_key(self) -> str | None:
        """One of the keys, for kvproxy's own requests to itself (the warmer)."""
        return min(self.api_keys) if self.api_keys else None

    def accepts(self, key: str) -> bool:
        """Whether ``key`` is one of the keys, compared in constant time per key."""
        return any(hmac.compare_digest(key.encode(), k.encode()) for k in self.api_keys)
