"""The .dfc container: byte layout, writing, and defensive parsing.

All integers are little-endian.  A file is a header followed by one chunk per coded step.

Header::

    offset  size  field
    0       8     magic  b"\\x89DFC\\r\\n\\x1a\\n"  (PNG-style: catches text-mode mangling)
    8       1     version (4; version 3 is read as symmetry_max_t = 65535, version 2 as
                  symmetry 1; version 1 is refused with a message naming it)
    9       4     header body length B (u32, at most 65536)
    13      B     header body (below)
    13+B    4     CRC-32 of bytes 8 .. 13+B

Header body::

    u32 width, u32 height           1 .. 16384 each, at most 2**26 pixels
    u8  mode                        0 = L, 1 = RGB, 2 = P (palette), 3 = 1 (bilevel)
    32  model fingerprint           SHA-256 digest of the prior (see checkpoint.py)
    u8  schedule                    0 = linear, 1 = cosine (must match the model)
    u16 num_timesteps               T of the model's chain
    u16 K, then K x u16             the chain's timesteps, strictly increasing, < T:
                                    timesteps[-1] is x_T, timesteps[0] the last latent
    u64 seed                        shared randomness (x_T, dithers, PFR candidates)
    u16 tile                        side-information tile size in pixels (0 = whole image)
    u8  symmetry                    the network is averaged over this many of the square's
                                    symmetries (1, 2, 4 or 8: diffcodec.unet.forward_symmetrised);
                                    absent in version 2 (= 1)
    u16 symmetry_max_t              only the network calls at timesteps t <= this are averaged
                                    (the steps whose KL the x_0 error dominates); the others are
                                    plain calls.  65535: every call.  Absent before version 4
                                    (= 65535)
    u16 num_chunks                  chunks the encoder wrote (fewer than K means lossy)
    u32 checksum                    CRC-32 of the original pixels (mode-native bytes)
    u16 P, then P bytes             palette (RGB triples) for mode P, else P = 0

Chunk (one per coded step, in order)::

    u8  kind                        1 = UQ latent step, 2 = PFR latent step,
                                    3 = final (x_0) step, 4 = final step, channel-predicted,
                                    5 = UQ step, channel-predicted, 6 = UQ step, context
                                    (checkerboard), 7 = final step, context (kinds.ChunkKind)
    u16 index                       0, 1, 2, ... in order; chunk K - 1 is the final step
    u32 payload length N            at most 2**30
    f32 ideal bits                  the step's KL (latent) or decoder NLL (final) under the
                                    model's analytic variances, in bits (informational)
    N-4 coder payload               documented in diffcodec/coders/{uq,pfr,final,chanpred}.py
    u32 CRC-32 of kind .. payload

A file cut inside a chunk parses up to the last complete chunk and reports ``truncated``; a
complete chunk whose CRC fails, a bad magic, version or header raises :class:`FormatError`.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from .errors import FormatError
from .kinds import SYMMETRIES, ChunkKind, ImageMode

MAGIC = b"\x89DFC\r\n\x1a\n"
VERSION = 4
READ_VERSIONS = (2, 3, 4)  # version 2: no symmetry field; version 3: no symmetry_max_t
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
_CHUNK_HEAD = struct.Struct("<BHI")


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
        self.validate()
        body = struct.pack("<IIB", self.width, self.height, MODES.index(self.mode)) + self.fingerprint
        body += struct.pack("<BHH", SCHEDULE_IDS[self.schedule], self.num_timesteps, len(self.timesteps))
        body += struct.pack(f"<{len(self.timesteps)}H", *self.timesteps)
        body += struct.pack(_TAILS[VERSION], self.seed, self.tile, self.symmetry, self.symmetry_max_t,
                            self.num_chunks, self.checksum, len(self.palette)) + self.palette
        head = struct.pack("<BI", VERSION, len(body)) + body
        return MAGIC + head + struct.pack("<I", zlib.crc32(head))


@dataclass
class Chunk:
    kind: ChunkKind
    index: int
    ideal_bits: float
    payload: bytes  # the coder's payload

    def to_bytes(self) -> bytes:
        body = struct.pack("<f", self.ideal_bits) + self.payload
        head = _CHUNK_HEAD.pack(int(self.kind), self.index, len(body)) + body
        return head + struct.pack("<I", zlib.crc32(head))

    @property
    def size(self) -> int:
        return _CHUNK_HEAD.size + 4 + 4 + len(self.payload)


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
    version, body_len = struct.unpack_from("<BI", data, pos)
    if version == 1:
        raise FormatError(".dfc version 1 (diffcodec 0.1) is no longer read: decode it with diffcodec 0.1, "
                          "or encode the original again")
    if version not in READ_VERSIONS:
        raise FormatError(f".dfc version {version} is not supported (this decoder reads {READ_VERSIONS})")
    if body_len > MAX_HEADER:
        raise FormatError("implausible header length")
    end = pos + 5 + body_len
    if len(data) < end + 4:
        raise FormatError("file truncated inside the header")
    (crc,) = struct.unpack_from("<I", data, end)
    if zlib.crc32(data[pos:end]) != crc:
        raise FormatError("header is corrupt (CRC mismatch)")
    header = _parse_header_body(bytes(data[pos + 5:end]), version)
    if header.pixels > max_pixels:
        raise FormatError(f"image of {header.width}x{header.height} = {header.pixels / 1e6:.1f} megapixels is above "
                          f"the limit of {max_pixels / 1e6:.1f} (raise it with --max-pixels)")
    out = Parsed(header, header_size=end + 4)
    pos = end + 4
    while pos < len(data):
        if len(out.chunks) >= header.num_chunks:
            raise FormatError("trailing data after the last chunk")
        if len(data) - pos < _CHUNK_HEAD.size:
            out.truncated = True
            break
        kind, index, n = _CHUNK_HEAD.unpack_from(data, pos)
        if n > MAX_PAYLOAD or n < 4:
            raise FormatError(f"chunk {len(out.chunks)} has an implausible length")
        if len(data) - pos < _CHUNK_HEAD.size + n + 4:
            out.truncated = True
            break
        (crc,) = struct.unpack_from("<I", data, pos + _CHUNK_HEAD.size + n)
        if zlib.crc32(data[pos:pos + _CHUNK_HEAD.size + n]) != crc:
            raise FormatError(f"chunk {len(out.chunks)} is corrupt (CRC mismatch)")
        if index != len(out.chunks) or kind not in set(ChunkKind):
            raise FormatError(f"chunk {len(out.chunks)} is out of order or of unknown kind")
        kind = ChunkKind(kind)
        if kind.is_final != (index == header.num_latent_steps):
            raise FormatError(f"chunk {index} has the wrong kind")
        (ideal,) = struct.unpack_from("<f", data, pos + _CHUNK_HEAD.size)
        body = bytes(data[pos + _CHUNK_HEAD.size + 4:pos + _CHUNK_HEAD.size + n])
        out.chunks.append(Chunk(kind, index, ideal, body))
        pos += _CHUNK_HEAD.size + n + 4
    if len(out.chunks) < header.num_chunks:
        out.truncated = True
    return out


def _parse_header_body(body: bytes, version: int = VERSION) -> Header:
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
    if mode >= len(MODES):
        raise FormatError(f"unknown image mode {mode}")
    schedules = {v: k for k, v in SCHEDULE_IDS.items()}
    if sched not in schedules:
        raise FormatError("unknown schedule in header")
    header = Header(width, height, MODES[mode], bytes(fp), schedules[sched], T, tuple(ts), seed,
                    tile, nchunks, checksum, bytes(palette), symmetry, symmetry_max_t)
    header.validate()
    return header
