"""The compact fields of format version 5: LEB128 varints (diffcodec.varint: exact bytes, one
encoding per value, bounds, truncation told apart from damage) and bit-packed side information
(diffcodec.sideinfo.pack_fields: exact bits, round trips, hostile blocks refused)."""

from __future__ import annotations

import numpy as np
import pytest

from diffcodec.errors import FormatError
from diffcodec.sideinfo import pack_fields, unpack_fields
from diffcodec.varint import U32_MAX, Truncated, read_uvarint, uvarint


@pytest.mark.parametrize("value,data", [
    (0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (128, b"\x80\x01"), (300, b"\xac\x02"),
    (16383, b"\xff\x7f"), (16384, b"\x80\x80\x01"), (U32_MAX, b"\xff\xff\xff\xff\x0f"),
])
def test_known_bytes(value, data):
    assert uvarint(value) == data
    assert read_uvarint(b"\xaa" + data + b"\x55", 1, "x") == (value, 1 + len(data))


def test_round_trip_and_lengths():
    rng = np.random.default_rng(0)
    values = [int(v) for v in rng.integers(0, 2**40, 2000)] + [2**k for k in range(64)] + [2**k - 1 for k in range(1, 65)]
    for v in values:
        data = uvarint(v)
        assert len(data) == max(1, -(-v.bit_length() // 7))  # 7 bits a byte, minimal
        assert read_uvarint(data, 0, "x", 2**64 - 1) == (v, len(data))
    with pytest.raises(ValueError):
        uvarint(-1)
    with pytest.raises(ValueError):
        uvarint(2**64)


def test_bounds_and_damage():
    with pytest.raises(FormatError, match=r"implausible x \(70000 > 65535\)"):
        read_uvarint(uvarint(70000), 0, "x", 65535)
    with pytest.raises(FormatError, match="longer than 3 bytes"):  # 65535 needs at most 3 bytes
        read_uvarint(b"\x80\x80\x80\x01", 0, "x", 65535)
    with pytest.raises(FormatError, match="not minimally encoded"):
        read_uvarint(b"\x81\x00", 0, "x")
    assert read_uvarint(b"\x00", 0, "x") == (0, 1)  # a lone zero byte is minimal
    for cut in (b"", b"\x80", b"\xff\xff"):
        with pytest.raises(Truncated, match="ends inside the x"):
            read_uvarint(cut, 0, "x")
    assert issubclass(Truncated, FormatError)


def test_packed_fields_exact_bits():
    # 129 in 8 bits; differences -1, +2, 0 zigzag to 1, 4, 0; order-2 exp-Golomb writes z + 4 =
    # 5, 8, 4 after (bit length - 3) zeros: 101, 01000, 100; the next field's 7 in 8 bits; padding
    assert pack_fields([bytes([129, 128, 130, 130]), b"", bytes([7])]) == \
        int("10000001" "101" "01000" "100" "00000111" "00000", 2).to_bytes(4, "big")
    assert pack_fields([b"", b""]) == b""
    fields, used = unpack_fields(pack_fields([bytes([129, 128, 130, 130]), b"", bytes([7])]) + b"\xff", [4, 0, 1])
    assert fields == [bytes([129, 128, 130, 130]), b"", bytes([7])] and used == 4


def test_packed_fields_round_trip():
    rng = np.random.default_rng(1)
    for _ in range(300):
        sizes = [int(n) for n in rng.integers(0, 40, int(rng.integers(1, 4)))]
        if rng.random() < 0.5:  # smooth codes, as tiles give
            fields = [bytes(np.clip(128 + np.cumsum(rng.integers(-4, 5, n)), 0, 255).astype(np.uint8)) for n in sizes]
        else:  # anything
            fields = [bytes(rng.integers(0, 256, n, dtype=np.uint8)) for n in sizes]
        data = pack_fields(fields)
        assert unpack_fields(data + bytes(5), sizes) == (fields, len(data))
    smooth = bytes([150 + (i % 3) for i in range(96)])
    assert len(pack_fields([smooth])) < len(smooth) / 2  # what it is for


def test_packed_fields_refuse_hostile_blocks():
    with pytest.raises(FormatError, match="shorter than its widths"):
        unpack_fields(b"\x80", [5], "widths")  # five codes need at least 8 + 4 x 3 bits
    with pytest.raises(FormatError, match="overlong code"):
        unpack_fields(b"\x80" + bytes(8), [2], "widths")  # a prefix of 64 zeros
    with pytest.raises(FormatError, match="outside 0..255"):
        unpack_fields(bytes([255]) + bytes([0b01100000]), [2], "widths")  # 255 + 2
    with pytest.raises(FormatError, match="ends inside"):
        unpack_fields(bytes([0, 0b00000001]), [2], "widths")  # a prefix that runs off the end
