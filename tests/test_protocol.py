"""
The frame engine, fed with client frames (``utils.frame``), without sockets.

Every stream is parsed whole, byte by byte and in random chunks: the events
must not depend on how the bytes arrive.

"""

import random
import zlib

import hypothesis
import pytest
from hypothesis import strategies as st

from django_websocket import protocol
from django_websocket.compression import Deflate
from django_websocket.protocol import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Close,
    Failure,
    Parser,
    Ping,
    check_close_code,
    encode_close,
    encode_frame,
)

from .utils import (
    CLOSE_1000,
    CLOSE_1005,
    ERROR_1002,
    ERROR_1007,
    ERROR_1009,
    MASK,
    close_frame,
    close_payload,
    describe,
    feed,
    frame,
    header,
    traced,
    xor,
)

# Parsing.


def parse_whole(data: bytes, **options) -> list:
    return feed(Parser(**options), data)


def parse_bytewise(data: bytes, **options) -> list:
    parser = Parser(**options)
    events = []
    for index in range(len(data)):
        events += feed(parser, data[index : index + 1])
    return events


def parse_chunks(data: bytes, seed: int, **options) -> list:
    rng = random.Random(seed)
    parser = Parser(**options)
    events = []
    position = 0
    while position < len(data):
        # Mostly small chunks, sometimes large ones, sometimes empty ones.
        size = rng.choice((0, 1, 2, 3, 5, 7, 13, 64, 1000, 70000))
        events += feed(parser, data[position : position + size])
        position += size
    return events


def parse_every_way(data: bytes, **options) -> list:
    """Parse ``data`` in every way; check that they agree and return the events."""
    events = parse_whole(data, **options)
    assert parse_bytewise(data, **options) == events, "byte by byte"
    for seed in range(5):
        assert parse_chunks(data, seed, **options) == events, f"random chunks, seed {seed}"
    return events


# Messages.


@pytest.mark.parametrize(
    "data, expected",
    [
        pytest.param(frame(OP_TEXT, "hello"), ["hello"], id="text"),
        pytest.param(frame(OP_BINARY, b"\x00\xff\x80"), [b"\x00\xff\x80"], id="binary"),
        pytest.param(frame(OP_TEXT, ""), [""], id="empty text"),
        pytest.param(frame(OP_BINARY, b""), [b""], id="empty binary"),
        pytest.param(frame(OP_TEXT, "κόσμε € 𝄞"), ["κόσμε € 𝄞"], id="multibyte characters"),
        pytest.param(
            frame(OP_TEXT, "a") + frame(OP_BINARY, b"b") + frame(OP_TEXT, "c"),
            ["a", b"b", "c"],
            id="several messages",
        ),
        pytest.param(frame(OP_TEXT, "x" * 125), ["x" * 125], id="125 bytes: 7-bit length"),
        pytest.param(frame(OP_TEXT, "x" * 126), ["x" * 126], id="126 bytes: 16-bit length"),
        pytest.param(
            frame(OP_BINARY, bytes(range(256)) * 255 + b"abcdefghijklmno"),
            [bytes(range(256)) * 255 + b"abcdefghijklmno"],
            id="65535 bytes: 16-bit length",
        ),
        pytest.param(
            frame(OP_BINARY, bytes(range(256)) * 256),
            [bytes(range(256)) * 256],
            id="65536 bytes: 64-bit length",
        ),
        pytest.param(
            frame(OP_TEXT, "é" * 40000), ["é" * 40000], id="80000 bytes of text: 64-bit length"
        ),
    ],
)
def test_messages(data, expected):
    assert parse_every_way(data, max_size=None) == expected


