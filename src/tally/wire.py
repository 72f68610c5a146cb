"""The KISSmetrics wire format: parameter names, tracking paths and canned answers.

This module is the one home of the names that clients put on the wire (SPEC §1)
and of the exact bytes that Tally answers with on the tracking path.
"""

from __future__ import annotations

import base64

# Reserved parameters (SPEC §1, "Parameter decoding").
KEY = "_k"  # API key of the product
PERSON = "_p"  # identity doing the event / owning the properties
NAME = "_n"  # event name (/e) or the other identity (/a)
TIME = "_t"  # Unix time, seconds
TIME_IS_EVENT_TIME = "_d"  # "1": _t is the event time (SPEC §3)
CLIENT_TYPE = "_c"
SDK_USER_AGENT = "_u"
FORWARDED_IP = "_ip"
FORWARDED_USER_AGENT = "_ua"
SERVER_TIMESTAMP = "_server_timestamp"
ALIAS_IN_EXPORT = "_p2"
#: Every parameter whose name starts with this is reserved, never a property.
RESERVED_PREFIX = "_"
#: The reserved parameters that a record keeps as metadata beside its meaning.
METADATA = (
    CLIENT_TYPE,
    SDK_USER_AGENT,
    FORWARDED_IP,
    FORWARDED_USER_AGENT,
    SERVER_TIMESTAMP,
    ALIAS_IN_EXPORT,
)
#: The value of ``_d`` that makes ``_t`` the event time.
EVENT_TIME_GIVEN = "1"
#: The media type of a POST body that holds parameters (any ``charset=``).
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"

EVENT_PATH = "/e"
SET_PATH = "/s"
ALIAS_PATH = "/a"
TRACKING_PATHS = frozenset({EVENT_PATH, SET_PATH, ALIAS_PATH})
MOBILE_VERIFY_PATH = "/m/trk"

#: The 43-byte transparent GIF (SPEC §1). Clients need a decodable image: the
#: browser library only drops a request from its retry queue on ``onload``.
#: SPEC §1 says "43-byte" but its base64 (``…AAIBRAA7``) decodes to 42 bytes: its
#: image data sub-block holds one LZW byte. This is the same image with the
#: two-byte block (``…AAICRAEAOw==``), the well-known 43-byte form that nginx's
#: ``empty_gif`` also serves; both decode to one transparent pixel.
GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAICRAEAOw==")

_CORS = b"Access-Control-Allow-Origin: *\r\n"
_NO_CACHE = (
    b"Cache-Control: no-cache, no-store, must-revalidate, private\r\n"
    b"Pragma: no-cache\r\nExpires: 0\r\n"
)


def _response(status: bytes, headers: bytes, body: bytes, *, keep_alive: bool, head: bool) -> bytes:
    connection = b"keep-alive" if keep_alive else b"close"
    return (
        b"HTTP/1.1 " + status + b"\r\n" + headers
        + b"Content-Length: " + str(len(body)).encode() + b"\r\n"
        + b"Connection: " + connection + b"\r\n\r\n"
        + (b"" if head else body)
    )  # fmt: skip


def gif_response(*, keep_alive: bool, head: bool = False) -> bytes:
    """The full answer to an accepted tracking call."""
    return _response(
        b"200 OK",
        b"Content-Type: image/gif\r\n" + _NO_CACHE + _CORS,
        GIF,
        keep_alive=keep_alive,
        head=head,
    )


def text_response(
    status: bytes,
    body: bytes,
    *,
    keep_alive: bool,
    content_type: bytes = b"text/plain; charset=utf-8",
    extra: bytes = b"",
    head: bool = False,
) -> bytes:
    """A small non-GIF answer (health, errors, the mobile verification JSON)."""
    return _response(
        status,
        b"Content-Type: " + content_type + b"\r\n" + _NO_CACHE + _CORS + extra,
        body,
        keep_alive=keep_alive,
        head=head,
    )


def options_response(*, keep_alive: bool) -> bytes:
    """Answer to a CORS preflight on any tracking path (SPEC §1: 204 + CORS)."""
    return (
        b"HTTP/1.1 204 No Content\r\n" + _CORS
        + b"Access-Control-Allow-Methods: GET, POST, HEAD, OPTIONS\r\n"
        + b"Access-Control-Allow-Headers: Content-Type\r\n"
        + b"Access-Control-Max-Age: 86400\r\n"
        + b"Connection: " + (b"keep-alive" if keep_alive else b"close") + b"\r\n\r\n"
    )  # fmt: skip
