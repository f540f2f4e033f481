"""
The Redis subscriber's state machine (``django_websocket.broadcast._subscriptions``), without Redis.

A small model of Redis stands in for the server at the other end of the
subscriber connection: it runs commands in the order they were sent and
replies in that order. The tests drive every interleaving of joins, leaves,
commands, replies, publishes and reconnections, exhaustively for one group
and with Hypothesis for several, and check that the process ends up
subscribed to exactly the groups that have members, that no message is
delivered twice, and that no echo is awaited for good.

"""

import itertools
import os
from collections import Counter, deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from django_websocket.broadcast._subscriptions import (
    SUBSCRIBED,
    SUBSCRIBING,
    UNSUBSCRIBED,
    UNSUBSCRIBING,
    Subscriptions,
)

EXAMPLES = int(os.environ.get("WEBSOCKET_TESTS_FUZZ_EXAMPLES", "200"))


def connected(**limits) -> Subscriptions:
    subscriptions = Subscriptions(**limits)
    subscriptions.connection_made()
    return subscriptions


def confirmed(subscriptions: Subscriptions, *groups: str) -> Subscriptions:
    for group in groups:
        subscriptions.want(group)
    assert subscriptions.commands() == (list(groups), [])
    for group in groups:
        subscriptions.subscribed(group)
    return subscriptions


# Transitions.


def test_subscribe_then_confirmed():
    subscriptions = connected()
    assert subscriptions.want("news") is False
    assert subscriptions.commands() == (["news"], [])
    assert subscriptions.state("news") is SUBSCRIBING
    assert subscriptions.commands() == ([], [])  # in flight: not again
    assert subscriptions.subscribed("news") is False
    assert subscriptions.state("news") is SUBSCRIBED
    assert subscriptions.want("news") is True  # nothing to wait for
    assert subscriptions.commands() == ([], [])


def test_last_member_leaves_while_subscribing():
    # The late "subscribe" reply doesn't leave the group confirmed for good (#12, 13).
    subscriptions = connected()
    subscriptions.want("news")
    assert subscriptions.commands() == (["news"], [])
    subscriptions.unwant("news")
    assert subscriptions.commands() == ([], [])  # one command per group in flight
    assert subscriptions.subscribed("news") is True
    assert subscriptions.commands() == ([], ["news"])
    assert subscriptions.state("news") is UNSUBSCRIBING
    assert subscriptions.unsubscribed("news") is False
    assert subscriptions.state("news") is UNSUBSCRIBED
    # The next member gets the group subscribed again.
    assert subscriptions.want("news") is False
    assert subscriptions.commands() == (["news"], [])


def test_member_joins_while_unsubscribing():
    subscriptions = confirmed(connected(), "news")
    subscriptions.unwant("news")
    assert subscriptions.commands() == ([], ["news"])
    assert subscriptions.want("news") is False
    assert subscriptions.commands() == ([], [])  # after the reply
    assert subscriptions.unsubscribed("news") is True
    assert subscriptions.commands() == (["news"], [])


def test_leave_and_join_before_the_command_goes():
    subscriptions = confirmed(connected(), "news")
    subscriptions.unwant("news")
    assert subscriptions.want("news") is True
    assert subscriptions.commands() == ([], [])
    assert subscriptions.confirmed() == {"news"}


def test_nothing_is_sent_while_disconnected():
    subscriptions = Subscriptions()
    assert subscriptions.want("news") is False
    assert subscriptions.commands() == ([], [])
    subscriptions.connection_made()
    assert subscriptions.commands() == (["news"], [])


def test_a_new_connection_subscribes_to_every_wanted_group():
    subscriptions = confirmed(connected(), "news", "sports")
    subscriptions.want("weather")
    subscriptions.unwant("sports")
    subscriptions.connection_lost()
    assert subscriptions.confirmed() == set()
    assert subscriptions.commands() == ([], [])
    assert subscriptions.subscribed("news") is False  # a reply of the old connection: ignored
    subscriptions.connection_made()
    subscribe, unsubscribe = subscriptions.commands()
    assert sorted(subscribe) == ["news", "weather"] and unsubscribe == []


def test_replies_nobody_asked_for_are_believed_then_corrected():
    subscriptions = connected()
    assert subscriptions.subscribed("stray") is True
    assert subscriptions.commands() == ([], ["stray"])
    subscriptions.want("news")
    subscriptions.commands()
    assert subscriptions.unsubscribed("news") is True  # Redis says it isn't
    assert subscriptions.commands() == (["news"], [])


# Echoes.


