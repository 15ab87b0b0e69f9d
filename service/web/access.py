"""Who may do what over HTTP: credentials read from a request and compared in constant time.

- operator: approve, deny, acknowledge, pause, resume, reset, reload (the operator token);
- reader: the API's reads, simulate and the HTML pages, when a read token is configured (the read
  token or the operator token, as a Bearer token or as the password of HTTP basic auth, which is what
  a browser asks its user for); open when none is configured;
- open always: /-/healthy, /-/ready, /metrics and /api/v1/openapi.json, as in Prometheus.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError
from aiohttp.web import BaseRequest, Response, StreamResponse
from aiohttp.web_protocol import RequestHandler

READ_CHALLENGE = 'Basic realm="remediator", charset="UTF-8", Bearer realm="remediator"'
OPERATOR_CHALLENGE = 'Bearer realm="remediator-operator"'


def as_bytes(text: str) -> bytes:
    """Header text back to the bytes that were sent. aiohttp decodes headers as UTF-8 with
    surrogateescape, so bytes that are not UTF-8 arrive as lone surrogates that plain encode() refuses."""
    return text.encode("utf-8", "surrogateescape")


def same_secret(given: str | bytes, secret: str) -> bool:
    """Constant-time comparison that never raises, whatever bytes a client sent."""
    return hmac.compare_digest(given if isinstance(given, bytes) else as_bytes(given), secret.encode())


def authorization(request: web.BaseRequest) -> tuple[str, str]:
    """(scheme in lower case, credentials) of the Authorization header; ("", "") when absent."""
    scheme, _, credentials = request.headers.get("Authorization", "").strip().partition(" ")
    return scheme.lower(), credentials.strip()


def basic_password(credentials: str) -> bytes | None:
    """The password of HTTP basic credentials (the user name is not checked), None when malformed."""
    try:
        decoded = base64.b64decode(as_bytes(credentials), validate=True)
    except (binascii.Error, ValueError):
        return None
    _user, colon, password = decoded.partition(b":")
    return password if colon else None


def may_read(request: web.BaseRequest, read_token: str | None, operator_token: str | None) -> bool:
    """Whether the request may read; always when no read token is configured."""
    if read_token is None:
        return True
    scheme, credentials = authorization(request)
    if scheme == "bearer":
        given: bytes | None = as_bytes(credentials)
    elif scheme == "basic":
        given = basic_password(credentials)
    else:
        given = None
    if given is None:
        return False
    accepted = [same_secret(given, token) for token in (read_token, operator_token) if token is not None]
    return any(accepted)  # both compared, always: the time taken does not say which token it nearly was


def public_parse_error(message: str | None) -> str:
    """What kind of error aiohttp's parser met, without the text it quotes: it quotes the offending
    request line or header line, which may carry a credential, in its answer and in its log."""
    kind = re.split(r"[:'\"\n]", message or "", maxsplit=1)[0].strip()
    return f"Bad Request: {kind or 'malformed request'} (the offending text is not shown)"


class QuietRequestHandler(RequestHandler):
    """aiohttp's connection protocol, except that a request it cannot parse is answered (and logged)
    without quoting the request back: ``Authorization: Bearer <token>\\x01`` would otherwise be echoed."""

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> StreamResponse:
        if not isinstance(exc, HttpProcessingError) or isinstance(exc, BadHttpMethod):
            return super().handle_error(request, status, exc, message)
        # Nothing has been written for a request that did not parse; aiohttp's own answer, minus the quote.
        public = public_parse_error(exc.message)
        self.logger.warning("unparseable request from %s: %s", request.remote, public)
        response = Response(status=status, text=public + "\n")
        response.force_close()
        return response
