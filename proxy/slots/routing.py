"""Which upstream slot a request goes to: a pure decision over a snapshot of the slots.

The inputs are what the prefix index predicts for this prompt on every slot and the best
saved prefix on disk; the output names the slot, whether to restore a saved prefix into it
first, and whether the slot's own content must be saved before it is overwritten. The
thresholds are in ``RoutePolicy`` and documented in docs/config.md.

A slot given up is the one whose loss costs the least expected prefill (``eviction_cost``:
the tokens it would lose that no saved file holds, times the chance its session speaks
again, which halves every ``idle_half_life`` seconds), not merely the least recently used;
with equal lengths and savedness that is the least recently used (docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SlotView:
    """One server slot as the router sees it for one prompt."""

    server: int
    slot: int
    cached: int  # predicted cached tokens of this prompt on this slot
    held: int  # tokens the slot holds now
    busy: int = 0  # requests in flight on it
    last_used: float = 0.0  # monotonic seconds; 0 = never
    unsaved: int = -1  # tokens held beyond what a saved file covers (-1: all of them)
    public: bool = False  # a warm-up prefix (PUBLIC): no session of its own comes back to it
    savable: bool = False  # its server saves a slot to a file before overwriting it
    # Of the ``unsaved`` tokens, those the server's RAM cache keeps when a request lands
    # on the slot (all, when its lookup fires: the slot is saved to RAM first), and those
    # it keeps when a restore replaces the slot (only an earlier idle-slot save's copy).
    ram_kept: int = 0
    ram_copied: int = 0
    # Its server's learned cost of reading a slot back (``ReadBack.share``); None: the
    # policy's ``restore_cost``.
    restore_cost: float | None = None

    @property
    def saved(self) -> bool:
        """Everything it holds can come back from disk."""
        return self.held == 0 or self.unsaved == 0

    @property
    def unsaved_tokens(self) -> int:
        return self.held if self.unsaved < 0 else min(self.unsaved, self.held)

    @property
    def key(self) -> tuple[int, int]:
        return (self.server, self.slot)

    def unkept(self, replaced: bool = False) -> int:
        """Tokens held that neither a saved file nor the RAM cache keeps once a request
        lands on the slot (``replaced``: once a restore replaces it)."""
        return max(0, self.unsaved_tokens - (self.ram_copied if replaced else self.ram_kept))


@dataclass(frozen=True)
class SavedView:
    """The best saved prefix for this prompt, and which upstreams can restore it."""

    name: str
    cached: int
    server: int


@dataclass(frozen=True)
class RoutePolicy:
    # A slot that would lose at least hot_tokens tokens used within hot_seconds is hot:
    # the route's reason says "evict" rather than "cold" (the choice is eviction_cost's).
    hot_tokens: int = 512
    hot_seconds: float = 1800.0
    # The chance that a slot's session speaks again halves every idle_half_life seconds
    # it stays idle (eviction_cost): ten minutes, between an agent's tool turns (seconds)
    # and a person coming back after a break (tens of minutes).
    idle_half_life: float = 600.0
    # What bringing back a slot saved before it was given up costs, as a share of
    # prefilling it again: reading its KV state from disk instead of computing it. Until
    # a server's own timings are known (``proxy.slots.read_back``), and for servers that
    # report none.
    restore_cost: float = 0.1
    # Restore a saved prefix only when that saves this many tokens of expected prefill
    # more than the best live slot, net of reading the file (``restore_cost``) and of what
    # the slot it replaces loses (``restore_route``).
    min_restore_gain: int = 32
    # Save a slot before overwriting it when it would lose at least this many tokens (and
    # part of its content is not on disk yet).
    min_save_tokens: int = 256
    # Load guard: a busy slot is taken over an idle one only when it saves more than this
    # many tokens of prefill and fewer than max_queue requests are already on it.
    busy_wait_tokens: int = 2048
    max_queue: int = 2
    # When every slot is busy, one request per slot may wait at the server behind the
    # running one (the server starts it the moment the slot frees, with no round trip to
    # kvproxy); beyond that, requests wait in kvproxy's own queue, unpinned.
    server_queue: int = 1


@dataclass(frozen=True)
class Route:
    server: int
    slot: int
    predicted: int  # cached tokens expected on the chosen slot
    reason: str
    restore: str | None = None  # saved prefix to restore into the slot first
    save_first: bool = False  # save the slot's current content before overwriting
    lost: int = 0  # tokens of the slot's content that this request discards


def usable(cached: int, prompt_len: int) -> int:
    """llama-server always evaluates at least one prompt token."""
    return max(0, min(cached, prompt_len - 1))


def discards(view: SlotView) -> int:
    return max(0, view.held - view.cached)


def is_hot(view: SlotView, policy: RoutePolicy, now: float) -> bool:
    return discards(view) >= policy.hot_tokens and is_recent(view, policy, now)


def is_recent(view: SlotView, policy: RoutePolicy, now: float) -> bool:
    return view.last_used > 0 and now - view.last_used < policy.hot_seconds


def comeback(view: SlotView, policy: RoutePolicy, now: float) -> float:
    """The chance the slot's session speaks again soon: 1 just after it was used, halving
    every ``idle_half_life`` idle seconds; 0 for a slot never used (kvproxy does not know
    when: content a previous run left) and for a warm-up prefix, which no session of its
    own comes back to (a prompt that shares it still counts it as reuse)."""
    if view.last_used <= 0 or view.public:
        return 0.0
    return 0.5 ** (max(0.0, now - view.last_used) / policy.idle_half_life)


def read_cost(view: SlotView, policy: RoutePolicy) -> float:
    """Reading the view's tokens back, as a share of prefilling them."""
    return policy.restore_cost if view.restore_cost is None else view.restore_cost


