"""What reading a slot back from a file costs on one server, as a share of prefilling the
same tokens: learned from the server's own timings, so that the restore decision
(``routing.restore_route``) and the cost of giving up a saved slot (``routing.eviction_cost``)
fit the machine. A fixed tenth fits a GPU box; on a 2-core CPU a restore of 5,830 tokens
took 13 ms against 24.5 s of prefill (docs/benchmarks.md), and a tenth kept sessions off
their own files.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

# Samples under this many tokens are mostly fixed overhead (a batch, opening a file).
MIN_TOKENS = 64
# The weight a new sample's predecessors keep: recent timings weigh most, so a server
# moved to other storage or another device is followed within a few samples.
DECAY = 0.8
# The learned share lies in [FLOOR, 1]: reading a file is never free (the router must
# still prefer a live slot that holds the same tokens), and never worth more than
# computing the tokens again.
FLOOR = 0.001


@dataclass
class Rate:
    """Milliseconds per token, as decayed sums: heavy samples weigh by their tokens."""

    ms: float = 0.0
    tokens: float = 0.0

    def add(self, tokens: int, ms: float) -> bool:
        """Count a sample; False when it was skipped."""
        if tokens < MIN_TOKENS or not ms > 0:
            return False
        self.ms = self.ms * DECAY + ms
        self.tokens = self.tokens * DECAY + tokens
        return True

    @property
    def per_token(self) -> float | None:
        return self.ms / self.tokens if self.tokens else None


@dataclass
class ReadBack:
    """One server's prefill rate (from its responses' ``timings``) and slot-file rate
    (from its save and restore answers: both move the same bytes)."""

    prefill: Rate = field(default_factory=Rate)
    copy: Rate = field(default_factory=Rate)

    def prefilled(self, tokens: int | None, ms: float | None) -> bool:
        return tokens is not None and ms is not None and self.prefill.add(tokens, ms)

    def copied(self, tokens: int | None, ms: float | None) -> bool:
        return tokens is not None and ms is not None and self.copy.add(tokens, ms)

    def slot_action(self, action: str, answer: dict[str, object]) -> bool:
        """llama-server's answer to a save or restore: ``n_saved`` tokens in
        ``timings.save_ms``, ``n_restored`` in ``timings.restore_ms``."""
        timings = answer.get("timings")
        tokens = answer.get(f"n_{action}d")
        ms = timings.get(f"{action}_ms") if isinstance(timings, dict) else None
        return isinstance(tokens, int) and isinstance(ms, int | float) and self.copied(tokens, ms)

    def dump(self) -> bytes:
        """Both rates, for the slot state's durable copy (``Mirror``)."""
        return json.dumps([self.prefill.ms, self.prefill.tokens, self.copy.ms,
                           self.copy.tokens]).encode()  # fmt: skip

    def load(self, raw: bytes) -> None:
        """What ``dump`` wrote; anything else leaves the rates as they are."""
        try:
            values = [float(v) for v in json.loads(raw)]
        except (ValueError, TypeError):
            return
        if len(values) == 4 and all(math.isfinite(v) and v >= 0 for v in values):
            self.prefill, self.copy = Rate(*values[:2]), Rate(*values[2:])

    def share(self, default: float) -> float:
        """The learned share, or ``default`` (``RoutePolicy.restore_cost``) until both
        rates have been measured."""
        prefill, copy = self.prefill.per_token, self.copy.per_token
        if prefill is None or copy is None:
            return default
        return min(1.0, max(FLOOR, copy / prefill))
