"""
Integration tests: gunicorn with GeventWebSocketWorker, real clients, real sockets.

Most tests share one server (the ``server`` fixture in conftest.py); those
that stop a server start their own. Every test asserts what a client or an
operator observes: messages, close codes, HTTP responses, logs.

"""

import http.client
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid

import pytest
import websocket as websocket_client
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as websockets_connect

from .servers import (
    NO_CONTROL_SOCKET,
    TIMEOUT,
    connect,
    http_get,
    poll,
    raw_request,
    server_env,
    start_bound,
    start_gunicorn,
    upgrade_request,
)


def close_of(ws):
    """Wait for the server to close ``ws``; return the code and reason it sent."""
    with pytest.raises(ConnectionClosed) as exc_info:
        message = ws.recv(TIMEOUT)
        pytest.fail(f"expected the connection to close, got {message!r}")
    received = exc_info.value.rcvd
    assert received is not None, f"no close frame from the server: {exc_info.value}"
    return received.code, received.reason


def refusal(server, path, **kwargs):
    """Try to open a websocket that the server must refuse; return its HTTP response."""
    with pytest.raises(InvalidStatus) as exc_info:
        with connect(server, path, **kwargs) as ws:
            pytest.fail(f"the server accepted the websocket ({ws.response.status_code})")
    return exc_info.value.response


def masked_frame(opcode, payload):
    """Build a final client frame: masked, shorter than 126 bytes."""
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


def assert_middleware_headers(headers):
    """Responses went through Django's middleware: SecurityMiddleware, XFrameOptionsMiddleware."""
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"


# Messages.


@pytest.mark.parametrize(
    "message",
    [
        "hello",
        b"\x00\x01\xfe\xff",
        "",
        b"",
        "héllo wörld ✓ " * 36_000,  # ~500 KB of UTF-8
        os.urandom(500_000),
    ],
    ids=["text", "binary", "empty text", "empty binary", "500 KB text", "500 KB binary"],
)
def test_echo(server, message):
    with connect(server, "/echo/") as ws:
        ws.send(message)
        assert ws.recv(TIMEOUT) == message


def test_echo_many_messages_in_order(server):
    with connect(server, "/echo/") as ws:
        for number in range(100):
            ws.send(f"message {number}")
        assert [ws.recv(TIMEOUT) for _ in range(100)] == [f"message {n}" for n in range(100)]


def test_client_close_ends_iteration_and_completes_handshake(server):
    token = uuid.uuid4().hex
    with connect(server, f"/finished/?token={token}") as ws:
        ws.send("ping")
        assert ws.recv(TIMEOUT) == "ping"
        start = time.monotonic()
        ws.close(4000, "done")
        # The server echoes the client's code and closes TCP without waiting for a timeout.
        assert ws.protocol.close_rcvd.code == 4000
        assert time.monotonic() - start < TIMEOUT / 2
    status = poll(lambda: http_get(server, f"/finished-status/?token={token}").body != b"running")
    assert status, "the view still iterates after the client closed"


def test_abrupt_disconnect_ends_view(server):
    # The client drops TCP without a close frame: iteration ends all the same.
    token = uuid.uuid4().hex
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_request(f"/finished/?token={token}", server.host))
        assert sock.recv(4096).startswith(b"HTTP/1.1 101 ")
        assert http_get(server, f"/finished-status/?token={token}").body == b"running"
    expected = b"request_finished after the view returned"
    status = poll(lambda: http_get(server, f"/finished-status/?token={token}").body == expected)
    assert status, http_get(server, f"/finished-status/?token={token}").body


def test_frames_sent_right_behind_the_handshake(server):
    # A client may send frames without waiting for the 101.
    frames = masked_frame(0x1, b"first") + masked_frame(0x2, b"second")
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_request("/echo/", server.host) + frames)
        data = b""
        expected = b"\x81\x05first\x82\x06second"
        while not data.endswith(expected) and (chunk := sock.recv(4096)):
            data += chunk
    assert data.startswith(b"HTTP/1.1 101 "), data
    assert data.endswith(b"\r\n\r\n" + expected), data


def test_message_over_size_limit_closes_with_1009(server):
    with connect(server, "/echo/", max_size=None) as ws:
        ws.send(b"x" * (1024 * 1024 + 1))
        assert close_of(ws)[0] == 1009


# Close codes.


def test_view_returns_closes_with_1000(server):
    with connect(server, "/accept/") as ws:
        assert ws.recv(TIMEOUT) == "websocket"
        assert close_of(ws) == (1000, "")


def test_view_closes_with_custom_code_and_reason(server):
    with connect(server, "/close/?code=4001&reason=bye") as ws:
        assert close_of(ws) == (4001, "bye")


def test_view_raises_closes_with_1011_and_logs_traceback(server):
    start = server.log_bytes()
    with connect(server, "/fail/") as ws:
        assert ws.recv(TIMEOUT) == "about to fail"
        code, _ = close_of(ws)
        assert code == 1011
    match = server.wait_for_log(r"RuntimeError: the view failed", start)
    log = server.log(start)
    assert match, f"no traceback in the server log:\n{log}"
    assert "Internal Server Error: /fail/" in log
    assert "Traceback (most recent call last)" in log


# Refusals are real HTTP responses, through the middleware.


def test_upgrade_to_plain_view_is_refused_with_400(server):
    response = refusal(server, "/plain/")
    assert response.status_code == 400
    assert b"does not accept WebSocket" in response.body
    assert_middleware_headers(response.headers)


def test_plain_http_to_require_websocket_view_gets_400(server):
    response = http_get(server, "/echo/")
    assert response.status == 400
    assert b"only accepts WebSocket" in response.body
    assert_middleware_headers(response.headers)


