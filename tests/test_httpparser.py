"""The HTTP/1.x request head, parsed from buffered byte streams into environ entries."""

import io

import pytest

from django_websocket import httpparser
from django_websocket.httpparser import (
    MAX_HEADERS,
    MAX_LINE,
    BadRequest,
    parse_request_line,
    path_info,
    read_headers,
)


def rfile(data: bytes) -> io.BufferedReader:
    """A buffered file that reads ``data``, as the worker's socket file does."""
    return io.BufferedReader(io.BytesIO(data))


def headers_of(*lines: bytes) -> dict:
    """Parse header ``lines``, ended by the empty line."""
    return read_headers(rfile(b"".join(line + b"\r\n" for line in lines) + b"\r\n"))


def refusal_of(*lines: bytes, end: bytes = b"\r\n") -> str:
    """Parse a head that must be refused; return the message of the BadRequest."""
    with pytest.raises(BadRequest) as exc_info:
        read_headers(rfile(b"".join(line + b"\r\n" for line in lines) + end))
    return str(exc_info.value)


def test_bad_request_is_a_value_error():
    # pywsgi answers a ValueError from read_request() with 400.
    assert issubclass(BadRequest, ValueError)


# parse_request_line()


@pytest.mark.parametrize(
    "line, expected",
    [
        ("GET /chat/ HTTP/1.1", ("GET", "/chat/", "HTTP/1.1")),
        ("POST /form/?next=/ HTTP/1.0", ("POST", "/form/?next=/", "HTTP/1.0")),
        ("OPTIONS * HTTP/1.1", ("OPTIONS", "*", "HTTP/1.1")),
        ("M-SEARCH * HTTP/1.1", ("M-SEARCH", "*", "HTTP/1.1")),
        ("GET http://example.com/chat/ HTTP/1.1", ("GET", "http://example.com/chat/", "HTTP/1.1")),
    ],
    ids=["GET", "HTTP/1.0 with query", "asterisk", "extension method", "absolute form"],
)
def test_request_line(line, expected):
    assert parse_request_line(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        "GET /chat/",
        "GET",
        "",
        "GET /a b HTTP/1.1",
        "GET / HTTP/1.1 extra",
        "GET\xa0/ HTTP/1.1",
        "GET  / HTTP/1.1",
    ],
    ids=[
        "HTTP/0.9",
        "method only",
        "empty",
        "space in target",
        "four words",
        "no-break space",
        "two spaces",
    ],
)
def test_request_line_not_three_words(line):
    with pytest.raises(BadRequest, match="Invalid request line"):
        parse_request_line(line)


@pytest.mark.parametrize(
    "version", ["HTTP/0.9", "HTTP/1.2", "HTTP/2.0", "HTTP/2", "http/1.1", "HTTP/1.1x", "1.1"]
)
def test_request_line_unsupported_version(version):
    with pytest.raises(BadRequest, match="Unsupported HTTP version") as exc_info:
        parse_request_line(f"GET / {version}")
    assert version in str(exc_info.value)


@pytest.mark.parametrize("target", ["/a\rb", "/a\tb", "/a\x00b", "/a\x7fb", "/a\x0bb"])
def test_request_line_target_with_control_character(target):
    # RFC 9112 section 3.2: they would reach PATH_INFO and the access log.
    with pytest.raises(BadRequest, match="Invalid request target"):
        parse_request_line(f"GET {target} HTTP/1.1")


@pytest.mark.parametrize("method", ["GE(T", "GET,", "{}", "G\x00T", "GÉT"])
def test_request_line_method_not_a_token(method):
    with pytest.raises(BadRequest, match="Invalid method"):
        parse_request_line(f"{method} / HTTP/1.1")


# read_headers(): what a valid head becomes.


