"""Reading a client's body: bounded in bytes and time, counted against the in-flight budget,
and checked as JSON before any dialect sees it."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import orjson
from aiohttp import web

from proxy.core.conversation import MessageMemo
from proxy.core.errors import BadRequest, PayloadTooLarge, RequestTimeout, UnsupportedMedia
from proxy.core.limits import BodyHold

# JSON is what every dialect takes. `curl -d` labels JSON as form data, and llama-server and
# ollama both accept that, so kvproxy does too; anything else (multipart, XML, binary) is a 415.
JSON_TYPES = frozenset(
    {"", "application/json", "text/json", "text/plain", "application/x-www-form-urlencoded"}
)

# A \uD800-\uDFFF escape: only then can the body hold an unencodable lone surrogate.
LONE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


async def read_body(
    request: web.Request, limit: int, timeout: float = 60.0, hold: BodyHold | None = None
) -> bytes:
    """The request's body, bounded by ``limit`` bytes and ``timeout`` seconds, counted
    against the shared in-flight budget (``hold``) as it arrives."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
                if hold is not None:
                    hold.add(len(chunk))
                chunks.append(chunk)
    except TimeoutError as exc:
        raise RequestTimeout(f"request body not received within {timeout:g} s") from exc
    return b"".join(chunks)


async def read_json(
    request: web.Request,
    limit: int,
    timeout: float = 60.0,
    hold: BodyHold | None = None,
    memo: MessageMemo | None = None,
) -> Any:
    """The request's JSON body (see ``read_body``), or a ClientError saying why not; its
    messages resumed from ``memo``'s recent lists where it holds one (``MessageMemo.decode``)."""
    ctype = request.content_type.lower()
    if ctype not in JSON_TYPES and not ctype.endswith("+json"):
        raise UnsupportedMedia(f"content type {ctype!r} is not supported; send application/json")
    raw = await read_body(request, limit, timeout, hold)
    if not raw.strip():
        raise BadRequest("request body is empty; a JSON object is required")
    if hold is not None:
        hold.charge_parsed()  # before parsing: a refusal costs no parse (proxy/limits.py)
    return decode_json(raw, memo)


def decode_json(raw: bytes, memo: MessageMemo | None = None) -> Any:
    """``raw`` as JSON, or a BadRequest saying why not. orjson decodes (a 190 kB body in a
    fifth of the stdlib's time, docs/benchmarks.md); what it refuses, the stdlib decides and
    names, so every refusal keeps its message: lone surrogates and nesting past its depth of
    1024 are orjson errors, and the stdlib still accepts its extensions (NaN, a BOM)."""
    if memo is not None:
        body = memo.decode(raw)
        if body is not None:
            return body
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return decode_stdlib(raw)


def decode_stdlib(raw: bytes) -> Any:
    """The stdlib's decoding and checks: the messages every refusal has always had."""
    try:
        body = json.loads(raw)
    except RecursionError as exc:
        raise BadRequest("request body is nested too deeply") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {str(exc)[:200]}") from exc
    if LONE_SURROGATE.search(raw):
        try:
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise BadRequest("request body holds a lone UTF-16 surrogate (invalid text)") from exc
        except RecursionError as exc:
            raise BadRequest("request body is nested too deeply") from exc
    return body
