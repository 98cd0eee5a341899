"""Protocol errors, each carrying the HTTP status it is answered with.

Every worker turns any of these into a response in one place
(:func:`corral.wsgi.response.error_response`); the ``detail`` goes to the error
log, never into the response body, so no raw client input is ever echoed.
"""

from __future__ import annotations


class HTTPError(Exception):
    status: int = 400
    reason: str = "Bad Request"
    #: Header fields the answer carries besides corral's own (426's Sec-WebSocket-Version).
    fields: tuple[tuple[str, str], ...] = ()

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.reason)
        self.detail = detail or self.reason


class BadRequest(HTTPError):
    status, reason = 400, "Bad Request"


class Forbidden(HTTPError):
    status, reason = 403, "Forbidden"


class RequestTimeout(HTTPError):
    status, reason = 408, "Request Timeout"


class ContentTooLarge(HTTPError):
    status, reason = 413, "Content Too Large"


class URITooLong(HTTPError):
    status, reason = 414, "URI Too Long"


class ExpectationFailed(HTTPError):
    status, reason = 417, "Expectation Failed"


class HeaderFieldsTooLarge(HTTPError):
    status, reason = 431, "Request Header Fields Too Large"


class MethodNotImplemented(HTTPError):
    status, reason = 501, "Not Implemented"


class VersionNotSupported(HTTPError):
    status, reason = 505, "HTTP Version Not Supported"