def test_browser_handshake():
    head = (
        b"Host: example.com:8000\r\n"
        b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
        b"Accept: */*\r\n"
        b"Accept-Language: en-US,en;q=0.5\r\n"
        b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        b"Origin: http://example.com:8000\r\n"
        b"Sec-WebSocket-Protocol: chat.v2, chat.v1\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Connection: keep-alive, Upgrade\r\n"
        b"Cookie: csrftoken=abc\r\n"
        b"Cookie: sessionid=xyz\r\n"
        b"Sec-Fetch-Dest: empty\r\n"
        b"Sec-Fetch-Mode: websocket\r\n"
        b"Sec-Fetch-Site: same-origin\r\n"
        b"Pragma: no-cache\r\n"
        b"Cache-Control: no-cache\r\n"
        b"Upgrade: websocket\r\n"
        b"\r\n"
    )
    assert read_headers(rfile(head)) == {
        "HTTP_HOST": "example.com:8000",
        "HTTP_USER_AGENT": (
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
        ),
        "HTTP_ACCEPT": "*/*",
        "HTTP_ACCEPT_LANGUAGE": "en-US,en;q=0.5",
        "HTTP_ACCEPT_ENCODING": "gzip, deflate, br, zstd",
        "HTTP_SEC_WEBSOCKET_VERSION": "13",
        "HTTP_ORIGIN": "http://example.com:8000",
        "HTTP_SEC_WEBSOCKET_PROTOCOL": "chat.v2, chat.v1",
        "HTTP_SEC_WEBSOCKET_EXTENSIONS": "permessage-deflate",
        "HTTP_SEC_WEBSOCKET_KEY": "dGhlIHNhbXBsZSBub25jZQ==",
        "HTTP_CONNECTION": "keep-alive, Upgrade",
        "HTTP_COOKIE": "csrftoken=abc; sessionid=xyz",
        "HTTP_SEC_FETCH_DEST": "empty",
        "HTTP_SEC_FETCH_MODE": "websocket",
        "HTTP_SEC_FETCH_SITE": "same-origin",
        "HTTP_PRAGMA": "no-cache",
        "HTTP_CACHE_CONTROL": "no-cache",
        "HTTP_UPGRADE": "websocket",
    }


def test_no_headers():
    assert read_headers(rfile(b"\r\n")) == {}


@pytest.mark.parametrize(
    "name, key",
    [
        (b"Host", "HTTP_HOST"),
        (b"sec-websocket-key", "HTTP_SEC_WEBSOCKET_KEY"),
        (b"SEC-WEBSOCKET-KEY", "HTTP_SEC_WEBSOCKET_KEY"),
        (b"X-Request.ID", "HTTP_X_REQUEST.ID"),
        (b"Content-Type", "CONTENT_TYPE"),
        (b"content-type", "CONTENT_TYPE"),
    ],
)
def test_environ_key(name, key):
    assert headers_of(name + b": text/plain") == {key: "text/plain"}


def test_content_length_has_no_http_prefix():
    assert headers_of(b"Content-Length: 42") == {"CONTENT_LENGTH": "42"}


def test_reads_the_head_only():
    # The body stays in the file for wsgi.input; the websocket's first
    # frames too, when a client sends them right behind its handshake.
    file = rfile(b"Content-Length: 5\r\n\r\nhello\x81\x00")
    assert read_headers(file) == {"CONTENT_LENGTH": "5"}
    assert file.read() == b"hello\x81\x00"


@pytest.mark.parametrize(
    "line, value",
    [
        (b"X-Value: plain", "plain"),
        (b"X-Value:no space", "no space"),
        (b"X-Value: \t padded \t ", "padded"),
        (b"X-Value: inner  spaces\tkept", "inner  spaces\tkept"),
        (b"X-Value:", ""),
        (b"X-Value:   ", ""),
        (b"X-Value: a: b", "a: b"),
        (b"X-Value: caf\xe9 \xff", "caf\xe9 \xff"),
        (b"X-Value: caf\xc3\xa9", "caf\xc3\xa9"),
    ],
    ids=[
        "plain", "no space", "padded", "inner spaces", "empty", "blank", "colon in value",
        "latin-1", "utf-8 bytes as latin-1",
    ],
)
def test_value(line, value):
    assert headers_of(line) == {"HTTP_X_VALUE": value}


def test_lf_line_endings():
    assert read_headers(rfile(b"Host: example.com\nX-A: 1\n\n")) == {
        "HTTP_HOST": "example.com",
        "HTTP_X_A": "1",
    }


def test_repeated_headers_are_joined_with_commas():
    assert headers_of(b"Accept: text/html", b"X-Other: 1", b"accept: */*") == {
        "HTTP_ACCEPT": "text/html,*/*",
        "HTTP_X_OTHER": "1",
    }


def test_repeated_cookies_are_joined_with_semicolons():
    assert headers_of(b"Cookie: a=1", b"Cookie: b=2; c=3", b"cookie: d=4") == {
        "HTTP_COOKIE": "a=1; b=2; c=3; d=4"
    }


def test_empty_cookie_headers_add_no_separator():
    assert headers_of(b"Cookie:", b"Cookie: a=1", b"Cookie:", b"Cookie: b=2", b"Cookie: ") == {
        "HTTP_COOKIE": "a=1; b=2"
    }