def test_echoes_only_for_confirmed_groups_with_members():
    subscriptions = connected()
    subscriptions.want("news")
    assert subscriptions.expect_echo("news", b"\x01hi") is None  # not confirmed yet
    subscriptions.commands()
    subscriptions.unwant("news")
    subscriptions.subscribed("news")
    assert subscriptions.expect_echo("news", b"\x01hi") is None  # no member
    assert subscriptions.echo_count == 0


def test_echo_is_skipped_once():
    subscriptions = confirmed(connected(), "news")
    table = subscriptions.expect_echo("news", b"\x01hi")
    assert subscriptions.expect_echo("news", b"\x01hi") is table
    assert (subscriptions.echo_count, subscriptions.echo_bytes) == (2, 6)
    assert subscriptions.skip_echo(table, b"\x01hi") is True
    assert subscriptions.skip_echo(table, b"\x01hi") is True
    assert subscriptions.skip_echo(table, b"\x01hi") is False
    assert (subscriptions.echo_count, subscriptions.echo_bytes) == (0, 0)


@pytest.mark.parametrize("event", ["unsubscribed", "connection_lost"])
def test_echoes_are_forgotten_when_redis_stops_sending(event):
    subscriptions = confirmed(connected(), "news", "sports")
    table = subscriptions.expect_echo("news", b"\x01hi")
    subscriptions.expect_echo("sports", b"\x01score")
    subscriptions.unwant("news")
    subscriptions.commands()
    if event == "connection_lost":
        subscriptions.connection_lost()
    else:
        subscriptions.unsubscribed("news")
    assert "news" not in subscriptions.echoes
    # A publish that still holds the table has nothing to retract.
    assert subscriptions.skip_echo(table, b"\x01hi") is False
    remaining = 0 if event == "connection_lost" else 1
    assert subscriptions.echo_count == remaining
    assert subscriptions.echo_bytes == remaining * len(b"\x01score")


def test_echoes_are_skipped_until_redis_confirms_the_unsubscribe():
    # A websocket publishes, leaves and joins again before the echo comes:
    # it doesn't get the message twice.
    subscriptions = confirmed(connected(), "news")
    table = subscriptions.expect_echo("news", b"\x01hi")
    subscriptions.unwant("news")
    assert subscriptions.expect_echo("news", b"\x01bye") is None  # no member
    subscriptions.want("news")
    assert subscriptions.skip_echo(subscriptions.echoes["news"], b"\x01hi") is True
    subscriptions.unwant("news")
    assert subscriptions.commands() == ([], ["news"])
    subscriptions.want("news")
    assert subscriptions.expect_echo("news", b"\x01again") is None  # UNSUBSCRIBING
    assert subscriptions.echoes["news"] is table


def test_echoes_are_bounded_by_count():
    subscriptions = confirmed(connected(max_echoes=3), "news")
    assert [subscriptions.expect_echo("news", b"%d" % n) is not None for n in range(5)] == [
        True, True, True, False, False,
    ]
    assert subscriptions.echo_count == 3


def test_echoes_are_bounded_by_size():
    # 2,000 messages of 50 KB awaited +96 MiB when their echoes never came.
    subscriptions = confirmed(connected(), "news")
    data = [b"\x01%05d" % n + b"x" * 50_000 for n in range(2_000)]
    expected = [subscriptions.expect_echo("news", message) is not None for message in data]
    assert subscriptions.echo_bytes <= 8 * 1024 * 1024
    assert expected.index(False) == subscriptions.echo_count == 8 * 1024 * 1024 // 50_006
    # Once echoes come back, there is room again.
    table = subscriptions.echoes["news"]
    assert subscriptions.skip_echo(table, data[0])
    assert subscriptions.expect_echo("news", data[-1]) is table


# Every interleaving, against a model of Redis.


