"""
The subscriptions of a process's Redis subscriber connection, as a state machine without I/O.

The Redis backend (:mod:`django_websocket.broadcast.redis`) tells a
:class:`Subscriptions` what happens: groups gain their first local member or
lose their last, Redis answers, the connection is made or lost. In return it
says which SUBSCRIBE and UNSUBSCRIBE commands to send. Per group, it keeps
what the process wants (the group has local members) apart from where Redis
stands on the current connection::

    UNSUBSCRIBED --SUBSCRIBE sent--> SUBSCRIBING --"subscribe"--> SUBSCRIBED
         ^                                                            |
         +--"unsubscribe"-- UNSUBSCRIBING <--UNSUBSCRIBE sent---------+

At most one command per group is in flight: when members come or go while
one is, the next command waits for its reply. Hence every group ends where
its members want it, whatever the order of joins, leaves and replies. A new
connection starts with every group UNSUBSCRIBED.

It also keeps the echoes: messages this process published to a group and
delivered to its own websockets, which the listener skips when Redis sends
them back. Echoes are awaited only for messages published while the group
was SUBSCRIBED with local members, and only until Redis confirms the
group's UNSUBSCRIBE or the connection fails, since no echo can come after
that; and no more than a bounded number and size of them.

"""

from __future__ import annotations

import enum

__all__ = ["State", "Subscriptions"]

#: Echoes awaited at most, and their total size in bytes: a publish that
#: finds either bound reached delivers through Redis instead.
MAX_ECHOES = 10_000
MAX_ECHO_BYTES = 8 * 1024 * 1024


class State(enum.Enum):
    """Where Redis stands with a group on the current connection."""

    UNSUBSCRIBED = "UNSUBSCRIBED"
    SUBSCRIBING = "SUBSCRIBING"
    SUBSCRIBED = "SUBSCRIBED"
    UNSUBSCRIBING = "UNSUBSCRIBING"


UNSUBSCRIBED, SUBSCRIBING, SUBSCRIBED, UNSUBSCRIBING = State