@pytest.mark.parametrize(
    "data, expected",
    [
        pytest.param(
            frame(OP_TEXT, "Hel", fin=False)
            + frame(OP_CONTINUATION, "lo ", fin=False)
            + frame(OP_CONTINUATION, "world"),
            ["Hello world"],
            id="text in three fragments",
        ),
        pytest.param(
            frame(OP_BINARY, b"", fin=False)
            + frame(OP_CONTINUATION, b"ab", fin=False)
            + frame(OP_CONTINUATION, b""),
            [b"ab"],
            id="binary with empty fragments",
        ),
        pytest.param(
            frame(OP_TEXT, "", fin=False) + frame(OP_CONTINUATION, ""),
            [""],
            id="empty text in two empty fragments",
        ),
        pytest.param(
            frame(OP_TEXT, b"\xe2", fin=False)
            + frame(OP_CONTINUATION, b"\x82", fin=False)
            + frame(OP_CONTINUATION, b"\xac"),
            ["€"],
            id="a character split across three fragments",
        ),
        pytest.param(
            frame(OP_TEXT, "Hel", fin=False)
            + frame(OP_PING, b"p1")
            + frame(OP_CONTINUATION, "lo ", fin=False)
            + frame(OP_PONG, b"p2")
            + frame(OP_PING, b"")
            + frame(OP_CONTINUATION, "world"),
            [("ping", b"p1"), ("ping", b""), "Hello world"],
            id="control frames between fragments",
        ),
        pytest.param(
            frame(OP_BINARY, b"\x01" * 70000, fin=False)
            + frame(OP_PING, b"x" * 125)
            + frame(OP_CONTINUATION, b"\x02" * 300),
            [("ping", b"x" * 125), b"\x01" * 70000 + b"\x02" * 300],
            id="large fragments",
        ),
        pytest.param(
            frame(OP_TEXT, "a", fin=False)
            + frame(OP_CONTINUATION, "b")
            + frame(OP_BINARY, b"c", fin=False)
            + frame(OP_CONTINUATION, b"d"),
            ["ab", b"cd"],
            id="one fragmented message after another",
        ),
    ],
)
def test_fragmentation(data, expected):
    assert parse_every_way(data, max_size=None) == expected


@pytest.mark.parametrize(
    "data, expected",
    [
        pytest.param(frame(OP_PING, b"hi"), [("ping", b"hi")], id="ping"),
        pytest.param(frame(OP_PING), [("ping", b"")], id="empty ping"),
        pytest.param(frame(OP_PING, b"\xff" * 125), [("ping", b"\xff" * 125)], id="125-byte ping"),
        pytest.param(frame(OP_PONG, b"hi"), [], id="pong"),
        pytest.param(frame(OP_PONG), [], id="empty pong"),
        pytest.param(frame(OP_CLOSE), [CLOSE_1005], id="close without a code"),
        pytest.param(close_frame(1000), [CLOSE_1000], id="close with a code"),
        pytest.param(close_frame(1001, "bye"), [("close", 1001, "bye")], id="close with a reason"),
        pytest.param(
            close_frame(4999, "é" * 61), [("close", 4999, "é" * 61)], id="123-byte close reason"
        ),
    ],
)
def test_control_frames(data, expected):
    assert parse_every_way(data) == expected


def random_stream(rng: random.Random) -> tuple[bytes, list]:
    """A valid stream of random messages and control frames, and its events."""
    data, expected = b"", []
    for _ in range(rng.randrange(1, 8)):
        mask = rng.randbytes(4)
        if rng.random() < 0.3:
            opcode = rng.choice((OP_PING, OP_PONG))
            payload = rng.randbytes(rng.randrange(126))
            data += frame(opcode, payload, mask=mask)
            if opcode == OP_PING:
                expected.append(("ping", payload))  # pongs are not reported
            continue
        text = rng.random() < 0.5
        if text:
            message = "".join(rng.choice("aé€𝄞") for _ in range(rng.randrange(300)))
            payload = message.encode()
        else:
            message = payload = rng.randbytes(rng.choice((0, 1, 125, 126, 1000, 66000)))
        # Cut anywhere, even inside a character: fragments are bytes.
        cuts = sorted(rng.randrange(len(payload) + 1) for _ in range(rng.randrange(4)))
        fragments = [payload[i:j] for i, j in zip([0, *cuts], [*cuts, len(payload)])]
        controls = []
        for index, fragment in enumerate(fragments):
            opcode = (OP_TEXT if text else OP_BINARY) if index == 0 else OP_CONTINUATION
            last = index == len(fragments) - 1
            data += frame(opcode, fragment, fin=last, mask=rng.randbytes(4))
            if not last and rng.random() < 0.5:
                ping = rng.randbytes(rng.randrange(10))
                data += frame(OP_PING, ping, mask=rng.randbytes(4))
                controls.append(("ping", ping))
        expected += controls + [message]
    if rng.random() < 0.5:
        code = rng.choice((1000, 1001, 3000, 4999))
        data += close_frame(code, "done")
        expected.append(("close", code, "done"))
        # Nothing after the close frame is parsed.
        data += frame(OP_TEXT, "ignored")
    return data, expected


