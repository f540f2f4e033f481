"""The opening handshake, checked on WSGI environ dicts."""

import base64

import pytest

from django_websocket import handshake
from django_websocket.exceptions import InvalidHandshake
from django_websocket.handshake import (
    Handshake,
    accept_key,
    accept_response,
    origin_allowed,
    parse,
    select_protocol,
)

# The example of RFC 6455 section 1.3.
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def environ(**changes) -> dict:
    """A valid upgrade request's environ; set a variable to None to remove it."""
    env = {
        "REQUEST_METHOD": "GET",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "PATH_INFO": "/chat/",
        "QUERY_STRING": "",
        "SERVER_NAME": "example.com",
        "SERVER_PORT": "80",
        "HTTP_HOST": "example.com",
        "HTTP_UPGRADE": "websocket",
        "HTTP_CONNECTION": "Upgrade",
        "HTTP_SEC_WEBSOCKET_KEY": KEY,
        "HTTP_SEC_WEBSOCKET_VERSION": "13",
        "wsgi.url_scheme": "http",
    }
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


# parse()


def test_valid_handshake():
    assert parse(environ()) == Handshake(key=KEY, protocols=[], extensions="", origin=None)


def test_valid_handshake_with_everything():
    request = parse(
        environ(
            HTTP_SEC_WEBSOCKET_PROTOCOL="chat.v2, Chat.V1 ,,superchat",
            HTTP_SEC_WEBSOCKET_EXTENSIONS="permessage-deflate; client_max_window_bits",
            HTTP_ORIGIN="https://example.com",
        )
    )
    # Subprotocols keep their case: they are compared exactly.
    assert request.protocols == ["chat.v2", "Chat.V1", "superchat"]
    assert request.extensions == "permessage-deflate; client_max_window_bits"
    assert request.origin == "https://example.com"
    assert request.key == KEY


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"HTTP_UPGRADE": "WebSocket"}, id="Upgrade: WebSocket"),
        pytest.param({"HTTP_UPGRADE": "WEBSOCKET"}, id="Upgrade: WEBSOCKET"),
        pytest.param({"HTTP_UPGRADE": "h2c, websocket"}, id="Upgrade: h2c, websocket"),
        pytest.param({"HTTP_UPGRADE": " websocket , foo/1"}, id="Upgrade with spaces"),
        pytest.param({"HTTP_CONNECTION": "upgrade"}, id="Connection: upgrade"),
        pytest.param({"HTTP_CONNECTION": "keep-alive, Upgrade"}, id="Connection: a list"),
        pytest.param({"HTTP_CONNECTION": "UPGRADE,keep-alive"}, id="Connection: UPGRADE,..."),
        pytest.param({"HTTP_SEC_WEBSOCKET_VERSION": " 13 "}, id="version with spaces"),
        pytest.param({"HTTP_SEC_WEBSOCKET_KEY": f" {KEY} "}, id="key with spaces"),
        pytest.param({"CONTENT_LENGTH": ""}, id="empty Content-Length"),
        pytest.param({"CONTENT_LENGTH": "0"}, id="Content-Length: 0"),
    ],
)
def test_tokens_are_case_insensitive_and_in_lists(changes):
    request = parse(environ(**changes))
    assert request is not None
    assert request.key == KEY


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"HTTP_UPGRADE": None}, id="no Upgrade"),
        pytest.param({"HTTP_UPGRADE": "h2c"}, id="Upgrade: h2c"),
        pytest.param({"HTTP_UPGRADE": "websocketx"}, id="Upgrade: websocketx"),
        pytest.param({"HTTP_UPGRADE": "web socket"}, id="Upgrade: web socket"),
        pytest.param({"HTTP_UPGRADE": ""}, id="empty Upgrade"),
        pytest.param(
            {"HTTP_UPGRADE": None, "REQUEST_METHOD": "POST", "CONTENT_LENGTH": "3"},
            id="ordinary POST",
        ),
    ],
)
def test_not_an_upgrade(changes):
    assert parse(environ(**changes)) is None


def assert_refused(env: dict, reason: str, status: str = "400 Bad Request", headers=()):
    with pytest.raises(InvalidHandshake) as info:
        parse(env)
    assert info.value.status == status
    assert info.value.reason == reason
    assert str(info.value) == reason
    assert info.value.headers == list(headers)


@pytest.mark.parametrize("method", ["POST", "HEAD", "PUT", "get"])
def test_method_must_be_get(method):
    assert_refused(environ(REQUEST_METHOD=method), "WebSocket upgrade requires the GET method.")


@pytest.mark.parametrize("protocol", ["HTTP/1.0", "HTTP/2", "HTTP/0.9"])
def test_http_version_must_be_1_1(protocol):
    assert_refused(environ(SERVER_PROTOCOL=protocol), "WebSocket upgrade requires HTTP/1.1.")


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"CONTENT_LENGTH": "5"}, id="Content-Length"),
        pytest.param({"HTTP_TRANSFER_ENCODING": "chunked"}, id="Transfer-Encoding"),
    ],
)
def test_body_is_refused(changes):
    assert_refused(environ(**changes), "WebSocket upgrade requests must not have a body.")


@pytest.mark.parametrize(
    "connection", [None, "", "keep-alive", "close", "upgrades", "keep-alive upgrade"]
)
def test_connection_must_include_upgrade(connection):
    assert_refused(
        environ(HTTP_CONNECTION=connection), "Missing 'upgrade' in the Connection header."
    )


