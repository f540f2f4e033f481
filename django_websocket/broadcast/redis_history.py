"""
History for the Redis backend: a Redis stream per group, written as the message is published.

Each group that keeps history has two keys next to its channel, ``PREFIX +
group``, in the same Redis Cluster hash slot (the channel's name in braces,
``{PREFIX + group}``, is their hash tag):

``{PREFIX + group}:history``
    a stream of the group's last messages: the ID of each is its offset
    (``<offset>-0``), its fields ``t``, the Redis server's time in
    milliseconds, and ``d``, the message as
    :func:`~django_websocket.broadcast.wire.encode` writes it. ``XADD
    MAXLEN`` keeps the last ``SIZE``; the key expires ``TTL`` seconds after
    the last message; reading skips, and trims, the messages older than
    ``TTL``.
``{PREFIX + group}:position``
    a hash: the epoch ``e``, the last offset ``o``, and ``r``, the ``run_id``
    of the Redis server that made the epoch. It expires a day after the last
    message (or ``TTL``, if longer); made by a read of a group without one,
    ``TTL`` after that read.

A Lua script numbers, stores and publishes each message in one atomic step:
a subscriber never gets a message that the history does not hold, and gets
a group's messages in the order of their offsets. It starts a new epoch when
the hash is gone (flushed, expired, Redis restarted without persistence) or
was made by another server process (Redis restarted from a snapshot that may
miss the last messages, or a replica took over): positions never mean two
different messages. The stream IDs are offsets, so that a read from a
position is one ``XRANGE``: age is checked against each message's time, and
a read trims the expired messages with ``XTRIM MINID`` at the first offset
kept, found by a binary search (times grow with offsets). A group that is
idle for ``TTL`` is deleted whole by its expiry.

Redis 6.2 or later is needed (``XTRIM MINID``), and the ``INFO`` command
must be allowed to the user (see :ref:`history`).

"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import redis
from django.core.exceptions import ImproperlyConfigured

from .positions import META_TTL, Position, new_epoch

__all__ = [
    "Script", "PUBLISH", "SPUBLISH", "READ", "history_keys", "publish_args", "read_args",
    "parse_read",
    "parse_publish",
]

# Both scripts start alike: find the epoch and the last offset, or start a
# new epoch (ARGV[6], made by the caller: scripts have no randomness), whose
# hash expires after ARGV[5] ms. ARGV[7] is the run_id of the Redis server,
# which the publisher learns once per connection (INFO in each script would
# cost ~11 us), or '' to ask here (a Redis Cluster client, whose
# connections are redis-py's).
_PREAMBLE = """
local stream, meta = KEYS[1], KEYS[2]
local run = ARGV[7]
if run == '' then run = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)') end
local found = redis.call('HMGET', meta, 'e', 'o', 'r')
local epoch, last = found[1], tonumber(found[2])
if not epoch or found[3] ~= run then
    epoch, last = ARGV[6], 0
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'e', epoch, 'o', 0, 'r', run)
    redis.call('PEXPIRE', meta, ARGV[5])
