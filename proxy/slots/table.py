"""What the upstream slots hold: state and decisions, no I/O.

``SlotTable`` (one per upstream) only changes its own state and returns what must happen;
the async shell in ``proxy.slots`` performs it (HTTP to the server, mirroring to LMDB).
The reuse rules (``reusable``, ``checkpoints_after``) and who may reuse what (``visible``)
live here too; the saved files are ``proxy.slots.catalog``'s. Every rule here has a
table-driven unit test.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import xxhash

from proxy.core.prefix_index import PrefixIndex, Prompt, as_tokens, match_length
from proxy.slots.ram_cache import RamCache
from proxy.slots.routing import SlotView

# The owner of content every principal may reuse: a warm-up prefix, shared on purpose.
PUBLIC = "*public*"


def visible(owner: str | None, principal: str | None) -> bool:
    """May ``principal`` reuse content ``owner``'s requests wrote? (None: anybody's view,
    for kvproxy's own bookkeeping.) Reuse of another principal's content would tell the
    client how far its prompt matches that content (docs/security.md)."""
    return principal is None or owner in (principal, PUBLIC)


# The generated tail of a slot is predicted from re-tokenized text, so a prompt that stops
# this close to the end of what a slot held still counts as extending it.
DIVERGE_SLACK = 2


@dataclass
class SlotState:
    busy: int = 0  # requests routed to it and not yet released (queued ones included)
    last_used: float = 0.0
    saved_len: int = 0  # leading tokens of what it holds that a saved file covers
    checkpoints: list[int] = field(default_factory=list)  # sliding window: see reusable
    # sliding window: the furthest the slot's memory has been filled since it was last
    # restored or reset; positions more than window + n_ubatch before it are gone, even
    # after a request cut the slot back (see ``swa_end_after``)
    swa_end: int = 0
    owner: str | None = None  # the principal whose request wrote what it holds (PUBLIC)
    # The server's last task on the slot (``id_task`` in /slots) when kvproxy last read
    # it, and whether kvproxy has sent a request to the slot since: a new task nobody
    # sent through kvproxy means another client overwrote the slot.
    task: int | None = None
    own: bool = False
    # The server holds something else than kvproxy put there (``reconcile`` cut it
    # back): routing may still count on the prefix, but no save may name it kvproxy's.
    unverified: bool = False


@dataclass(frozen=True)
class Outcome:
    """How a request on a slot ended, as its response told it."""

    completed: bool
    generated: tuple[int, ...] | None = None  # None: the reply could not be tokenized here
    finish_reason: str | None = None
    cached_actual: int | None = None
    prompt_done: bool = False  # a first byte came back: the server prefilled the whole prompt


def held_after(prompt: Prompt, outcome: Outcome, predicted: int) -> Prompt:
    """What a slot holds after a request: the prompt and the tokens fed back while
    generating (every sampled token but the last, unless generation ended on the
    end-of-generation token, which is never fed back). An interrupted request leaves only
    what is certain: the whole prompt once generation started, else the reused part."""
    if outcome.completed:
        tail = as_tokens(outcome.generated or ())
        if outcome.finish_reason not in ("stop", "eos") and tail:
            tail = tail[:-1]
        return Prompt.of(prompt.tokens + tail, like=(prompt,))
    if outcome.prompt_done:
        return prompt
    keep = outcome.cached_actual if outcome.cached_actual is not None else predicted
    return Prompt.of(prompt.tokens[: max(0, keep)])


def save_name(held: Prompt) -> str | None:
    """A saved file's name: the content's hash and length (same content, same file)."""
    if not held.hashes:
        return None
    return f"kvp-{xxhash.xxh3_64_hexdigest(repr(held.hashes[-1]).encode())}-{len(held)}.bin"


@dataclass(frozen=True)
class CutBack:
    """The server holds less on a slot than the table said (restart, direct client)."""

    slot: int
    index_tokens: int
    server_tokens: int
    foreign: bool = False  # a task kvproxy did not send overwrote it: the table forgot it


# llama-server's defaults (common/common.h): context checkpoints kept per slot.
MAX_CHECKPOINTS = 32
CHECKPOINT_MIN_STEP = 8192  # --checkpoint-min-step
N_BATCH = 2048  # --batch-size


def reusable(shared: int, held: int, tail: int | None, checkpoints: Iterable[int] = (),
             window: int | None = None, filled: int = 0, *, recurrent: bool = False,
             new_tokens: bool = True) -> int:  # fmt: skip
    """Tokens the server reuses of a slot holding ``held`` tokens when the new prompt shares
    ``shared`` with it. Dense attention: all of them. Sliding-window attention keeps only
    the last window plus one micro-batch of positions (``tail`` = n_ubatch), so the server
    continues at the divergence only if it lies in the last ``tail`` tokens; otherwise it
    restores the newest context checkpoint whose last position is at or before it (taken
    after ``c`` tokens, it resumes at ``c - 1``; the one after the BOS alone, at 1), or
    prefills everything (server-context.cpp; measured on Gemma 3 270M holding 3,000 tokens:
    diverging at 2,490 reuses 2,490, at 2,485 the checkpoint taken at 2,484 gives 2,483, at
    2,000 nothing).

    Precisely, the server looks for a checkpoint when the oldest position the slot still
    holds in its window layers (``end - window - tail``, at least 0, where ``end`` is the
    furthest the slot was ever filled since its last reset, ``filled``, or what it holds) is
    not below ``shared - window`` (at least 0): so also whenever the shared part is within
    the first window, however short the prompt (measured: a 350-token prompt, appended to,
    resumed from its checkpoint 4 before its end, not where it diverged), and after a
    request cut a longer slot back (what the window pruned does not come back).

    A recurrent or hybrid model (Mamba, Jamba, Granite 4, Qwen3.5, LFM2) keeps one state,
    at the last position it processed: the server continues only when the prompt extends
    all the slot holds; otherwise it restores the newest checkpoint taken after ``c``
    tokens with ``c`` at or before the divergence, resuming at ``c`` (measured on Mamba and
    Jamba models, tests/synthetic_gguf.py). A prompt with no new token (``new_tokens``
    false: the same prompt again) lowers the server's threshold by one."""
    if tail is None:
        return shared
    lower = 0 if new_tokens else 1
    if recurrent:
        if held - 1 < shared - lower:
            return shared
        fits = [min(shared, c) for c in checkpoints if c == 1 or 0 < c <= shared - lower]
        return max(fits, default=0)
    window = tail if window is None else window
    if max(0, max(held, filled) - window - tail) < max(0, shared - window - lower):
        return shared
    if shared < 1:
        return 0
    return max((max(1, c - 1) for c in checkpoints if 0 < c <= shared + 1), default=0)