@pytest.mark.parametrize("seed", range(40))
def test_random_streams_in_random_chunks(seed):
    rng = random.Random(seed)
    data, expected = random_stream(rng)
    assert parse_whole(data, max_size=None) == expected
    for chunk_seed in range(3):
        assert parse_chunks(data, seed * 10 + chunk_seed, max_size=None) == expected


@pytest.mark.parametrize("mask", [MASK, b"\x00" * 4, b"\xff" * 4, b"\x01\x02\x03\x04"])
def test_mask_at_every_offset(mask):
    """Split a frame at every pair of positions: the mask must restart at the right offset."""
    payload = "abcdefghij€".encode()
    data = frame(OP_TEXT, payload, mask=mask)
    for first in range(len(data) + 1):
        for second in range(first, len(data) + 1):
            parser = Parser()
            events = feed(parser, data[:first])
            events += feed(parser, data[first:second])
            events += feed(parser, data[second:])
            assert events == ["abcdefghij€"], (first, second)


def test_feed_returns_events_as_soon_as_frames_are_complete():
    parser = Parser()
    first, second = frame(OP_TEXT, "one"), frame(OP_BINARY, b"two")
    assert feed(parser, first[:-1]) == []
    assert feed(parser, first[-1:] + second[:3]) == ["one"]
    assert feed(parser, b"") == []
    assert feed(parser, second[3:]) == [b"two"]


def test_ping_between_fragments_is_reported_before_the_message_ends():
    parser = Parser()
    assert feed(parser, frame(OP_TEXT, "a", fin=False)) == []
    assert feed(parser, frame(OP_PING, b"p")) == [("ping", b"p")]
    assert feed(parser, frame(OP_CONTINUATION, "b")) == ["ab"]


# Closing.


def test_nothing_is_parsed_after_close():
    parser = Parser()
    data = frame(OP_TEXT, "before") + close_frame(1000, "bye") + frame(OP_TEXT, "after")
    assert feed(parser, data) == ["before", ("close", 1000, "bye")]
    assert parser.closed
    assert feed(parser, frame(OP_TEXT, "later")) == []
    assert feed(parser, b"\x00 not even a frame") == []


def test_close_in_the_middle_of_a_fragmented_message():
    data = frame(OP_TEXT, "never", fin=False) + close_frame(1001) + frame(OP_CONTINUATION, "end")
    assert parse_every_way(data) == [("close", 1001, "")]


@pytest.mark.parametrize(
    "code",
    [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014]
    + [3000, 3999, 4000, 4999],
)
def test_valid_close_codes(code):
    assert check_close_code(code)
    assert parse_every_way(close_frame(code, "reason")) == [("close", code, "reason")]


@pytest.mark.parametrize(
    "code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]
)
def test_invalid_close_codes(code):
    """The client's close frame is reported after the error, so that the close can complete."""
    assert not check_close_code(code)
    assert parse_every_way(close_frame(code)) == [ERROR_1002, CLOSE_1005]


def test_close_with_a_one_byte_payload():
    assert parse_every_way(frame(OP_CLOSE, b"\x03")) == [ERROR_1002, CLOSE_1005]


