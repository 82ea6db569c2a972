"""Who sent a request, so that tapes never cross clients or named sessions.

The principal is a hash of the credentials (``Authorization`` or an API-key header) and the
OpenAI ``user`` field: requests of different principals never share a tape. The session is
the name a client gives its conversation (OpenClaw's ``Runtime: … sessionId=…`` line, a
session header such as Claude Code's or Codex's, ``metadata.session_id``, the session in
``metadata.user_id``, ``prompt_cache_key``, the ``user`` field); where one is named, a
lineage belongs to it alone.
Only hashes are kept: a key is never stored or logged in clear.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import xxhash

from proxy.core.conversation import Conversation

CREDENTIAL_HEADERS = ("authorization", "x-api-key", "api-key")
# Session headers other routers honour, Claude Code's, and Codex's.
SESSION_HEADERS = ("x-session-id", "x-kvproxy-session", "session_id", "session-id",
                   "x-claude-code-session-id")  # fmt: skip
# Claude Code's metadata.user_id: "user_<hash>_account_<uuid>_session_<uuid>", or JSON.
USER_ID_SESSION = re.compile(r"_session_([A-Za-z0-9-]{8,128})")
JSON_SESSION = re.compile(r'"session_id"\s*:\s*"([A-Za-z0-9-]{8,128})"')
RUNTIME_SESSION = re.compile(r"Runtime:[^\n]*?\bsessionId=([A-Za-z0-9._:@-]{1,128})")
ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Identity:
    principal: str = ANONYMOUS
    session: str | None = None


def digest(*parts: str) -> str:
    return xxhash.xxh3_64_hexdigest("\x00".join(parts).encode("utf-8", "surrogatepass"))


def session_in_messages(conv: Conversation) -> str | None:
    """OpenClaw names its session in a ``Runtime:`` line of a user message (the first user
    message, or the compaction summary's second part)."""
    for message in conv.messages:
        if message.role != "user":
            continue
        if "runtime" not in message.derived:  # kept with the message: searched once
            found = RUNTIME_SESSION.search(message.text())
            message.derived["runtime"] = found.group(1) if found else None
        if message.derived["runtime"] is not None:
            return str(message.derived["runtime"])
    return None


def session_in_body(params: Mapping[str, Any]) -> str | None:
    """A session the request body names: ``metadata.session_id``, the session inside
    Claude Code's ``metadata.user_id``, or the OpenAI ``prompt_cache_key``."""
    metadata = params.get("metadata")
    if isinstance(metadata, Mapping):
        named = metadata.get("session_id")
        if isinstance(named, str) and named:
            return named
        user_id = metadata.get("user_id")
        if isinstance(user_id, str):
            found = USER_ID_SESSION.search(user_id) or JSON_SESSION.search(user_id)
            if found:
                return found.group(1)
    key = params.get("prompt_cache_key")
    return key if isinstance(key, str) and key else None


def principal_of(headers: Mapping[str, str], user: Any) -> str:
    """Who is asking: a hash of the credential and the ``user`` field."""
    lowered = {k.lower(): v for k, v in headers.items()}
    credential = next((lowered[h] for h in CREDENTIAL_HEADERS if lowered.get(h)), "")
    user = user if isinstance(user, str) and user else ""
    return digest(credential, user) if credential or user else ANONYMOUS


def identify(headers: Mapping[str, str], conv: Conversation) -> Identity:
    lowered = {k.lower(): v for k, v in headers.items()}
    user = conv.params.get("user")
    principal = principal_of(headers, user)
    session = (
        session_in_messages(conv)
        or next((lowered[h] for h in SESSION_HEADERS if lowered.get(h)), None)
        or session_in_body({**conv.extra, **conv.params})
        or (user if isinstance(user, str) else None)
        or None
    )
    return Identity(principal=principal, session=digest(session) if session else None)
