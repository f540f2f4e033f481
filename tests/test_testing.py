"""The test client users write their own websocket tests with."""

import logging

import pytest
from django.contrib.auth import get_user_model
from django.test import TestCase, override_settings

from django_websocket import ConnectionClosed, broadcast, publish, send_to_user
from django_websocket.testing import (
    HandshakeRefused,
    Published,
    WebSocketClient,
    capture_published,
)

from .utils import MS


class WebSocketClientTests(TestCase):
    @classmethod
    def setUpTestData(cls):
        cls.user = get_user_model().objects.create_user("alice")

    def setUp(self):
        self.client = WebSocketClient(timeout=2000 * MS)

    def test_echo(self):
        with self.client.connect("/echo/") as ws:
            ws.send("hello")
            self.assertEqual(ws.receive(), "hello")
            ws.send(b"\x00\x01")
            self.assertEqual(ws.receive(), b"\x00\x01")
            ws.send("")
            self.assertEqual(ws.receive(), "")
        self.assertEqual(ws.close_code, 1000)
        self.assertTrue(ws.closed)

    def test_client_close_code_reaches_the_server(self):
        with self.client.connect("/echo/") as ws:
            ws.close(4002, "leaving")
        # The server echoes the client's code, as RFC 6455 asks.
        self.assertEqual(ws.close_code, 4002)

    def test_server_close(self):
        with self.client.connect("/server-close/") as ws:
            self.assertEqual(ws.receive(), "bye")
            with self.assertRaises(ConnectionClosed) as caught:
                ws.receive()
        self.assertEqual(caught.exception.code, 4000)
        self.assertEqual(caught.exception.reason, "done")
        self.assertEqual((ws.close_code, ws.close_reason), (4000, "done"))

    def test_receive_times_out(self):
        with self.client.connect("/echo/") as ws:
            with self.assertRaises(TimeoutError):
                ws.receive(timeout=50 * MS)

    def test_force_login(self):
        self.client.force_login(self.user)
        with self.client.connect("/whoami/") as ws:
            self.assertEqual(ws.receive(), "alice")

    def test_anonymous(self):
        with self.client.connect("/whoami/") as ws:
            self.assertEqual(ws.receive(), "anonymous")

    def test_login_required_redirects(self):
        with self.assertRaises(HandshakeRefused) as caught:
            self.client.connect("/login-required/")
        self.assertEqual(caught.exception.response.status_code, 302)
        self.assertIn("/accounts/login/", caught.exception.response["Location"])

    def test_refusal_is_the_views_response(self):
        with self.assertRaises(HandshakeRefused) as caught:
            self.client.connect("/refuse/")
        response = caught.exception.response
        self.assertEqual(response.status_code, 403)
        self.assertEqual(response.content, b"bad token")
        with self.client.connect("/refuse/?token=secret") as ws:
            self.assertEqual(ws.receive(), "welcome")

    def test_refusal_sets_cookies_on_the_client(self):
        with self.assertRaises(HandshakeRefused):
            self.client.connect("/refuse-with-cookie/")
        self.assertEqual(self.client.cookies["refused"].value, "yes")

    def test_upgrade_to_plain_view_is_refused(self):
        with self.assertRaises(HandshakeRefused) as caught:
            self.client.connect("/plain/")
        self.assertEqual(caught.exception.response.status_code, 400)

    def test_unknown_url(self):
        with self.assertRaises(HandshakeRefused) as caught:
            self.client.connect("/nowhere/")
        self.assertEqual(caught.exception.response.status_code, 404)

    def test_origin_header(self):
        with self.client.connect("/echo/", headers={"Origin": "http://testserver"}) as ws:
            ws.send("same origin")
            self.assertEqual(ws.receive(), "same origin")
        with self.assertRaises(HandshakeRefused) as caught:
            self.client.connect("/echo/", headers={"Origin": "http://evil.example"})
        self.assertEqual(caught.exception.response.status_code, 403)

    def test_subprotocols(self):
        with self.client.connect("/chat/", protocols=["chat.v1", "chat.v2"]) as ws:
            self.assertEqual(ws.protocol, "chat.v2")
            self.assertEqual(ws.receive(), "protocol=chat.v2")
        with self.client.connect("/chat/", protocols=["other"]) as ws:
            self.assertIsNone(ws.protocol)
            self.assertEqual(ws.receive(), "protocol=None")

    def test_view_exception_is_raised_by_default(self):
        with self.assertLogs("django.request", logging.ERROR):
            with self.assertRaisesMessage(RuntimeError, "the view failed"):
                with self.client.connect("/fail/") as ws:
                    self.assertEqual(ws.receive(), "about to fail")
        self.assertEqual(ws.close_code, 1011)

    def test_view_exception_is_kept_on_request(self):
        client = WebSocketClient(raise_request_exception=False, timeout=2000 * MS)
        with self.assertLogs("django.request", logging.ERROR):
            with client.connect("/fail/") as ws:
                self.assertEqual(ws.receive(), "about to fail")
                with self.assertRaises(ConnectionClosed):
                    ws.receive()
        self.assertEqual(ws.close_code, 1011)
        self.assertIsInstance(ws.exception, RuntimeError)

    def test_view_exception_before_accepting_is_raised(self):
        # Not HandshakeRefused(500): the view's own exception, as Django's
        # test client raises it for HTTP requests.
        with self.assertLogs("django.request", logging.ERROR):
            with self.assertRaisesMessage(RuntimeError, "the view failed before accepting"):
                self.client.connect("/fail-before-accepting/")

    def test_view_exception_before_accepting_is_kept_on_refusal(self):
        client = WebSocketClient(raise_request_exception=False, timeout=2000 * MS)
        with self.assertLogs("django.request", logging.ERROR):
            with self.assertRaises(HandshakeRefused) as caught:
                client.connect("/fail-before-accepting/")
        self.assertEqual(caught.exception.response.status_code, 500)
        self.assertIsInstance(caught.exception.exception, RuntimeError)

    def test_refusal_without_exception(self):
        with self.assertRaises(HandshakeRefused) as caught:
            self.client.connect("/refuse/")
        self.assertIsNone(caught.exception.exception)

    def test_view_sees_the_test_database(self):
        with self.client.connect("/count-users/") as ws:
            self.assertEqual(ws.receive(), "1")
        # The TestCase's transaction survived the request.
        self.assertEqual(get_user_model().objects.count(), 1)

    def test_http_requests_still_work(self):
        response = self.client.get("/plain/")
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.content, b"plain view")

    def test_accept_websocket_view_answers_both(self):
        self.assertEqual(self.client.get("/accept/").content, b"plain HTTP")
        with self.client.connect("/accept/") as ws:
            self.assertEqual(ws.receive(), "websocket")

    @override_settings(WEBSOCKET_MAX_MESSAGE_SIZE=16)
    def test_settings_apply(self):
        with self.client.connect("/echo/") as ws:
            ws.send("x" * 17)
            with self.assertRaises(ConnectionClosed) as caught:
                ws.receive()
        self.assertEqual(caught.exception.code, 1009)


