"""
The permessage-deflate extension (RFC 7692), server side.

:func:`negotiate` picks the first offer in a client's
``Sec-WebSocket-Extensions`` header that the server can honour and returns
the response header with a :class:`Deflate` for the connection. The parser
inflates received messages through it, and :func:`~django_websocket.protocol.encode_message`
compresses the ones the server sends.

zlib contexts are created on first use and dropped when a message ends
without context takeover, so an idle connection costs no zlib memory.

"""

from __future__ import annotations

import zlib

from .exceptions import ProtocolError

__all__ = ["Deflate", "negotiate", "parse_extensions"]

# The empty stored block that ends every compressed message (RFC 7692 7.2.1).
_TAIL = b"\x00\x00\xff\xff"

# Bytes tolerated after the end of a DEFLATE stream, in the same message.
_MAX_AFTER_END = 4

# Window and memory sizes for the server's compressor, and for the client's
# when the client lets the server choose: 4 KiB windows and memLevel 5 keep
# a compressing connection around 40 KiB instead of 300 KiB, for most of the
# compression of the defaults on chat-sized messages.
SERVER_MAX_WINDOW_BITS = 12
CLIENT_MAX_WINDOW_BITS = 12
MEM_LEVEL = 5


class Deflate:
    """
    The permessage-deflate state of one connection.

    ``*_no_context_takeover`` reset the matching context after every
    message; ``*_window_bits`` size the LZ77 windows. Messages shorter than
    ``min_size`` bytes are sent uncompressed, which RFC 7692 allows.

    """

    def __init__(
        self,
        *,
        server_no_context_takeover: bool = False,
        client_no_context_takeover: bool = False,
        server_window_bits: int = SERVER_MAX_WINDOW_BITS,
        client_window_bits: int = 15,
        min_size: int = 32,
    ) -> None:
        self.server_no_context_takeover = server_no_context_takeover
        self.client_no_context_takeover = client_no_context_takeover
        self.server_window_bits = server_window_bits
        self.client_window_bits = client_window_bits
        self.min_size = min_size
        self._compressor: zlib._Compress | None = None
        self._decompressor: zlib._Decompress | None = None
        self._after_end = 0  # bytes of the message after the end of its DEFLATE stream

    # Receiving.

    def decompress(self, data: bytes, max_length: int = 0) -> bytes:
        """
        Inflate part of a message; at most ``max_length`` bytes unless 0.

        Raises:
            ProtocolError: 1007, the data is not valid DEFLATE, or more than
                a few bytes follow the end of a DEFLATE stream (``BFINAL``).

        """
        decompressor = self._decompressor
        if decompressor is None:
            decompressor = self._decompressor = zlib.decompressobj(-self.client_window_bits)
        elif decompressor.eof:
            # zlib would keep appending these to unused_data, copying it
            # whole on every call: count them, and keep nothing.
            self._after_end += len(data)
            self._check_after_end()
            return b""
        try:
            inflated = decompressor.decompress(data, max_length)
        except zlib.error as exc:
            raise ProtocolError(1007, f"invalid compressed data: {exc}") from None
        if decompressor.eof:
            self._after_end = len(decompressor.unused_data)
            self._check_after_end()
        return inflated

    def _check_after_end(self) -> None:
        # A sender may end a message with a final block (BFINAL) instead of
        # an empty stored one (RFC 7692 section 7.2.3.4): the example there
        # leaves one byte behind. More is not a DEFLATE stream.
        if self._after_end > _MAX_AFTER_END:
            raise ProtocolError(1007, "invalid compressed data: bytes after the end of the stream")

    def end_message(self, max_length: int = 0) -> bytes:
        """
        Inflate the end of a message; forget the context if the client resets it.

        Returns what the empty block the sender removed from the end of the
        message flushes out, at most ``max_length`` bytes unless 0.

        """
        decompressor = self._decompressor
        tail = b""
        if decompressor is not None and not decompressor.eof:
            # RFC 7692 7.2.2: the sender removed this empty block's tail.
            tail = self.decompress(_TAIL, max_length)
        if self.client_no_context_takeover or (
            decompressor is not None and decompressor.eof
        ):
            # A client may also end the deflate stream (BFINAL): start anew.
            self._decompressor = None
        self._after_end = 0
        return tail

    # Sending.

    def compress(self, data: bytes) -> bytes:
        """Deflate a whole message, without the tail RFC 7692 removes."""
        compressor = self._compressor
        if compressor is None:
            compressor = self._compressor = zlib.compressobj(
                zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -self.server_window_bits, MEM_LEVEL
            )
        compressed = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
        if self.server_no_context_takeover:
            self._compressor = None
        return compressed[:-4] if compressed.endswith(_TAIL) else compressed


