"""
permessage-deflate: negotiation, and the bounds that hold however well a client's data compresses.

The client side (``utils.compressed_frame``) is written with zlib directly,
independently of the code under test.

"""

import zlib

import pytest

from django_websocket.compression import Deflate, negotiate
from django_websocket.protocol import OP_BINARY, OP_CONTINUATION, OP_TEXT, Parser

from .utils import (
    CLOSE_1000,
    ERROR_1007,
    ERROR_1009,
    TAIL,
    close_frame,
    compress,
    compressed_frame,
    feed,
    frame,
    traced,
)

MiB = 1024 * 1024


def parser(max_size: int | None = MiB, **options) -> Parser:
    return Parser(max_size, Deflate(**options))


# Negotiation.


@pytest.mark.parametrize(
    "offer, response",
    [
        ("permessage-deflate", "permessage-deflate"),
        (
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; client_max_window_bits=12",
        ),
        (
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        ),
        (
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; server_max_window_bits=10",
        ),
        # The first offer that can be honoured wins.
        (
            "permessage-deflate; server_max_window_bits=8, permessage-deflate",
            "permessage-deflate",
        ),
        (
            'permessage-deflate; client_max_window_bits="9"',
            "permessage-deflate; client_max_window_bits=9",
        ),
    ],
)
def test_negotiate(offer, response):
    accepted, deflate = negotiate(offer)
    assert accepted == response
    assert isinstance(deflate, Deflate)


@pytest.mark.parametrize(
    "offer",
    [
        "",
        "x-webkit-deflate-frame",
        "permessage-deflate; unknown",
        "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; client_max_window_bits=7",
        # Digits that str.isdigit() accepts and int() refuses (latin-1 bytes
        # as WSGI decodes them): the offer is declined, not a 500.
        "permessage-deflate; client_max_window_bits=\xb9\xb2",
        "permessage-deflate; server_max_window_bits=\xb9\xb2",
        "permessage-deflate; client_max_window_bits=١٠",
    ],
)
def test_offers_declined(offer):
    assert negotiate(offer) is None


# Receiving.


def test_compressed_messages_with_context_takeover():
    compressor = zlib.compressobj(wbits=-15)
    data = b"".join(compressed_frame(OP_TEXT, f"message {n} " * 20, compressor) for n in range(3))
    assert feed(parser(), data) == [f"message {n} " * 20 for n in range(3)]


def test_compressed_message_in_fragments():
    compressed = compress(b"x" * 5000)
    data = frame(OP_BINARY, compressed[:3], fin=False, rsv1=True)
    data += frame(OP_CONTINUATION, compressed[3:5], fin=False)
    data += frame(OP_CONTINUATION, compressed[5:])
    assert feed(parser(), data) == [b"x" * 5000]


def test_message_ending_with_a_final_block():
    # RFC 7692 section 7.2.3.4: a sender may end a message with BFINAL
    # instead of a sync flush; the example leaves one byte after the end.
    hello = bytes([0xF3, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00, 0x00])
    data = frame(OP_TEXT, hello, rsv1=True) + compressed_frame(OP_TEXT, "again")
    assert feed(parser(), data) == ["Hello", "again"]


def test_data_after_the_end_of_the_stream_fails_the_connection():
    # A final empty block ends the stream: zlib keeps whatever follows in a
    # buffer it copies on every call. 1007 after a few bytes, not 1 MiB.
    p = parser(max_size=None)
    assert feed(p, frame(OP_BINARY, b"\x03\x00", rsv1=True, fin=False)) == []
    events = feed(p, frame(OP_CONTINUATION, b"\x00" * 64, fin=False))
    assert events == [ERROR_1007]
    assert feed(p, frame(OP_CONTINUATION, b"\x00" * 65536) + close_frame()) == [CLOSE_1000]


def test_data_after_the_end_of_the_stream_in_one_frame():
    data = frame(OP_BINARY, b"\x03\x00" + b"\x00" * 1000, rsv1=True) + close_frame()
    assert feed(parser(), data) == [ERROR_1007, CLOSE_1000]


def test_invalid_compressed_data():
    data = frame(OP_BINARY, b"\xff\xff\xff\xff", rsv1=True) + close_frame()
    assert feed(parser(), data) == [ERROR_1007, CLOSE_1000]


def test_inflated_size_is_limited():
    # 2 MiB of zeros compress to about 2 KiB: refused once inflated past the limit.
    data = compressed_frame(OP_BINARY, bytes(2 * MiB)) + close_frame()
    assert feed(parser(max_size=MiB), data) == [ERROR_1009, CLOSE_1000]


def test_inflated_size_at_the_limit():
    data = compressed_frame(OP_BINARY, bytes(MiB))
    assert feed(parser(max_size=MiB), data) == [bytes(MiB)]


def test_compressed_size_on_the_wire_is_limited():
    # Incompressible data: the message's frames are refused on the header
    # that takes its bytes on the wire past the limit, before they arrive.
    p = parser(max_size=1000)
    first = compressed_frame(OP_BINARY, b"x" * 10, fin=False)
    assert feed(p, first) == []
    assert feed(p, frame(OP_CONTINUATION, bytes(2000))[:14]) == [ERROR_1009]


def test_stored_blocks_count_on_the_wire_even_if_they_inflate_to_nothing():
    # Empty stored blocks (5 bytes each) inflate to nothing: without a limit
    # on the wire, a client could send them forever.
    p = parser(max_size=1000)
    first = frame(OP_BINARY, b"\x00\x00\x00\xff\xff" * 100, rsv1=True, fin=False)
    assert feed(p, first) == []
    second = frame(OP_CONTINUATION, b"\x00\x00\x00\xff\xff" * 101)
    assert feed(p, second + close_frame()) == [ERROR_1009, CLOSE_1000]


def test_parsing_stops_before_inflating_what_the_caller_has_no_room_for():
    # Sixty 1 MiB messages of zeros, about 1 KiB each on the wire, in one
    # read: with room for one, one is inflated, the rest waits compressed.
    compressor = zlib.compressobj(wbits=-15)
    data = b"".join(compressed_frame(OP_BINARY, bytes(MiB), compressor) for _ in range(60))
    assert len(data) < 128 * 1024
    p = parser(max_size=MiB)

    def first():
        return p.feed(data, 1)

    events, _, peak = traced(first)
    assert events == [bytes(MiB)]
    assert peak < 3 * MiB
    assert 0 < p.backlog < len(data)
    # The rest comes, one message at a time, as room is made.
    count = 1
    while p.backlog:
        assert p.feed(b"", 1) == [bytes(MiB)]
        count += 1
    assert count == 60


# Sending.


def test_deflate_round_trip_with_a_client_decompressor():
    deflate = Deflate()
    decompressor = zlib.decompressobj(-15)
    for n in range(5):
        message = f"message {n} ".encode() * 100
        assert decompressor.decompress(deflate.compress(message) + TAIL) == message


def test_server_no_context_takeover_resets_the_compressor():
    deflate = Deflate(server_no_context_takeover=True)
    first = deflate.compress(b"hello hello hello")
    assert deflate.compress(b"hello hello hello") == first
