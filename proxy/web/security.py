"""What clients may reach: one aiohttp middleware in front of every route.

- an absolute-form request target (``GET http://host/path``) is a 400;
- with ``--api-key`` (or ``--api-key-file``, one key per line, each its own principal),
  every path but ``/health`` needs one (``Authorization: Bearer``, ``x-api-key`` or
  ``api-key``), else a 401; a credential header sent twice is a 400 (the check and the
  identity must read the same one);
- a ``Host`` that is neither an IP address, ``localhost`` nor an ``--allowed-host`` is a 421
  (a page whose name was rebound to this address reads nothing);
- cross-origin requests (an ``Origin`` header) are refused unless ``--cors-origin`` lists
  the origin; an allowed one gets CORS headers (and its preflight an answer) from kvproxy,
  and must send ``application/json`` (no form or text body can skip the preflight);
- the upstream's own CORS headers never pass through;
- state-changing cache and model endpoints (``/slots`` actions, llama-server's model and
  adapter management, ollama's pull/push/create/copy/delete) are refused with a 403 that
  names the flag allowing them: kvproxy owns the cache state.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable

from aiohttp import web

from proxy.config.exposure import Exposure
from proxy.core.log import get_logger
from proxy.rewrite.identity import CREDENTIAL_HEADERS

log = get_logger("kvproxy.security")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

OPEN_PATHS = frozenset({"/health"})
ADMIN_PATHS = (
    ("POST", "/lora-adapters"), ("POST", "/props"), ("POST", "/models/load"),
    ("POST", "/models/unload"), ("POST", "/api/pull"), ("POST", "/api/push"),
    ("POST", "/api/create"), ("POST", "/api/copy"), ("DELETE", "/api/delete"),
    ("POST", "/api/blobs"),
)  # fmt: skip
CORS_METHODS = "GET, POST, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type, X-Api-Key, X-Session-Id, X-Kvproxy-Session"


def refuse(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "code": status}}, status=status)


def presented_key(request: web.Request) -> str:
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-api-key") or request.headers.get("api-key") or ""


def host_allowed(host: str | None, allowed: frozenset[str]) -> bool:
    """An IP address, ``localhost`` or a name the operator allowed: a name that an attacker's
    DNS can point at this address (rebinding) is not among them."""
    if not host:
        return True  # HTTP/1.0 without Host: no browser sends that
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    if host.startswith("[") and "]" in host:
        name = host[1 : host.index("]")]
    name = name.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost") or name in allowed:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def refusal(request: web.Request, exposure: Exposure) -> web.Response | None:
    """Why this request may not pass, as the response to send; None when it may."""
    if not request.raw_path.startswith("/"):
        return refuse(400, "absolute-form request targets are not accepted; send a path")
    if len(request.headers.getall("Host", [])) > 1 or not host_allowed(
        request.headers.get("Host"), exposure.allowed_hosts
    ):
        return refuse(421, "this Host is not served here; start kvproxy with --allowed-host "
                      "NAME to accept a name other than an IP address or localhost")  # fmt: skip
    if any(len(request.headers.getall(h, [])) > 1 for h in CREDENTIAL_HEADERS):
        return refuse(400, "a credential header (Authorization, x-api-key, api-key) was sent "
                      "more than once")  # fmt: skip
    origin = request.headers.get("Origin")
    if origin is not None and origin not in exposure.cors_origins:
        return refuse(403, f"cross-origin requests from {origin[:100]!r} are refused; "
                      "allow an origin with --cors-origin")  # fmt: skip
    if request.method == "OPTIONS" and origin is not None:
        return None  # a preflight from an allowed origin: answered below
    needs_key = exposure.api_keys and request.path not in OPEN_PATHS
    if needs_key and not exposure.accepts(presented_key(request)):
        return refuse(401, "a valid API key is required (Authorization: Bearer <key>)")
    writes = origin is not None and request.method not in ("GET", "HEAD")
    if writes and request.content_type.lower() != "application/json":
        return refuse(415, "cross-origin requests must send Content-Type: application/json")
    path = request.path.rstrip("/") or "/"
    if path.startswith("/slots/") and request.method != "GET" and not exposure.allow_slot_actions:
        return refuse(403, "slot save/restore/erase belong to kvproxy; start it with "
                      "--allow-slot-actions to let clients call them")  # fmt: skip
    if (request.method, path) in ADMIN_PATHS and not exposure.allow_admin:
        return refuse(403, f"{request.method} {path} changes the server's models; start "
                      "kvproxy with --allow-admin to let clients call it")  # fmt: skip
    return None


Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


def middleware(exposure: Exposure) -> Middleware:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        refused = refusal(request, exposure)
        if refused is not None:
            log.warning("request_refused", path=request.path[:200], method=request.method,
                        status=refused.status)  # fmt: skip
            return refused
        if request.method == "OPTIONS" and request.headers.get("Origin") is not None:
            return web.Response(status=204)
        return await handler(request)

    return guard


async def cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """On every response, streamed ones included, just before its headers go out: the
    upstream's CORS headers removed, kvproxy's own added for an allowed origin (the
    middleware has refused every other origin by then)."""
    for name in [k for k in response.headers if k.lower().startswith("access-control-")]:
        del response.headers[name]
    origin = request.headers.get("Origin")
    if origin is not None and response.status not in (401, 403):
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Methods"] = CORS_METHODS
        response.headers["Access-Control-Allow-Headers"] = CORS_HEADERS
        response.headers["Vary"] = "Origin"