end
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
"""

# KEYS: stream, meta. ARGV: channel, message, size, TTL (ms), meta TTL (ms),
# new epoch, run_id.
_PUBLISH = _PREAMBLE + """
local offset = last + 1
local id = string.format('%d-0', offset)
redis.call('XADD', stream, 'MAXLEN', ARGV[3], id, 't', string.format('%d', ms), 'd', ARGV[2])
redis.call('HSET', meta, 'o', offset)
redis.call('PEXPIRE', stream, ARGV[4])
redis.call('PEXPIRE', meta, ARGV[5])
local position = epoch .. ':' .. string.format('%d', offset)
redis.call('PUBLISH', ARGV[1], string.char(16, #position) .. position .. ARGV[2])
return {epoch, offset}
"""

# KEYS: stream, meta. ARGV: since's epoch ('' for none), since's offset,
# limit (0 for none), TTL (ms), TTL of a new epoch's hash (ms): the TTL
# only, until a message is published, new epoch, run_id.
# Returns: epoch, last offset, complete (1 or 0), then offset, message, ...
#
# The expired messages are the oldest, as times grow with offsets: a binary
# search over the offsets finds the first one kept, in a few XRANGE calls
# whatever the size, and one XTRIM MINID drops those before it.
_READ = _PREAMBLE + """
local cutoff = ms - tonumber(ARGV[4])
local first = last + 1
local function at_or_after(offset)
    return redis.call('XRANGE', stream, string.format('%d-0', offset), '+', 'COUNT', 1)[1]
end
local function offset_of(entry) return tonumber(string.match(entry[1], '^(%d+)')) end
local head = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
if head then
    if tonumber(head[2][2]) > cutoff then
        first = offset_of(head)
    else
        local tail = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
        if tonumber(tail[2][2]) <= cutoff then
            redis.call('DEL', stream)
        else
            -- The entry at or after lo is expired, the one at or after hi is kept.
            local lo, hi = offset_of(head), offset_of(tail)
            while hi - lo > 1 do
                local mid = math.floor((lo + hi) / 2)
                if tonumber(at_or_after(mid)[2][2]) > cutoff then hi = mid else lo = mid end
            end
            redis.call('XTRIM', stream, 'MINID', string.format('%d-0', hi))
            first = offset_of(at_or_after(hi))
        end
    end
end
local limit = tonumber(ARGV[3])
local complete, entries
if ARGV[1] == '' then
    complete = first <= 1
    if limit > 0 then
        entries = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', limit)
        local ordered = {}
        for i = #entries, 1, -1 do ordered[#ordered + 1] = entries[i] end
        entries = ordered
    else
        entries = redis.call('XRANGE', stream, '-', '+')
    end
else
    local since = tonumber(ARGV[2])
    local same = ARGV[1] == epoch and since <= last
    complete = same and first <= since + 1
    local start = '-'
    if same then start = string.format('%d-0', since + 1) end
    if limit > 0 then
        entries = redis.call('XRANGE', stream, start, '+', 'COUNT', limit)
    else
        entries = redis.call('XRANGE', stream, start, '+')
    end
end
local result = {epoch, last, complete and 1 or 0}
for _, entry in ipairs(entries) do
    result[#result + 1] = tonumber(string.match(entry[1], '^(%d+)'))
    result[#result + 1] = entry[2][4]
end
return result
"""


class Script:
    """A Lua script, run with ``EVALSHA``, or ``EVAL`` when Redis doesn't have it yet."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def run(self, execute: Callable[..., Any], keys: tuple[str, str], args: list[Any]) -> Any:
        """Run the script with ``execute(*command)``, which returns Redis's answer."""
        try:
            return execute("EVALSHA", self.sha, str(len(keys)), *keys, *args)
        except redis.exceptions.NoScriptError:
            # A new or restarted Redis: EVAL caches the script for next time.
            return execute("EVAL", self.source, str(len(keys)), *keys, *args)


PUBLISH = Script(_PUBLISH)
#: The same for sharded pub/sub on Redis Cluster: the channel hashes to the
#: slot of the keys (see history_keys), as SPUBLISH in a script requires.
SPUBLISH = Script(_PUBLISH.replace("redis.call('PUBLISH'", "redis.call('SPUBLISH'"))
READ = Script(_READ)


def history_keys(channel: str) -> tuple[str, str]:
    """
    Return the keys of the stream and of the epoch of the group published on ``channel``.

    They hash to the channel's Redis Cluster slot.

    Raises:
        ImproperlyConfigured: ``channel``'s prefix has braces that make no hash tag.

    """
    start = channel.find("{")
    if start >= 0:
        end = channel.find("}", start + 1)
        if end > start + 1:
            # Its hash tag decides its slot, and the keys': a PREFIX with a
            # hash tag of its own puts every group's keys in one slot.
            tag = channel
        else:
            raise ImproperlyConfigured(
                f"WEBSOCKET_BROADCAST['OPTIONS']['PREFIX'] makes the channel {channel!r}, "
                "whose braces make no Redis Cluster hash tag: remove them from PREFIX to "
                "keep history."
            )
    elif "}" in channel:
        raise ImproperlyConfigured(
            f"WEBSOCKET_BROADCAST['OPTIONS']['PREFIX'] makes the channel {channel!r}: "
            "remove the '}' from PREFIX to keep history."
        )
    else:
        tag = "{" + channel + "}"
    return tag + ":history", tag + ":position"


def _ms(seconds: float) -> str:
    return str(max(1, round(seconds * 1000)))


def _meta_ms(ttl: float) -> str:
    return _ms(max(ttl, META_TTL))


def publish_args(channel: str, data: bytes, size: int, ttl: float) -> list[Any]:
    """Return the ARGV of :data:`PUBLISH` but the last, the server's ``run_id``."""
    return [channel, data, str(size), _ms(ttl), _meta_ms(ttl), new_epoch()]


def read_args(since: Position | None, limit: int | None, ttl: float) -> list[str]:
    """Return the ARGV of :data:`READ` but the last, the server's ``run_id``."""
    epoch, offset = ("", 0) if since is None else since
    # A read that finds no group keeps its new epoch for TTL only: group
    # names may come from clients, who must not make Redis hold a key for a
    # day each. The first message extends it.
    return [epoch, str(offset), str(limit or 0), _ms(ttl), _ms(ttl), new_epoch()]


def parse_read(answer: list[Any]) -> tuple[str, int, bool, list[tuple[int, bytes]]]:
    """Return the epoch, last offset, completeness and (offset, data) pairs of :data:`READ`."""
    epoch, last, complete = answer[0], answer[1], answer[2]
    entries = [(int(answer[i]), answer[i + 1]) for i in range(3, len(answer), 2)]
    return _text(epoch), int(last), bool(complete), entries


def parse_publish(answer: list[Any]) -> Position:
    """Return the position that :data:`PUBLISH` answered."""
    return Position(_text(answer[0]), int(answer[1]))


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
