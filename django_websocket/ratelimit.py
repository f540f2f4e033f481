"""
A token bucket: how many messages a client may send, sustained and in a burst.

A :class:`TokenBucket` holds up to ``burst`` tokens and gains ``rate`` of
them a second; each message takes one. A client that sends no faster than
``rate`` messages a second never runs out; one that was quiet may send
``burst`` messages at once. The bucket does no I/O and reads no clock: the
caller passes the time, so that tests need no sleeps and the read loop,
which knows the time of each read already, pays for no clock call.

A websocket has one unless :data:`WEBSOCKET_RATE_LIMIT` is :obj:`None`.

"""

from __future__ import annotations

__all__ = ["TokenBucket"]


class TokenBucket:
    """
    ``rate`` tokens a second, ``burst`` at most; full at ``now``.

    Set ``drop`` when messages over the limit are dropped rather than
    closing the connection: the bucket only keeps the flag, and counts the
    messages dropped in :attr:`dropped`, for the caller.

    """

    # One per connection, when the limit is on: no __dict__.
    __slots__ = ("rate", "burst", "tokens", "stamp", "drop", "dropped")

    def __init__(self, rate: float, burst: float, now: float, *, drop: bool = False) -> None:
        if not rate > 0 or not burst >= 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self.tokens: float = burst
        self.stamp = now  # when tokens was last brought up to date
        self.drop = drop
        #: Messages dropped so far (with ``drop``); the caller counts them.
        self.dropped = 0

    def __repr__(self) -> str:
        return f"<TokenBucket {self.tokens:.1f}/{self.burst} at {self.rate}/s>"

    def take(self, now: float, count: int = 1) -> int:
        """
        Take ``count`` tokens at ``now``, in seconds; return how many there were.

        ``now`` must not go backwards (a :func:`time.monotonic` reading).
        A refused token is not taken: the client gets its next one
        ``1 / rate`` seconds after it ran out, however hard it keeps trying.

        """
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.stamp = now
        taken = count if tokens >= count else int(tokens)
        self.tokens = tokens - taken
        return taken