def test_close_reason_with_invalid_utf8():
    data = frame(OP_CLOSE, close_payload(1000, b"bad \xff reason"))
    assert parse_every_way(data) == [ERROR_1007, CLOSE_1005]


# Protocol errors: each is followed by the client's close frame, which is
# still reported, whether it comes in the same data or later.

ERRORS_1002 = [
    pytest.param(frame(OP_TEXT, "hi", mask=None), id="unmasked text frame"),
    pytest.param(frame(OP_BINARY, b"", mask=None), id="unmasked empty frame"),
    pytest.param(frame(OP_PING, b"hi", mask=None), id="unmasked ping"),
    *[
        pytest.param(frame(opcode, b"x"), id=f"reserved opcode {opcode:#x}")
        for opcode in (3, 4, 5, 6, 7)
    ],
    *[
        pytest.param(frame(opcode, b"x"), id=f"reserved control opcode {opcode:#x}")
        for opcode in (0xB, 0xC, 0xD, 0xE, 0xF)
    ],
    pytest.param(frame(OP_TEXT, "x", rsv2=True), id="RSV2 on text"),
    pytest.param(frame(OP_BINARY, b"x", rsv3=True), id="RSV3 on binary"),
    pytest.param(frame(OP_TEXT, "x", rsv1=True), id="RSV1 without extension"),
    pytest.param(frame(OP_PING, b"x", rsv1=True), id="RSV1 on ping"),
    pytest.param(frame(OP_PONG, b"x", rsv2=True), id="RSV2 on pong"),
    pytest.param(frame(OP_PING, b"x", rsv3=True), id="RSV3 on ping"),
    pytest.param(
        frame(OP_TEXT, "a", fin=False) + frame(OP_CONTINUATION, "b", rsv1=True),
        id="RSV1 on a continuation",
    ),
    pytest.param(frame(OP_CONTINUATION, "x"), id="continuation without start"),
    pytest.param(frame(OP_CONTINUATION, "x", fin=False), id="non-final continuation without start"),
    pytest.param(
        frame(OP_TEXT, "a") + frame(OP_CONTINUATION, "b"), id="continuation after a final frame"
    ),
    pytest.param(
        frame(OP_TEXT, "a", fin=False) + frame(OP_TEXT, "b"), id="new text message before end"
    ),
    pytest.param(
        frame(OP_BINARY, b"a", fin=False) + frame(OP_TEXT, "b", fin=False),
        id="new message before end",
    ),
    pytest.param(frame(OP_PING, b"x", fin=False), id="fragmented ping"),
    pytest.param(frame(OP_PONG, b"x", fin=False), id="fragmented pong"),
    pytest.param(frame(OP_PING, b"x" * 126), id="ping over 125 bytes"),
    pytest.param(frame(OP_PONG, b"x" * 1000), id="pong over 125 bytes"),
]


def events_before(data: bytes) -> list:
    """Messages the valid frames of ``data`` complete before its error."""
    return ["a"] if data.startswith(frame(OP_TEXT, "a")) else []


@pytest.mark.parametrize("data", ERRORS_1002)
def test_protocol_errors(data):
    expected = events_before(data) + [ERROR_1002, CLOSE_1000]
    # The close frame right behind the bad frame, in the same data...
    assert parse_every_way(data + close_frame(1000)) == expected
    # ... or in a later call.
    parser = Parser()
    assert feed(parser, data) == expected[:-1]
    assert feed(parser, close_frame(1000)) == [CLOSE_1000]