def eviction_cost(view: SlotView, kept: int, policy: RoutePolicy, now: float,
                  replaced: bool = False) -> float:  # fmt: skip
    """Expected prefill of giving the slot up to a request that keeps its first ``kept``
    tokens (``replaced``: to a restore): the tokens it loses that no saved file holds (those
    a file holds come back by a restore, on every model kind: the session's next prompt
    extends the file, so even a recurrent model, which resumes only whole files, resumes
    it), times ``comeback``. On a server that saves (``savable``), a loss of
    ``min_save_tokens`` or more is saved first (``route_to``'s ``save_first``) and comes
    back by a restore: it costs ``restore_cost`` of its prefill; so do the tokens the
    server's RAM cache keeps (``ram_kept``), which it loads back."""
    dropped = max(0, view.held - kept)
    lost = min(dropped, view.unkept(replaced))
    in_ram = min(dropped, view.unsaved_tokens) - lost
    share = read_cost(view, policy)
    cost = in_ram * share
    if view.savable and lost >= policy.min_save_tokens:
        cost += lost * share
    else:
        cost += lost
    return cost * comeback(view, policy, now) if cost else 0.0


def value(view: SlotView, prompt_len: int, policy: RoutePolicy, now: float) -> float:
    """Tokens this prompt reuses on the slot, minus the expected prefill of what it throws
    away (``eviction_cost``): an empty, saved or long-idle slot beats a few shared tokens
    on a slot that another conversation still uses."""
    return usable(view.cached, prompt_len) - eviction_cost(view, view.cached, policy, now)


def rank(view: SlotView, prompt_len: int, policy: RoutePolicy, now: float) -> tuple:
    """Sort key, best first: value, then idle over busy, then least recently used."""
    return (-value(view, prompt_len, policy, now), view.busy > 0, view.last_used, view.key)


def victim(idle: list[SlotView], policy: RoutePolicy, now: float) -> SlotView:
    """Where a restored prefix goes (it replaces all the slot holds): the least expected
    prefill lost (``eviction_cost``), then empty first, then the least recently used."""
    return min(idle, key=lambda v: (eviction_cost(v, 0, policy, now, replaced=True),
                                    v.held > 0, v.last_used, v.key))  # fmt: skip