class Model:
    """A process's Subscriptions and, at the other end of its connection, Redis."""

    def __init__(self) -> None:
        self.subscriptions = Subscriptions(max_echoes=4)
        self.subscriptions.connection_made()
        self.channels: set[str] = set()  # what Redis sends this connection
        self.requests: deque = deque()  # commands sent, not run by Redis yet
        self.responses: deque = deque()  # replies and messages, not read yet
        self.publishes: list = []  # started, waiting for their answer
        self.delivered: Counter = Counter()
        # Messages whose publish failed after Redis ran it: the process's
        # websockets may get them twice, as documented.
        self.doubtful: set[bytes] = set()
        self.numbers = itertools.count()

    # What the process does.

    def want(self, group: str) -> None:
        self.subscriptions.want(group)

    def unwant(self, group: str) -> None:
        self.subscriptions.unwant(group)

    def send(self, group: str = "") -> None:
        subscribe, unsubscribe = self.subscriptions.commands()
        self.requests.extend(("SUBSCRIBE", name) for name in subscribe)
        self.requests.extend(("UNSUBSCRIBE", name) for name in unsubscribe)

    def read(self, group: str = "") -> None:
        if not self.responses:
            return
        kind, name, data = self.responses.popleft()
        subscriptions = self.subscriptions
        if kind == "subscribe":
            subscriptions.subscribed(name)
        elif kind == "unsubscribe":
            subscriptions.unsubscribed(name)
        else:
            table = subscriptions.echoes.get(name)
            if not (table and subscriptions.skip_echo(table, data)) and name in subscriptions.wanted:
                self.delivered[data] += 1

    def reconnect(self, group: str = "") -> None:
        self.subscriptions.connection_lost()
        self.channels, self.requests, self.responses = set(), deque(), deque()
        self.subscriptions.connection_made()

    def publish(self, group: str, outcome: str = "ok") -> None:
        # outcome: "ok", "failed" (Redis never got it), "timeout" (it did, the answer was lost)
        data = b"\x01%d" % next(self.numbers)
        table = self.subscriptions.expect_echo(group, data)
        if table is not None:
            self.delivered[data] += 1  # at once, to the process's own websockets
        if outcome != "failed" and group in self.channels:
            self.responses.append(("message", group, data))
        if outcome == "timeout":
            self.doubtful.add(data)
        self.publishes.append((group, data, table, outcome))

    def answer(self, group: str = "") -> None:
        if not self.publishes:
            return
        _, data, table, outcome = self.publishes.pop(0)
        if table is not None and outcome != "ok":
            self.subscriptions.skip_echo(table, data)

    # What Redis does.

    def run(self, group: str = "") -> None:
        if not self.requests:
            return
        verb, name = self.requests.popleft()
        if verb == "SUBSCRIBE":
            self.channels.add(name)
            self.responses.append(("subscribe", name, None))
        else:
            self.channels.discard(name)
            self.responses.append(("unsubscribe", name, None))

    # Checks.

    def check(self) -> None:
        subscriptions = self.subscriptions
        tables = subscriptions.echoes
        sending = {group for group in tables if subscriptions.state(group) in (SUBSCRIBED, UNSUBSCRIBING)}
        assert set(tables) == sending
        assert subscriptions.echo_count == sum(sum(table.values()) for table in tables.values())
        assert subscriptions.echo_bytes == sum(
            len(data) * count for table in tables.values() for data, count in table.items()
        )
        assert subscriptions.echo_count <= subscriptions.max_echoes
        # At most one command per group in flight.
        in_flight = Counter(name for _, name in self.requests)
        in_flight.update(name for kind, name, _ in self.responses if kind != "message")
        assert max(in_flight.values(), default=0) <= 1, in_flight
        twice = [data for data, count in self.delivered.items() if count > 1]
        assert set(twice) <= self.doubtful, f"delivered twice: {twice}"

    def settle(self) -> None:
        """Answer every publish, send what is due, and let Redis and the process run until idle."""
        while self.publishes:
            self.answer()
        while True:
            self.send()
            if not (self.requests or self.responses):
                break
            while self.requests:
                self.run()
            while self.responses:
                self.read()
            self.check()
        subscriptions = self.subscriptions
        assert self.channels == subscriptions.wanted == subscriptions.confirmed()
        assert subscriptions.echo_count == subscriptions.echo_bytes == 0


STEPS = {
    "want": Model.want,
    "unwant": Model.unwant,
    "send": Model.send,
    "run": Model.run,
    "read": Model.read,
    "reconnect": Model.reconnect,
    "publish": Model.publish,
    "publish-fails": lambda model, group: model.publish(group, "failed"),
    "publish-times-out": lambda model, group: model.publish(group, "timeout"),
    "answer": Model.answer,
}


def play(steps) -> Model:
    model = Model()
    for name, group in steps:
        STEPS[name](model, group)
        model.check()
    model.settle()
    return model


def test_every_interleaving_for_one_group():
    # Every sequence of 6 steps on one group: tens of thousands of orders of
    # joins, leaves, commands, replies and reconnections.
    names = ["want", "unwant", "send", "run", "read", "reconnect"]
    for steps in itertools.product(names, repeat=6):
        play([(name, "news") for name in steps])


def test_every_interleaving_with_publishes_for_one_group():
    names = ["want", "unwant", "send", "run", "read", "publish", "publish-fails", "answer"]
    for steps in itertools.product(names, repeat=5):
        play([("want", "news"), ("send", ""), *[(name, "news") for name in steps]])


@settings(max_examples=EXAMPLES, deadline=None, database=None)
@given(st.lists(st.tuples(st.sampled_from(sorted(STEPS)), st.sampled_from(["a", "b", "c"])), max_size=60))
def test_interleavings_for_several_groups(steps):
    play(steps)
