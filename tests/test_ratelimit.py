"""
The rate limit on messages from a client: the token bucket, with an injected
clock, then the websocket over a socket pair, closing or dropping at the
configured numbers.

"""

import logging
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from django_websocket import metrics
from django_websocket.conf import settings
from django_websocket.protocol import OP_TEXT
from django_websocket.ratelimit import TokenBucket

from .utils import frame

# The bucket, without a clock.


def test_bucket_allows_the_burst_then_refuses():
    bucket = TokenBucket(10, 3, now=100.0)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]


def test_bucket_refills_at_the_rate():
    # (Times that are exact in binary: the test compares with 1 token.)
    bucket = TokenBucket(8, 3, now=100.0)
    for _ in range(3):
        assert bucket.take(100.0)
    assert not bucket.take(100.0625)  # half a token
    assert bucket.take(100.125)  # one token, 1 / rate seconds after running out
    assert not bucket.take(100.125)


def test_bucket_sustained_rate():
    # A client at exactly the rate never runs out; one 10% faster does.
    bucket = TokenBucket(20, 2, now=0.0)
    assert all(bucket.take(n / 20) for n in range(1, 1001))
    bucket = TokenBucket(20, 2, now=0.0)
    results = [bucket.take(n / 22) for n in range(1, 1001)]
    # What the rate earns over the time (1000 / 22 s), plus the burst; one
    # less at most, for the fraction of a token left at the end.
    assert 20 * 1000 / 22 + 2 - 2 <= results.count(True) <= 20 * 1000 / 22 + 2


def test_bucket_caps_at_the_burst():
    # A long silence does not bank more than the burst.
    bucket = TokenBucket(10, 3, now=0.0)
    assert [bucket.take(3600.0) for _ in range(4)] == [True, True, True, False]


def test_bucket_refused_calls_take_nothing():
    # Trying harder does not delay the next token.
    bucket = TokenBucket(1, 1, now=0.0)
    assert bucket.take(0.0)
    assert not any(bucket.take(n / 1000) for n in range(1000))
    assert bucket.take(1.0)


def test_bucket_memory():
    bucket = TokenBucket(100.0, 1000.0, now=0.0)
    assert not hasattr(bucket, "__dict__")
    # Six slots and the object's headers; rate and burst are the settings'
    # floats, shared; tokens and stamp are a float each (24 bytes).
    assert sys.getsizeof(bucket) <= 80


def test_bucket_refuses_nonsense():
    with pytest.raises(ValueError):
        TokenBucket(0, 10, now=0.0)
    with pytest.raises(ValueError):
        TokenBucket(10, 0.5, now=0.0)


# The settings.


def test_settings_defaults():
    assert settings.RATE_LIMIT == (100.0, 1000.0)
    assert settings.RATE_LIMIT_ACTION == "close"


@pytest.mark.parametrize("value", [(50, 200), [50, 200], (0.5, 1)])
def test_settings_rate_limit(value):
    with override_settings(WEBSOCKET_RATE_LIMIT=value):
        assert settings.RATE_LIMIT == (float(value[0]), float(value[1]))
    with override_settings(WEBSOCKET_RATE_LIMIT=None):
        assert settings.RATE_LIMIT is None


@pytest.mark.parametrize("value", [100, (100,), (0, 10), (10, 0.5), (True, 10), ("1", 2)])
def test_settings_rate_limit_invalid(value):
    with override_settings(WEBSOCKET_RATE_LIMIT=value):
        with pytest.raises(ImproperlyConfigured, match="WEBSOCKET_RATE_LIMIT must be"):
            settings.RATE_LIMIT


def test_settings_rate_limit_action_invalid():
    with override_settings(WEBSOCKET_RATE_LIMIT_ACTION="ignore"):
        with pytest.raises(ImproperlyConfigured, match='"close" or "drop"'):
            settings.RATE_LIMIT_ACTION


# The websocket, over a socket pair. A rate of one message an hour: only
# the burst gets through, whatever the clock does during the test.

SLOW = 1 / 3600


def open_limited(pairs, burst, action="close"):
    websocket, client = pairs.open(rate_limit=(SLOW, burst), rate_limit_action=action)
    websocket.accept()
    client.handshake()
    return websocket, client


