"""The errors kvproxy answers with, each carrying its HTTP status.

    ProxyError
    ├── ClientError (4xx: the request is at fault)
    │   ├── BadRequest        400  malformed JSON, missing field, wrong field type
    │   ├── UnsupportedMedia  415  a content type that is not JSON
    │   └── PayloadTooLarge   413  a body over --max-body-bytes
    └── UpstreamError (5xx: the server behind us is at fault)
        ├── UpstreamUnavailable 502  refused, reset, or an invalid answer
        │   └── UpstreamProtocol 502  bad framing, invalid JSON, an event or stream too big
        └── UpstreamTimeout     504  no answer within --upstream-timeout

Dialects turn any of these into their own error body; handlers never let another
exception reach a client.
"""

from __future__ import annotations


class ProxyError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ClientError(ProxyError):
    status = 400
    code = "invalid_request_error"


class BadRequest(ClientError):
    status = 400


class NotFound(ClientError):
    status = 404
    code = "not_found"


class UnsupportedMedia(ClientError):
    status = 415


class PayloadTooLarge(ClientError):
    status = 413


class RequestTimeout(ClientError):
    status = 408


class Overloaded(ProxyError):
    """More requests than --upstream-max-inflight for longer than --queue-timeout."""

    status = 503
    code = "overloaded"


class UpstreamError(ProxyError):
    status = 502
    code = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    status = 502


class UpstreamProtocol(UpstreamUnavailable):
    """The upstream answered, but not as its protocol says: broken framing, invalid JSON,
    one event or a whole answer over kvproxy's bounds. Mid-stream it ends the stream with
    an error frame, and the record says 502 with this message."""


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"