def swa_end_after(filled: int, held_before: int, reused: int, held_after: int,
                  tail: int) -> int:  # fmt: skip
    """``SlotState.swa_end`` after a request that reused ``reused`` tokens: the server
    continued where the prompt diverged only if that lay past the oldest position it still
    had (``reusable``), and then its memory keeps what it had pruned; after a restored
    checkpoint or a reset it starts over from what it now holds."""
    end = max(filled, held_before)
    continued = reused > end - tail
    return max(end, held_after) if continued else held_after


def user_starts(tokens: Sequence[int], marker: Sequence[int]) -> list[int]:
    """Where user messages start in a prompt: each occurrence of the template's user-start
    marker tokens (llama.cpp's ``common_chat_msg_delimiters::split``, found in C by a bytes
    search on the 4-byte token array)."""
    if not marker or len(marker) > len(tokens):
        return []
    haystack = as_tokens(tokens).tobytes()
    needle = array("i", marker).tobytes()
    out, at = [], haystack.find(needle)
    while at >= 0:
        if at % 4 == 0:
            out.append(at // 4)
            at = haystack.find(needle, at + len(needle))
        else:
            at = haystack.find(needle, at + 1)
    return out


def checkpoints_after(kept: list[int], prompt_len: int, reused: int, tail: int,
                      starts: Sequence[int] = (), min_step: int = CHECKPOINT_MIN_STEP,
                      n_batch: int = N_BATCH) -> list[int]:  # fmt: skip
    """The context checkpoints of a sliding-window slot after the server processed a prompt
    of ``prompt_len`` tokens reusing ``reused``, as server-context.cpp takes them: those past
    the point it resumed from are erased; then the prompt is processed in batches that end
    at a user-message start (``starts``: the first one while there is no checkpoint, the
    last one always, others ``min_step`` past the newest checkpoint) and ``4 + n_ubatch``
    and ``4`` tokens before the end; a checkpoint of what the slot holds is taken at the
    start of each batch that begins a user message, lies near the end or ends the prompt,
    and is far enough from the newest one (``min_step``; the last user message and the end
    always). A batch holds at most ``n_batch`` tokens (other slots' tokens in the same
    batch are not modelled)."""
    out = [c for c in kept if c - 1 <= reused]
    user = set(starts)
    last_user = max(starts, default=-1)
    cuts = sorted({c for c in (prompt_len - 4 - tail, prompt_len - 4) if c > reused})
    start = reused
    while start < prompt_len:
        end = min(min((c for c in cuts if c > start), default=prompt_len), start + n_batch)
        for u in sorted(u for u in user if start < u < end):
            if u == last_user or not out or u > out[-1] + min_step:
                end = u
                break
        near_end = prompt_len < end + tail
        take = end == prompt_len or start in user or near_end
        if take and start > 0 and (not out or start == last_user or near_end
                                   or start > out[-1] + min_step):  # fmt: skip
            out = [c for c in out if c != start] + [start]
        start = end
    return sorted(out)[-MAX_CHECKPOINTS:]


class SlotTable:
    """The slots of one upstream: what each holds and who is using it."""

    def __init__(self, server: int, n_slots: int, swa_tail: int | None = None,
                 user_marker: Sequence[int] = (), swa_window: int | None = None,
                 recurrent: bool = False, ram: RamCache | None = None) -> None:  # fmt: skip
        self.server = server
        self.ram = ram  # the server's host-RAM prompt cache (dense models; None: off)
        self.held = PrefixIndex()
        self.states = [SlotState() for _ in range(n_slots)]
        self.swa_tail = swa_tail  # None: dense attention, any common prefix is reused
        self.user_marker = tuple(user_marker)  # the template's user-start tokens
        self.swa_window = swa_window  # the model's sliding window (None: as swa_tail)
        self.recurrent = recurrent  # one recurrent state per slot (swa_tail: n_ubatch)

    def views(self, prompt: Prompt | None, principal: str | None = None, savable: bool = False,
              restore_cost: float | None = None) -> list[SlotView]:  # fmt: skip
        """Every slot as the router sees it for ``prompt``; what ``principal`` may not
        reuse (``visible``) counts as nothing shared; ``savable``: the server saves a slot
        before it is overwritten; ``restore_cost``: the server's learned cost of reading a
        slot back (``ReadBack.share``). With the server's RAM cache (``ram``), what it loads
        counts as cached and what it keeps as not lost (``RamCache.view``)."""
        out = []
        for slot, state in enumerate(self.states):
            held = self.held.get(slot)
            mine = visible(state.owner, principal)
            cached = (self._reusable(state, held, prompt)
                      if prompt is not None and held is not None and mine else 0)  # fmt: skip
            unsaved = (len(held) - state.saved_len) if held is not None else 0
            kept = copied = 0
            if self.ram is not None and mine:
                cached, kept, copied = self.ram.view(held, prompt, cached, unsaved)
            out.append(SlotView(server=self.server, slot=slot, cached=cached,
                                held=len(held) if held is not None else 0, busy=state.busy,
                                last_used=state.last_used, unsaved=unsaved, ram_kept=kept,
                                ram_copied=copied,
                                public=held is not None and state.owner == PUBLIC,
                                savable=savable and not state.unverified,
                                restore_cost=restore_cost))  # fmt: skip
        return out

    def _reusable(self, state: SlotState, held: Prompt, prompt: Prompt) -> int:
        shared = match_length(held, prompt)
        return reusable(shared, len(held), self.swa_tail, state.checkpoints, self.swa_window,
                        state.swa_end, recurrent=self.recurrent,
                        new_tokens=shared < len(prompt))  # fmt: skip

    def reserve(self, slot: int, now: float) -> None:
        state = self.states[slot]
        state.busy += 1
        state.last_used = now
        state.own = True

    def unreserve(self, slot: int) -> None:
        """A reservation given up before the request was sent (cancelled, failed)."""
        self.states[slot].busy = max(0, self.states[slot].busy - 1)

    def isolated(self, slot: int, principal: str | None) -> bool:
        """The slot holds content ``principal`` may not reuse: the request must not let
        the server reuse any of it (``cache_prompt: false``)."""
        return self.held.get(slot) is not None and not visible(self.states[slot].owner,
                                                                principal)  # fmt: skip

    def settle(self, slot: int, holds: Prompt | None, now: float,
               processed: tuple[Prompt, int] | None = None,
               owner: str | None = None) -> None:  # fmt: skip
        """A request on the slot is done and the slot holds ``holds`` (None: unknown);
        ``processed`` is (the prompt, tokens reused) when the server prefilled it;
        ``owner`` wrote it."""
        state = self.states[slot]
        if holds is not None and holds.tokens:
            state.owner = owner
        state.unverified = False
        state.busy = max(0, state.busy - 1)
        state.last_used = now
        if self.swa_tail is not None:
            if processed is None or holds is None:
                state.checkpoints, state.swa_end = [], 0
            else:
                prompt, reused = processed
                starts = user_starts(prompt.tokens, self.user_marker)
                state.checkpoints = checkpoints_after(state.checkpoints, len(prompt), reused,
                                                      self.swa_tail, starts)  # fmt: skip
                before = self.held.get(slot)
                state.swa_end = swa_end_after(state.swa_end, len(before) if before else 0,
                                              reused, len(holds), self.swa_tail)  # fmt: skip
        self.put(slot, holds)

    def put(self, slot: int, holds: Prompt | None) -> None:
        state = self.states[slot]
        previous = self.held.get(slot)
        if holds is None or not holds.tokens:
            self.held.remove(slot)
            state.saved_len = state.swa_end = 0
            return
        if previous is None or match_length(previous, holds) < state.saved_len:
            state.saved_len = 0
        self.held.put(slot, holds)

    def extend(self, slot: int, base: Prompt, outcome: Outcome) -> bool:
        """The reply's tokens, learned after ``settle`` left the slot holding ``base``
        (server-tokenized models): added only while the slot still holds exactly that."""
        held = self.held.get(slot)
        if held is None or held.tokens != base.tokens:
            return False
        self.put(slot, held_after(base, outcome, len(base)))
        return True

    def saved(self, slot: int, prompt: Prompt) -> None:
        """A save of ``prompt`` from the slot completed: the part the slot still shares with
        it is on disk (a request may have changed the slot while the save was under way)."""
        held = self.held.get(slot)
        covered = match_length(held, prompt) if held is not None else 0
        self.states[slot].saved_len = covered

    def restored(self, slot: int, prompt: Prompt, owner: str | None = None) -> None:
        self.held.put(slot, prompt)
        self.states[slot].owner = owner
        self.states[slot].saved_len = len(prompt)
        self.states[slot].checkpoints = []
        self.states[slot].unverified = False

    def reconcile(self, server_slots: Any, stale: bool = False) -> list[CutBack]:
        """Compare with llama-server's ``/slots`` (``n_prompt_tokens`` and ``id_task`` per
        slot) for the idle slots: one a task kvproxy did not send ran on is forgotten
        (``overwritten``); one that holds less than the table says is cut back, and its
        content is no longer known to be kvproxy's (``unverified``). ``stale``: a request
        kvproxy did not route went to this server (``SlotManager.mark_stale``)."""
        if not isinstance(server_slots, list):
            return []
        cuts = []
        for info in server_slots:
            slot = info.get("id") if isinstance(info, dict) else None
            if not isinstance(slot, int) or not 0 <= slot < len(self.states):
                continue
            if self.states[slot].busy or info.get("is_processing"):
                continue
            held = self.held.get(slot)
            has = info.get("n_prompt_tokens") or 0
            if self._overwritten(slot, info.get("id_task"), has, stale) and held is not None:
                cuts.append(CutBack(slot, len(held), has if isinstance(has, int) else 0, True))
                self.put(slot, None)
                self.states[slot].checkpoints = []
                continue
            if held is None or not isinstance(has, int) or has >= len(held) - DIVERGE_SLACK:
                continue
            cuts.append(CutBack(slot, len(held), max(0, has)))
            self._cut(slot, held, has)
        return cuts

    def _overwritten(self, slot: int, task: Any, has: Any, stale: bool) -> bool:
        """A new task on the slot that kvproxy did not send (or, on a ``stale`` server,
        one that left more than kvproxy's own request could have: the table's content
        plus the reply slack). The first task seen is taken as it is."""
        state = self.states[slot]
        if not isinstance(task, int) or task == state.task:
            return False
        known, own = state.task is not None, state.own
        state.task, state.own = task, False
        if not known:
            return False
        if not own:
            return True
        held = self.held.get(slot)
        longer = isinstance(has, int) and held is not None and has > len(held) + DIVERGE_SLACK
        return stale and longer

    def _cut(self, slot: int, held: Prompt, has: int) -> None:
        state = self.states[slot]
        state.checkpoints, state.swa_end = [], 0
        if has > 0:
            self.held.put(slot, Prompt.of(held.tokens[:has]))
        else:
            self.held.remove(slot)
        state.saved_len = min(state.saved_len, max(0, has))
        state.unverified = has > 0

    def unaccounted(self, server_slots: Any) -> bool:
        """Does ``/slots`` show a request running on a slot kvproxy has none on (one it
        did not route, still overwriting the slot)?"""
        if not isinstance(server_slots, list):
            return False
        for info in server_slots:
            slot = info.get("id") if isinstance(info, dict) else None
            if not isinstance(slot, int) or not 0 <= slot < len(self.states):
                continue
            if info.get("is_processing") and not self.states[slot].busy:
                return True
        return False

    def to_checkpoint(self, now: float, idle_seconds: float, min_tokens: int) -> list[int]:
        """Slots whose unsaved content should go to disk now. Nothing while any request is
        routed to this upstream: llama-server writes a slot file on its main loop, so a
        save would delay every request on the server (the checkpoint waits instead)."""
        if any(state.busy for state in self.states):
            return []
        out = []
        for slot, state in enumerate(self.states):
            held = self.held.get(slot)
            if (
                held is not None
                and not state.unverified
                and now - state.last_used >= idle_seconds
                and len(held) - state.saved_len >= min_tokens
            ):
                out.append(slot)
        return out

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for slot, state in enumerate(self.states):
            held = self.held.get(slot)
            out.append(
                {
                    "upstream": self.server,
                    "slot": slot,
                    "held": len(held) if held is not None else 0,
                    "busy": state.busy,
                    "saved_len": state.saved_len,
                }
            )
        return out