@pytest.mark.parametrize("data", ERRORS_1002)
def test_nothing_but_close_is_reported_after_a_protocol_error(data):
    after = (
        frame(OP_TEXT, "message")
        + frame(OP_PING, b"ping")
        + frame(OP_BINARY, b"part", fin=False)
        + frame(OP_PONG, b"pong")
        + frame(OP_CONTINUATION, b"end")
        + frame(OP_CONTINUATION, b"orphan")
        + frame(OP_TEXT, b"\xff invalid")
    )
    expected = events_before(data) + [ERROR_1002, ("close", 1001, "")]
    assert parse_every_way(data + after + close_frame(1001) + frame(OP_TEXT, "x")) == expected


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(frame(OP_CLOSE, close_payload(1000), mask=None), id="unmasked"),
        pytest.param(frame(OP_CLOSE, close_payload(1000), fin=False), id="fragmented"),
        pytest.param(frame(OP_CLOSE, close_payload(1000), rsv1=True), id="RSV1"),
        pytest.param(frame(OP_CLOSE, close_payload(1000, "x" * 124)), id="over 125 bytes"),
    ],
)
def test_malformed_close_frame_is_still_a_close(bad):
    events = parse_every_way(bad + frame(OP_TEXT, "after"))
    assert events[0] == ERROR_1002
    assert [event[0] for event in events[1:]] == ["close"]


def test_close_frame_behind_a_bad_frame_reports_its_code():
    data = frame(OP_TEXT, "oops", mask=None) + close_frame(3321, "bye")
    assert parse_every_way(data) == [ERROR_1002, ("close", 3321, "")]


def test_64_bit_length_with_the_most_significant_bit_set():
    # RFC 6455 5.2: "the most significant bit MUST be 0".
    data = bytes([0x82, 0xFF]) + (2**63 + 5).to_bytes(8, "big") + MASK
    assert parse_every_way(data, max_size=None) == [ERROR_1002]


# Invalid UTF-8.

INVALID_UTF8 = [
    pytest.param(b"\xff", id="0xff"),
    pytest.param(b"\x80", id="lone continuation byte"),
    pytest.param(b"\xc0\xaf", id="overlong"),
    pytest.param(b"\xed\xa0\x80", id="surrogate"),
    pytest.param(b"\xf4\x90\x80\x80", id="over U+10FFFF"),
    pytest.param(b"\xe2\x82(", id="truncated sequence"),
]


@pytest.mark.parametrize("invalid", INVALID_UTF8)
def test_invalid_utf8(invalid):
    data = frame(OP_TEXT, b"valid " + invalid + b" text") + close_frame(1000)
    assert parse_every_way(data) == [ERROR_1007, CLOSE_1000]


@pytest.mark.parametrize("invalid", INVALID_UTF8)
def test_invalid_utf8_fails_as_soon_as_it_is_fed(invalid):
    payload = b"caf\xc3\xa9 " + invalid + b"x" * 1000
    data = frame(OP_TEXT, payload)
    # A 16-bit length: 2 + 2 bytes, then the mask.
    start = 8 + payload.index(invalid)
    end = start + len(invalid)
    parser = Parser()
    assert feed(parser, data[:start]) == []
    # Some sequences are invalid from their first byte, others only once
    # complete: the error comes at the latest with the last invalid byte.
    events = []
    for index in range(start, end):
        events += feed(parser, data[index : index + 1])
    assert events == [ERROR_1007]
    assert feed(parser, data[end:]) == []
    assert feed(parser, close_frame(1000)) == [CLOSE_1000]


def test_invalid_utf8_across_fragments():
    # "\xe2\x82" starts a valid character; "(" cannot continue it.
    first = frame(OP_TEXT, b"ab\xe2\x82", fin=False)
    second = frame(OP_CONTINUATION, b"(" + b"x" * 500)
    parser = Parser()
    assert feed(parser, first) == []
    # Detected on the first byte of the second fragment, before it is complete.
    assert feed(parser, second[:9]) == [ERROR_1007]
    assert feed(parser, second[9:] + close_frame(1000)) == [CLOSE_1000]
    assert parse_every_way(first + second + close_frame(1000)) == [ERROR_1007, CLOSE_1000]


def test_truncated_character_at_the_end_of_a_message():
    data = frame(OP_TEXT, b"ab", fin=False) + frame(OP_CONTINUATION, b"\xe2\x82")
    assert parse_every_way(data + close_frame(1000)) == [ERROR_1007, CLOSE_1000]


