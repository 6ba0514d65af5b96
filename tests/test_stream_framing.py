"""TURN's framing on a byte stream (RFC 8656 §12.5): split, coalesced and garbage reads."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voip.wire.stream_framing import MAX_FRAME
from voip.wire.stream_framing import FramingError
from voip.wire.stream_framing import StreamDeframer
from voip.wire.stream_framing import StreamFramer
from voip.wire.stream_framing import frame_channel_data
from voip.wire.stun import Class
from voip.wire.stun import Message
from voip.wire.stun import Method
from voip.wire.stun import encode
from voip.wire.stun import parse_message_untrusted
from voip.wire.turn import pack_channel_data
from voip.wire.turn import parse_channel_data_untrusted

BINDING = encode(Message(Method.BINDING, Class.REQUEST), fingerprint=True)  # 28 bytes
VOICE = frame_channel_data(0x4001, bytes(range(170)))  # 170 bytes: 2 of padding on a stream


def test_channel_data_on_a_stream_is_padded_to_four_bytes_and_the_padding_dropped() -> None:
    assert len(VOICE) == 4 + 172 and VOICE[-2:] == b"\x00\x00"
    assert VOICE[:4] == bytes.fromhex("400100aa")  # channel 0x4001, length 170 (unpadded)
    [frame] = StreamDeframer().feed(VOICE)
    assert parse_channel_data_untrusted(frame) == (0x4001, bytes(range(170)))


def test_coalesced_frames_come_out_one_by_one_in_order() -> None:
    stream = BINDING + VOICE + BINDING + frame_channel_data(0x4FFF, b"")
    frames = StreamDeframer().feed(stream)
    assert frames == [BINDING, VOICE[:174], BINDING, bytes.fromhex("4fff0000")]
    assert parse_message_untrusted(frames[0]).method == Method.BINDING


def test_a_frame_split_across_many_reads_comes_out_once_whole() -> None:
    d = StreamDeframer()
    out = []
    for i in range(len(VOICE)):  # one byte a read: the header itself split too
        out += d.feed(VOICE[i : i + 1])
        assert (out == []) is (i < len(VOICE) - 1)
    assert out == [VOICE[:174]] and d.pending == 0


@given(st.lists(st.integers(min_value=0, max_value=40), max_size=30))
def test_any_way_of_cutting_the_stream_gives_the_same_frames(cuts: list[int]) -> None:
    stream = (BINDING + VOICE) * 3
    d, out, at = StreamDeframer(), [], 0
    for cut in cuts:
        out += d.feed(stream[at : at + cut])
        at += cut
    out += d.feed(stream[at:])
    assert out == [BINDING, VOICE[:174]] * 3 and d.pending == 0


@pytest.mark.parametrize(
    "garbage",
    [
        b"POST / HTTP/1.1\r\n\r\n",  # someone's HTTP on port 443 ("GE" would pass as a channel)
        bytes.fromhex("8000000c") + bytes(16),  # RTP-ish first byte
        bytes.fromhex("0001000c") + bytes(16),  # STUN header without the magic cookie
        bytes.fromhex("0001000d2112a442") + bytes(12),  # a length that is not a multiple of 4
        bytes.fromhex("5000000400000000"),  # a channel number outside 0x4000-0x4FFF
    ],
)
def test_garbage_breaks_that_stream_for_good(garbage: bytes) -> None:
    d = StreamDeframer()
    assert d.feed(BINDING) == [BINDING]  # what came before it still counts
    with pytest.raises(FramingError):
        d.feed(garbage + BINDING)
    with pytest.raises(FramingError):  # no resynchronising: the connection is closed
        d.feed(BINDING)
    assert StreamDeframer().feed(BINDING) == [BINDING]  # another connection is unaffected


def test_a_stream_never_holds_more_than_one_frame_and_a_read() -> None:
    d = StreamDeframer()
    big = frame_channel_data(0x4000, bytes(65535))
    assert len(big) <= MAX_FRAME + 4
    for i in range(0, len(big), 1000):
        d.feed(big[i : i + 1000])
        assert d.pending <= len(big)
    assert d.pending == 0


@given(st.binary(max_size=200))
def test_hostile_bytes_raise_only_the_framing_error(data: bytes) -> None:
    with contextlib.suppress(FramingError):
        StreamDeframer().feed(data)


def test_the_framer_pads_channel_data_made_for_udp_and_passes_stun_as_it_is() -> None:
    framer = StreamFramer()
    udp_voice = pack_channel_data(0x4001, bytes(range(170)))  # as the core sends it over UDP
    assert framer.frame(udp_voice) == VOICE
    answer = encode(Message(Method.BINDING, Class.SUCCESS), fingerprint=True)
    assert framer.frame(answer) == answer
    assert framer.frame(answer) == answer  # answers and indications are never held back


def test_the_framer_sends_a_request_once_the_stream_carries_it_reliably() -> None:
    framer = StreamFramer()
    assert framer.frame(BINDING) == BINDING
    assert framer.frame(BINDING) is None  # the core's retransmission: TCP does that (§6.2.2)
    other = encode(Message(Method.BINDING, Class.REQUEST), fingerprint=True)
    assert framer.frame(other) == other  # another transaction


def test_the_framer_forgets_old_transactions_so_its_memory_is_bounded() -> None:
    framer = StreamFramer()
    first = encode(Message(Method.BINDING, Class.REQUEST))
    assert framer.frame(first) == first
    for _ in range(StreamFramer.SENT_IDS):
        framer.frame(encode(Message(Method.BINDING, Class.REQUEST)))
    assert framer.frame(first) == first  # long gone from the table: sent as new


@pytest.mark.parametrize(
    "data",
    [b"", b"\x40\x01", bytes.fromhex("40010010") + b"short", b"\x80" + bytes(30), b"\x00" * 10],
    ids=["empty", "header cut", "length beyond the data", "RTP", "short STUN"],
)
def test_the_framer_refuses_what_would_break_the_stream(data: bytes) -> None:
    assert StreamFramer().frame(data) is None