# Names with an underscore are dropped: X_Forwarded_For would pass for X-Forwarded-For.


@pytest.mark.parametrize(
    "lines, expected",
    [
        ([b"X_Forwarded_For: 10.0.0.1"], {}),
        ([b"X-Forwarded-For: 1.2.3.4", b"X_Forwarded_For: 10.0.0.1"], "1.2.3.4"),
        ([b"X_Forwarded_For: 10.0.0.1", b"X-Forwarded-For: 1.2.3.4"], "1.2.3.4"),
        ([b"X-Forwarded_For: 10.0.0.1", b"x_forwarded-for: 10.0.0.2"], {}),
    ],
    ids=["alone", "after the real one", "before the real one", "mixed spellings"],
)
def test_underscore_names_are_dropped(lines, expected):
    if isinstance(expected, str):
        expected = {"HTTP_X_FORWARDED_FOR": expected}
    assert headers_of(*lines) == expected


def test_underscore_content_length_is_dropped():
    # Dropped before the Content-Length check: a client cannot smuggle a
    # length past a proxy that does not read it as Content-Length.
    assert headers_of(b"Content_Length: nonsense", b"Host: a") == {"HTTP_HOST": "a"}


# read_headers(): what is refused.


@pytest.mark.parametrize(
    "line",
    [
        b"Host : example.com",
        b"Host\t: example.com",
        b": no name",
        b"No colon at all",
        b"X Name: value",
        b"X(Name): value",
        b"X/Name: value",
        b"X\x00Name: value",
        b"Sp\xe9cial: value",
        b"\r",
    ],
    ids=[
        "space before colon",
        "tab before colon",
        "empty name",
        "no colon",
        "space in name",
        "parenthesis in name",
        "slash in name",
        "NUL in name",
        "latin-1 in name",
        "bare CR",
    ],
)
def test_invalid_header_line(line):
    message = refusal_of(b"Host: example.com", line)
    assert message.startswith("Invalid header line: ")
    assert repr(line + b"\r\n") in message


@pytest.mark.parametrize(
    "line",
    [b" folded", b"\tfolded", b" X-Next: 1", b"  "],
    ids=["space", "tab", "looks like a header", "blank"],
)
def test_folded_line(line):
    assert refusal_of(b"X-Long: first", line) == "Folded header lines are not supported."


@pytest.mark.parametrize("value", [b"a\rb", b"a\x00b", b"a\x1bb", b"a\x7fb"])
def test_control_character_in_value(value):
    # RFC 9110 section 5.5; a tab is allowed.
    assert refusal_of(b"X-A: " + value).startswith("Invalid character in the value of 'X-A'")
    assert headers_of(b"X-A: a\tb") == {"HTTP_X_A": "a\tb"}


@pytest.mark.parametrize("encoding", [b"gzip", b"identity", b"gzip, chunked", b"chunked, chunked"])
def test_transfer_encoding_other_than_chunked(encoding):
    # RFC 9112 section 6.3: the worker decodes chunked only, once.
    assert refusal_of(b"Transfer-Encoding: " + encoding).startswith("Unsupported Transfer-Encoding")


def test_chunked_with_content_length():
    # Chunked decides where the body ends: the worker drops Content-Length.
    headers = headers_of(b"Transfer-Encoding: Chunked", b"Content-Length: nope")
    assert headers["HTTP_TRANSFER_ENCODING"] == "chunked"


@pytest.mark.parametrize("suffix", [b"\xa0", b"\x85"], ids=["no-break space", "next line"])
def test_framing_values_are_stripped_of_spaces_and_tabs_only(suffix):
    # str.strip() would take these latin-1 characters for whitespace: the
    # parser and the worker must agree on what is chunked.
    assert refusal_of(b"Transfer-Encoding: chunked" + suffix).startswith(
        "Unsupported Transfer-Encoding"
    )
    assert refusal_of(b"Content-Length: 1" + suffix).startswith("Invalid Content-Length")


def test_limits_are_arguments():
    # The worker passes gunicorn's --limit-request-field_size and --limit-request-fields.
    line = b"X-Big: " + b"a" * 10_000
    assert refusal_of(line) == "A header line is too long."
    headers = read_headers(rfile(line + b"\r\n\r\n"), max_line=16_384)
    assert headers == {"HTTP_X_BIG": "a" * 10_000}
    lines = b"".join(b"X-%d: 1\r\n" % number for number in range(3))
    with pytest.raises(BadRequest, match="More than 2 header lines"):
        read_headers(rfile(lines + b"\r\n"), max_headers=2)


