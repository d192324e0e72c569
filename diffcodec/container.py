"""The .dfc container: byte layout, writing, and defensive parsing.

All integers are little-endian; ``varint`` is an unsigned LEB128 varint (:mod:`diffcodec.varint`:
7 bits a byte, low group first, minimal).  A file is a header followed by one chunk per coded
step.  This describes version 8; what earlier versions differ in follows each table.

Header::

    offset  size  field
    0       8     magic  b"\\x89DFC\\r\\n\\x1a\\n"  (PNG-style: catches text-mode mangling)
    8       1     version (8; 2, 3, 4, 5, 6 and 7 are read, see below; version 1 is refused with a
                  message naming it)
    9       v     header body length B (varint, at most 65536)
    9+v     B     header body (below)
    9+v+B   4     CRC-32 of bytes 8 .. 9+v+B

Header body::

    varint width, varint height     1 .. 16384 each, at most 2**26 pixels
    u8  mode                        0 = L, 1 = RGB, 2 = P (palette), 3 = 1 (bilevel)
    32  model fingerprint           SHA-256 digest of the prior (see checkpoint.py)
    u8  schedule                    0 = linear, 1 = cosine (must match the model)
    varint num_timesteps            T of the model's chain (1 .. 65535)
    varint K, then K varints        the chain's timesteps, strictly increasing, < T: the first,
                                    then each one's difference from the one before (>= 1);
                                    timesteps[-1] is x_T, timesteps[0] the last latent
    u64 seed                        shared randomness (x_T, dithers, PFR candidates)
    varint tile                     side-information tile size in pixels (0 = whole image)
    u8  symmetry                    the network is averaged over this many of the square's
                                    symmetries (1, 2, 4 or 8: diffcodec.unet.forward_symmetrised)
    varint symmetry_max_t           only the network calls at timesteps t <= this are averaged
                                    (the steps whose KL the x_0 error dominates); the others are
                                    plain calls.  65535: every call
    varint num_chunks               chunks the encoder wrote (fewer than K + 1 means lossy)
    u32 checksum                    CRC-32 of the original pixels (mode-native bytes)
    varint P, then P bytes          palette (RGB triples) for mode P, else P = 0

Chunk (one per coded step, in order)::

    u8  kind                        1 = UQ latent step, 2 = PFR latent step,
                                    3 = final (x_0) step, 4 = final step, channel-predicted,
                                    5 = UQ step, channel-predicted, 6 = UQ step, context
                                    (checkerboard), 7 = final step, context, 8 = UQ step,
                                    texture classes, 9 = final step, texture classes,
                                    10 = UQ step, neighbourhood (2 x 2 phases), 11 = final
                                    step, neighbourhood, 12 = PFR latent step, spectral
                                    (kinds.ChunkKind)
    varint N                        payload length, at most 2**30
    varint ideal                    the step's KL (latent) or decoder NLL (final) under the
                                    model's analytic variances, in eighths of a bit
                                    (informational)
    N   coder payload               documented in diffcodec/coders/{uq,pfr,spectral,final,chanpred}.py
    u32 CRC-32 of (u16 index) + kind .. payload, index = 0, 1, 2, ... the chunk's place (not
                                    stored: a chunk out of place fails its CRC)

Version 7 (read, never written) is version 8 without chunk kind 12, version 6 version 7
without kinds 10 and 11, version 5 version 6
without kinds 8 and 9 (a file holding a kind its version does not have is refused).  Versions 2-4 (read, never written) use fixed-width fields: the body length is a u32; width and
height u32; T, K, the timesteps (absolute), tile, symmetry_max_t, num_chunks and P u16; a chunk
is u8 kind, u16 index, u32 N' (= 4 + payload length), f32 ideal bits, the payload, and the
CRC-32 of kind .. payload; the coders' payloads hold u32 lengths and counts and one range coder
per channel or pass (their modules say how).  Version 4 is version 5's fields so; version 3 has
no symmetry_max_t (read as 65535); version 2 no symmetry byte either (read as 1).

A file cut inside a chunk parses up to the last complete chunk and reports ``truncated``; a
complete chunk whose CRC fails, a bad magic, version or header raises :class:`FormatError`.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field

from .errors import FormatError
from .kinds import SYMMETRIES, ChunkKind, ImageMode
from .varint import Truncated, read_uvarint, uvarint

MAGIC = b"\x89DFC\r\n\x1a\n"
VERSION = 8
READ_VERSIONS = (2, 3, 4, 5, 6, 7, 8)  # 2: no symmetry field; 3: no symmetry_max_t; 2-4: fixed-width fields
COMPACT = 5  # the first version with varint fields and one range coder per step payload
ALL_TIMESTEPS = 0xFFFF  # symmetry_max_t of a chain whose every network call is symmetrised
#: The header body's fields after the timesteps, per version: seed, tile, [symmetry,
#: [symmetry_max_t,]] num_chunks, checksum, palette length.
_TAILS = {2: "<QHHIH", 3: "<QHBHIH", 4: "<QHBHHIH"}
SCHEDULE_IDS = {"linear": 0, "cosine": 1}
MODES = tuple(m.value for m in ImageMode)
MAX_SIDE = 16384
MAX_PIXELS = 2**26  # the format's limit
# What a decoder accepts unless told otherwise: decoding spends memory per pixel (a 12-megapixel
# photo decodes within ~4 GB), so a small file must not be able to claim more than this.
DEFAULT_MAX_PIXELS = 25_000_000
MAX_HEADER = 65536
MAX_PAYLOAD = 2**30
_CHUNK_HEAD = struct.Struct("<BHI")  # versions 2-4: kind, index, length of (ideal + payload)


@dataclass
class Header:
    width: int
    height: int
    mode: str
    fingerprint: bytes
    schedule: str
    num_timesteps: int
    timesteps: tuple[int, ...]
    seed: int
    tile: int = 0
    num_chunks: int = 0
    checksum: int = 0
    palette: bytes = b""
    symmetry: int = 1
    symmetry_max_t: int = ALL_TIMESTEPS
    version: int = field(default=VERSION, compare=False)  # the layout it was read from (to_bytes writes VERSION)

    @property
    def compact(self) -> bool:
        """The coders' payloads have version 5's layouts (varints, one range coder per step)."""
        return self.version >= COMPACT

    def symmetry_at(self, t: int) -> int:
        """The self-ensemble of the network call at (original) timestep ``t``."""
        return self.symmetry if t <= self.symmetry_max_t else 1

    @property
    def num_latent_steps(self) -> int:
        return len(self.timesteps) - 1

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def validate(self) -> None:
        if not (1 <= self.width <= MAX_SIDE and 1 <= self.height <= MAX_SIDE) or self.pixels > MAX_PIXELS:
            raise FormatError(f"implausible image size {self.width}x{self.height}")
        if self.mode not in MODES:
            raise FormatError(f"unknown image mode {self.mode!r}")
        if len(self.fingerprint) != 32:
            raise FormatError("bad model fingerprint")
        if self.schedule not in SCHEDULE_IDS or not 1 <= self.num_timesteps <= 65535:
            raise FormatError("bad schedule in header")
        ts = self.timesteps
        if len(ts) < 2 or any(b <= a for a, b in zip(ts, ts[1:])) or ts[-1] >= self.num_timesteps or ts[0] < 0:
            raise FormatError("bad coded timesteps in header")
        if not (self.tile == 0 or 8 <= self.tile <= MAX_SIDE):
            raise FormatError(f"bad tile size {self.tile}")
        if self.symmetry not in SYMMETRIES:
            raise FormatError(f"bad network symmetry {self.symmetry} (one of {SYMMETRIES})")
        if not 0 <= self.symmetry_max_t <= ALL_TIMESTEPS:
            raise FormatError(f"bad symmetry_max_t {self.symmetry_max_t}")
        if self.num_chunks > self.num_latent_steps + 1:
            raise FormatError("header announces more chunks than coded steps")
        if (self.mode == "P") != (len(self.palette) > 0) or len(self.palette) % 3 or len(self.palette) > 768:
            raise FormatError("bad palette")

    def to_bytes(self) -> bytes:
        """The header in the current version's layout (whatever version it was read from)."""
        self.validate()
        ts = self.timesteps
        body = uvarint(self.width) + uvarint(self.height) + bytes([MODES.index(self.mode)]) + self.fingerprint
        body += bytes([SCHEDULE_IDS[self.schedule]]) + uvarint(self.num_timesteps) + uvarint(len(ts))
        body += b"".join(uvarint(d) for d in (ts[0],) + tuple(b - a for a, b in zip(ts, ts[1:])))
        body += struct.pack("<Q", self.seed) + uvarint(self.tile) + bytes([self.symmetry])
        body += uvarint(self.symmetry_max_t) + uvarint(self.num_chunks) + struct.pack("<I", self.checksum)
        body += uvarint(len(self.palette)) + self.palette
        head = bytes([VERSION]) + uvarint(len(body)) + body
        return MAGIC + head + struct.pack("<I", zlib.crc32(head))


