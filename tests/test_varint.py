"""LEB128 varints of the .dfc format (diffcodec.varint): exact bytes, one encoding per value,
bounds, and truncation told apart from damage."""

from __future__ import annotations

import numpy as np
import pytest

from diffcodec.errors import FormatError
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
