"""
The RFC 6455 frame engine, server side, without I/O.

:class:`Parser` turns the bytes a client sends into events: complete
messages (:class:`str` for text, :class:`bytes` for binary), :class:`Ping`,
:class:`Close`, and :class:`Failure` when the client breaks the protocol
(pongs are checked and not reported). Within this module, a rule broken
raises :class:`~django_websocket.exceptions.ProtocolError`, which the parser
turns into a :class:`Failure`: it never raises for what a client sends.
:func:`encode_frame` and :func:`encode_close` build the frames the server
sends. The rules that span frames (states, the closing handshake) are in
:mod:`django_websocket.connection`.

The parser streams: it unmasks, validates UTF-8 and inflates payloads as their
bytes arrive, so invalid text fails the connection as soon as it is seen, a
message over the size limit is refused before it is buffered, and a large
message is copied once. Everything the rest of the library knows about
framing goes through this module, so that the engine can be replaced without
touching the public API.

"""

from __future__ import annotations

import codecs
import struct
import sys
from typing import Any, Callable, Union

from .compression import Deflate, negotiate
from .exceptions import ProtocolError

_Unmask = Callable[[bytes, bytes], bytes]

try:
    # C implementation shipped with the websockets package: about 100 times
    # faster than the fallback below on large payloads.
    from websockets.speedups import apply_mask as _apply_mask

    apply_mask: _Unmask | None = _apply_mask
except ImportError:  # pragma: no cover - exercised by test_protocol on its own
    apply_mask = None

__all__ = [
    "OP_CONTINUATION",
    "OP_TEXT",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "Ping",
    "Close",
    "Failure",
    "Event",
    "Parser",
    "encode_frame",
    "encode_message",
    "check_message",
    "encode_close",
    "Deflate",
    "negotiate",
    "check_close_code",
    "unmask",
]

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

DATA_OPCODES = frozenset((OP_CONTINUATION, OP_TEXT, OP_BINARY))
CONTROL_OPCODES = frozenset((OP_CLOSE, OP_PING, OP_PONG))

# Close codes a peer may send (RFC 6455 7.4.1 and the IANA registry); 1005,
# 1006 and 1015 are reserved for reporting and never appear in a frame.
_SENDABLE_CODES = frozenset(
    (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014)
)

_unpack_H = struct.Struct("!H").unpack_from
_unpack_Q = struct.Struct("!Q").unpack_from
_pack_BB = struct.Struct("!BB").pack
_pack_BBH = struct.Struct("!BBH").pack
_pack_BBQ = struct.Struct("!BBQ").pack

_Utf8Decoder = codecs.getincrementaldecoder("utf-8")

_NO_LIMIT = sys.maxsize

# Parts of a message shorter than this are joined, 32 at a time, until
# they are as long: a part costs about 40 bytes besides its data.
_SMALL = 1024


