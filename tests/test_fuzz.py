"""
Property-based tests (Hypothesis) of what parses the network's bytes before Django runs.

The request head (:mod:`django_websocket.httpparser`) and the handshake's
validation (:mod:`django_websocket.handshake`) get arbitrary and nearly
valid input: they raise only their documented errors, read no more than
their limits allow, and give back what a well-formed request carries.

Each property runs :data:`EXAMPLES` examples (set
``WEBSOCKET_TESTS_FUZZ_EXAMPLES`` to run more), with no deadline (a busy
machine must not fail the suite): the file takes a few seconds.

"""

import base64
import io
import os
import string
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django_websocket import handshake, httpparser
from django_websocket.compression import negotiate
from django_websocket.exceptions import InvalidHandshake
from django_websocket.httpparser import (
    BadRequest,
    parse_request_line,
    path_info,
    read_headers,
)

EXAMPLES = int(os.environ.get("WEBSOCKET_TESTS_FUZZ_EXAMPLES", "200"))

fuzz = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # no .hypothesis directory in the working tree
    suppress_health_check=[HealthCheck.too_slow],
)

# RFC 9110 section 5.6.2.
TOKEN_CHARS = "!#$%&'*+-.^_`|~" + string.digits + string.ascii_letters
# What a request line or a header value may hold once decoded (latin-1).
LATIN_1 = st.characters(max_codepoint=0xFF)


