"""
The request head of HTTP/1.x, parsed into WSGI environ entries.

The worker reads every request's head with this instead of pywsgi's parser,
which goes through the :mod:`email` package: this one is several times
faster on a browser's handshake, and stricter where laxness lets requests
be smuggled past a proxy (see :func:`read_headers`).

It knows neither sockets nor gevent: it reads lines from a buffered file.

"""

from __future__ import annotations

import re
from typing import BinaryIO
from urllib.parse import unquote

__all__ = [
    "BadRequest",
    "parse_request_line",
    "read_headers",
    "path_info",
    "MAX_LINE",
    "MAX_HEADERS",
    "MAX_HEAD",
]

#: The longest header line accepted by default, in bytes: gunicorn's default
#: ``--limit-request-field_size``, and about nginx's (8 KiB).
MAX_LINE = 8190

#: The most header lines accepted by default: gunicorn's default
#: ``--limit-request-fields``.
MAX_HEADERS = 100

#: The most bytes of header lines accepted in all: the environ of a
#: websocket lives as long as the connection.
MAX_HEAD = 65536

# RFC 9110 section 5.6.2: a field name is a token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

# RFC 9110 section 5.5: no control character in a field value but tab.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

# RFC 9112 section 3.2: no whitespace or control character in a request target.
_NOT_TARGET = re.compile(r"[\x00-\x20\x7f]")

# Headers that have environ keys of their own (PEP 3333), without HTTP_.
_UNPREFIXED = {"CONTENT_TYPE", "CONTENT_LENGTH"}


class BadRequest(ValueError):
    """The request head breaks HTTP/1.1; the message says how."""


def parse_request_line(line: str) -> tuple[str, str, str]:
    """
    Split a request line such as ``"GET /chat/ HTTP/1.1"``.

    Returns the method, the request target and the version.

    Raises:
        BadRequest: it is not ``METHOD TARGET HTTP/1.0`` or ``HTTP/1.1``.

    """
    words = line.split(" ")
    if len(words) != 3:
        raise BadRequest(f"Invalid request line: {line[:100]!r}")
    method, target, given = words
    # The usual method and version strings are shared by every request.
    version = _VERSIONS.get(given)
    if version is None:
        raise BadRequest(f"Unsupported HTTP version: {words[2][:20]!r}")
    method = _METHODS.get(method, method)
    if not _TOKEN.fullmatch(method):
        raise BadRequest(f"Invalid method: {method[:20]!r}")
    if not target or _NOT_TARGET.search(target):
        raise BadRequest(f"Invalid request target: {target[:100]!r}")
    return method, target, version


_VERSIONS = {version: version for version in ("HTTP/1.1", "HTTP/1.0")}
_METHODS = {
    method: method
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")
}


def read_headers(
    rfile: BinaryIO, max_line: int = MAX_LINE, max_headers: int = MAX_HEADERS
) -> dict[str, str]:
    """
    Read header lines from ``rfile`` up to the empty line that ends them.

    At most ``max_headers`` lines of at most ``max_line`` bytes each are
    read, and :data:`MAX_HEAD` bytes in all (or ``max_line``, if more).

    Returns them as WSGI environ entries: ``Sec-WebSocket-Key`` becomes
    ``HTTP_SEC_WEBSOCKET_KEY``, ``Content-Type`` and ``Content-Length``
    become ``CONTENT_TYPE`` and ``CONTENT_LENGTH``. Values are decoded as
    latin-1 (PEP 3333) and stripped; repeated headers are joined with
    ``","`` (``"; "`` for cookies, skipping empty ones), as in wsgiref and pywsgi. A header
    whose name has an underscore is dropped, as nginx and Django's
    runserver do: it would share its environ key with the hyphenated name
    (``X_Forwarded_For`` would pass for ``X-Forwarded-For``, which a proxy
    may vouch for).

    Raises:
        BadRequest: a line is too long or malformed, there are too many
            or too many bytes of them, a value has a control character, a
            ``Content-Length`` is not a number, a ``Transfer-Encoding`` is
            not ``chunked``, or the head is incomplete. A folded line
            (obsolete since RFC 7230) and a space before the colon are
            refused, as RFC 9112 asks.

    """
    headers: dict[str, str] = {}
    max_head = max(MAX_HEAD, max_line)
    size = 0
    for _ in range(max_headers + 1):
        line = rfile.readline(max_line + 1)
        if line == b"\r\n" or line == b"\n":
            _check_framing(headers)
            return headers
        if len(line) > max_line:
            raise BadRequest("A header line is too long.")
        size += len(line)
        if size > max_head:
            raise BadRequest(f"The request headers are over {max_head} bytes.")
        if not line.endswith(b"\n"):
            raise BadRequest("The request headers are incomplete.")
        name, colon, value = line.decode("latin-1").partition(":")
        key = _environ_key(name) if colon else None
        if key is None:
            if line[:1] in b" \t":
                raise BadRequest("Folded header lines are not supported.")
            raise BadRequest(f"Invalid header line: {line[:100]!r}")
        if not key:
            continue  # a name with an underscore
        value = value.strip(" \t\r\n")
        if _CONTROL.search(value):
            raise BadRequest(f"Invalid character in the value of {name[:100]!r}")
        if key == "HTTP_COOKIE" and key in headers:
            # One cookie string (RFC 6265 section 5.4); an empty header adds no pair.
            headers[key] = "; ".join(filter(None, (headers[key], value)))
        elif key in headers:
            headers[key] += "," + value
        elif key in _REPEATED:
            headers[key] = _shared(value)
        else:
            headers[key] = value
    raise BadRequest(f"More than {max_headers} header lines.")


