"""`kvproxy stats`: what the records say about cache reuse (pure summary, then text)."""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

SINCE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float | None = None) -> float:
    """``30m``, ``2h``, ``1d`` (ago) or a Unix time, to a Unix time."""
    now = time.time() if now is None else now
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if match:
        return now - float(match.group(1)) * SINCE_UNITS[match.group(2)]
    try:
        return float(text)
    except ValueError as exc:
        raise ValueError(f"--since takes 30m, 2h, 1d or a Unix time, not {text!r}") from exc


@dataclass
class Totals:
    requests: int = 0
    prompt: int = 0
    cached: int = 0
    prefilled: int = 0
    prefill_ms: float = 0.0
    compared: int = 0  # requests with both a prediction and the server's figure
    exact: int = 0
    abs_error: int = 0
    causes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    ceiling: int = 0  # tokens the sessions had sent or been answered before
    lost_ms: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, r: dict[str, Any]) -> None:
        self.requests += 1
        self.prompt += r.get("prompt_tokens") or 0
        self.cached += r.get("cached_tokens") or 0
        self.prefilled += r.get("prefilled_tokens") or 0
        self.prefill_ms += r.get("prefill_ms") or 0.0
        predicted, actual = r.get("predicted_cached"), r.get("cached_tokens")
        if predicted is not None and actual is not None and not r.get("estimated"):
            self.compared += 1
            self.exact += predicted == actual
            self.abs_error += abs(predicted - actual)
        cause = r.get("miss_cause")
        if cause:
            self.causes[cause] += 1
        self.add_ceiling(r, cause)

    def add_ceiling(self, r: dict[str, Any], cause: str | None) -> None:
        """Tokens under the ceiling that were prefilled anyway cost their prefill time,
        lost to the request's miss cause (at its own measured rate per token)."""
        ceiling, cached = r.get("ceiling_tokens"), r.get("cached_tokens") or 0
        if ceiling is None:
            return
        self.ceiling += ceiling
        prefilled, prefill_ms = r.get("prefilled_tokens"), r.get("prefill_ms")
        if ceiling > cached and prefilled and prefill_ms:
            self.lost_ms[cause or "unexplained"] += (ceiling - cached) * prefill_ms / prefilled

    @property
    def ceiling_share(self) -> float:
        """Cached tokens over the ceiling: how much of what could be reused was."""
        return min(1.0, self.cached / self.ceiling) if self.ceiling else 1.0

    @property
    def hit_rate(self) -> float:
        return self.cached / self.prompt if self.prompt else 0.0

    @property
    def seconds_saved(self) -> float:
        """Cached tokens times the measured prefill time per token."""
        if not self.prefilled or not self.prefill_ms:
            return 0.0
        return self.cached * (self.prefill_ms / self.prefilled) / 1000


GROUPS = ("slot", "client", "session")


def summarize(records: Iterable[dict[str, Any]],
              by: str = "slot") -> tuple[Totals, dict[str, Totals]]:  # fmt: skip
    """Totals, and totals per ``by`` (a slot, a client's User-Agent product, a session)."""
    total, groups = Totals(), defaultdict(Totals)
    for r in records:
        if r.get("status") not in (None, 200):
            continue
        total.add(r)
        groups[str(r.get(by) or "-")].add(r)
    return total, dict(sorted(groups.items()))


def render(total: Totals, per_slot: dict[str, Totals], by: str = "slot") -> str:
    if not total.requests:
        return "no records"
    lines = [
        f"requests            {total.requests}",
        f"prompt tokens       {total.prompt}",
        f"cached tokens       {total.cached}  (hit rate by tokens {total.hit_rate:.1%})",
        f"prefilled tokens    {total.prefilled}",
        f"prefill saved       ~{total.seconds_saved:.1f} s (cached tokens at the measured rate)",
    ]
    if total.compared:
        lines.append(
            f"predicted = actual  {total.exact}/{total.compared} requests "
            f"({total.exact / total.compared:.1%}), mean |error| "
            f"{total.abs_error / total.compared:.1f} tokens"
        )
    if total.causes:
        causes = ", ".join(f"{k} {v}" for k, v in sorted(total.causes.items()))
        lines.append(f"misses              {causes}")
    if total.ceiling:
        lines.append(f"ceiling             {total.ceiling} tokens sent before in their session; "
                     f"{total.ceiling_share:.1%} of it reused")  # fmt: skip
    if total.lost_ms:
        lost = ", ".join(f"{k} {v / 1000:.1f} s" for k, v in sorted(total.lost_ms.items()))
        lines.append(f"prefill lost        {lost}")
    lines.append("")
    width = max([8, *(len(k) + 2 for k in per_slot)])
    lines.append(f"{by:<{width}}{'requests':>9}{'prompt':>10}{'cached':>10}{'hit rate':>10}"
                 f"{'of ceiling':>12}{'lost s':>8}")  # fmt: skip
    for key, t in per_slot.items():
        lines.append(f"{key:<{width}}{t.requests:>9}{t.prompt:>10}{t.cached:>10}"
                     f"{t.hit_rate:>10.1%}{t.ceiling_share:>12.1%}"
                     f"{sum(t.lost_ms.values()) / 1000:>8.1f}")  # fmt: skip
    return "\n".join(lines)