@pytest.mark.parametrize("version", [None, "", "8", "12", "14", "13, 8", "thirteen"])
def test_unsupported_version_gets_426(version):
    assert_refused(
        environ(HTTP_SEC_WEBSOCKET_VERSION=version),
        "Unsupported Sec-WebSocket-Version: this server speaks version 13.",
        status="426 Upgrade Required",
        headers=[("Sec-WebSocket-Version", "13")],
    )


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(None, id="missing"),
        pytest.param("", id="empty"),
        pytest.param("not base64!", id="not base64"),
        pytest.param("dGhlIHNhbXBsZSBub25jZQ", id="missing padding"),
        pytest.param(base64.b64encode(b"x" * 15).decode(), id="15 bytes"),
        pytest.param(base64.b64encode(b"x" * 17).decode(), id="17 bytes"),
        pytest.param("dGhlIHNhbXBsZSBub25jZé==", id="not ASCII"),
    ],
)
def test_invalid_key(key):
    assert_refused(
        environ(HTTP_SEC_WEBSOCKET_KEY=key),
        "Sec-WebSocket-Key must be the base64 encoding of 16 bytes.",
    )


# The response.


def test_accept_key_rfc_example():
    assert accept_key(KEY) == ACCEPT


def test_accept_response():
    assert accept_response(Handshake(key=KEY)) == (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"\r\n"
    )


def test_accept_response_with_protocol_extensions_and_headers():
    response = accept_response(
        Handshake(key=KEY, protocols=["chat"]),
        protocol="chat",
        extensions="permessage-deflate",
        headers=[("Set-Cookie", "a=b")],
    )
    assert response == (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"Sec-WebSocket-Protocol: chat\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate\r\n"
        b"Set-Cookie: a=b\r\n"
        b"\r\n"
    )


def test_environ_key():
    assert handshake.ENVIRON_KEY == "django_websocket.websocket"


# Subprotocols.


@pytest.mark.parametrize(
    "offered, supported, expected",
    [
        (["chat"], ["chat"], "chat"),
        (["a", "b"], ["b", "a"], "b"),  # the server's preference wins
        (["b", "a"], ["a", "b"], "a"),
        (["x", "b"], ["a", "b"], "b"),
        (["x"], ["a", "b"], None),
        ([], ["a"], None),
        (["a"], [], None),
        (["chat.v1"], ["chat"], None),  # exact tokens, never substrings
        (["chat"], ["chat.v1"], None),
        (["Chat"], ["chat"], None),
        (["chat.v1, chat.v2"], ["chat.v1"], None),
    ],
)
def test_select_protocol(offered, supported, expected):
    assert select_protocol(offered, supported) == expected
    assert select_protocol(offered, tuple(supported)) == expected


# Origins.


@pytest.mark.parametrize(
    "origin, host, allowed, expected",
    [
        # Same host, including the port.
        ("http://example.com", "example.com", [], True),
        ("https://example.com", "example.com", [], True),
        ("http://EXAMPLE.com", "example.com", [], True),
        ("http://example.com:8000", "example.com:8000", [], True),
        ("http://example.com:8000", "Example.COM:8000", [], True),
        ("http://example.com:9000", "example.com:8000", [], False),
        ("http://example.com", "example.com:8000", [], False),
        ("http://example.com:8000", "example.com", [], False),
        ("http://other.com", "example.com", [], False),
        ("http://example.com.evil.com", "example.com", [], False),
        # "null": sandboxed frames, file:// pages.
        ("null", "example.com", [], False),
        ("null", "example.com", ["https://*.example.com", "https://example.com"], False),
        # Exact entries.
        ("https://other.com", "example.com", ["https://other.com"], True),
        ("https://OTHER.com", "example.com", ["https://other.com"], True),
        ("https://other.com", "example.com", ["https://Other.com"], True),
        ("https://other.com:8443", "example.com", ["https://other.com:8443"], True),
        ("https://other.com:8443", "example.com", ["https://other.com"], False),
        ("https://other.com", "example.com", ["https://other.com:8443"], False),
        ("https://sub.other.com", "example.com", ["https://other.com"], False),
        ("http://other.com", "example.com", ["https://other.com"], False),
        # Subdomain patterns, as in CSRF_TRUSTED_ORIGINS.
        ("https://sub.example.org", "app.test", ["https://*.example.org"], True),
        ("https://a.b.example.org", "app.test", ["https://*.example.org"], True),
        ("https://example.org", "app.test", ["https://*.example.org"], True),
        ("https://evil-example.org", "app.test", ["https://*.example.org"], False),
        ("https://example.org.evil.com", "app.test", ["https://*.example.org"], False),
        ("https://sub.example.org.evil.com", "app.test", ["https://*.example.org"], False),
        ("http://sub.example.org", "app.test", ["https://*.example.org"], False),
        ("https://sub.other.org", "app.test", ["https://*.example.org"], False),
        # Anything.
        ("https://anything.org", "example.com", ["*"], True),
        ("http://localhost:3000", "example.com", ["https://x.com", "*"], True),
    ],
)
def test_origin_allowed(origin, host, allowed, expected):
    assert origin_allowed(origin, host, allowed) is expected
    assert origin_allowed(origin, host, tuple(allowed)) is expected


@pytest.mark.parametrize(
    "origin",
    ["http://[", "http://[evil]", "http://[::1", "https://a]b", "http://[]", "http://[1.2.3.4]"],
)
@pytest.mark.parametrize("allowed", [[], ["https://*.example.com"], ["https://other.com"]])
def test_malformed_origin_is_not_allowed(origin, allowed):
    # urlsplit() raises ValueError for these: no browser sends them.
    assert origin_allowed(origin, "example.com", allowed) is False


def test_malformed_origin_is_allowed_by_a_wildcard():
    assert origin_allowed("http://[", "example.com", ["*"]) is True