def test_upgrade_to_unknown_url_gets_404(server):
    response = refusal(server, "/no-such-url/")
    assert response.status_code == 404
    assert_middleware_headers(response.headers)


def test_login_required_redirects_to_login(server):
    # A raw request: the websockets client would follow the redirect.
    response = raw_request(server, upgrade_request("/login-required/", server.host))
    assert response.status == 302, response
    assert response.headers["Location"] == "/accounts/login/?next=/login-required/"
    assert_middleware_headers(response.headers)


def test_view_refuses_with_403_before_using_websocket(server):
    response = refusal(server, "/refuse/")
    assert response.status_code == 403
    assert response.body == b"bad token"
    assert_middleware_headers(response.headers)
    with connect(server, "/refuse/?token=secret") as ws:
        assert ws.recv(TIMEOUT) == "welcome"


def test_refusal_sets_cookies(server):
    response = refusal(server, "/refuse-with-cookie/")
    assert response.status_code == 403
    assert response.body == b"no entry"
    assert "refused=yes" in response.headers["Set-Cookie"]


def test_refusal_closes_connection(server):
    # Frames a client sent right behind its handshake must not be read as HTTP.
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_request("/plain/", server.host))
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400 "), data


@pytest.mark.parametrize(
    "origin",
    ["http://evil.example", "http://127.0.0.1:1", "null", "http://trusted.example"],
    ids=["other site", "other port", "null", "trusted host, other scheme"],
)
def test_origin_refused(server, origin):
    response = refusal(server, "/echo/", origin=origin)
    assert response.status_code == 403
    assert origin.encode() in response.body
    assert_middleware_headers(response.headers)


@pytest.mark.parametrize(
    "origin",
    [
        None,
        "same host",
        "http://allowed.example",  # WEBSOCKET_ALLOWED_ORIGINS
        "https://trusted.example",  # CSRF_TRUSTED_ORIGINS
        "https://chat.wild.example",  # CSRF_TRUSTED_ORIGINS: https://*.wild.example
    ],
    ids=["no origin", "same host", "allowed", "csrf trusted", "csrf trusted subdomain"],
)
def test_origin_accepted(server, origin):
    if origin == "same host":
        origin = f"http://{server.host}"
    with connect(server, "/echo/", origin=origin) as ws:
        ws.send("hello")
        assert ws.recv(TIMEOUT) == "hello"


# Malformed handshakes get 400 or 426 before Django runs.


@pytest.mark.parametrize(
    "changes, mentions",
    [
        ({"Sec_WebSocket_Key": None}, b"Sec-WebSocket-Key"),
        ({"Sec_WebSocket_Key": "not base64!"}, b"Sec-WebSocket-Key"),
        ({"Sec_WebSocket_Key": "AAAAAAAAAAAAAAAAAAAA"}, b"Sec-WebSocket-Key"),  # 15 bytes
        ({"Sec_WebSocket_Key": "AAAAAAAAAAAAAAAAAAAAAAAA"}, b"Sec-WebSocket-Key"),  # 18 bytes
        ({"Connection": "keep-alive"}, b"Connection"),
        ({"Connection": None}, b"Connection"),
        ({"method": "POST", "Content_Length": "0"}, b"GET"),
        ({"version": "HTTP/1.0"}, b"HTTP/1.1"),
    ],
    ids=[
        "no key",
        "key not base64",
        "key of 15 bytes",
        "key of 18 bytes",
        "connection without upgrade",
        "no connection",
        "POST",
        "HTTP/1.0",
    ],
)
def test_malformed_handshake_gets_400_with_reason(server, changes, mentions):
    response = raw_request(server, upgrade_request("/echo/", server.host, **changes))
    assert response.status == 400, response
    assert mentions in response.body, response


@pytest.mark.parametrize("version", ["8", None, "14"], ids=["8", "missing", "14"])
def test_unsupported_version_gets_426(server, version):
    response = raw_request(
        server, upgrade_request("/echo/", server.host, Sec_WebSocket_Version=version)
    )
    assert response.status == 426, response
    assert response.headers["Sec-WebSocket-Version"] == "13"
    assert response.body, response