def test_leading_whitespace_on_first_header():
    # RFC 9112 section 2.2: whitespace between the request line and the first header.
    assert refusal_of(b" Host: example.com") == "Folded header lines are not supported."


def test_invalid_header_line_message_is_truncated():
    message = refusal_of(b"X" * 1000)
    assert len(message) < 200


def test_longest_header_line():
    line = b"X-Long: " + b"a" * (MAX_LINE - len(b"X-Long: \r\n"))
    assert len(line + b"\r\n") == MAX_LINE
    assert headers_of(line) == {"HTTP_X_LONG": "a" * (MAX_LINE - len(b"X-Long: \r\n"))}


@pytest.mark.parametrize("extra", [1, 1000], ids=["one byte", "much"])
def test_header_line_too_long(extra):
    line = b"X-Long: " + b"a" * (MAX_LINE - len(b"X-Long: \r\n") + extra)
    assert refusal_of(line) == "A header line is too long."


def test_header_line_too_long_without_newline():
    # The client never ends its line: reading stops after MAX_LINE bytes.
    with pytest.raises(BadRequest, match="too long"):
        read_headers(rfile(b"X-Long: " + b"a" * (10 * MAX_LINE)))


def test_most_header_bytes():
    # Each line under MAX_LINE, but more than MAX_HEAD bytes in all: an idle
    # websocket's environ lives as long as its connection.
    value = b"a" * (MAX_LINE - 100)
    count = httpparser.MAX_HEAD // len(value)
    lines = [b"X-%d: " % number + value for number in range(count - 1)]
    assert len(headers_of(*lines)) == count - 1
    message = refusal_of(*(b"X-%d: " % number + value for number in range(count + 1)))
    assert message == f"The request headers are over {httpparser.MAX_HEAD} bytes."


def test_most_header_lines():
    lines = [b"X-Header-%d: %d" % (number, number) for number in range(MAX_HEADERS)]
    assert len(headers_of(*lines)) == MAX_HEADERS


@pytest.mark.parametrize(
    "last", [b"X-One-More: 1", b"X_Dropped: 1"], ids=["one more", "one more, dropped"]
)
def test_too_many_header_lines(last):
    # Dropped lines count too: they cannot stream in without end.
    lines = [b"X-Header-%d: %d" % (number, number) for number in range(MAX_HEADERS)]
    assert refusal_of(*lines, last) == f"More than {MAX_HEADERS} header lines."


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"Host: example.com\r\n",
        b"Host: example.com\r\nX-Half: val",
        b"Host: example.com\r\n\r",
    ],
    ids=["nothing", "no empty line", "half a line", "half the empty line"],
)
def test_incomplete_head(data):
    with pytest.raises(BadRequest, match="The request headers are incomplete."):
        read_headers(rfile(data))


# Content-Length.


@pytest.mark.parametrize(
    "lines, length",
    [
        ([b"Content-Length: 0"], "0"),
        ([b"Content-Length: 12345678901234567890"], "12345678901234567890"),
        ([b"Content-Length:  42 "], "42"),
        ([b"Content-Length: 42", b"Content-Length: 42"], "42"),
        ([b"Content-Length: 42, 42"], "42"),
        ([b"Content-Length: 42,42", b"content-length: 42"], "42"),
    ],
    ids=["zero", "big", "padded", "repeated", "listed", "listed and repeated"],
)
def test_content_length(lines, length):
    assert headers_of(*lines) == {"CONTENT_LENGTH": length}


@pytest.mark.parametrize(
    "lines",
    [
        [b"Content-Length:"],
        [b"Content-Length: -1"],
        [b"Content-Length: +1"],
        [b"Content-Length: 1_0"],
        [b"Content-Length: 0x10"],
        [b"Content-Length: 1.5"],
        [b"Content-Length: 4 2"],
        [b"Content-Length: ten"],
        [b"Content-Length: \xb2"],  # superscript two: str.isdigit() says yes
        [b"Content-Length: 42", b"Content-Length: 43"],
        [b"Content-Length: 42, 43"],
        [b"Content-Length: 42,"],
        [b"Content-Length: 42", b"Content-Length: 042"],
    ],
    ids=[
        "empty", "negative", "plus sign", "underscore", "hexadecimal", "decimal", "inner space",
        "word", "latin-1 digit", "repeated, differing", "listed, differing", "trailing comma",
        "same number, other spelling",
    ],
)
def test_invalid_content_length(lines):
    message = refusal_of(*lines)
    assert message.startswith("Invalid Content-Length: ")