def test_invalid_utf8_in_binary_is_fine():
    assert parse_every_way(frame(OP_BINARY, b"\xff\xc0")) == [b"\xff\xc0"]


# Size limit.


def test_message_at_max_size():
    assert parse_every_way(frame(OP_BINARY, b"x" * 100), max_size=100) == [b"x" * 100]
    fragments = frame(OP_TEXT, "x" * 60, fin=False) + frame(OP_CONTINUATION, "y" * 40)
    assert parse_every_way(fragments, max_size=100) == ["x" * 60 + "y" * 40]


def test_frame_over_max_size_fails_on_its_header():
    parser = Parser(max_size=100)
    assert feed(parser, header(OP_BINARY, 101)) == [ERROR_1009]
    # The client may still send the payload, then its close frame.
    assert feed(parser, b"\x00" * 101 + close_frame(1000)) == [CLOSE_1000]


def test_huge_frame_fails_on_its_header():
    parser = Parser(max_size=1024 * 1024)
    assert feed(parser, header(OP_TEXT, 2**40)) == [ERROR_1009]


def test_text_size_counts_bytes():
    # 51 characters, 102 bytes.
    assert parse_every_way(frame(OP_TEXT, "é" * 51) + close_frame(), max_size=100) == [
        ERROR_1009,
        CLOSE_1000,
    ]


def test_fragmented_message_over_max_size_fails_on_the_header_that_exceeds_it():
    parser = Parser(max_size=100)
    assert feed(parser, frame(OP_TEXT, "x" * 60, fin=False)) == []
    assert feed(parser, header(OP_CONTINUATION, 30, fin=False)) == []
    assert feed(parser, xor(b"y" * 30, MASK)) == []
    assert feed(parser, header(OP_CONTINUATION, 11)) == [ERROR_1009]
    assert feed(parser, xor(b"z" * 11, MASK) + close_frame(1000)) == [CLOSE_1000]


def test_max_size_applies_to_each_message():
    data = frame(OP_BINARY, b"x" * 100) + frame(OP_BINARY, b"y" * 100)
    assert parse_every_way(data, max_size=100) == [b"x" * 100, b"y" * 100]


def test_control_frames_ignore_max_size():
    assert parse_every_way(frame(OP_PING, b"x" * 125), max_size=10) == [("ping", b"x" * 125)]


def test_no_size_limit():
    assert parse_every_way(frame(OP_BINARY, b"x" * 200000), max_size=None) == [b"x" * 200000]



def test_tiny_fragments_take_about_the_size_of_the_message():
    # A binary message that never ends, sent as 1-byte continuation frames:
    # memory grows by a byte per byte, not by a bytes object per fragment.
    size = 64 * 1024
    data = frame(OP_BINARY, b"x", fin=False)
    data += frame(OP_CONTINUATION, b"y", fin=False) * (size - 1)
    parser = Parser(max_size=1024 * 1024)

    def parse():
        for position in range(0, len(data), 16384):
            assert parser.feed(data[position : position + 16384]) == []

    _, current, peak = traced(parse)
    assert current < 2 * size
    assert peak < 3 * size


def test_text_in_tiny_fragments():
    text = "κόσμε € 𝄞" * 100
    encoded = text.encode()
    data = frame(OP_TEXT, encoded[:1], fin=False)
    data += b"".join(
        frame(OP_CONTINUATION, encoded[i : i + 1], fin=False) for i in range(1, len(encoded))
    )
    data += frame(OP_CONTINUATION, b"")
    assert parse_every_way(data) == [text]


# Parsing only as many messages as there is room for.