@pytest.mark.parametrize(
    "changes",
    [
        {"Connection": "keep-alive, Upgrade"},
        {"Connection": "UPGRADE"},
        {"Upgrade": "WebSocket"},
        {"Upgrade": "websocket, foo/1"},
    ],
    ids=["connection list", "connection uppercase", "upgrade mixed case", "upgrade list"],
)
def test_header_tokens_are_case_insensitive_lists(server, changes):
    response = raw_request(server, upgrade_request("/echo/", server.host, **changes))
    assert response.status == 101, response
    assert response.headers["Upgrade"].lower() == "websocket"
    assert response.headers["Sec-WebSocket-Accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


# Subprotocols.


@pytest.mark.parametrize(
    "offered, selected",
    [
        ("chat.v1, chat.v2", "chat.v2"),
        ("chat.v1", "chat.v1"),
        ("chat", None),
        (None, None),
    ],
    ids=["both: server preference", "v1 only", "substring", "none offered"],
)
def test_subprotocol_header(server, offered, selected):
    response = raw_request(
        server, upgrade_request("/chat/", server.host, Sec_WebSocket_Protocol=offered)
    )
    assert response.status == 101, response
    assert response.headers.get("Sec-WebSocket-Protocol") == selected


@pytest.mark.parametrize(
    "offered, selected",
    [(["chat.v1", "chat.v2"], "chat.v2"), (["chat.v1"], "chat.v1"), (["chat"], None), (None, None)],
    ids=["both: server preference", "v1 only", "substring", "none offered"],
)
def test_subprotocol_seen_by_view(server, offered, selected):
    with connect(server, "/chat/", subprotocols=offered) as ws:
        assert ws.subprotocol == selected
        assert ws.recv(TIMEOUT) == f"protocol={selected}"


# accept_websocket, request.is_websocket().


def test_accept_websocket_answers_plain_http(server):
    response = http_get(server, "/accept/")
    assert response.status == 200
    assert response.body == b"plain HTTP"


def test_accept_websocket_answers_websocket(server):
    with connect(server, "/accept/") as ws:
        assert ws.recv(TIMEOUT) == "websocket"


# read(), count_messages(), has_messages().


def test_read_count_has_messages(server):
    with connect(server, "/queue/") as ws:
        assert ws.recv(TIMEOUT) == "empty: read=nothing count=0"
        for message in ["go", "1", "2", "3"]:
            ws.send(message)
        assert ws.recv(TIMEOUT) == "count=3 has=True"
        assert ws.recv(TIMEOUT) == "read=1,2,3"
        assert ws.recv(TIMEOUT) == "drained: read=nothing count=0 has=False"
        assert close_of(ws) == (1000, "")


# Sends from other greenlets.


def test_send_from_second_greenlet(server):
    with connect(server, "/greenlet-send/") as ws:
        for message in "abc":
            ws.send(message)
        received = [ws.recv(TIMEOUT) for _ in range(6)]
    assert [m for m in received if m.startswith("tick")] == ["tick 0", "tick 1", "tick 2"]
    assert [m for m in received if m.startswith("echo")] == ["echo a", "echo b", "echo c"]


def test_concurrent_large_sends_do_not_corrupt_frames(server):
    # Four greenlets each send large text messages and a binary one, while the
    # view echoes large binary messages: every message arrives whole.
    size, count = 100_000, 5
    echoes = [b"echo %d " % number + os.urandom(size) for number in range(5)]
    with connect(server, f"/flood/?size={size}&count={count}") as ws:
        for message in echoes:
            ws.send(message)
        received = [ws.recv(TIMEOUT) for _ in range(4 * (count + 1) + len(echoes))]
    for name in "abcd":
        assert [m for m in received if isinstance(m, str) and m.startswith(name)] == [
            f"{name} {number} ".ljust(size, name) for number in range(count)
        ]
        assert [m for m in received if isinstance(m, bytes) and m.startswith(name.encode())] == [
            f"{name} {count} ".encode().ljust(size, b"\xff")
        ]
    assert [m for m in received if isinstance(m, bytes) and m.startswith(b"echo")] == echoes


# Sessions and users.


def test_successive_requests_use_the_database(db_server):
    # Each request runs in a greenlet of its own, with its own connection.
    for username in ["bob", "carol"]:
        response = http_get(db_server, f"/login/?username={username}")
        assert response.status == 200, response


def test_session_cookie_authenticates_websocket(db_server):
    response = http_get(db_server, "/login/?username=alice")
    assert response.status == 200, response
    cookies = [value.split(";")[0] for value in response.headers.get_all("Set-Cookie")]
    [cookie] = [cookie for cookie in cookies if cookie.startswith("sessionid=")]
    with connect(db_server, "/whoami/", additional_headers={"Cookie": cookie}) as ws:
        assert ws.recv(TIMEOUT) == "alice"
    with connect(db_server, "/login-required/", additional_headers={"Cookie": cookie}) as ws:
        assert ws.recv(TIMEOUT) == "user=alice"


def test_accepted_websocket_holds_no_database_connection(db_server):
    # Loading the session and the user for the handshake opened a
    # connection: an idle websocket must not keep it.
    response = http_get(db_server, "/login/?username=dave")
    cookies = [value.split(";")[0] for value in response.headers.get_all("Set-Cookie")]
    [cookie] = [cookie for cookie in cookies if cookie.startswith("sessionid=")]
    with connect(db_server, "/database-connection/", additional_headers={"Cookie": cookie}) as ws:
        assert ws.recv(TIMEOUT) == "user=dave open=False"
        assert ws.recv(TIMEOUT) == "after a query: open=True"


def test_no_session_is_anonymous(db_server):
    with connect(db_server, "/whoami/") as ws:
        assert ws.recv(TIMEOUT) == "anonymous"


# request_finished.


def test_request_finished_fires_after_view_ends(server):
    token = uuid.uuid4().hex
    with connect(server, f"/finished/?token={token}") as ws:
        ws.send("hello")
        assert ws.recv(TIMEOUT) == "hello"
        assert http_get(server, f"/finished-status/?token={token}").body == b"running"
    expected = b"request_finished after the view returned"
    status = poll(lambda: http_get(server, f"/finished-status/?token={token}").body == expected)
    assert status, http_get(server, f"/finished-status/?token={token}").body


# Pings.


def test_ping_answered_while_view_is_busy(server):
    seconds = TIMEOUT / 5
    ws = websocket_client.create_connection(
        server.ws_url(f"/sleep/?seconds={seconds}"), timeout=TIMEOUT
    )
    try:
        ws.ping(b"are you there?")
        opcode, frame = ws.recv_data_frame(control_frame=True)
        # The pong comes first: the view is still sleeping.
        assert opcode == websocket_client.ABNF.OPCODE_PONG
        assert frame.data == b"are you there?"
        assert ws.recv() == "awake"
        ws.send("after")
        assert ws.recv() == "after"
    finally:
        ws.close()


# Access log.


def test_access_log_shows_101(server):
    start = server.log_bytes()
    with connect(server, "/echo/?access-log") as ws:
        ws.send("hello")
        assert ws.recv(TIMEOUT) == "hello"
    match = server.wait_for_log(r'"GET /echo/\?access-log HTTP/1\.1" (\d+) ', start)
    assert match, server.log(start)
    assert match.group(1) == "101"


def test_access_log_shows_refusal_status(server):
    start = server.log_bytes()
    assert refusal(server, "/refuse/?access-log").status_code == 403
    match = server.wait_for_log(r'"GET /refuse/\?access-log HTTP/1\.1" (\d+) ', start)
    assert match, server.log(start)
    assert match.group(1) == "403"


# Graceful shutdown: a server of its own.


def test_sigterm_closes_websockets_with_1012(tmp_path):
    cleanup = tmp_path / "cleanup"
    cleanup.mkdir()
    graceful_timeout = int(6 * TIMEOUT)
    server = start_gunicorn(
        tmp_path / "server.log",
        "--graceful-timeout", str(graceful_timeout),
        env=server_env(WEBSOCKET_TEST_CLEANUP_DIR=str(cleanup)),
    )
    try:
        with (
            connect(server, "/shutdown/?name=iterating") as iterating,
            connect(server, "/shutdown/?name=waiting&how=wait") as waiting,
        ):
            assert iterating.recv(TIMEOUT) == "ready"
            assert waiting.recv(TIMEOUT) == "ready"
            start = time.monotonic()
            os.kill(server.process.pid, signal.SIGTERM)
            assert close_of(iterating)[0] == 1012
            assert close_of(waiting)[0] == 1012
        assert (cleanup / "iterating").read_text() == "iteration ended"
        assert (cleanup / "waiting").read_text() == "wait() returned None"
        try:
            server.process.wait(graceful_timeout)
        except subprocess.TimeoutExpired:
            pytest.fail("gunicorn did not exit within its graceful timeout")
        elapsed = time.monotonic() - start
        assert elapsed < graceful_timeout / 3, f"gunicorn took {elapsed:.1f} s to exit"
        assert server.process.returncode == 0
        assert "Worker graceful timeout" not in server.log()
    finally:
        server.stop()


def test_sigterm_does_not_wait_for_idle_keep_alive_connections(tmp_path):
    # Browsers keep HTTP connections open between requests; a graceful stop
    # must not wait for them to time out (WEBSOCKET_HANDSHAKE_TIMEOUT, 10 s).
    server = start_gunicorn(tmp_path / "server.log", "--graceful-timeout", str(int(6 * TIMEOUT)))
    idle = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    try:
        idle.request("GET", "/plain/")
        response = idle.getresponse()
        assert response.read() == b"plain view"
        assert not response.will_close  # kept alive, idle from now on
        start = time.monotonic()
        os.kill(server.process.pid, signal.SIGTERM)
        server.process.wait(6 * TIMEOUT)
        elapsed = time.monotonic() - start
        assert elapsed < TIMEOUT, f"gunicorn took {elapsed:.1f} s to exit"
        assert server.process.returncode == 0
    finally:
        idle.close()
        server.stop()


def test_preload_is_refused_when_greenlets_share_database_connections(tmp_path, database):
    # With --preload, Django is set up in the master, before gevent patches
    # the workers: their greenlets would share one database connection, and
    # every request that uses it, every handshake with a session, would be
    # a 500. The worker refuses to boot instead, and says what to change.
    env = server_env(WEBSOCKET_TEST_DATABASE=str(database))
    with pytest.raises(RuntimeError, match="exited with 3") as caught:
        start_gunicorn(tmp_path / "server.log", "--preload", env=env)
    log = str(caught.value)
    assert "gunicorn --preload loaded Django before gevent patched" in log
    assert "ImproperlyConfigured: gunicorn --preload loaded Django" in log
    assert "would share the database connection 'default'" in log
    assert "Remove --preload (preload_app in gunicorn.conf.py)" in log
    assert "Worker failed to boot" in log


def test_many_concurrent_connections(server):
    # Each connection is served by its own greenlet in a single worker.
    errors = []

    def talk(number):
        try:
            with connect(server, "/echo/") as ws:
                for count in range(10):
                    ws.send(f"{number}:{count}")
                    assert ws.recv(TIMEOUT) == f"{number}:{count}"
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=talk, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(2 * TIMEOUT)
    assert not [thread for thread in threads if thread.is_alive()], "some clients hang"
    assert not errors


def test_settings_module_set_by_wsgi_py_only(tmp_path):
    # As in a project whose wsgi.py calls os.environ.setdefault(): gunicorn
    # imports the worker before gevent patches the worker process, and
    # nothing may set Django's settings up before wsgi.py runs.
    env = server_env()
    del env["DJANGO_SETTINGS_MODULE"]
    server = start_gunicorn(tmp_path / "server.log", env=env)
    try:
        with connect(server, "/echo/") as ws:
            ws.send("hello")
            assert ws.recv(TIMEOUT) == "hello"
        assert "ImproperlyConfigured" not in server.log()
    finally:
        server.stop()


# The stock gevent-websocket worker: the degraded mode.


def test_stock_worker_runs_views_with_refusals_as_close_frames(tmp_path):
    server = start_gunicorn(
        tmp_path / "server.log",
        "--worker-class", "geventwebsocket.gunicorn.workers.GeventWebSocketWorker",
    )
    try:
        with connect(server, "/echo/") as ws:
            ws.send("hello")
            assert ws.recv(TIMEOUT) == "hello"
        # The 101 went out before Django ran: a refusal can only close.
        with connect(server, "/refuse/") as ws:
            assert close_of(ws) == (1008, "403 Forbidden")
        with connect(server, "/fail/") as ws:
            assert ws.recv(TIMEOUT) == "about to fail"
            assert close_of(ws) == (1011, "500 Internal Server Error")
        # Responses that no websocket view made leave the connection to the
        # stock handler, and the worker serves on.
        with connect(server, "/no-such-page/") as ws:
            assert close_of(ws)[0] is not None
        with connect(server, "/plain/") as ws:
            assert close_of(ws)[0] is not None
        with connect(server, "/echo/") as ws:
            ws.send("still serving")
            assert ws.recv(TIMEOUT) == "still serving"
        log = server.log()
        assert log.count("served by the stock geventwebsocket worker") == 1
        assert "Assertion" not in log and "SIGABRT" not in log
        assert log.count("Booting worker") == 1
    finally:
        server.stop()


# TLS terminated by gunicorn.


def test_tls_with_gunicorn_certfile(tmp_path, certificate):
    cert, key = certificate
    server = start_gunicorn(
        tmp_path / "server.log", "--certfile", str(cert), "--keyfile", str(key), tls=True
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cert)
    context.check_hostname = False
    try:
        uri = f"wss://127.0.0.1:{server.port}/echo/"
        with websockets_connect(uri, ssl=context, open_timeout=TIMEOUT) as ws:
            for message in ["hello", b"\x00" * 100_000, "x" * 300_000]:
                ws.send(message)
                assert ws.recv(TIMEOUT) == message
            # A burst of small messages arrives in a few TLS records: more
            # than the inbox holds, so reading pauses and resumes, with
            # decrypted bytes left in the SSL object.
            burst = [f"message {number}" for number in range(500)]
            for message in burst:
                ws.send(message)
            assert [ws.recv(TIMEOUT) for _ in burst] == burst
        with websockets_connect(uri.replace("/echo/", "/fail/"), ssl=context) as ws:
            assert ws.recv(TIMEOUT) == "about to fail"
            assert close_of(ws) == (1011, "500 Internal Server Error")
    finally:
        server.stop()


# The request head, as the worker parses it: raw bytes on a real socket.


def request_head(server, request_line="GET /plain/ HTTP/1.1", *lines, host=True):
    """Build a request head: ``request_line``, ``Host`` unless told not to, then ``lines``."""
    fields = [f"Host: {server.host}".encode()] if host else []
    return b"\r\n".join([request_line.encode(), *fields, *lines, b"", b""])


def exchange(server, data, *, shut_write=False):
    """Send ``data`` on a new connection; return what the server sent until it closed it."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        if shut_write:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def read_response(sock, method="GET"):
    """Read one response from ``sock``, leaving the connection open; return its status and body."""
    response = http.client.HTTPResponse(sock, method=method)
    try:
        response.begin()
        return response.status, response.read()
    finally:
        response.close()


@pytest.mark.parametrize(
    "request_line, lines",
    [
        ("GET /plain/ HTTP/1.1", [b"Bad Header: x"]),
        ("GET /plain/ HTTP/1.1", [b"X-Name : value"]),
        ("GET /plain/ HTTP/1.1", [b"No colon here"]),
        ("GET /plain/ HTTP/1.1", [b": no name"]),
        ("GET /plain/ HTTP/1.1", [b"X-Long: " + b"a" * 70_000]),
        ("GET /plain/ HTTP/1.1", [b"X-Header-%d: 1" % number for number in range(101)]),
        ("POST /plain/ HTTP/1.1", [b"Content-Length: -1"]),
        ("POST /plain/ HTTP/1.1", [b"Content-Length: 1", b"Content-Length: 2"]),
        ("GET /plain/ HTTP/2.0", []),
        ("GET /plain/ HTTP/0.9", []),
        ("G(T /plain/ HTTP/1.1", []),
    ],
    ids=[
        "space in name",
        "space before colon",
        "no colon",
        "empty name",
        "line too long",
        "too many lines",
        "negative content-length",
        "differing content-lengths",
        "HTTP/2.0",
        "HTTP/0.9",
        "method not a token",
    ],
)
def test_malformed_request_head_gets_400_and_close(server, request_line, lines):
    received = exchange(server, request_head(server, request_line, *lines))
    assert received.startswith(b"HTTP/1.1 400 "), received[:200]
    # Nothing follows the 400: the server closed the connection.
    assert received.count(b"HTTP/1.1 ") == 1, received[:500]


def test_folded_header_gets_400_and_close(server):
    head = request_head(server, "GET /plain/ HTTP/1.1", b"X-Long: first part", b" second part")
    received = exchange(server, head)
    assert received.startswith(b"HTTP/1.1 400 "), received[:200]
    assert received.count(b"HTTP/1.1 ") == 1, received[:500]


def test_incomplete_request_head_gets_400(server):
    # The client stops sending before the empty line that ends the head.
    head = request_head(server, "GET /plain/ HTTP/1.1", b"X-Half: value").removesuffix(b"\r\n")
    received = exchange(server, head, shut_write=True)
    assert received.startswith(b"HTTP/1.1 400 "), received[:200]


def test_server_serves_on_after_malformed_heads(server):
    for line in [b"Bad Header: x", b" folded", b"Content-Length: nope"]:
        assert exchange(server, request_head(server, "GET /plain/ HTTP/1.1", line)).startswith(
            b"HTTP/1.1 400 "
        )
    response = http_get(server, "/plain/")
    assert (response.status, response.body) == (200, b"plain view")


@pytest.mark.parametrize(
    "lines, selected",
    [
        ([b"Sec_WebSocket_Protocol: chat.v1"], None),
        ([b"Sec-WebSocket-Protocol: chat.v1", b"Sec_WebSocket_Protocol: chat.v2"], "chat.v1"),
    ],
    ids=["alone", "next to the real header"],
)
def test_underscore_header_does_not_reach_view(server, lines, selected):
    # /chat/ tells which subprotocol it sees. Read as Sec-WebSocket-Protocol,
    # chat.v2 would be selected: the server prefers it.
    head = upgrade_request("/chat/", server.host).removesuffix(b"\r\n") + b"".join(
        line + b"\r\n" for line in lines
    ) + b"\r\n"
    message = f"protocol={selected}".encode()
    frame = bytes([0x81, len(message)]) + message
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(head)
        received = b""
        while frame not in received and (chunk := sock.recv(4096)):
            received += chunk
    response_head, _, frames = received.partition(b"\r\n\r\n")
    assert response_head.startswith(b"HTTP/1.1 101 "), received
    assert frames.startswith(frame), received
    protocol_line = f"Sec-WebSocket-Protocol: {selected}".encode().lower()
    assert (protocol_line in response_head.lower()) == (selected is not None), response_head


def post_head(server, *lines):
    """The head of a POST to /plain/ that passes the CSRF check, with ``lines``."""
    # A secret in the cookie, the same in the header.
    token = b"k" * 32
    return request_head(
        server,
        "POST /plain/ HTTP/1.1",
        b"Cookie: csrftoken=" + token,
        b"X-CSRFToken: " + token,
        *lines,
    )


def test_chunked_post_to_plain_view(server):
    head = post_head(
        server, b"Content-Type: application/x-www-form-urlencoded", b"Transfer-Encoding: chunked"
    )
    body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(head + body)
        assert read_response(sock, "POST") == (200, b"plain view")
        # The whole body was read: the next request on the connection is understood.
        sock.sendall(request_head(server, "GET /plain/ HTTP/1.1"))
        assert read_response(sock) == (200, b"plain view")


@pytest.mark.parametrize(
    "version, connection, kept_alive",
    [
        ("HTTP/1.1", None, True),
        ("HTTP/1.1", b"keep-alive", True),
        ("HTTP/1.1", b"close", False),
        ("HTTP/1.1", b"Close", False),
        ("HTTP/1.0", None, False),
        ("HTTP/1.0", b"keep-alive", True),
        ("HTTP/1.0", b"Keep-Alive", True),
    ],
)
def test_keep_alive(server, version, connection, kept_alive):
    lines = [] if connection is None else [b"Connection: " + connection]
    head = request_head(server, f"GET /plain/ {version}", *lines)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(head)
        assert read_response(sock) == (200, b"plain view")
        if kept_alive:
            sock.sendall(head)
            assert read_response(sock) == (200, b"plain view")
        else:
            assert sock.recv(4096) == b"", "the server kept the connection open"


def test_pipelined_requests_are_answered_in_order(server):
    # Both heads and a body in one write: each parse stops where its request ends.
    requests = (
        request_head(server, "GET /plain/ HTTP/1.1", b"Content-Length: 5") + b"hello"
        + request_head(server, "GET /no-such-url/ HTTP/1.1")
        + request_head(server, "GET /plain/ HTTP/1.1", b"Connection: close")
    )
    received = exchange(server, requests)
    # Bodies are not ended by a newline: a status line may follow on the same line.
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", received)
    assert statuses == [b"200", b"404", b"200"], received
    assert received.endswith(b"\r\n\r\nplain view")


def test_worker_freezes_the_loaded_application(server):
    # The cycle collector's full collections skip Django's modules, settings
    # and URLconf: there are many thousands of them.
    response = http_get(server, "/frozen-objects/")
    assert response.status == 200
    assert int(response.body) > 10_000


def test_malformed_head_gets_an_access_log_line(server):
    start = server.log_bytes()
    head = request_head(server, "GET /plain/?bad-head HTTP/1.1", b"Bad Header: x")
    assert exchange(server, head).startswith(b"HTTP/1.1 400 ")
    assert server.wait_for_log(r'"GET /plain/\?bad-head HTTP/1\.1" 400 ', start), server.log(start)
    assert "Invalid header line" in server.log(start)
    assert "Traceback" not in server.log(start)


def test_malformed_head_on_keep_alive_is_logged_as_itself(server):
    start = server.log_bytes()
    first = request_head(server, "GET /plain/?first HTTP/1.1")
    second = request_head(server, "GET /plain/?second HTTP/1.1", b"Bad Header: x")
    received = exchange(server, first + second)
    assert received.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 400 " in received
    assert server.wait_for_log(r'"GET /plain/\?second HTTP/1\.1" 400 ', start), server.log(start)
    assert "Traceback" not in server.log(start)


def test_empty_line_before_the_request_is_ignored(server):
    # RFC 9112 section 2.2.
    head = request_head(server, "GET /plain/ HTTP/1.1", b"Connection: close")
    received = exchange(server, b"\r\n" + head)
    assert received.startswith(b"HTTP/1.1 200 "), received[:200]


@pytest.mark.parametrize(
    "encoding",
    [
        [b"Transfer-Encoding: gzip"],
        [b"Transfer-Encoding: identity"],
        [b"Transfer-Encoding: gzip, chunked"],
        [b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"],
    ],
    ids=["gzip", "identity", "gzip then chunked", "chunked twice"],
)
def test_transfer_encoding_other_than_chunked_gets_400(server, encoding):
    # RFC 9112 section 6.3. Read as having no body, the request would let its
    # body pass for a second request, which a proxy did not see.
    smuggled = request_head(server, "GET /no-such-url/ HTTP/1.1", b"Connection: close")
    received = exchange(server, request_head(server, "POST /plain/ HTTP/1.1", *encoding) + smuggled)
    assert received.startswith(b"HTTP/1.1 400 "), received[:300]
    assert received.count(b"HTTP/1.1 ") == 1, received


def test_transfer_encoding_with_content_length_closes_after_the_response(server):
    # RFC 9112 section 6.1: chunked wins, then the connection closes.
    head = post_head(server, b"Transfer-Encoding: chunked", b"Content-Length: 3")
    received = exchange(server, head + b"5\r\nhello\r\n0\r\n\r\n")
    assert received.startswith(b"HTTP/1.1 200 "), received[:300]
    assert received.endswith(b"plain view")


# 40 cookies of 250 bytes, each under browsers' 4 KiB limit: a 10 KiB line.
BIG_COOKIE = b"Cookie: " + b"; ".join(b"c%02d=%s" % (n, b"v" * 245) for n in range(40))


def test_header_limits_follow_gunicorns_options(tmp_path):
    limits = ["--limit-request-field_size", "16384", "--limit-request-fields", "5"]
    server = start_gunicorn(tmp_path / "server.log", *limits)
    try:
        head = request_head(server, "GET /plain/ HTTP/1.1", BIG_COOKIE, b"Connection: close")
        assert exchange(server, head).startswith(b"HTTP/1.1 200 ")
        lines = [b"X-%d: 1" % number for number in range(5)]
        head = request_head(server, "GET /plain/ HTTP/1.1", *lines)
        assert exchange(server, head).startswith(b"HTTP/1.1 400 ")
    finally:
        server.stop()


def test_default_header_line_limit_is_gunicorns(server):
    head = request_head(server, "GET /plain/ HTTP/1.1", BIG_COOKIE, b"Connection: close")
    assert exchange(server, head).startswith(b"HTTP/1.1 400 ")


def test_statsd_metrics_without_access_log(tmp_path):
    # gunicorn's statsd logger counts requests in its access(), called even
    # though the access log is off.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(TIMEOUT / 10)
        command = [
            sys.executable, "-m", "gunicorn",
            "--worker-class", "django_websocket.worker.GeventWebSocketWorker",
            "--statsd-host", "127.0.0.1:%d" % udp.getsockname()[1],
            *NO_CONTROL_SOCKET, "tests.wsgi",
        ]
        server = start_bound(command, tmp_path / "server.log", server_env())
        try:
            assert http_get(server, "/plain/?statsd").status == 200
            received = b""
            deadline = time.monotonic() + TIMEOUT
            while b"gunicorn.requests:1|c" not in received and time.monotonic() < deadline:
                try:
                    received += udp.recv(4096) + b"\n"
                except socket.timeout:
                    pass
        finally:
            server.stop()
    assert b"gunicorn.requests:1|c" in received, received


# Slow and silent clients: servers with a short handshake timeout.

#: WEBSOCKET_HANDSHAKE_TIMEOUT of the servers that start_impatient() starts.
HANDSHAKE_TIMEOUT = TIMEOUT / 10


def start_impatient(log_path, *args, tls=False):
    """Start gunicorn with WEBSOCKET_HANDSHAKE_TIMEOUT set to HANDSHAKE_TIMEOUT."""
    env = server_env(
        DJANGO_SETTINGS_MODULE="tests.settings_timeout",
        WEBSOCKET_TEST_HANDSHAKE_TIMEOUT=str(HANDSHAKE_TIMEOUT),
    )
    return start_gunicorn(log_path, *args, env=env, tls=tls)


def read_until_closed(sock, timeout=TIMEOUT):
    """Read until the server closes ``sock``; return what it sent, or None after ``timeout``."""
    deadline = time.monotonic() + timeout
    received = b""
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
    return None


# A CSRF secret in the cookie, the same in the header: unsafe methods pass.
CSRF_LINES = [b"Cookie: csrftoken=" + b"k" * 32, b"X-CSRFToken: " + b"k" * 32]


def test_silent_request_bodies_do_not_hold_the_worker(tmp_path):
    # As many connections as the worker takes announce a body and stop
    # sending: each ends within the handshake timeout, and the worker
    # serves again.
    server = start_impatient(tmp_path / "server.log", "--worker-connections", "3")
    heads = {
        # A view that does not read the body: the server would discard it.
        "unread": request_head(server, "POST /plain/ HTTP/1.1", *CSRF_LINES,
                               b"Content-Length: 100"),
        # An upgrade with a body: refused with 400, and the connection closes.
        "upgrade": upgrade_request("/echo/", server.host, Content_Length="100"),
        # A view that reads the body: the client stops after 10 bytes.
        "read": request_head(server, "POST /body-length/ HTTP/1.1", *CSRF_LINES,
                             b"Content-Length: 100") + b"0123456789",
    }
    sockets = []
    try:
        for head in heads.values():
            sockets.append(socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT))
            sockets[-1].sendall(head)
        received = {name: read_until_closed(sock) for name, sock in zip(heads, sockets)}
        assert received["unread"] is not None, "the connection is still open"
        assert received["unread"].startswith(b"HTTP/1.1 200 "), received
        assert received["upgrade"] is not None, "the connection is still open"
        assert received["upgrade"].startswith(b"HTTP/1.1 400 "), received
        assert received["read"] is not None, "the connection is still open"
        assert received["read"].startswith(b"HTTP/1.1 400 "), received
        assert http_get(server, "/plain/").body == b"plain view"
        # Django logs a warning for the 400, not an error for a 500.
        log = server.log()
        assert "request body not received in time: /body-length/" in log, log
        assert "Internal Server Error" not in log, log
    finally:
        for sock in sockets:
            sock.close()
        server.stop()


def test_response_that_closes_the_connection_does_not_wait_for_the_body(tmp_path):
    # The client announces a body that it does not send, and asks to close.
    server = start_gunicorn(tmp_path / "server.log")
    head = request_head(server, "POST /plain/ HTTP/1.1", *CSRF_LINES, b"Content-Length: 100",
                        b"Connection: close")
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
            sock.sendall(head)
            start = time.monotonic()
            received = read_until_closed(sock)
            elapsed = time.monotonic() - start
        assert received is not None, "the connection is still open"
        assert received.startswith(b"HTTP/1.1 200 "), received
        # Long before the handshake timeout (10 s).
        assert elapsed < TIMEOUT / 5, f"closed after {elapsed:.1f} s"
    finally:
        server.stop()


@pytest.fixture
def certificate(tmp_path):
    """A self-signed certificate for 127.0.0.1 and its key, as files."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30 * TIMEOUT,
    )
    return cert, key


