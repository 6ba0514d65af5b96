"""The HTTP/1.1 a UPnP client speaks, sans-IO (RFC 9112, UDA 1.1): URLs, GET, answers.

URLs are held to the gateway, and answers framed, capped and parsed. SSDP answers share the head
parser (`head_untrusted`): they are HTTP over UDP.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from voip.wire.upnp import UpnpParseError
from voip.wire.upnp import printable

MAX_HEAD = 8192  # bytes of an HTTP answer's status line and headers
MAX_BODY = 65536  # bytes of an HTTP answer's body (miniupnpd's description is about 3100)
MAX_RESPONSE = MAX_HEAD + 2 * MAX_BODY  # bytes read for one HTTP answer, chunk framing and all
MAX_URL = 512  # characters in a URL we would fetch or post to

_STATUS_LINE = re.compile(r"HTTP/1\.[01] ([1-5][0-9][0-9])(?: (.*))?")
TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_REQUEST_TARGET = re.compile(r"/[\x21-\x7e]*")  # printable ASCII, no space, from the root
_HEX = re.compile(rb"[0-9a-fA-F]{1,8}")


@dataclass(frozen=True)
class HttpUrl:
    """An http URL on the gateway: `target` is what goes on the request line."""

    host: str  # an IPv4 literal
    port: int
    target: str  # path and query, from "/"

    def __str__(self) -> str:
        return f"http://{self.host}:{self.port}{self.target}"


@dataclass(frozen=True)
class HttpResponse:
    status: int
    reason: str
    headers: dict[str, str]  # names lower-cased; a repeated one keeps its last value
    body: bytes


def parse_url_untrusted(text: str, *, host: str) -> HttpUrl:
    """An absolute http URL whose host is the IPv4 address `host`; UpnpParseError otherwise."""
    if len(text) > MAX_URL or not text.isascii() or not text.isprintable():
        raise UpnpParseError("a URL too long or with characters a URL does not have")
    try:
        parts = urlsplit(text.strip())
        port = parts.port or 80
    except ValueError as error:  # a port out of range, a bad IPv6 literal
        raise UpnpParseError(f"not a URL: {error}") from None
    if parts.scheme.lower() != "http":
        raise UpnpParseError(f"a {parts.scheme or 'relative'} URL, not http")
    if parts.username is not None or parts.password is not None:
        raise UpnpParseError("a URL with a user name or password")
    if parts.hostname != host:
        raise UpnpParseError(f"a URL on another host than {host}, which answered")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if not _REQUEST_TARGET.fullmatch(target):
        raise UpnpParseError("a URL path with spaces or characters a request line cannot carry")
    return HttpUrl(host, port, target)


def http_get(url: HttpUrl) -> bytes:
    """An HTTP/1.1 GET of `url`, asking the server to close the connection after answering."""
    head = f"GET {url.target} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\nConnection: close\r\n\r\n"
    return head.encode("ascii")


def parse_http_response_untrusted(data: bytes, *, eof: bool) -> HttpResponse | None:
    """The HTTP answer in `data`, everything received so far; None while more is needed
    (before `eof`). The body is framed by Content-Length, chunked transfer coding, or the end
    of the connection. UpnpParseError past the caps or for anything malformed."""
    if len(data) > MAX_RESPONSE:
        raise UpnpParseError(f"an HTTP answer over {MAX_RESPONSE} bytes")
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) > MAX_HEAD:
            raise UpnpParseError(f"HTTP headers over {MAX_HEAD} bytes")
        if eof:
            raise UpnpParseError("the connection closed before the HTTP headers ended")
        return None
    if end > MAX_HEAD:
        raise UpnpParseError(f"HTTP headers over {MAX_HEAD} bytes")
    status, reason, headers = head_untrusted(data[:end])
    rest = data[end + 4 :]
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _dechunk_untrusted(rest, eof=eof)
    elif "content-length" in headers:
        length_text = headers["content-length"]
        if not length_text.isdigit() or len(length_text) > 9:
            raise UpnpParseError("a Content-Length that is not a number")
        length = int(length_text)
        if length > MAX_BODY:
            raise UpnpParseError(f"an HTTP body over {MAX_BODY} bytes")
        if len(rest) < length:
            if eof:
                raise UpnpParseError("the connection closed before the HTTP body ended")
            return None
        body = rest[:length]
    else:  # the body runs to the end of the connection
        if len(rest) > MAX_BODY:
            raise UpnpParseError(f"an HTTP body over {MAX_BODY} bytes")
        body = rest if eof else None
    if body is None:
        return None
    return HttpResponse(status, reason, headers, body)


def head_untrusted(head: bytes) -> tuple[int, str, dict[str, str]]:
    """Status, reason and headers of an HTTP (or SSDP) answer's head, without its blank line."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise UpnpParseError("HTTP headers that are not ASCII") from None
    lines = text.split("\r\n")
    status_line = _STATUS_LINE.fullmatch(lines[0])
    if status_line is None:
        raise UpnpParseError("not an HTTP/1.x status line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not TOKEN.fullmatch(name):
            raise UpnpParseError("a malformed HTTP header line")
        headers[name.lower()] = value.strip()
    return int(status_line.group(1)), printable(status_line.group(2) or ""), headers


def _dechunk_untrusted(data: bytes, *, eof: bool) -> bytes | None:
    """A chunked body (RFC 9112 §7.1), or None while it has not ended; trailers are dropped."""
    body = bytearray()
    at = 0
    while True:
        line_end = data.find(b"\r\n", at)
        if line_end < 0:
            if len(data) - at > 64:
                raise UpnpParseError("a chunk size line too long")
            break
        size_text = data[at:line_end].split(b";", 1)[0].strip()
        if not _HEX.fullmatch(size_text):
            raise UpnpParseError("a chunk size that is not hexadecimal")
        size = int(size_text, 16)
        if size == 0:
            return bytes(body)  # trailers, if any, are not needed
        if len(body) + size > MAX_BODY:
            raise UpnpParseError(f"an HTTP body over {MAX_BODY} bytes")
        start = line_end + 2
        if len(data) < start + size + 2:
            break
        if data[start + size : start + size + 2] != b"\r\n":
            raise UpnpParseError("a chunk that does not end where its size says")
        body += data[start : start + size]
        at = start + size + 2
    if eof:
        raise UpnpParseError("the connection closed inside a chunked body")
    return None