def _unmask_python(data: bytes, mask: bytes) -> bytes:
    """XOR ``data`` with the repeated 4-byte ``mask`` using big integers."""
    size = len(data)
    key = int.from_bytes(mask * (size // 4) + mask[: size % 4], "little")
    return (int.from_bytes(data, "little") ^ key).to_bytes(size, "little")


unmask: _Unmask = apply_mask if apply_mask is not None else _unmask_python


class Ping:
    """A ping frame received from the client."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


class Close:
    """
    A close frame received from the client.

    :attr:`code` is ``1005`` when the frame carried no status code.

    """

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


class Failure:
    """
    The client broke the protocol: fail the connection with :attr:`code`.

    :attr:`reason` says what the client did wrong, for the logs and the
    close frame.

    """

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason

    def __repr__(self) -> str:
        return f"<Failure {self.code}: {self.reason}>"


#: What :meth:`Parser.feed` returns: messages (:class:`str` for text,
#: :class:`bytes` for binary), pings, the client's close frame, a failure.
Event = Union[str, bytes, Ping, Close, Failure]


def check_close_code(code: int) -> bool:
    """Tell whether ``code`` may appear in a close frame."""
    return code in _SENDABLE_CODES or 3000 <= code <= 4999


def encode_frame(opcode: int, payload: bytes, rsv1: bool = False) -> bytes:
    """Build a final, unmasked frame, as a server sends them."""
    first = 0x80 | opcode | (0x40 if rsv1 else 0)
    size = len(payload)
    if size < 126:
        header = _pack_BB(first, size)
    elif size < 65536:
        header = _pack_BBH(first, 126, size)
    else:
        header = _pack_BBQ(first, 127, size)
    return header + payload


def check_message(message: object) -> bool:
    """
    Tell whether ``message`` is text (:obj:`True`) or binary (:obj:`False`).

    Raises:
        TypeError: ``message`` is neither :class:`str` (or a subclass, such
            as Django's ``SafeString``) nor a bytes-like object.

    """
    if isinstance(message, str):
        return True
    if isinstance(message, (bytes, bytearray, memoryview)):
        return False
    raise TypeError(f"a message is str or a bytes-like object, not {type(message).__name__}")


def encode_message(
    message: str | bytes | bytearray | memoryview, deflate: Deflate | None = None
) -> bytes:
    """
    Build the frame of a message: :class:`str` as text, bytes-like as binary.

    With a ``deflate`` context, messages of at least its ``min_size`` bytes
    are compressed.

    Raises:
        TypeError: ``message`` is neither text nor bytes-like.

    """
    data: bytes
    if type(message) is str:
        opcode, data = OP_TEXT, message.encode()
    elif type(message) is bytes:
        opcode, data = OP_BINARY, message
    elif check_message(message):  # a str subclass, such as Django's SafeString
        opcode, data = OP_TEXT, str.encode(message)  # type: ignore[arg-type]  # a str
    else:
        opcode, data = OP_BINARY, bytes(message)  # type: ignore[arg-type]  # bytes-like
    if deflate is not None and len(data) >= deflate.min_size:
        return encode_frame(opcode, deflate.compress(data), rsv1=True)
    return encode_frame(opcode, data)


def encode_close(code: int | None, reason: str = "") -> bytes:
    """Build a close frame; ``code=None`` builds one with an empty body."""
    if code is None:
        return encode_frame(OP_CLOSE, b"")
    return encode_frame(OP_CLOSE, struct.pack("!H", code) + reason.encode())


class Parser:
    """
    Parse the frames a client sends, incrementally.

    Call :meth:`feed` with bytes as they arrive from the socket; it returns
    the events they complete. Set ``max_size`` to the largest message, in
    bytes, to accept; a larger one fails the connection with 1009. A
    compressed message is held to it twice: by its bytes on the wire and by
    its bytes once inflated. ``inflater`` is the permessage-deflate decoder
    negotiated for the connection, if any.

    Memory stays close to what the caller lets through: a message in
    progress takes about its own size however it is fragmented, and
    ``feed(data, max_events)`` stops parsing once it has that many events,
    keeping the rest of ``data`` unparsed (and uninflated) in
    :attr:`backlog` until :meth:`feed` is called again.

    After a :class:`Close` or a :class:`Failure`, the parser yields
    nothing but the client's close frame, so that the closing handshake can
    still complete cleanly.

    """

    __slots__ = (
        "max_size", "inflater", "closed", "failed", "stopped", "_buffer", "_start", "_opcode",
        "_remaining", "_mask", "_offset", "_fin", "_control", "_message_opcode", "_parts",
        "_small", "_small_size", "_size", "_wire", "_compressed", "_decoder",
)

    def __init__(self, max_size: int | None = None, inflater: Deflate | None = None) -> None:
        self.max_size = max_size
        self.inflater = inflater
        # Bytes received and not parsed yet: an incomplete frame header, or
        # what was left when feed() stopped at a limit; from _start.
        self._buffer = b""
        self._start = 0
        # The frame whose payload is being read: opcode, bytes still to read,
        # mask, position in the payload (for the mask), fin flag.
        self._opcode: int | None = None
        self._remaining = 0
        self._mask = b""
        self._offset = 0
        self._fin = False
        self._control: list[bytes] = []  # payload of a control frame split across reads
        # The data message being assembled: its parts so far (decoded, for
        # text), parts under _SMALL bytes waiting in _small to be joined
        # into one (so that a million 1-byte fragments take a megabyte, not
        # a million objects), its size once inflated, its size on the wire.
        self._message_opcode: int | None = None
        self._compressed = False
        # (Parts are str for text, bytes for binary: Any, as their joins
        # below are typed by the message's opcode, which mypy can't follow.)
        self._parts: list[Any] = []
        self._small: list[Any] = []
        self._small_size = 0
        self._size = 0
        self._wire = 0
        self._decoder: codecs.IncrementalDecoder | None = None
        # Once failed or closed, only a close frame is reported.
        self.failed = False
        self.closed = False
        #: Whether the last :meth:`feed` stopped at one of its limits, with
        #: complete frames left unparsed in :attr:`backlog`.
        self.stopped = False

    @property
    def backlog(self) -> int:
        """How many bytes were received and are not parsed yet."""
        return len(self._buffer) - self._start

    # Reading.

    def feed(
        self, data: bytes = b"", max_events: int | None = None, max_frames: int | None = None
    ) -> list[Event]:
        """
        Consume ``data`` and return the events it completes, in order.

        Set ``max_events`` to stop once that many events are returned
        (messages, pings...), and ``max_frames`` to stop after that many
        frames: the bytes after the frame where it stops are kept, unparsed,
        and parsed first by the next call (``feed()`` with no data resumes);
        :attr:`stopped` tells that it stopped.

        """
        events: list[Event] = []
        buffer = self._buffer
        if buffer:
            position = self._start
            if data:
                data = buffer[position:] + data
                position = 0
            else:
                data = buffer
            self._buffer, self._start = b"", 0
        else:
            position = 0
        self.stopped = False
        if self.closed:
            return events
        end = len(data)
        limit = _NO_LIMIT if max_events is None else max_events
        frames = _NO_LIMIT if max_frames is None else max_frames
        while position < end and not self.closed:
            if self._opcode is None:
                if len(events) >= limit or frames <= 0:
                    # The caller has no room for more, or no more time: keep
                    # the rest as it is.
                    self._buffer, self._start = data, position
                    self.stopped = True
                    break
                frames -= 1
                if self._message_opcode is None and not self.failed:
                    stop = self._read_whole_frame(data, position, end, events)
                    if stop:
                        position = stop
                        continue
                stop = self._read_header(data, position, end, events)
                if stop < 0:
                    # An incomplete header: wait for the rest of it.
                    self._buffer, self._start = data[position:], 0
                    break
                position = stop
            else:
                position = self._read_payload(data, position, end, events)
        return events

    def _read_whole_frame(self, data: bytes, position: int, end: int, events: list[Event]) -> int:
        """
        Parse an uncompressed, unfragmented, masked message under 64 KiB that
        is all in ``data``: the common case, without per-chunk bookkeeping.

        Returns where the frame ends, or 0 to let the general path handle it.

        """
        first = data[position]
        if first != 0x81 and first != 0x82 or end - position < 6:
            return 0
        size = data[position + 1] ^ 0x80  # 0x80 is the mask bit
        if size < 126:
            start = position + 6
        elif size == 126 and end - position >= 8:
            size = _unpack_H(data, position + 2)[0]
            start = position + 8
        else:
            return 0  # unmasked, or 64-bit length: the general path decides
        stop = start + size
        if stop > end or self.max_size is not None and size > self.max_size:
            return 0
        payload = unmask(data[start:stop], data[start - 4 : start])
        if first == 0x82:
            events.append(payload)
        else:
            try:
                events.append(payload.decode())
            except UnicodeDecodeError:
                return 0
        return stop

    def _read_header(self, data: bytes, position: int, end: int, events: list[Event]) -> int:
        """Read a frame header; return where its payload starts, or -1 if it is incomplete."""
        if end - position < 2:
            return -1
        first = data[position]
        second = data[position + 1]
        size = second & 0x7F
        start = position + 2
        if size == 126:
            start += 2
        elif size == 127:
            start += 8
        if second & 0x80:
            start += 4
        if end < start:
            return -1
        if size == 126:
            size = _unpack_H(data, position + 2)[0]
        elif size == 127:
            size = _unpack_Q(data, position + 2)[0]
        opcode = first & 0x0F
        self._opcode = opcode
        self._fin = bool(first & 0x80)
        self._remaining = size
        self._mask = data[start - 4 : start] if second & 0x80 else b""
        self._offset = 0
        if not self.failed:
            try:
                self._check_header(first, second, opcode, size)
            except ProtocolError as exc:
                self._fail(exc, events)
        if size == 0:
            self._end_frame(b"", events)
        return start

    def _check_header(self, first: int, second: int, opcode: int, size: int) -> None:
        if not second & 0x80:
            raise ProtocolError(1002, "client frames must be masked")
        if size >= 1 << 63:
            raise ProtocolError(1002, "the most significant bit of a 64-bit length must be 0")
        if opcode in CONTROL_OPCODES:
            if first & 0x70:
                raise ProtocolError(1002, "reserved bits must be 0 in control frames")
            if not first & 0x80:
                raise ProtocolError(1002, "control frames must not be fragmented")
            if size > 125:
                raise ProtocolError(1002, "control frame payload over 125 bytes")
            return
        if opcode not in DATA_OPCODES:
            raise ProtocolError(1002, f"reserved opcode {opcode:#x}")
        if first & 0x30:
            raise ProtocolError(1002, "reserved bits RSV2 and RSV3 must be 0")
        if opcode == OP_CONTINUATION:
            if self._message_opcode is None:
                raise ProtocolError(1002, "continuation frame without a message to continue")
            if first & 0x40:
                raise ProtocolError(1002, "RSV1 set on a continuation frame")
        else:
            if self._message_opcode is not None:
                raise ProtocolError(1002, "new message started before the previous one ended")
            if first & 0x40 and self.inflater is None:
                raise ProtocolError(1002, "RSV1 set but no extension was negotiated")
            self._message_opcode = opcode
            self._compressed = bool(first & 0x40)
            self._size = self._wire = 0
            if opcode == OP_TEXT:
                self._decoder = _Utf8Decoder()
        # Compressed or not, a message's bytes on the wire count against the
        # limit: a client cannot send more than max_size bytes of a message,
        # even bytes that inflate to nothing.
        self._wire += size
        if self.max_size is not None and self._wire > self.max_size:
            raise ProtocolError(1009, f"message over {self.max_size} bytes")

    def _read_payload(self, data: bytes, position: int, end: int, events: list[Event]) -> int:
        count = min(self._remaining, end - position)
        chunk = data[position : position + count]
        if self._mask:
            offset = self._offset % 4
            mask = self._mask[offset:] + self._mask[:offset] if offset else self._mask
            chunk = unmask(chunk, mask)
        self._remaining -= count
        self._offset += count
        position += count
        if self._remaining:
            if self._opcode in CONTROL_OPCODES:
                # Control payloads are at most 125 bytes, except in a failed
                # connection, where nothing is checked: keep what fits.
                if self._offset - count < 125:
                    self._control.append(chunk)
            elif not self.failed:
                try:
                    self._add_data(chunk)
                except ProtocolError as exc:
                    self._fail(exc, events)
        else:
            if self._control:
                self._control.append(chunk)
                chunk = b"".join(self._control)[:125]
                self._control = []
            self._end_frame(chunk, events)
        return position

    def _end_frame(self, chunk: bytes, events: list[Event]) -> None:
        opcode = self._opcode
        self._opcode = None
        try:
            if opcode == OP_CLOSE:
                self._close(chunk, events)
            elif self.failed:
                return
            elif opcode == OP_PING:
                events.append(Ping(chunk))
            elif opcode == OP_PONG:
                return  # any data answers a keepalive ping: nothing to report
            else:
                self._add_data(chunk)
                if self._fin:
                    events.append(self._end_message())
        except ProtocolError as exc:
            self._fail(exc, events)

    def _add_data(self, chunk: bytes) -> None:
        if self._compressed:
            chunk = self._inflate(chunk)
        else:
            self._size += len(chunk)
        self._append(chunk)

    def _append(self, chunk: bytes) -> None:
        part: bytes | str = chunk
        if self._decoder is not None:
            try:
                part = self._decoder.decode(chunk)
            except UnicodeDecodeError:
                raise ProtocolError(1007, "invalid UTF-8 in a text message") from None
        if not part:
            return
        if len(part) >= _SMALL:
            if self._small:
                self._join_small()
            self._parts.append(part)
            return
        small = self._small
        small.append(part)
        self._small_size += len(part)
        if self._small_size >= _SMALL:
            self._join_small()
        elif len(small) >= 32:
            # Keep few objects, even for 1-byte parts.
            self._small = [part[:0].join(small)]

    def _join_small(self) -> None:
        small = self._small
        self._parts.append(small[0][:0].join(small))
        self._small = []
        self._small_size = 0

    def _inflate(self, chunk: bytes) -> bytes:
        limit = 0 if self.max_size is None else self.max_size - self._size + 1
        assert self.inflater is not None  # a compressed frame was accepted
        data = self.inflater.decompress(chunk, limit)
        self._count_inflated(data)
        return data

    def _count_inflated(self, data: bytes) -> None:
        self._size += len(data)
        if self.max_size is not None and self._size > self.max_size:
            raise ProtocolError(1009, f"message over {self.max_size} bytes once decompressed")

    def _end_message(self) -> str | bytes:
        if self._compressed:
            limit = 0 if self.max_size is None else self.max_size - self._size + 1
            assert self.inflater is not None  # a compressed frame was accepted
            tail = self.inflater.end_message(limit)
            self._count_inflated(tail)
            self._append(tail)
        if self._decoder is not None:
            try:
                self._decoder.decode(b"", True)  # a truncated character raises
            except UnicodeDecodeError:
                raise ProtocolError(1007, "invalid UTF-8 in a text message") from None
        if self._small:
            self._join_small()
        parts = self._parts
        message: str | bytes
        if len(parts) == 1:
            message = parts[0]
        elif self._message_opcode == OP_TEXT:
            message = "".join(parts)
        else:
            message = b"".join(parts)
        self._message_opcode = None
        self._compressed = False
        self._decoder = None
        self._parts = []
        return message

    def _close(self, payload: bytes, events: list[Event]) -> None:
        self.closed = True
        if len(payload) < 2:
            if len(payload) == 1 and not self.failed:
                raise ProtocolError(1002, "close frame with a 1-byte payload")
            events.append(Close(1005, ""))
            return
        code = _unpack_H(payload)[0]
        if self.failed:
            # The connection is being failed: the close frame ends it,
            # whatever it says.
            events.append(Close(code, ""))
            return
        if not check_close_code(code):
            raise ProtocolError(1002, f"invalid close code {code}")
        try:
            reason = payload[2:].decode()
        except UnicodeDecodeError:
            raise ProtocolError(1007, "invalid UTF-8 in a close reason") from None
        events.append(Close(code, reason))

    def _fail(self, exc: ProtocolError, events: list[Event]) -> None:
        # Report the error, drop the message in progress, and from now on
        # parse frames only to find the client's close frame.
        events.append(Failure(exc.code, exc.reason))
        self.failed = True
        self._message_opcode = None
        self._compressed = False
        self._decoder = None
        self._parts = []
        self._small = []
        self._small_size = 0
        if self.closed:
            # The client's close frame itself was invalid: it was received
            # all the same, so the closing handshake can end.
            events.append(Close(1005, ""))
