"""A bound on the request bytes held in memory at once, across all requests."""

from __future__ import annotations

from proxy.errors import Overloaded


class BodyBudget:
    """Bytes of request bodies being read or held by handlers. ``--max-body-bytes`` bounds
    one body; this bounds them all together (``--max-inflight-body-bytes``), so that many
    concurrent large bodies are refused with a 503 instead of exhausting memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.refused = 0

    def hold(self) -> BodyHold:
        return BodyHold(self)


class BodyHold:
    """One request's share of the budget, given back when the request is done."""

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.size = 0

    def add(self, n: int) -> None:
        budget = self.budget
        if budget.used + n > budget.limit:
            budget.refused += 1
            raise Overloaded(
                f"request bodies in flight exceed --max-inflight-body-bytes ({budget.limit}); "
                "retry shortly"
            )
        budget.used += n
        self.size += n

    def __enter__(self) -> BodyHold:
        return self

    def release(self) -> None:
        self.budget.used -= self.size
        self.size = 0

    def __exit__(self, *exc: object) -> None:
        self.release()