def _environ_key(name: str) -> str | None:
    """
    Return the environ key of a header name; ``""`` to drop the header, :obj:`None` if invalid.

    Keys are shared by the requests that send the same names, which saves
    a string per header of every open connection's environ.

    """
    key = _KEYS.get(name)
    if key is not None:
        return key
    if not _TOKEN.fullmatch(name):
        return None
    if "_" in name:
        key = ""
    else:
        key = name.upper().replace("-", "_")
        if key not in _UNPREFIXED:
            key = "HTTP_" + key
    if len(name) <= _MAX_KEY_NAME and len(_KEYS) < _MAX_KEYS:  # clients choose the names
        _KEYS[name] = key
    return key


# Environ keys by header name, as clients spell them: at most 1,000 names
# of at most 64 characters, about 200 KiB.
_KEYS: dict[str, str] = {}
_MAX_KEYS = 1000
_MAX_KEY_NAME = 64


def _shared(value: str) -> str:
    """Return the string equal to ``value`` that earlier requests kept, if any."""
    shared = _VALUES.get(value)
    if shared is not None:
        return shared
    if len(value) <= _MAX_VALUE and len(_VALUES) < _MAX_VALUES:  # clients choose the values
        _VALUES[value] = value
    return value


# Headers whose values most clients of a site send alike: the environ of
# every open connection shares one string for each of those values.
_REPEATED = frozenset({
    "HTTP_HOST", "HTTP_ORIGIN", "HTTP_UPGRADE", "HTTP_CONNECTION", "HTTP_SEC_WEBSOCKET_VERSION",
    "HTTP_SEC_WEBSOCKET_EXTENSIONS", "HTTP_USER_AGENT", "HTTP_ACCEPT", "HTTP_ACCEPT_ENCODING",
    "HTTP_ACCEPT_LANGUAGE", "HTTP_CACHE_CONTROL", "HTTP_PRAGMA",
})

# Those values: at most 1,000 of at most 256 characters, about 300 KiB.
_VALUES: dict[str, str] = {}
_MAX_VALUES = 1000
_MAX_VALUE = 256


def _check_framing(headers: dict[str, str]) -> None:
    """Refuse a body whose end the server and a proxy might see at different places."""
    encoding = headers.get("HTTP_TRANSFER_ENCODING")
    if encoding is not None:
        # RFC 9112 section 6.3: chunked must be the last coding, and the
        # worker decodes no other (nor chunked twice). Values are stripped
        # of spaces and tabs only: "chunked\xa0" is not chunked.
        if encoding.lower() != "chunked":
            raise BadRequest(f"Unsupported Transfer-Encoding: {encoding[:40]!r}")
        headers["HTTP_TRANSFER_ENCODING"] = "chunked"
        return  # it decides where the body ends, whatever Content-Length says
    length = headers.get("CONTENT_LENGTH")
    if length is None:
        return
    # Repeated identical values are allowed (RFC 9112 section 6.3); digits
    # only, as int() would take "+1" or "1_0".
    values = {value.strip(" \t") for value in length.split(",")}
    if len(values) != 1 or not (value := values.pop()).isdigit() or not value.isascii():
        raise BadRequest(f"Invalid Content-Length: {length[:40]!r}")
    headers["CONTENT_LENGTH"] = value


def path_info(target: str) -> tuple[str, str]:
    """
    Split a request target into ``PATH_INFO`` and ``QUERY_STRING``.

    ``PATH_INFO`` is percent-decoded into latin-1 text, as PEP 3333 asks. Of
    an absolute-form target (``http://host/path``), it is the path.

    """
    path, _, query = target.partition("?")
    if not path.startswith("/") and "://" in path:
        # The absolute form (RFC 9112 section 3.2.2): keep the path.
        path = "/" + path.partition("://")[2].partition("/")[2]
    if "%" in path:
        path = unquote(path, "latin-1")
    return path, query