def parse_extensions(header: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """
    Parse a ``Sec-WebSocket-Extensions`` header.

    Returns ``(name, [(parameter, value or None), ...])`` for each offer, in
    order. Quoted values are unquoted.

    """
    offers: list[tuple[str, list[tuple[str, str | None]]]] = []
    for item in header.split(","):
        parts = [part.strip() for part in item.split(";")]
        if not parts[0]:
            continue
        parameters: list[tuple[str, str | None]] = []
        for part in parts[1:]:
            if not part:
                continue
            name, equals, value = part.partition("=")
            parameters.append((name.strip().lower(), value.strip().strip('"') if equals else None))
        offers.append((parts[0].lower(), parameters))
    return offers


def _window_bits(value: str | None) -> int | None:
    # isdigit() alone is true for "¹²", which int() refuses: two ASCII digits
    # at most (int() also refuses more than 4300 digits).
    if value is None or not (len(value) <= 2 and value.isascii() and value.isdigit()):
        return None
    bits = int(value)
    return bits if 8 <= bits <= 15 else None


def _accept(parameters: list[tuple[str, str | None]]) -> tuple[str, Deflate] | None:
    """Answer one permessage-deflate offer, or return None to decline it."""
    seen = set()
    server_no_context_takeover = client_no_context_takeover = False
    server_bits = client_bits = None
    client_bits_offered = False
    for name, value in parameters:
        if name in seen:
            return None  # RFC 7692 7: a repeated parameter invalidates the offer
        seen.add(name)
        if name == "server_no_context_takeover" and value is None:
            server_no_context_takeover = True
        elif name == "client_no_context_takeover" and value is None:
            client_no_context_takeover = True
        elif name == "server_max_window_bits":
            server_bits = _window_bits(value)
            # zlib cannot deflate with an 8-bit window: decline such offers.
            if server_bits is None or server_bits == 8:
                return None
        elif name == "client_max_window_bits":
            client_bits_offered = True
            if value is not None:
                client_bits = _window_bits(value)
                if client_bits is None:
                    return None
        else:
            return None  # unknown parameter
    response = ["permessage-deflate"]
    if server_no_context_takeover:
        response.append("server_no_context_takeover")
    if client_no_context_takeover:
        response.append("client_no_context_takeover")
    if server_bits is not None:
        response.append(f"server_max_window_bits={server_bits}")
    client_window_bits = 15
    if client_bits_offered:
        client_window_bits = min(client_bits or 15, CLIENT_MAX_WINDOW_BITS)
        response.append(f"client_max_window_bits={client_window_bits}")
    deflate = Deflate(
        server_no_context_takeover=server_no_context_takeover,
        client_no_context_takeover=client_no_context_takeover,
        server_window_bits=min(server_bits or 15, SERVER_MAX_WINDOW_BITS),
        client_window_bits=client_window_bits,
    )
    return "; ".join(response), deflate


def negotiate(header: str) -> tuple[str, Deflate] | None:
    """
    Accept the first permessage-deflate offer of a client that can be honoured.

    Returns the ``Sec-WebSocket-Extensions`` response value and the
    :class:`Deflate` of the connection, or :obj:`None` when no offer fits:
    the connection then runs without compression.

    """
    for name, parameters in parse_extensions(header):
        if name == "permessage-deflate":
            accepted = _accept(parameters)
            if accepted is not None:
                return accepted
    return None