@dataclass
class Chunk:
    kind: ChunkKind
    index: int
    ideal_bits: float  # stored in eighths of a bit (a f32 before version 5)
    payload: bytes  # the coder's payload
    version: int = field(default=VERSION, compare=False)  # the layout it was read in (to_bytes writes VERSION)

    def _head(self) -> bytes:
        """kind, payload length and ideal eighths of a bit: the current layout's bytes before
        the payload."""
        ideal = float(self.ideal_bits)
        eighths = round(8 * min(ideal, 2.0**57)) if math.isfinite(ideal) and ideal > 0 else 0
        return bytes([int(self.kind)]) + uvarint(len(self.payload)) + uvarint(eighths)

    def to_bytes(self) -> bytes:
        body = self._head() + self.payload
        return body + struct.pack("<I", _chunk_crc(self.index, body))

    @property
    def size(self) -> int:
        """Its bytes in the file (in the layout it was read in), without copying the payload."""
        if self.version < COMPACT:
            return _CHUNK_HEAD.size + 4 + 4 + len(self.payload)
        return len(self._head()) + len(self.payload) + 4


def _chunk_crc(index: int, body) -> int:
    return zlib.crc32(body, zlib.crc32(struct.pack("<H", index & 0xFFFF)))


@dataclass
class Parsed:
    header: Header
    chunks: list[Chunk] = field(default_factory=list)
    truncated: bool = False
    header_size: int = 0