@pytest.mark.django_db
def test_usable_with_pytest_django(django_user_model):
    django_user_model.objects.create_user("bob")
    client = WebSocketClient()
    client.force_login(django_user_model.objects.get(username="bob"))
    with client.connect("/whoami/") as ws:
        assert ws.receive() == "bob"
    assert ws.close_code == 1000


class ConcurrentConnectionsTests(TestCase):
    def test_two_connections_at_once(self):
        client = WebSocketClient(timeout=2000 * MS)
        with client.connect("/echo/") as first, client.connect("/echo/") as second:
            first.send("one")
            second.send("two")
            self.assertEqual(second.receive(), "two")
            self.assertEqual(first.receive(), "one")
        self.assertEqual((first.close_code, second.close_code), (1000, 1000))


@override_settings(ROOT_URLCONF="tests.urls_broadcast")
class BroadcastInTestsTests(TestCase):
    """With the in-memory backend, test code publishes to test clients."""

    @classmethod
    def setUpTestData(cls):
        cls.alice = get_user_model().objects.create_user("alice")
        cls.bob = get_user_model().objects.create_user("bob")

    def test_publish_reaches_a_test_client(self):
        client = WebSocketClient(timeout=2000 * MS)
        with client.connect("/broadcast/listen/?group=news") as ws:
            self.assertTrue(ws.receive().startswith("subscribed"))
            publish("news", "extra!")
            self.assertEqual(ws.receive(), "extra!")

    def test_send_to_user_reaches_that_user_only(self):
        alice, bob = WebSocketClient(timeout=2000 * MS), WebSocketClient(timeout=2000 * MS)
        alice.force_login(self.alice)
        bob.force_login(self.bob)
        with alice.connect("/broadcast/listen/") as alice_ws, bob.connect("/broadcast/listen/") as bob_ws:
            alice_ws.receive(), bob_ws.receive()  # "subscribed"
            send_to_user(self.alice, "for alice")
            broadcast("for everyone")
            self.assertEqual(alice_ws.receive(), "for alice")
            self.assertEqual(alice_ws.receive(), "for everyone")
            self.assertEqual(bob_ws.receive(), "for everyone")
            with self.assertRaises(TimeoutError):
                bob_ws.receive(timeout=50 * MS)

    def test_capture_published_without_a_client(self):
        with capture_published() as published:
            self.client.get("/broadcast/publish/?group=news&message=hello")
            send_to_user(self.bob, "hi bob")
            send_to_user(self.alice.pk, b"\x00")
            broadcast("everyone")
        self.assertEqual(published.to_group("news"), ["hello"])
        self.assertEqual(published.to_user(self.bob), ["hi bob"])
        self.assertEqual(published.to_user(self.alice), [b"\x00"])
        self.assertEqual(published.to_everyone(), ["everyone"])
        self.assertEqual(len(published), 4)
        self.assertEqual(published[0], Published("news", "hello"))

    def test_capture_stops_recording_after_the_block(self):
        with capture_published() as published:
            publish("news", "inside")
        publish("news", "outside")
        self.assertEqual(published.to_group("news"), ["inside"])
