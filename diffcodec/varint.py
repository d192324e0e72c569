"""Unsigned LEB128 varints: the .dfc format's lengths and counts from version 5 on.

A value is written 7 bits at a time, least significant group first, the high bit of each byte
set when another byte follows: 0..127 take one byte, up to 16383 two, a u32 at most five.
Readers take a bound and refuse anything longer or larger than it (no value a hostile file
gives can ask for more than the bound), and a non-minimal encoding (a trailing 0x80 0x00), so
that every value has exactly one byte string.
"""

from __future__ import annotations

from .errors import FormatError

U32_MAX = 2**32 - 1


def uvarint(value: int) -> bytes:
    """The LEB128 bytes of ``0 <= value < 2**64``."""
    if not 0 <= value < 2**64:
        raise ValueError(f"varint out of range: {value}")
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def read_uvarint(data, pos: int, what: str, limit: int = U32_MAX) -> tuple[int, int]:
    """(value, position after it) of the varint at ``pos``; FormatError naming ``what`` if the
    data ends inside it (:class:`Truncated`), it is not minimal, or it exceeds ``limit``."""
    value, shift, start = 0, 0, pos
    max_bytes = max(1, (limit.bit_length() + 6) // 7)
    while True:
        if pos >= len(data):
            raise Truncated(f"data ends inside the {what}")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
        if pos - start >= max_bytes:
            raise FormatError(f"implausible {what} (a varint longer than {max_bytes} bytes)")
    if pos - start > 1 and byte == 0:
        raise FormatError(f"{what} is not minimally encoded")
    if value > limit:
        raise FormatError(f"implausible {what} ({value} > {limit})")
    return value, pos


class Truncated(FormatError):
    """The data ends inside a varint (a cut file, where the container reports truncation)."""
