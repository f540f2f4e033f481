"""
Recovery: a websocket gets a group's messages once each, in order, from a position on.

A websocket subscribed to a group that keeps history with a position to
resume from (see :meth:`~django_websocket.WebSocket.subscribe`), or for a
client that reads envelopes, is in the group through a :class:`Tracker`. The
tracker holds the group's live messages back while it reads the history
after the position; it delivers what the history holds, then the messages
held back that come after it, skipping those it already delivered:

* The process subscribes to the group before the history is read, so a
  message published after the read reaches it live, and one published
  before is in what the read returns: no gap.
* Each message has an offset; the tracker remembers the last it delivered
  and drops any other at or before it: no duplicate.
* A live message whose offset skips some (the process's Redis connection
  dropped, and its subscription missed them) starts the same catch-up from
  the last delivered, and so does the process's subscription coming back
  (:func:`resync`), for a group whose next message may be long in coming.
  A message of another epoch starts a catch-up too, as epochs have no
  order: the history tells whether positions started over (Redis
  restarted, or was flushed: the old epoch's last messages are lost, the
  new one's are read) or the message is from an epoch already over, still
  on its way (it is dropped, and so are the later ones of that epoch).

A loss is never silent to the view that resumes: :meth:`Tracker.start`
returns whether the history reached back to the position. A client that
reads envelopes gets a ``"lost"`` notice for that loss and for the later
ones (see :mod:`django_websocket.envelopes`); a view that reads the
messages itself sees their positions skip, or their epoch change.

This module knows no Django.

"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from dataclasses import replace

import gevent

from .. import envelopes
from ..exceptions import BroadcastError
from ..metrics import counters
from ..protocol import OP_TEXT, encode_frame
from .base import Delivery, Member, registry
from .positions import History, Position

__all__ = ["Tracker", "resync", "MAX_HELD", "MAX_HELD_BYTES"]

logger = logging.getLogger(__name__)

#: Live messages a tracker holds back while it catches up, at most, and
#: their bytes (checked every :data:`CHECK_BYTES_EVERY` messages): beyond,
#: it gives up on the gap, reports a loss and delivers from the newest on.
MAX_HELD = 10_000
MAX_HELD_BYTES = 16 * 1024 * 1024
CHECK_BYTES_EVERY = 64

#: What reads a group's history: ``read(since)`` with ``since`` a position,
#: or :obj:`None` for just the group's last position.
Reader = Callable[[Position | None], History]


class Tracker:
    """
    How one websocket is in one group that keeps history: in order, once each.

    ``forward`` tells whether the messages go to the client (in envelopes
    if ``envelope``) or to the view. Until :meth:`start` has caught up from
    ``since``, and the websocket is open, live messages are held back.

    """

    # A connection may be in many groups: no __dict__.
    __slots__ = ("group", "forward", "envelope", "read", "since", "epoch", "offset", "held",
                 "complete", "started", "stopped", "_open", "_catching_up", "_ready", "_left",
                 "_recheck")

    def __init__(
        self, group: str, forward: bool, envelope: bool, read: Reader, since: Position | None
    ) -> None:
        self.group = group
        self.forward = forward
        self.envelope = envelope
        self.read = read
        #: The position to resume from, or None to start from now.
        self.since = since
        #: The position of the last message delivered (or the one to start after).
        self.epoch: str | None = None
        self.offset = 0
        #: Live messages held back while catching up, or None.
        self.held: list[Delivery] | None = []
        #: Whether no message after ``since`` was lost, as :meth:`start` found.
        self.complete = True
        #: Whether :meth:`start` read the history.
        self.started = False
        #: Whether the websocket left the group, or subscribed to it anew.
        self.stopped = False
        # Whether the websocket takes messages: it is open.
        self._open = False
        # Stands for the catch-up in progress: a newer one, giving up on
        # the gap, or stopping makes a catch-up's answer moot.
        self._catching_up: object | None = None
        # What start() read before the websocket was open, for release().
        self._ready: tuple[Position | None, History | None] | None = None
        # Epochs left behind: their messages, still on their way, are older
        # than any of the current epoch (an epoch never comes back).
        self._left: tuple[str, ...] = ()
        # The process's subscription came back while messages were held.
        self._recheck = False

    def __repr__(self) -> str:
        return f"<Tracker {self.group} at {self.epoch}:{self.offset}>"

    # Called by the registry's writer greenlet: never waits.

    def receive(self, websocket: Member, delivery: Delivery) -> None:
        """Deliver ``delivery`` in its turn: now, later, or not at all if delivered before."""
        held = self.held
        if held is None or delivery.position is None:
            # Not from the history (a presence event) has no turn to wait for.
            self._take(websocket, delivery)
        elif len(held) < MAX_HELD and (
                len(held) % CHECK_BYTES_EVERY or _size(held) < MAX_HELD_BYTES):
            held.append(delivery)
        else:
            self._give_up(websocket, delivery)

    def stop(self) -> None:
        """Deliver nothing more: the websocket left the group, or has a new tracker in it."""
        self.stopped = True
        self.held = None
        self._catching_up = None
        self._ready = None

    def _move_to(self, epoch: str, offset: int) -> None:
        # The position from which the messages go on.
        current = self.epoch
        if current is not None and current != epoch and current not in self._left:
            self._left = (*self._left[-3:], current)
        self.epoch, self.offset = epoch, offset

    def _take(self, websocket: Member, delivery: Delivery) -> None:
        if self.stopped:
            return
        position = delivery.position
        if position is not None:
            epoch, offset = position
            if epoch != self.epoch:
                since = self.since
                if epoch in self._left:
                    return  # from before positions started over
                if self.epoch is None and since is None:
                    # The history could not be read, and nothing was to
                    # recover: positions start here.
                    self._move_to(epoch, offset - 1)
                    self._notify(websocket, "subscribed", Position(epoch, offset - 1), live=True)
                elif self.epoch is None and since is not None and since.epoch == epoch:
                    # The history could not be read: from since on, what
                    # this message skips is read now.
                    self._move_to(*since)
                else:
                    # Positions started over, or this message is from an
                    # epoch already over, still on its way: the history
                    # tells which (epochs are random: they have no order).
                    start = since if self.epoch is None else Position(self.epoch, self.offset)
                    self._fill_later(websocket, delivery, start)  # type: ignore[arg-type]
                    return
            if offset <= self.offset:
                return  # delivered already
            if offset > self.offset + 1:
                # Missed live: the history may have them.
                self._fill_later(websocket, delivery, Position(epoch, self.offset))
                return
            self.offset = offset
        if self.forward:
            websocket.deliver_frame(delivery.enveloped() if self.envelope else delivery.frame())
        else:
            websocket.deliver_to_view(delivery.for_view(), len(delivery.payload))

    def _fill_later(self, websocket: Member, delivery: Delivery, since: Position) -> None:
        # Hold the live messages from ``delivery`` on, and read the history
        # after ``since``, in a greenlet (the writer's must not wait).
        self.held = [delivery, *(self.held or ())]  # those held came after it
        token = self._catching_up = object()
        gevent.spawn(self._fill, weakref.ref(websocket), since, token)

    def _give_up(self, websocket: Member, newest: Delivery) -> None:
        # Too many live messages wait for a catch-up: forget them and it.
        logger.warning(
            "%d messages of %s waited for its history to be read: they are lost to %r",
            len(self.held or ()), self.group, websocket,
        )
        self._catching_up = None
        if not self.started:
            self.started, self.complete = True, False
        position = newest.position
        assert position is not None
        start = Position(position.epoch, position.offset - 1)
        if not self._open:
            # The client gets the loss, then the newest, once it is open.
            self.held = [newest]
            self._ready = (self.since or start, History([], False, start))
            return
        self.held = None
        self._ready = None
        self._lost(websocket, start)
        self._move_to(*start)
        self._take(websocket, newest)

    def _lost(self, websocket: Member, position: Position) -> None:
        # Messages before ``position`` are lost; from it on, none is.
        counters.recovery_losses += 1
        logger.info("messages of %s were lost to %r; it gets every one after %s",
                    self.group, websocket, position)
        self._notify(websocket, "lost", position, live=True)

    def _notify(self, websocket: Member, kind: str, position: Position, live: bool = False) -> None:
        if self.stopped or not self.envelope or (live and not self.forward):
            # A view that gets the messages sends them on when it reads
            # them: a notice about them would overtake them. Its client
            # sees the positions skip, or their epoch change.
            return
        notice = envelopes.notice(kind, self.group, position)
        websocket.deliver_frame(encode_frame(OP_TEXT, notice.encode()))

    # Catching up: in the view's greenlet, or one of its own for a gap.

    def start(self, websocket: Member, open: bool = True) -> bool:
        """
        Read the history after :attr:`since`; return whether no message after it is lost.

        With ``open``, deliver what it holds, then the live messages held
        back; otherwise keep them until :meth:`release`, once the
        websocket is open. Waits for the history.

        """
        try:
            history = self._read(self.since)
        except BaseException:
            # Killed, or timed out: the live messages go on, as after a
            # read that failed.
            history = None
            raise
        finally:
            if not (self.stopped or self.started):
                self.started = True
                self.complete = _complete(self.since, history)
                if self.since is not None:
                    if self.complete:
                        counters.recoveries += 1
                    else:
                        counters.recovery_losses += 1
                self._ready = (self.since, history)
            # (Or given up meanwhile, see _give_up: the loss is ready.)
            if open and not self.stopped:
                self.release(websocket)
        return self.complete

    def release(self, websocket: Member) -> None:
        """Deliver what :meth:`start` read before ``websocket`` was open, and what came since."""
        self._open = True
        ready, self._ready = self._ready, None
        if ready is not None:
            self._apply(websocket, *ready, initial=True)

    def catch_up(self, websocket: Member, since: Position, token: object | None = None) -> None:
        """Deliver the messages after ``since`` that the history holds, then those held back."""
        if token is None:
            token = self._catching_up = object()
        history = None
        try:
            history = self._read(since)
        finally:
            if self._catching_up is token and not self.stopped:
                self._catching_up = None
                if history is not None and not _complete(since, history):
                    counters.recovery_losses += 1
                self._apply(websocket, since, history)

    def align(self, websocket: Member, last: Position) -> bool:
        """
        Tell whether messages up to ``last``, the group's last position, were missed.

        Called while the live messages are held back (see :func:`resync`),
        once the process's subscription to the group is back. Positions that
        started over are a loss; then the new epoch's messages are missed.

        """
        if self.stopped:
            return False
        since = self.since
        if self.epoch is None:
            # The first read failed.
            if since is None:
                self._move_to(*last)
                self._notify(websocket, "subscribed", last, live=True)
                return False
            if since.epoch == last.epoch:
                self._move_to(*since)
        if last.epoch != self.epoch:
            self._lost(websocket, Position(last.epoch, 0))
            self._move_to(last.epoch, 0)
        return last.offset > self.offset

    def catch_up_from(self, websocket: Member, history: History) -> None:
        """Deliver what ``history``, read from an earlier position, holds after this one's."""
        assert self.epoch is not None
        since = Position(self.epoch, self.offset)
        head = history.messages[0].position if history.messages else None
        first = head.offset if head is not None else history.position.offset + 1
        complete = history.position.epoch == since.epoch and first <= since.offset + 1
        if not complete:
            counters.recovery_losses += 1
        self._apply(websocket, since, replace(history, complete=complete))

    def release_held(self, websocket: Member) -> None:
        """Deliver the live messages held back."""
        held, self.held = self.held, None
        for delivery in held or ():
            if self.held is not None:
                self.held.append(delivery)  # another gap: wait for its catch-up
            else:
                self._take(websocket, delivery)
        if self._recheck and self.held is None and not self.stopped:
            # The subscription came back while these were held: see what
            # it missed, as resync() does.
            self._recheck = False
            self.held = []
            gevent.spawn(_resync, [(weakref.ref(websocket), self)])

    def _read(self, since: Position | None) -> History | None:
        try:
            return self.read(since)
        except BroadcastError as exc:
            logger.warning("cannot read the history of %s: %s", self.group, exc)
            return None

    def _apply(
        self, websocket: Member, since: Position | None, history: History | None,
        initial: bool = False,
    ) -> None:
        # Deliver what the history holds after ``since``, then release the
        # messages held back. ``initial`` for start()'s read.
        if self.stopped:
            return
        live = not initial
        if history is None:
            # Unknown until the first live message (see _take), or:
            if self.epoch is not None and self.held:
                # A catch-up failed: the messages it was to fill are lost,
                # and the live ones tell where things stand.
                first = self.held[0].position
                assert first is not None  # only messages with one are held
                if first.epoch != self.epoch or first.offset > self.offset + 1:
                    self._lost(websocket, Position(first.epoch, first.offset - 1))
                    self._move_to(first.epoch, first.offset - 1)
        elif not _complete(since, history):
            last = history.position
            held = history.messages
            head = held[0].position if held else None
            if since is not None and since.epoch != last.epoch and (
                    head is not None and head.offset == 1 or last.offset == 0):
                # Positions started over, and the history holds the new
                # epoch whole: only the old one's last messages are lost.
                self._notify(websocket, "lost", Position(last.epoch, 0), live)
                self._move_to(last.epoch, 0)
                for message in held:
                    self._take(websocket, Delivery.of(message))
            else:
                self._notify(websocket, "lost", last, live)
                if last.epoch != self.epoch or last.offset > self.offset:
                    self._move_to(*last)
        else:
            start = since if since is not None else history.position
            if initial:
                self._notify(websocket, "subscribed", start)
            if not (start.epoch == self.epoch and start.offset < self.offset):
                self._move_to(*start)  # never back: what came since is delivered
            if since is not None:
                for message in history.messages:
                    self._take(websocket, Delivery.of(message))
        if history is not None and self.held:
            # The history tells the epoch: messages of another are from one
            # already over, or come again once it is read.
            self.held = [delivery for delivery in self.held
                         if delivery.position is None or delivery.position.epoch == self.epoch]
        self.release_held(websocket)

    def _fill(self, ref: weakref.ref[Member], since: Position, token: object) -> None:
        websocket = ref()
        if websocket is not None and self._catching_up is token and not self.stopped:
            self.catch_up(websocket, since, token)