# The cache of environ keys: clients choose header names, the cache is bounded.


def test_environ_key_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(httpparser, "_KEYS", {})
    names = [b"X-Name-%d" % number for number in range(httpparser._MAX_KEYS + 150)]
    for start in range(0, len(names), MAX_HEADERS):
        batch = names[start:start + MAX_HEADERS]
        assert headers_of(*(name + b": 1" for name in batch)) == {
            "HTTP_" + name.decode().upper().replace("-", "_"): "1" for name in batch
        }
    assert len(httpparser._KEYS) == httpparser._MAX_KEYS
    # Past the bound, names are still read right, and underscores still dropped.
    assert headers_of(b"X-Unseen: 1", b"Content-Length: 2", b"X_Unseen: 3") == {
        "HTTP_X_UNSEEN": "1",
        "CONTENT_LENGTH": "2",
    }
    assert headers_of(b"X-Name-0: cached", b"X-Name-1100: not cached") == {
        "HTTP_X_NAME_0": "cached",
        "HTTP_X_NAME_1100": "not cached",
    }
    assert len(httpparser._KEYS) == httpparser._MAX_KEYS


def test_long_names_are_not_cached(monkeypatch):
    # Clients choose the names: the cache holds short ones only.
    monkeypatch.setattr(httpparser, "_KEYS", {})
    long_name = b"X-" + b"n" * 100
    assert headers_of(long_name + b": 1", b"X-Short: 2") == {
        "HTTP_X_" + "N" * 100: "1",
        "HTTP_X_SHORT": "2",
    }
    assert list(httpparser._KEYS) == ["X-Short"]


def test_invalid_names_are_not_cached(monkeypatch):
    monkeypatch.setattr(httpparser, "_KEYS", {})
    for _ in range(2):
        assert refusal_of(b"Bad Name: 1").startswith("Invalid header line: ")
    assert httpparser._KEYS == {}


# The cache of values: the repeated headers of every connection share their strings.


def test_repeated_values_are_shared(monkeypatch):
    monkeypatch.setattr(httpparser, "_VALUES", {})
    lines = (b"Host: example.com", b"Upgrade: websocket", b"Sec-WebSocket-Key: a2V5")
    first, second = headers_of(*lines), headers_of(*lines)
    assert first == second
    assert first["HTTP_HOST"] is second["HTTP_HOST"]
    assert first["HTTP_UPGRADE"] is second["HTTP_UPGRADE"]
    assert first["HTTP_SEC_WEBSOCKET_KEY"] is not second["HTTP_SEC_WEBSOCKET_KEY"]
    assert sorted(httpparser._VALUES) == ["example.com", "websocket"]


def test_value_cache_is_bounded(monkeypatch):
    # Clients choose the values: the cache holds at most _MAX_VALUES short ones.
    monkeypatch.setattr(httpparser, "_VALUES", {})
    monkeypatch.setattr(httpparser, "_MAX_VALUES", 3)
    for number in range(5):
        assert headers_of(b"Host: h%d" % number) == {"HTTP_HOST": "h%d" % number}
    assert headers_of(b"User-Agent: " + b"u" * 300) == {"HTTP_USER_AGENT": "u" * 300}
    assert sorted(httpparser._VALUES) == ["h0", "h1", "h2"]


# path_info()


@pytest.mark.parametrize(
    "target, expected",
    [
        ("/", ("/", "")),
        ("/chat/", ("/chat/", "")),
        ("/chat/?room=1&user=2", ("/chat/", "room=1&user=2")),
        ("/chat/?", ("/chat/", "")),
        ("/chat/?a=?b", ("/chat/", "a=?b")),
        ("/a%20b/", ("/a b/", "")),
        ("/a%2Fb/", ("/a/b/", "")),
        ("/caf%C3%A9/", ("/caf\xc3\xa9/", "")),
        ("/caf%E9/", ("/caf\xe9/", "")),
        ("/%41?q=%41+%42", ("/A", "q=%41+%42")),
        ("/100%/", ("/100%/", "")),
        ("/a+b/", ("/a+b/", "")),
        ("http://example.com/chat/?room=1", ("/chat/", "room=1")),
        ("https://example.com:8443", ("/", "")),
        ("*", ("*", "")),
    ],
    ids=[
        "root", "path", "query", "empty query", "question mark in query", "space",
        "encoded slash", "utf-8 as latin-1", "latin-1", "query not decoded", "stray percent",
        "plus kept", "absolute form", "absolute form without a path", "asterisk",
    ],
)
def test_path_info(target, expected):
    assert path_info(target) == expected