def parse(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Parsed:
    """Parse a .dfc file (possibly truncated).  Raises FormatError on anything else wrong,
    and on images of more than ``max_pixels`` pixels before anything is allocated for them."""
    data = memoryview(bytes(data))
    if len(data) < len(MAGIC) or bytes(data[:len(MAGIC)]) != MAGIC:
        raise FormatError("not a .dfc file (bad magic)")
    pos = len(MAGIC)
    if len(data) < pos + 5:
        raise FormatError("file truncated inside the header")
    version = data[pos]
    if version == 1:
        raise FormatError(".dfc version 1 (diffcodec 0.1) is no longer read: decode it with diffcodec 0.1, "
                          "or encode the original again")
    if version not in READ_VERSIONS:
        raise FormatError(f".dfc version {version} is not supported (this decoder reads {READ_VERSIONS})")
    if version >= COMPACT:
        try:
            body_len, start = read_uvarint(data, pos + 1, "header length", MAX_HEADER)
        except Truncated:
            raise FormatError("file truncated inside the header") from None
    else:
        (body_len,) = struct.unpack_from("<I", data, pos + 1)
        start = pos + 5
        if body_len > MAX_HEADER:
            raise FormatError("implausible header length")
    end = start + body_len
    if len(data) < end + 4:
        raise FormatError("file truncated inside the header")
    (crc,) = struct.unpack_from("<I", data, end)
    if zlib.crc32(data[pos:end]) != crc:
        raise FormatError("header is corrupt (CRC mismatch)")
    header = _parse_header_body(bytes(data[start:end]), version)
    if header.pixels > max_pixels:
        raise FormatError(f"image of {header.width}x{header.height} = {header.pixels / 1e6:.1f} megapixels is above "
                          f"the limit of {max_pixels / 1e6:.1f} (raise it with --max-pixels)")
    out = Parsed(header, header_size=end + 4)
    pos = end + 4
    read_chunk = _read_chunk if version >= COMPACT else _read_chunk_v4
    while pos < len(data):
        if len(out.chunks) >= header.num_chunks:
            raise FormatError("trailing data after the last chunk")
        chunk, pos = read_chunk(data, pos, len(out.chunks), header)
        if chunk is None:
            out.truncated = True
            break
        out.chunks.append(chunk)
    if len(out.chunks) < header.num_chunks:
        out.truncated = True
    return out


def _check_kind(kind: int, index: int, header: Header) -> ChunkKind:
    if kind not in set(ChunkKind):
        raise FormatError(f"chunk {index} is of unknown kind")
    kind = ChunkKind(kind)
    if header.version < kind.since:
        raise FormatError(f"chunk {index} is of a kind that format version {header.version} does not have")
    if kind.is_final != (index == header.num_latent_steps):
        raise FormatError(f"chunk {index} has the wrong kind")
    return kind


def _read_chunk(data: memoryview, pos: int, index: int, header: Header) -> tuple[Chunk | None, int]:
    """The version-5 chunk at ``pos`` (None if the data ends inside it) and the position after it."""
    try:
        n, p = read_uvarint(data, pos + 1, f"length of chunk {index}", MAX_PAYLOAD)
        eighths, p = read_uvarint(data, p, f"ideal bits of chunk {index}", 2**61)
    except Truncated:
        return None, pos
    if len(data) - p < n + 4:
        return None, pos
    (crc,) = struct.unpack_from("<I", data, p + n)
    if _chunk_crc(index, data[pos:p + n]) != crc:
        raise FormatError(f"chunk {index} is corrupt or out of place (CRC mismatch)")
    kind = _check_kind(data[pos], index, header)
    return Chunk(kind, index, eighths / 8.0, bytes(data[p:p + n])), p + n + 4


def _read_chunk_v4(data: memoryview, pos: int, index: int, header: Header) -> tuple[Chunk | None, int]:
    """A chunk of versions 2-4 (fixed-width framing)."""
    if len(data) - pos < _CHUNK_HEAD.size:
        return None, pos
    kind, stored, n = _CHUNK_HEAD.unpack_from(data, pos)
    if n > MAX_PAYLOAD or n < 4:
        raise FormatError(f"chunk {index} has an implausible length")
    if len(data) - pos < _CHUNK_HEAD.size + n + 4:
        return None, pos
    (crc,) = struct.unpack_from("<I", data, pos + _CHUNK_HEAD.size + n)
    if zlib.crc32(data[pos:pos + _CHUNK_HEAD.size + n]) != crc:
        raise FormatError(f"chunk {index} is corrupt (CRC mismatch)")
    if stored != index:
        raise FormatError(f"chunk {index} is out of order")
    kind = _check_kind(kind, index, header)
    (ideal,) = struct.unpack_from("<f", data, pos + _CHUNK_HEAD.size)
    body = bytes(data[pos + _CHUNK_HEAD.size + 4:pos + _CHUNK_HEAD.size + n])
    return Chunk(kind, index, ideal, body, header.version), pos + _CHUNK_HEAD.size + n + 4


def _parse_header_body(body: bytes, version: int = VERSION) -> Header:
    if version >= COMPACT:
        header = _parse_compact_body(body, version)
    else:
        header = _parse_fixed_body(body, version)
    header.validate()
    return header


def _parse_compact_body(body: bytes, version: int) -> Header:
    try:
        width, p = read_uvarint(body, 0, "width")  # u32: validate() names an implausible size
        height, p = read_uvarint(body, p, "height")
        if len(body) < p + 34:
            raise Truncated("header body is truncated")
        mode, fp, sched = body[p], body[p + 1:p + 33], body[p + 33]
        T, p = read_uvarint(body, p + 34, "num_timesteps", 65535)
        k, p = read_uvarint(body, p, "number of timesteps", 65535)
        ts, t = [], -1
        for i in range(k):
            d, p = read_uvarint(body, p, "timestep", 65535)
            t = d if i == 0 else t + d
            ts.append(t)
        if len(body) < p + 9:
            raise Truncated("header body is truncated")
        (seed,) = struct.unpack_from("<Q", body, p)
        tile, p = read_uvarint(body, p + 8, "tile", 65535)
        if len(body) < p + 1:
            raise Truncated("header body is truncated")
        symmetry = body[p]
        symmetry_max_t, p = read_uvarint(body, p + 1, "symmetry_max_t", ALL_TIMESTEPS)
        nchunks, p = read_uvarint(body, p, "num_chunks", 65535)
        if len(body) < p + 4:
            raise Truncated("header body is truncated")
        (checksum,) = struct.unpack_from("<I", body, p)
        npal, p = read_uvarint(body, p + 4, "palette length", MAX_HEADER)
    except Truncated:
        raise FormatError("header is truncated or malformed") from None
    palette = body[p:p + npal]
    if len(palette) != npal or p + npal != len(body):
        raise FormatError("header body has the wrong length")
    return _header(width, height, mode, fp, sched, T, ts, seed, tile, nchunks, checksum, palette, symmetry,
                   symmetry_max_t, version)


def _header(width, height, mode, fp, sched, T, ts, seed, tile, nchunks, checksum, palette, symmetry,
            symmetry_max_t, version) -> Header:
    if mode >= len(MODES):
        raise FormatError(f"unknown image mode {mode}")
    schedules = {v: k for k, v in SCHEDULE_IDS.items()}
    if sched not in schedules:
        raise FormatError("unknown schedule in header")
    return Header(width, height, MODES[mode], bytes(fp), schedules[sched], T, tuple(ts), seed, tile, nchunks,
                  checksum, bytes(palette), symmetry, symmetry_max_t, version)


def _parse_fixed_body(body: bytes, version: int) -> Header:
    try:
        width, height, mode = struct.unpack_from("<IIB", body, 0)
        fp = body[9:41]
        sched, T, k = struct.unpack_from("<BHH", body, 41)
        ts = struct.unpack_from(f"<{k}H", body, 46)
        pos = 46 + 2 * k
        fields = list(struct.unpack_from(_TAILS[version], body, pos))
        if version == 2:  # no symmetry byte: the plain network
            fields.insert(2, 1)
        if version <= 3:  # the symmetry (if any) served every network call
            fields.insert(3, ALL_TIMESTEPS)
        seed, tile, symmetry, symmetry_max_t, nchunks, checksum, npal = fields
        pos += struct.calcsize(_TAILS[version])
        palette = body[pos:pos + npal]
        if len(palette) != npal or pos + npal != len(body):
            raise FormatError("header body has the wrong length")
    except struct.error:
        raise FormatError("header is truncated or malformed") from None
    return _header(width, height, mode, fp, sched, T, ts, seed, tile, nchunks, checksum, palette, symmetry,
                   symmetry_max_t, version)