def _size(held: list[Delivery]) -> int:
    """Return the bytes of the messages ``held``."""
    return sum(len(delivery.payload) for delivery in held)


def _complete(since: Position | None, history: History | None) -> bool:
    """Tell whether no message after ``since`` is lost, as ``history`` found."""
    if since is None:
        return True
    return history is not None and history.complete


def resync(group: str) -> None:
    """
    Catch up the trackers of ``group`` in this process; never wait.

    The Redis backend calls it when the process's subscription to the group
    is confirmed: when it came back after an outage, or took effect after
    a tracker read the history. The trackers hold the live messages back;
    one read of the group's last position tells which missed some, and one
    read of the history, from the earliest of them, catches them all up.
    A tracker that holds messages already (catching up, or waiting for its
    websocket to open) checks the same once it releases them.

    """
    trackers = []
    for websocket, receiver in registry.receivers(group):
        if not isinstance(receiver, Tracker) or receiver.stopped:
            continue
        if receiver.held is None:
            receiver.held = []
            trackers.append((weakref.ref(websocket), receiver))
        else:
            receiver._recheck = True
    if trackers:
        gevent.spawn(_resync, trackers)


def _resync(trackers: list[tuple[weakref.ref[Member], Tracker]]) -> None:
    found = [(websocket, tracker) for ref, tracker in trackers
             if (websocket := ref()) is not None]
    caught_up: set[int] = set()
    try:
        reader = trackers[0][1]
        last = reader._read(None)
        behind = []
        if last is not None:
            behind = [(websocket, tracker) for websocket, tracker in found
                      if tracker.align(websocket, last.position)]
        if behind:
            start = min(tracker.offset for _, tracker in behind)
            history = reader._read(Position(last.position.epoch, start))  # type: ignore[union-attr]
            if history is not None:
                for websocket, tracker in behind:
                    caught_up.add(id(tracker))
                    tracker.catch_up_from(websocket, history)  # releases what it held
    finally:
        # Those up to date, and all of them if Redis is away again (its
        # return calls resync() again).
        for websocket, tracker in found:
            if id(tracker) not in caught_up:
                try:
                    tracker.release_held(websocket)
                except Exception:
                    logger.exception("cannot deliver the messages of %s", tracker.group)