def client_hello():
    """The first bytes a TLS client sends: its ClientHello."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    outgoing = ssl.MemoryBIO()
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def trickle(sock, data, interval, timeout=TIMEOUT):
    """Send ``data`` a byte every ``interval`` s until the server closes; return when, or None."""
    start = time.monotonic()
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
            sock.settimeout(interval)
            if sock.recv(4096) == b"":
                return time.monotonic() - start
        except TimeoutError:
            pass
        except OSError:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            break
    return None


def test_silent_and_slow_tls_clients_do_not_hold_the_worker(tmp_path, certificate):
    cert, key = certificate
    server = start_impatient(
        tmp_path / "server.log", "--certfile", str(cert), "--keyfile", str(key),
        "--worker-connections", "2", tls=True,
    )
    try:
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as silent,
            socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as slow,
        ):
            # One never starts its TLS handshake; the other sends its
            # ClientHello a byte at a time, in more than TIMEOUT.
            hello = client_hello()
            closed_after = trickle(slow, hello, interval=2 * TIMEOUT / len(hello))
            assert closed_after is not None, "the server kept the trickling client"
            assert closed_after < HANDSHAKE_TIMEOUT + TIMEOUT / 2, closed_after
            assert read_until_closed(silent) is not None, "the server kept the silent client"
        assert http_get(server, "/plain/").body == b"plain view"
        assert "Traceback" not in server.log(), server.log()
    finally:
        server.stop()


# Graceful shutdown of handshakes in progress.


def read_close_frame(sock, received=b""):
    """Read an unmasked close frame from ``sock``, after ``received``; return its code."""
    while (len(received) < 2 or len(received) < 2 + received[1]) and (chunk := sock.recv(4096)):
        received += chunk
    assert len(received) >= 2, f"no frame, the connection closed: {received!r}"
    assert received[0] == 0x88 and received[1] < 126, received
    assert len(received) == 2 + received[1], received
    return int.from_bytes(received[2:4], "big")


def read_head(sock):
    """Read a response head from ``sock``; return it and what followed it."""
    received = b""
    while b"\r\n\r\n" not in received and (chunk := sock.recv(4096)):
        received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    return head, rest


def test_sigterm_refuses_handshakes_still_arriving(tmp_path):
    graceful_timeout = int(6 * TIMEOUT)
    server = start_gunicorn(tmp_path / "server.log", "--graceful-timeout", str(graceful_timeout))
    idle = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    half = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
    try:
        # An idle keep-alive connection, which the worker closes at once
        # when it gets the signal.
        idle.request("GET", "/plain/")
        assert idle.getresponse().read() == b"plain view"
        # A handshake whose headers are half sent.
        head = upgrade_request("/echo/", server.host)
        half.sendall(head[: len(head) // 2])

        stop = time.monotonic()
        os.kill(server.process.pid, signal.SIGTERM)
        assert idle.sock.recv(1) == b"", "the worker did not close an idle connection"
        half.sendall(head[len(head) // 2:])
        response = read_until_closed(half)
        assert response is not None, "the connection is still open"
        assert response.startswith(b"HTTP/1.1 503 "), response
        assert b"\r\nRetry-After: 1\r\n" in response, response

        try:
            server.process.wait(graceful_timeout)
        except subprocess.TimeoutExpired:
            pytest.fail("gunicorn did not exit within its graceful timeout")
        elapsed = time.monotonic() - stop
        assert elapsed < graceful_timeout / 3, f"gunicorn took {elapsed:.1f} s to exit"
        assert server.process.returncode == 0
    finally:
        idle.close()
        half.close()
        server.stop()


def test_sigterm_closes_websockets_accepted_late(tmp_path):
    graceful_timeout = int(6 * TIMEOUT)
    server = start_gunicorn(tmp_path / "server.log", "--graceful-timeout", str(graceful_timeout))
    idle = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    late = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
    try:
        idle.request("GET", "/plain/")
        assert idle.getresponse().read() == b"plain view"
        # A view that accepts its websocket a while after it starts.
        start = server.log_bytes()
        path = f"/accept-later/?name=late&seconds={TIMEOUT / 5}"
        late.sendall(upgrade_request(path, server.host))
        assert server.wait_for_log("accept-later late: running", start)

        stop = time.monotonic()
        os.kill(server.process.pid, signal.SIGTERM)
        assert idle.sock.recv(1) == b"", "the worker did not close an idle connection"
        response, frames = read_head(late)
        assert response.startswith(b"HTTP/1.1 101 "), response
        assert read_close_frame(late, frames) == 1012
        late.sendall(masked_frame(0x8, (1012).to_bytes(2, "big")))

        try:
            server.process.wait(graceful_timeout)
        except subprocess.TimeoutExpired:
            pytest.fail("gunicorn did not exit within its graceful timeout")
        elapsed = time.monotonic() - stop
        assert elapsed < graceful_timeout / 3, f"gunicorn took {elapsed:.1f} s to exit"
        assert server.process.returncode == 0
        assert "Worker graceful timeout" not in server.log()
    finally:
        idle.close()
        late.close()
        server.stop()


# Malformed Origin headers.


@pytest.mark.parametrize("origin", ["http://[", "http://[evil]"])
def test_malformed_origin_refused(server, origin):
    start = server.log_bytes()
    response = raw_request(server, upgrade_request("/echo/", server.host, Origin=origin))
    assert response.status == 403, response
    log = server.log(start)
    assert "Traceback" not in log and "Internal Server Error" not in log, log