def test_no_limit_allocates_nothing(pairs):
    websocket, _ = pairs.open()
    assert websocket._rate_limit is None


def test_invalid_action(pairs):
    with pytest.raises(ValueError, match="'close' or 'drop'"):
        pairs.open(rate_limit=(1, 1), rate_limit_action="ignore")


def test_close_at_the_limit(pairs, caplog):
    websocket, client = open_limited(pairs, burst=3)
    # Five messages in one read: three within the burst, then the limit.
    client.send(b"".join(frame(OP_TEXT, f"message {n}") for n in range(5)))
    assert client.read_close() == (1008, "rate limit exceeded")
    # No message after the close frame: those queued are dropped too.
    assert websocket.wait() is None
    client.send_close(1008)
    client.assert_closed()
    assert websocket.state == "CLOSED"
    assert "closing a websocket with 1008: over WEBSOCKET_RATE_LIMIT" in caplog.text


def test_close_at_the_limit_across_reads(pairs):
    websocket, client = open_limited(pairs, burst=3)
    for n in range(3):
        client.send_frame(OP_TEXT, f"message {n}")
        assert websocket.wait() == f"message {n}"
    client.sync()  # nothing closed yet
    client.send_frame(OP_TEXT, "one too many")
    assert client.read_close() == (1008, "rate limit exceeded")
    assert websocket.wait() is None
    client.send_close(1008)
    client.assert_closed()


def test_drop_at_the_limit(pairs, caplog):
    caplog.set_level(logging.WARNING, "django_websocket")
    websocket, client = open_limited(pairs, burst=3, action="drop")
    counted = metrics.counters.rate_limited
    client.send(b"".join(frame(OP_TEXT, f"message {n}") for n in range(5)))
    client.sync()
    client.send_frame(OP_TEXT, "dropped too")
    assert client.sync() == []  # no close frame
    assert [websocket.read() for _ in range(4)] == ["message 0", "message 1", "message 2", None]
    assert websocket._rate_limit.dropped == 3
    assert metrics.counters.rate_limited == counted + 3
    # One log line per connection, however many are dropped.
    assert caplog.text.count("dropping messages from a websocket") == 1
    client.send_close()
    assert websocket.wait() is None
    assert client.read_close() == (1000, "")


def test_pings_do_not_count(pairs):
    websocket, client = open_limited(pairs, burst=1)
    for _ in range(5):
        client.sync()
    client.send_frame(OP_TEXT, "hello")
    assert websocket.wait() == "hello"


def test_sustained_rate_is_allowed(pairs, monkeypatch):
    # A client at exactly the rate is never closed: 200 messages at 16 a
    # second, burst 1, on the websocket's clock (times exact in binary).
    # One that comes half an interval early is over the limit.
    import types

    import django_websocket.websocket

    clock = types.SimpleNamespace(monotonic=lambda: now)
    monkeypatch.setattr(django_websocket.websocket, "time", clock)
    now = 100.0
    websocket, client = pairs.open(rate_limit=(16, 1), rate_limit_action="close")
    websocket.accept()
    client.handshake()
    for n in range(200):
        now = 100.0 + n / 16
        client.send_frame(OP_TEXT, str(n))
        assert websocket.wait() == str(n)
    now += 1 / 32
    client.send_frame(OP_TEXT, "too soon")
    assert client.read_close() == (1008, "rate limit exceeded")


@override_settings(WEBSOCKET_RATE_LIMIT=(SLOW, 2), WEBSOCKET_RATE_LIMIT_ACTION="drop")
def test_server_builds_the_bucket_from_the_settings():
    import gevent.socket

    from django_websocket.handshake import Handshake
    from django_websocket.server import _new_websocket

    from .utils import KEY

    server, client = gevent.socket.socketpair()
    try:
        websocket = _new_websocket(server, server.makefile("rb"), Handshake(key=KEY, protocols=[]))
        bucket = websocket._rate_limit
        assert (bucket.rate, bucket.burst, bucket.drop) == (SLOW, 2.0, True)
    finally:
        server.close()
        client.close()