class Reader(io.BufferedReader):
    """A buffered file over bytes that records how the parser reads it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.limits: list[int | None] = []

    def readline(self, size=-1):
        self.limits.append(None if size is None or size < 0 else size)
        return super().readline(size)


# Bytes that look like a head, more or less: header names and values,
# separators, line ends, control characters, and random bytes.
PIECES = st.one_of(
    st.sampled_from(
        [
            b"Host", b"Content-Length", b"Transfer-Encoding", b"Cookie", b"Upgrade",
            b"Connection", b"Sec-WebSocket-Key", b"X_Forwarded_For", b"X-A", b"x-a",
            b":", b": ", b" ", b"\t", b",", b";", b"=", b"\r\n", b"\n", b"\r", b"\x00",
            b"\x7f", b"\xff", b"chunked", b"gzip", b"websocket", b"0", b"12", b"-1", b"+1",
            b"\xd9\xa3",  # an Arabic-Indic digit, in UTF-8
        ]
    ),
    st.binary(max_size=12),
)
# Header lines that are valid, or nearly...
CLEAN_LINES = st.builds(
    lambda name, colon, value: name + colon + value,
    st.one_of(
        st.sampled_from([b"Host", b"Content-Length", b"Transfer-Encoding", b"Cookie", b"X_Y"]),
        st.text(TOKEN_CHARS, min_size=1, max_size=8).map(str.encode),
    ),
    st.sampled_from([b":", b": ", b":\t", b": \t"]),
    st.one_of(
        st.sampled_from([b"chunked", b"12", b"12, 12", b"websocket", b"a b", b"\xe9", b""]),
        st.text(TOKEN_CHARS + " ", max_size=8).map(str.encode),
    ),
)
# ... and lines of any pieces.
DIRTY_LINES = st.lists(PIECES, max_size=8).map(b"".join)
HEADISH = st.builds(
    lambda lines, newline, end: newline.join(lines) + end,
    st.lists(CLEAN_LINES, max_size=16) | st.lists(CLEAN_LINES | DIRTY_LINES, max_size=16),
    st.sampled_from([b"\r\n", b"\n"]),
    st.sampled_from([b"\r\n\r\n", b"\n\n", b"\r\n", b""]),
)


@fuzz
@given(
    data=st.one_of(HEADISH, st.binary(max_size=400)),
    max_line=st.sampled_from([8, 16, 32, 8190]) | st.integers(min_value=1, max_value=80),
    max_headers=st.sampled_from([1, 4, 100]) | st.integers(min_value=0, max_value=12),
    max_head=st.sampled_from([1, 20, 40]) | st.integers(min_value=1, max_value=200),
)
def test_read_headers_raises_bad_request_only_and_reads_within_its_limits(
    data, max_line, max_headers, max_head
):
    reader = Reader(data)
    with mock.patch.object(httpparser, "MAX_HEAD", max_head):
        try:
            headers = read_headers(reader, max_line, max_headers)
        except BadRequest:
            headers = None
    consumed = reader.tell()
    # Every read is bounded by the line limit; all of them by the limits.
    assert reader.limits and all(limit == max_line + 1 for limit in reader.limits)
    assert len(reader.limits) <= max_headers + 1
    assert consumed <= max(max_head, max_line) + max_line + 1
    if headers is None:
        return
    # The head ends with its empty line; what follows it is left unread.
    assert data[:consumed].endswith(b"\n")
    end = data[:consumed].rsplit(b"\n", 2)[-2] + b"\n"
    assert end in (b"\n", b"\r\n")
    # Its header lines are within the limit of all.
    assert consumed - len(end) <= max(max_head, max_line)
    # The environ holds no more than was read, in at most max_headers entries.
    assert len(headers) <= max_headers
    assert sum(len(value) for value in headers.values()) <= consumed
    for key, value in headers.items():
        assert key in ("CONTENT_TYPE", "CONTENT_LENGTH") or key.startswith("HTTP_"), key
        assert key == key.upper() and "-" not in key, key
        assert value == value.strip(" \t"), value
        assert not any(ord(char) < 32 and char != "\t" or char == "\x7f" for char in value)
    if "CONTENT_LENGTH" in headers and "HTTP_TRANSFER_ENCODING" not in headers:
        # (Beside chunked, Content-Length is left as sent: chunked decides
        # where the body ends, and the worker drops it; see
        # test_httpparser.test_chunked_with_content_length.)
        assert headers["CONTENT_LENGTH"].isascii() and headers["CONTENT_LENGTH"].isdigit()
    if "HTTP_TRANSFER_ENCODING" in headers:
        assert headers["HTTP_TRANSFER_ENCODING"] == "chunked"


@fuzz
@given(
    line=st.one_of(
        st.text(LATIN_1, max_size=60),
        st.builds(
            " ".join,
            st.lists(
                st.one_of(
                    st.sampled_from(["GET", "POST", "G(T", "/", "/chat/", "*", "HTTP/1.1",
                                     "HTTP/1.0", "HTTP/2.0", "http/1.1", ""]),
                    st.text(LATIN_1, max_size=10),
                ),
                max_size=4,
            ),
        ),
    )
)
def test_parse_request_line_raises_bad_request_only(line):
    try:
        method, target, version = parse_request_line(line)
    except BadRequest:
        return
    assert f"{method} {target} {version}" == line
    assert version in ("HTTP/1.0", "HTTP/1.1")
    assert method and all(char in TOKEN_CHARS for char in method)
    assert target and all(32 < ord(char) != 0x7F for char in target)


@fuzz
@given(target=st.text(LATIN_1, max_size=60))
def test_path_info_takes_any_target(target):
    path, query = path_info(target)
    # PEP 3333: environ strings are latin-1 text.
    path.encode("latin-1")
    query.encode("latin-1")


# Round trip: what a well-formed request writer produces parses back.

NAMES = st.text(TOKEN_CHARS.replace("_", ""), min_size=1, max_size=20).filter(
    lambda name: name.lower() not in ("content-length", "transfer-encoding")
)
# Visible characters, spaces and tabs inside, and obs-text (RFC 9110 5.5).
VALUES = st.text(
    st.one_of(st.characters(min_codepoint=0x21, max_codepoint=0x7E),
              st.characters(min_codepoint=0x80, max_codepoint=0xFF),
              st.sampled_from(" \t")),
    max_size=40,
).map(lambda value: value.strip(" \t"))
TARGETS = st.text(
    st.one_of(st.characters(min_codepoint=0x21, max_codepoint=0x7E),
              st.characters(min_codepoint=0x80, max_codepoint=0xFF)),
    min_size=1, max_size=40,
)


def environ_key(name: str) -> str:
    key = name.upper().replace("-", "_")
    return key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key


@fuzz
@given(
    method=st.text(TOKEN_CHARS, min_size=1, max_size=10),
    target=TARGETS,
    version=st.sampled_from(["HTTP/1.0", "HTTP/1.1"]),
    fields=st.lists(
        st.tuples(NAMES, st.sampled_from(["", " ", "\t", "  "]), VALUES,
                  st.sampled_from(["", " ", "\t"])),
        max_size=20,
    ),
    length=st.none() | st.integers(min_value=0, max_value=10**18),
    newline=st.sampled_from(["\r\n", "\n"]),
    body=st.binary(max_size=20),
)
def test_well_formed_request_round_trips(method, target, version, fields, length, newline, body):
    lines = [f"{name}:{before}{value}{after}" for name, before, value, after in fields]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    head = "".join(line + newline for line in lines) + newline
    request_line = f"{method} {target} {version}"
    data = (request_line + newline + head).encode("latin-1") + body

    reader = Reader(data)
    line = reader.readline(httpparser.MAX_LINE + 1).decode("latin-1").rstrip("\r\n")
    assert parse_request_line(line) == (method, target, version)
    headers = read_headers(reader)

    expected: dict[str, str] = {}
    for name, _, value, _ in fields:
        key = environ_key(name)
        if key in expected:
            expected[key] += ("; " if key == "HTTP_COOKIE" else ",") + value
        else:
            expected[key] = value
    if length is not None:
        expected["CONTENT_LENGTH"] = str(length)
    assert headers == expected
    assert reader.read() == body  # the head only


# The handshake, on environs with any header values.

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
HEADER_VALUES = st.one_of(
    st.sampled_from(
        ["websocket", "WebSocket, h2c", "Upgrade", "keep-alive, Upgrade", "13", "8", " 13 ",
         KEY, base64.b64encode(b"x" * 15).decode(), "not base64!", "chat, superchat", "",
         "permessage-deflate; client_max_window_bits", "http://[", "null", "0", "5"]
    ),
    st.text(LATIN_1.filter(lambda char: char == "\t" or 32 <= ord(char) != 0x7F), max_size=30),
)
ENVIRONS = st.fixed_dictionaries(
    {
        "REQUEST_METHOD": st.sampled_from(["GET", "POST", "HEAD", "get"]),
        "SERVER_PROTOCOL": st.sampled_from(["HTTP/1.1", "HTTP/1.0"]),
    },
    optional={
        name: HEADER_VALUES
        for name in [
            "HTTP_UPGRADE", "HTTP_CONNECTION", "HTTP_SEC_WEBSOCKET_VERSION",
            "HTTP_SEC_WEBSOCKET_KEY", "HTTP_SEC_WEBSOCKET_PROTOCOL",
            "HTTP_SEC_WEBSOCKET_EXTENSIONS", "HTTP_ORIGIN", "CONTENT_LENGTH",
            "HTTP_TRANSFER_ENCODING",
        ]
    },
)


@fuzz
@given(environ=ENVIRONS)
def test_handshake_raises_invalid_handshake_only(environ):
    try:
        request = handshake.parse(environ)
    except InvalidHandshake as exc:
        assert exc.status in ("400 Bad Request", "426 Upgrade Required")
        return
    if request is None:
        return
    assert len(base64.b64decode(request.key, validate=True)) == 16
    # The 101 is one head: no value of the request can add a line to it.
    protocol = request.protocols[0] if request.protocols else None
    response = handshake.accept_response(request, protocol)
    assert response.endswith(b"\r\n\r\n")
    assert response.count(b"\r\n") == 5 + (protocol is not None)


ALLOWED = st.lists(
    st.sampled_from(
        ["https://example.com", "https://*.example.com", "http://other.com:8000", "null"]
    ),
    max_size=3,
)


@fuzz
@given(
    origin=st.one_of(
        st.builds(
            "".join,
            st.lists(st.sampled_from(["http", "https", "://", "[", "]", "::1", ".", ":", "80",
                                     "example.com", "*", "/", "evil", "\u2100", "%"]),
                     max_size=8),
        ),
        st.text(LATIN_1, max_size=30),
    ),
    host=st.sampled_from(["example.com", "example.com:8000", "[::1]:8000"]),
    allowed=ALLOWED,
)
def test_origin_check_answers_any_origin(origin, host, allowed):
    assert handshake.origin_allowed(origin, host, allowed) in (True, False)
    assert handshake.origin_allowed(origin, host, [*allowed, "*"]) is True


@fuzz
@given(
    header=st.builds(
        ", ".join,
        st.lists(
            st.builds(
                "; ".join,
                st.lists(
                    st.sampled_from(
                        ["permessage-deflate", "x-webkit-deflate-frame", "client_max_window_bits",
                         "server_max_window_bits=10", "server_max_window_bits=8",
                         "client_max_window_bits=15", "client_max_window_bits=\"9\"",
                         "server_no_context_takeover", "client_no_context_takeover",
                         "server_max_window_bits=1" + "0" * 30, "=", ""]
                    ),
                    max_size=5,
                ),
            ),
            max_size=3,
        ),
    )
    | st.text(LATIN_1, max_size=40)
)
def test_extension_negotiation_takes_any_offer(header):
    assert negotiate(header) is None or isinstance(negotiate(header), tuple)


def test_extension_negotiation_takes_a_very_long_window_size():
    # int() refuses more than 4300 digits (sys.int_info.str_digits_check_threshold).
    assert negotiate("permessage-deflate; server_max_window_bits=" + "1" * 5000) is None