def test_feed_stops_after_max_events():
    data = frame(OP_TEXT, "one") + frame(OP_PING, b"p")
    data += frame(OP_TEXT, "two") + frame(OP_TEXT, "3")
    parser = Parser()
    assert feed_limited(parser, data, 1) == ["one"]
    assert parser.stopped
    assert parser.backlog == len(data) - len(frame(OP_TEXT, "one"))
    # Resuming with no new data parses what was kept, first.
    assert feed_limited(parser, b"", 2) == [("ping", b"p"), "two"]
    assert feed_limited(parser, frame(OP_BINARY, b"4"), 5) == ["3", b"4"]
    assert not parser.stopped
    assert parser.backlog == 0


def test_feed_stops_after_max_frames():
    data = frame(OP_TEXT, "a", fin=False) + frame(OP_PING, b"p") + frame(OP_CONTINUATION, "b")
    data += close_frame()
    parser = Parser()
    assert [describe(event) for event in parser.feed(data, None, 2)] == [("ping", b"p")]
    assert parser.stopped
    # The rest comes with the next call, even with no new data.
    assert [describe(event) for event in parser.feed(b"", None, 2)] == ["ab", CLOSE_1000]
    assert not parser.stopped
    assert parser.backlog == 0


def test_feed_stops_after_a_fragmented_message():
    data = frame(OP_TEXT, "a", fin=False) + frame(OP_CONTINUATION, "b") + frame(OP_BINARY, b"c")
    parser = Parser()
    assert feed_limited(parser, data, 1) == ["ab"]
    assert feed_limited(parser, b"", 1) == [b"c"]


def test_feed_with_room_for_none_parses_nothing():
    parser = Parser()
    data = frame(OP_TEXT, "one")
    assert feed_limited(parser, data, 0) == []
    assert parser.backlog == len(data)
    assert feed_limited(parser, b"", 1) == ["one"]


def test_an_incomplete_header_is_kept_until_the_rest_comes():
    parser = Parser()
    data = frame(OP_BINARY, b"x" * 300)
    assert feed_limited(parser, data[:3], 1) == []
    assert parser.backlog == 3
    assert feed_limited(parser, data[3:], 1) == [b"x" * 300]
    assert parser.backlog == 0


def feed_limited(parser: Parser, data: bytes, max_events: int) -> list:
    return [describe(event) for event in parser.feed(data, max_events)]


# Property-based: whatever the bytes, the parser reports protocol errors as
# events, never raises, never holds more than its limits allow, and reads
# back what a client writes however it is fragmented, compressed and cut.

EVENT_TYPES = (str, bytes, Ping, Close, Failure)


def check_feed(
    parser: Parser, data: bytes, max_events: int | None = None, max_frames: int | None = None
) -> list:
    events = parser.feed(data, max_events, max_frames)
    for event in events:
        assert type(event) in EVENT_TYPES, event
        if type(event) in (str, bytes) and parser.max_size is not None:
            size = len(event.encode()) if type(event) is str else len(event)
            assert size <= parser.max_size
    # A message in progress is held in about its size, within the limit.
    if parser.max_size is not None:
        held = sum(len(part) for part in parser._parts) + parser._small_size
        assert held <= parser.max_size
    if not parser.stopped:
        assert parser.backlog < 14  # an incomplete header, at most
    return events


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(
    data=st.binary(max_size=4096),
    cuts=st.lists(st.integers(min_value=0, max_value=4096), max_size=8),
    compressed=st.booleans(),
    max_size=st.sampled_from([None, 0, 1, 100, 1000]),
)
def test_fuzz_arbitrary_bytes(data, cuts, compressed, max_size):
    parser = Parser(max_size, Deflate() if compressed else None)
    events = []
    position = 0
    for cut in sorted(cuts) + [len(data)]:
        events += check_feed(parser, data[position:cut])
        position = max(position, cut)
    closes = [index for index, event in enumerate(events) if type(event) is Close]
    # Nothing comes after the client's close frame.
    assert closes in ([], [len(events) - 1])