class Subscriptions:
    """
    What a process wants subscribed, what Redis confirmed, and the echoes it awaits.

    Call :meth:`connection_made` once a connection is made and
    :meth:`connection_lost` when it fails; :meth:`want` and :meth:`unwant`
    when a group gains its first member or loses its last;
    :meth:`subscribed` and :meth:`unsubscribed` for Redis's replies. After
    each of those, call :meth:`commands` and send what it returns, in one
    go, on the current connection.

    """

    def __init__(self, max_echoes: int = MAX_ECHOES, max_echo_bytes: int = MAX_ECHO_BYTES) -> None:
        #: Groups with local members.
        self.wanted: set[str] = set()
        # Groups that are not UNSUBSCRIBED on the current connection.
        self._states: dict[str, State] = {}
        # Groups that may need a command.
        self._todo: set[str] = set()
        self.connected = False
        #: group -> {message as published: how many are awaited}, for the
        #: groups that Redis sends on the current connection (SUBSCRIBED,
        #: and UNSUBSCRIBING until the reply). When Redis stops, the group's
        #: table is dropped and emptied: a publish that still holds it has
        #: nothing left to retract.
        self.echoes: dict[str, dict[bytes, int]] = {}
        self.echo_count = 0
        self.echo_bytes = 0
        self.max_echoes = max_echoes
        self.max_echo_bytes = max_echo_bytes

    def state(self, group: str) -> State:
        """Return where Redis stands with ``group`` on the current connection."""
        return self._states.get(group, UNSUBSCRIBED)

    def groups(self) -> set[str]:
        """Return the groups wanted, or not UNSUBSCRIBED on the current connection."""
        return self.wanted | set(self._states)

    def confirmed(self) -> set[str]:
        """Return the groups Redis confirmed on the current connection."""
        return {group for group, state in self._states.items() if state is SUBSCRIBED}

    # What the process wants.

    def want(self, group: str) -> bool:
        """
        ``group`` has local members: get its messages.

        Returns :obj:`True` if Redis already sends them: there is nothing to
        wait for.

        """
        self.wanted.add(group)
        state = self._states.get(group, UNSUBSCRIBED)
        if state is SUBSCRIBED:
            return True
        if state is UNSUBSCRIBED and self.connected:
            self._todo.add(group)
        return False

    def unwant(self, group: str) -> None:
        """``group`` has no local member left: stop getting its messages."""
        # Echoes of messages published before still come back until Redis
        # confirms the UNSUBSCRIBE: they are skipped, even if a member joins
        # again meanwhile.
        self.wanted.discard(group)
        if self._states.get(group) is SUBSCRIBED:
            self._todo.add(group)

    # The connection.

    def connection_made(self) -> None:
        """A new connection works: nothing is subscribed on it yet."""
        self._reset()
        self.connected = True
        self._todo = set(self.wanted)

    def connection_lost(self) -> None:
        """The connection failed: nothing is subscribed, nothing can be sent."""
        self._reset()
        self.connected = False

    def _reset(self) -> None:
        self._states = {}
        self._todo = set()
        for table in self.echoes.values():
            table.clear()  # see _forget_echoes
        self.echoes.clear()
        self.echo_count = self.echo_bytes = 0

    def commands(self) -> tuple[list[str], list[str]]:
        """
        Return the groups to SUBSCRIBE to and those to UNSUBSCRIBE from now.

        The caller sends them on the current connection; they count as in
        flight from now on. Returns nothing while disconnected.

        """
        subscribe: list[str] = []
        unsubscribe: list[str] = []
        if not self.connected:
            return subscribe, unsubscribe
        todo, self._todo = self._todo, set()
        states = self._states
        for group in sorted(todo):  # in a stable order, for logs and tests
            state = states.get(group, UNSUBSCRIBED)
            if group in self.wanted:
                if state is UNSUBSCRIBED:
                    states[group] = SUBSCRIBING
                    subscribe.append(group)
            elif state is SUBSCRIBED:
                states[group] = UNSUBSCRIBING
                unsubscribe.append(group)
        return subscribe, unsubscribe

    # Redis's replies. Each says where Redis stands now: it is believed
    # whatever was expected, so that even a reply nobody asked for leaves a
    # state that the next command corrects.

    def subscribed(self, group: str) -> bool:
        """Redis replied "subscribe" for ``group``; tell whether a command is due."""
        if not self.connected:
            return False
        self._states[group] = SUBSCRIBED
        if group not in self.echoes:
            self.echoes[group] = {}
        if group in self.wanted:
            return False
        self._todo.add(group)
        return True

    def unsubscribed(self, group: str) -> bool:
        """Redis replied "unsubscribe" for ``group``; tell whether a command is due."""
        if not self.connected:
            return False
        self._states.pop(group, None)
        self._forget_echoes(group)
        if group in self.wanted:
            self._todo.add(group)
            return True
        return False

    # Echoes.

    def expect_echo(self, group: str, data: bytes) -> dict[bytes, int] | None:
        """
        Await the echo of ``data``, about to be published to ``group``.

        Returns the group's table of echoes if Redis will send ``data``
        back, so that the listener skips it: the caller delivers ``data`` to
        the process's websockets now, and retracts the echo with
        :meth:`skip_echo` if the publish fails. Returns :obj:`None`
        otherwise (the group is not confirmed, or too many echoes are
        awaited): the listener delivers ``data`` when it comes.

        """
        table = self.echoes.get(group)
        if table is None or self._states.get(group) is not SUBSCRIBED or group not in self.wanted:
            return None
        size = len(data)
        if self.echo_count >= self.max_echoes or self.echo_bytes + size > self.max_echo_bytes:
            return None
        table[data] = table.get(data, 0) + 1
        self.echo_count += 1
        self.echo_bytes += size
        return table

    def skip_echo(self, table: dict[bytes, int], data: bytes) -> bool:
        """
        Tell whether ``data`` is an echo awaited in ``table``, and stop awaiting it.

        The listener calls it for each message of a group whose table is
        not empty; :meth:`expect_echo`'s caller calls it when the publish
        failed. A table that was dropped awaits nothing.

        """
        count = table.get(data)
        if count is None:
            return False
        if count == 1:
            del table[data]
        else:
            table[data] = count - 1
        self.echo_count -= 1
        self.echo_bytes -= len(data)
        return True

    def _forget_echoes(self, group: str) -> None:
        table = self.echoes.pop(group, None)
        if table:
            self.echo_count -= sum(table.values())
            self.echo_bytes -= sum(len(data) * count for data, count in table.items())
            # A publish may still hold the table: empty, it awaits nothing.
            table.clear()
