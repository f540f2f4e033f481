"""The process's keepalive greenlet: each websocket is looked at when due, not at every turn."""

from __future__ import annotations

import gevent

from django_websocket.keepalive import start_keepalive
from django_websocket.states import open_websockets

from .utils import MS, wait_for


class Member:
    """Stands in for a WebSocket: counts how often the greenlet looks at it."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.looks = 0

    def keepalive(self, now: float) -> float:
        self.looks += 1
        return self.delay


def watched(*members: Member) -> None:
    for member in members:
        open_websockets.add(member)  # type: ignore[arg-type]
        start_keepalive(member)  # type: ignore[arg-type]


def test_idle_websockets_cost_nothing_until_they_are_due():
    # 1,000 websockets whose next ping is a minute away, and one due every
    # 10 ms: the greenlet's turns look at the busy one only.
    idle = [Member(60.0) for _ in range(1000)]
    busy = Member(10 * MS)
    try:
        watched(*idle, busy)
        wait_for(lambda: busy.looks >= 10, "ten turns")
        assert {member.looks for member in idle} == {1}  # when it was opened
    finally:
        for member in [*idle, busy]:
            open_websockets.discard(member)  # type: ignore[arg-type]


def test_a_websocket_is_looked_at_again_when_asked():
    # Its interval changed: the next look is now, not when it was due.
    member = Member(60.0)
    try:
        watched(member)
        wait_for(lambda: member.looks == 1, "the first look")
        start_keepalive(member)  # type: ignore[arg-type]
        wait_for(lambda: member.looks == 2, "a look at once")
        gevent.sleep(50 * MS)
        assert member.looks == 2  # the older entry does not count any more
    finally:
        open_websockets.discard(member)  # type: ignore[arg-type]


def test_closed_websockets_are_no_longer_looked_at():
    member = Member(10 * MS)
    watched(member)
    wait_for(lambda: member.looks >= 2, "two looks")
    open_websockets.discard(member)  # type: ignore[arg-type]
    gevent.sleep(30 * MS)
    looks = member.looks
    gevent.sleep(50 * MS)
    assert member.looks == looks


class Broken(Member):
    def keepalive(self, now: float) -> float:
        self.looks += 1
        raise RuntimeError("broken")


def test_a_websocket_whose_keepalive_fails_does_not_stop_the_others(caplog):
    broken, busy = Broken(0.0), Member(10 * MS)
    try:
        watched(broken, busy)
        wait_for(lambda: busy.looks >= 10 and broken.looks >= 2, "turns go on")
        assert "keepalive failed" in caplog.text
    finally:
        for member in (broken, busy):
            open_websockets.discard(member)  # type: ignore[arg-type]