def route_to(view: SlotView, prompt_len: int, reason: str, policy: RoutePolicy) -> Route:
    lost = discards(view)
    return Route(
        server=view.server,
        slot=view.slot,
        predicted=usable(view.cached, prompt_len),
        reason=reason,
        save_first=lost >= policy.min_save_tokens and not view.saved,
        lost=lost,
    )


def choose(
    prompt_len: int,
    slots: list[SlotView],
    saved: SavedView | None = None,
    policy: RoutePolicy | None = None,
    now: float = 0.0,
) -> Route:
    """The slot for a prompt of ``prompt_len`` tokens. ``slots`` must not be empty."""
    policy = policy or RoutePolicy()
    ranked = sorted(slots, key=lambda v: rank(v, prompt_len, policy, now))
    idle = [v for v in ranked if v.busy == 0]
    best = ranked[0]
    reason = "prefix-hit" if usable(best.cached, prompt_len) > 0 else "no-match"
    if best.busy and idle:
        gain = usable(best.cached, prompt_len) - usable(idle[0].cached, prompt_len)
        if best.busy >= policy.max_queue or gain <= policy.busy_wait_tokens:
            best, reason = idle[0], "load-guard"
    elif best.busy:
        best, reason = all_busy(ranked, prompt_len, policy, now)
    restore = restore_route(prompt_len, idle, best, saved, policy, now)
    if restore is not None:
        return restore
    if reason == "no-match":
        reason = (
            "empty" if best.held == 0 else ("cold" if not is_hot(best, policy, now) else "evict")
        )
    return route_to(best, prompt_len, reason, policy)


def all_busy(ranked: list[SlotView], prompt_len: int, policy: RoutePolicy,
             now: float) -> tuple[SlotView, str]:  # fmt: skip
    """Every slot is busy: queue behind the prefix only when that saves more than
    busy_wait_tokens over the shallowest queue and stays under max_queue ("all-busy");
    otherwise "all-busy-least-queued", which the slot manager does not pin: the request
    waits in kvproxy's queue and is routed when a slot frees."""
    best = ranked[0]
    shallow = min(ranked, key=lambda v: (v.busy, rank(v, prompt_len, policy, now)))
    others = [usable(v.cached, prompt_len) for v in ranked if v.key != best.key]
    gain = usable(best.cached, prompt_len) - max(others, default=0)
    if best.busy < policy.max_queue and gain > policy.busy_wait_tokens:
        return best, "all-busy"
    return shallow, "all-busy-least-queued"


def restore_route(prompt_len: int, idle: list[SlotView], best: SlotView,
                  saved: SavedView | None, policy: RoutePolicy,
                  now: float) -> Route | None:  # fmt: skip
    """Restore the saved prefix into an idle slot of its upstream (``victim``) when its
    value (the tokens it reuses, less reading them back, ``restore_cost``, less what the
    replaced slot loses, ``eviction_cost``) beats ``best``'s by ``min_restore_gain``
    (``best.cached`` counts what the server's RAM cache would load: only what RAM lost is
    restored from disk); None otherwise. A flat 256-token margin over ``best.cached``
    kept short sessions from their own files behind another session's shared system
    prompt (docs/benchmarks.md, bench-trace)."""
    if saved is None or not idle:
        return None
    reused = usable(saved.cached, prompt_len)
    if reused <= usable(best.cached, prompt_len):
        return None
    target = victim([v for v in idle if v.server == saved.server] or idle, policy, now)
    if target.server != saved.server:
        return None
    # what the slot holds of this prompt's prefix, the file holds too: not lost
    kept = min(target.cached, saved.cached)
    gain = (reused * (1 - read_cost(target, policy))
            - eviction_cost(target, kept, policy, now, replaced=True))  # fmt: skip
    if gain < value(best, prompt_len, policy, now) + policy.min_restore_gain:
        return None
    base = route_to(target, prompt_len, "restore", policy)
    lost = target.held - kept  # a restore replaces the slot's whole content
    return Route(
        server=base.server,
        slot=base.slot,
        predicted=usable(saved.cached, prompt_len),
        reason="restore",
        restore=saved.name,
        save_first=lost >= policy.min_save_tokens and not target.saved,
        lost=lost,
    )