@st.composite
def client_stream(draw):
    """Messages, and the bytes a client sends for them: fragmented, compressed or not, masked."""
    compressed = draw(st.booleans())
    compressor = zlib.compressobj(wbits=-15) if compressed else None
    messages = draw(
        st.lists(st.one_of(st.text(max_size=300), st.binary(max_size=300)), max_size=6)
    )
    stream = b""
    for message in messages:
        opcode = OP_TEXT if isinstance(message, str) else OP_BINARY
        payload = message.encode() if isinstance(message, str) else message
        rsv1 = compressed and draw(st.booleans())
        if rsv1:
            payload = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
            payload = payload[:-4]
        cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=4)))
        pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)])]
        for index, piece in enumerate(pieces):
            if draw(st.booleans()):
                stream += frame(OP_PING, b"ping")  # control frames between fragments
            stream += frame(
                opcode if index == 0 else OP_CONTINUATION,
                piece,
                fin=index == len(pieces) - 1,
                rsv1=rsv1 and index == 0,
                mask=draw(st.binary(min_size=4, max_size=4)),
            )
    return compressed, messages, stream


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(
    stream=client_stream(),
    chunk=st.integers(min_value=1, max_value=400),
    room=st.one_of(st.none(), st.integers(min_value=1, max_value=3)),
    frames=st.one_of(st.none(), st.integers(min_value=1, max_value=5)),
)
def test_fuzz_round_trip(stream, chunk, room, frames):
    compressed, messages, data = stream
    parser = Parser(1000, Deflate() if compressed else None)
    events = []
    for position in range(0, len(data), chunk):
        events += check_feed(parser, data[position : position + chunk], room, frames)
        while parser.stopped:
            events += check_feed(parser, b"", room, frames)
    assert parser.backlog == 0
    assert [event for event in events if type(event) is not Ping] == messages


# Encoding server frames.


@pytest.mark.parametrize(
    "size, length_bytes",
    [
        (0, bytes([0])),
        (1, bytes([1])),
        (125, bytes([125])),
        (126, bytes([126, 0, 126])),
        (65535, bytes([126, 0xFF, 0xFF])),
        (65536, bytes([127, 0, 0, 0, 0, 0, 1, 0, 0])),
        (70000, bytes([127]) + (70000).to_bytes(8, "big")),
    ],
)
def test_encode_frame_lengths(size, length_bytes):
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    data = encode_frame(OP_BINARY, payload)
    # Final, binary, unmasked: a server never masks.
    assert data == bytes([0x82]) + length_bytes + payload


def test_encode_frame_opcode_and_flags():
    assert encode_frame(OP_TEXT, b"hi") == b"\x81\x02hi"
    assert encode_frame(OP_PONG, b"") == b"\x8a\x00"
    assert encode_frame(OP_BINARY, b"z", rsv1=True) == b"\xc2\x01z"


def test_encode_close():
    assert encode_close(1000) == b"\x88\x02\x03\xe8"
    assert encode_close(1001, "bye") == b"\x88\x05\x03\xe9bye"
    assert encode_close(4000, "é") == b"\x88\x04\x0f\xa0\xc3\xa9"
    assert encode_close(None) == b"\x88\x00"


def test_encoded_close_parses_back():
    # Masked as a client would, the server's close frame means the same.
    data = encode_close(1011, "oops ✓")
    masked = bytes([data[0], data[1] | 0x80]) + MASK + xor(data[2:], MASK)
    assert parse_every_way(masked) == [("close", 1011, "oops ✓")]


# Unmasking.


@pytest.mark.skipif(protocol.apply_mask is None, reason="websockets.speedups is not available")
@pytest.mark.parametrize("size", [*range(0, 20), 125, 126, 1000, 65536 + 3])
def test_unmask_fallback_matches_accelerated(size):
    rng = random.Random(size)
    for mask in (MASK, b"\x00" * 4, b"\xff" * 4, rng.randbytes(4)):
        data = rng.randbytes(size)
        expected = xor(data, mask)
        assert protocol._unmask_python(data, mask) == expected
        assert protocol.apply_mask(data, mask) == expected
        assert protocol.unmask(data, mask) == expected
