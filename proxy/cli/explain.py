"""`kvproxy explain`: why a request missed, from the records alone (hashes and counts)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

ADVICE = {
    "cold": "nothing held shared a block with this prompt: a first request pays its prefill",
    "evicted": "a longer prefix had been held but was overwritten and not restored; more "
    "slots, a larger --slot-cache-max-bytes or fewer concurrent sessions keep it",
    "diverged": "the prompt differs from what the slot held from the token shown on",
    "edited-history": "the client changed a message in the middle of its history; no rule "
    "keeps a changed history (a new tape started)",
    "system-mutation": "the system prompt changed by more than half: not a volatile part "
    "(a new tape started); --volatile-pattern can mark such text volatile",
    "needs-session": "the system prompt, first message or history changed in a way only a "
    "named session may continue (another client sharing these credentials could forge it): "
    "send x-session-id, or echo the x-kvproxy-session key kvproxy returned",
    "rewrite-skipped": "a rewrite rule could not be applied in full (reason below), so "
    "the request went as the client sent it",
    "rewrite-refused": "the planned rewrite failed the contract check (reason below) and "
    "was not sent; the request went as the client sent it. Please report this",
    "over-budget": "the compaction summary appended to the tape did not fit the context: "
    "the client's compacted form went through once and started a new tape",
}


def describe(record: dict[str, Any]) -> str:
    """The cause as a person reads it, from its fields."""
    out = str(record.get("miss_cause"))
    if record.get("miss_token") is not None:
        out += f" at token {record['miss_token']}"
    return out


def is_miss(record: dict[str, Any]) -> bool:
    return bool(record.get("miss_cause")) and record.get("status") == 200


def find(
    records: Sequence[dict[str, Any]], request_id: str | None, last_miss: bool
) -> dict[str, Any] | None:
    if request_id:
        return next((r for r in records if r.get("request_id") == request_id), None)
    if last_miss:
        return next((r for r in reversed(records) if is_miss(r)), None)
    return records[-1] if records else None


def compared_with(records: Sequence[dict[str, Any]], record: dict[str, Any]) -> dict | None:
    """The previous request of the same lineage, else the previous one on the same slot."""
    before = [r for r in records if r.get("time", 0) < record.get("time", 0)]
    for key in ("lineage", "slot"):
        if record.get(key):
            match = [r for r in before if r.get(key) == record[key]]
            if match:
                return match[-1]
    return None


def prefill_ms_per_token(records: Sequence[dict[str, Any]], upstream: str | None) -> float | None:
    ms = sum(r.get("prefill_ms") or 0 for r in records if r.get("upstream") == upstream)
    tokens = sum(r.get("prefilled_tokens") or 0 for r in records if r.get("upstream") == upstream)
    return ms / tokens if tokens and ms else None


def explain(records: Sequence[dict[str, Any]], record: dict[str, Any]) -> str:
    cause = record.get("miss_cause")
    prompt, cached = record.get("prompt_tokens") or 0, record.get("cached_tokens") or 0
    lines = [
        f"request      {record.get('request_id')} ({record.get('dialect')}, "
        f"{record.get('path')}, status {record.get('status')})",
        f"slot         {record.get('slot')} via {record.get('route_reason')}"
        + (" after a restore from disk" if record.get("restored") else ""),
        f"tokens       prompt {prompt}, predicted cached {record.get('predicted_cached')}, "
        f"actual cached {cached}, prefilled {record.get('prefilled_tokens')}"
        + (" (estimated)" if record.get("estimated") else ""),
        f"result       {'MISS: ' + describe(record) if cause else 'HIT'}",
    ]
    previous = compared_with(records, record)
    if previous is not None:
        lines.append(
            f"compared to  {previous.get('request_id')} (lineage {previous.get('lineage')}, "
            f"slot {previous.get('slot')}, prompt {previous.get('prompt_tokens')} tokens)"
        )
    if record.get("miss_message") is not None:
        lines.append(f"diverged at  message {record['miss_message']} of {record.get('messages')}")
    if cause:
        token = record.get("miss_token")
        lines.append(f"first token  {token if token is not None else cached} was not reused")
        lines.append(f"why          {ADVICE.get(cause, cause)}")
        if record.get("miss_reason"):
            lines.append(f"reason       {record['miss_reason']}")
        rate = prefill_ms_per_token(records, record.get("upstream"))
        if rate is not None:
            lost = max(0, prompt - cached)
            lines.append(
                f"cost         {lost} tokens prefilled, ~{lost * rate / 1000:.2f} s at this "
                f"upstream's measured {1000 / rate:.0f} tokens/s"
            )
    for name, text in (record.get("snippets") or {}).items():
        lines.append(f"{name + ' text':<13}{text!r}")
    if record.get("snippets") is None:
        lines.append("text         not logged (kvproxy serve --log-content records snippets)")
    rules = ", ".join(record.get("rewrite") or []) or "none"
    lines.append(f"rewrite      applied: {rules}")
    if record.get("rewrite_saved") is not None:
        lines.append(
            f"             saved {record['rewrite_saved']} tokens (predicted "
            f"{record.get('rewrite_saved_predicted')}) over the client's own form"
        )
    return "\n".join(lines)
