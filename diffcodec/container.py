"""The .dfc container: byte layout, writing, and defensive parsing.

All integers are little-endian.  A file is a header followed by one chunk per coded step.

Header::

    offset  size  field
    0       8     magic  b"\\x89DFC\\r\\n\\x1a\\n"  (PNG-style: catches text-mode mangling)
    8       1     version (1)
    9       4     header body length B (u32, at most 65536)
    13      B     header body (below)
    13+B    4     CRC-32 of bytes 8 .. 13+B

Header body::

    u32 width, u32 height           1 .. 16384 each, at most 2**26 pixels
    u8  mode                        0 = L, 1 = RGB, 2 = P (palette), 3 = 1 (bilevel)
    32  model fingerprint           SHA-256 digest of the prior (see checkpoint.py)
    u8  schedule                    0 = linear, 1 = cosine (must match the model)
    u16 num_timesteps               T of the model's chain
    u16 K, then K x u16             the chain's coded timesteps, strictly increasing, < T;
                                    timesteps[-1] is x_T, timesteps[0] the last latent
    u64 seed                        shared randomness (dither, x_T)
    u8  method                      0 = universal quantization (UQ), 1 = chunked PFR,
                                    2 = per step (each latent payload names its own)
    u16 tile                        side-information tile size in pixels (0 = whole image)
    u16 num_chunks                  chunks the encoder wrote (fewer than K means lossy)
    u32 checksum                    CRC-32 of the original pixels (mode-native bytes)
    u16 P, then P bytes             palette (RGB triples) for mode P, else P = 0

Chunk (repeated)::

    u8  kind                        1 = latent step, 2 = final (x_0) step,
                                    3 = final step with channel prediction (RGB)
    u16 index                       0, 1, 2, ... in order
    u32 payload length N            at most 2**30
    N   payload
    u32 CRC-32 of kind .. payload

Step payload (the final step, and latent steps of method 0 = UQ)::

    f32 ideal_bits                  the step's KL (or decoder NLL) under the model, in bits
    i32 lo, i32 hi                  symbol range of the entropy coder (hi - lo < 2**20)
    u32 S, then S x u8              scale codes (side information, one per tile per channel)
    rest                            range-coded symbols (multiple of 4 bytes)

Final step payload of kind 3 (channel-predicted, see diffcodec/final.py)::

    f32 ideal_bits                  the decoder NLL under the model, in bits
    u32 S, then S x u8              scale codes (one per tile per channel)
    u32 P, then P x u8              predictor codes (a, b, c per tile): coefficient = (code - 128) / 32
    3 x (u32 W, W bytes)            range-coded symbols of channel 0, 1, 2 (multiples of 4 bytes)

Latent step payload of method 2 = per step::

    u8  step method                 0 = UQ, 1 = PFR
    rest                            that method's latent step payload (above or below)

Latent step payload of method 1 = PFR (see diffcodec/pfr.py for the math)::

    f32 ideal_bits                  the step's KL under the model, in bits
    u8  chunk_bits                  1 .. 20: target KL per chunk in bits
    u8  margin                      0 .. 7: search margin; every n* < 2**H,
                                    H = chunk_bits + margin + 4
    u8  offset code, u8 std code    index model: b ~ N(e + (offset - 128) / 8, (std / 16)^2) on
                                    [0, H], e = the chunk's expected KL in bits; std code >= 1
    u32 S, then S x u8              kappa codes (prior width, one per tile per channel)
    u32 W, then W bytes             range-coded b = floor(log2(n* + 1)), one per chunk in the
                                    layout's order (multiple of 4 bytes)
    rest                            raw bits: the b low bits of n* + 1 of each chunk in turn,
                                    most significant first, zero-padded to a whole byte

A file cut inside a chunk parses up to the last complete chunk and reports ``truncated``; a
complete chunk whose CRC fails, a bad magic, version or header raises :class:`FormatError`.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from .errors import FormatError

MAGIC = b"\x89DFC\r\n\x1a\n"
VERSION = 1
MODES = ("L", "RGB", "P", "1")
SCHEDULE_IDS = {"linear": 0, "cosine": 1}
METHODS = {"uq": 0, "pfr": 1, "auto": 2}
STEP_METHODS = ("uq", "pfr")  # what one latent step can be coded with
LATENT, FINAL, FINAL_PRED = 1, 2, 3
FINAL_KINDS = (FINAL, FINAL_PRED)
MAX_SIDE = 16384
MAX_PIXELS = 2**26
MAX_HEADER = 65536
MAX_PAYLOAD = 2**30
MAX_SYMBOL_SPAN = 2**20


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
    method: str = "uq"
    tile: int = 0
    num_chunks: int = 0
    checksum: int = 0
    palette: bytes = b""

    @property
    def num_latent_steps(self) -> int:
        return len(self.timesteps) - 1

    def validate(self) -> None:
        if not (1 <= self.width <= MAX_SIDE and 1 <= self.height <= MAX_SIDE) or self.width * self.height > MAX_PIXELS:
            raise FormatError(f"implausible image size {self.width}x{self.height}")
        if self.mode not in MODES:
            raise FormatError(f"unknown image mode {self.mode!r}")
        if len(self.fingerprint) != 32:
            raise FormatError("bad model fingerprint")
        if self.schedule not in SCHEDULE_IDS or not 1 <= self.num_timesteps <= 65535:
            raise FormatError("bad schedule in header")
        ts = self.timesteps
        if not ts or any(b <= a for a, b in zip(ts, ts[1:])) or ts[-1] >= self.num_timesteps or ts[0] < 0:
            raise FormatError("bad coded timesteps in header")
        if self.method not in METHODS:
            raise FormatError(f"unknown coding method {self.method!r}")
        if not (self.tile == 0 or 8 <= self.tile <= MAX_SIDE):
            raise FormatError(f"bad tile size {self.tile}")
        if self.num_chunks > len(ts):
            raise FormatError("header announces more chunks than coded steps")
        if (self.mode == "P") != (len(self.palette) > 0) or len(self.palette) % 3 or len(self.palette) > 768:
            raise FormatError("bad palette")

    def to_bytes(self) -> bytes:
        self.validate()
        body = struct.pack("<IIB", self.width, self.height, MODES.index(self.mode)) + self.fingerprint
        body += struct.pack("<BHH", SCHEDULE_IDS[self.schedule], self.num_timesteps, len(self.timesteps))
        body += struct.pack(f"<{len(self.timesteps)}H", *self.timesteps)
        body += struct.pack("<QBHHIH", self.seed, METHODS[self.method], self.tile, self.num_chunks,
                            self.checksum, len(self.palette)) + self.palette
        head = struct.pack("<BI", VERSION, len(body)) + body
        return MAGIC + head + struct.pack("<I", zlib.crc32(head))


@dataclass
class StepPayload:
    ideal_bits: float
    lo: int
    hi: int
    scale_codes: bytes
    stream: bytes

    def to_bytes(self) -> bytes:
        return struct.pack("<fiiI", self.ideal_bits, self.lo, self.hi, len(self.scale_codes)) \
            + self.scale_codes + self.stream

    @classmethod
    def from_bytes(cls, data: bytes, expected_scales: int | None = None) -> "StepPayload":
        if len(data) < 16:
            raise FormatError("step payload too short")
        ideal, lo, hi, n = struct.unpack_from("<fiiI", data)
        if (expected_scales is not None and n != expected_scales) or len(data) < 16 + n:
            raise FormatError("step payload has the wrong amount of side information")
        if not (lo <= hi and hi - lo < MAX_SYMBOL_SPAN):
            raise FormatError("step payload has an implausible symbol range")
        stream = data[16 + n:]
        if len(stream) % 4:
            raise FormatError("step payload stream is not a whole number of words")
        return cls(ideal, lo, hi, data[16:16 + n], stream)


@dataclass
class PfrPayload:
    ideal_bits: float
    chunk_bits: int
    margin: int
    offset_code: int
    std_code: int
    kappa_codes: bytes
    stream: bytes
    raw: bytes

    def to_bytes(self) -> bytes:
        return struct.pack("<fBBBBI", self.ideal_bits, self.chunk_bits, self.margin, self.offset_code,
                           self.std_code, len(self.kappa_codes)) + self.kappa_codes \
            + struct.pack("<I", len(self.stream)) + self.stream + self.raw

    @classmethod
    def from_bytes(cls, data: bytes, expected_codes: int | None = None) -> "PfrPayload":
        if len(data) < 12:
            raise FormatError("PFR step payload too short")
        ideal, cbits, margin, offset, std, n = struct.unpack_from("<fBBBBI", data)
        if (expected_codes is not None and n != expected_codes) or len(data) < 16 + n:
            raise FormatError("PFR step payload has the wrong amount of side information")
        if not (1 <= cbits <= 20 and margin <= 7 and std >= 1):
            raise FormatError("PFR step payload has implausible coding parameters")
        (w,) = struct.unpack_from("<I", data, 12 + n)
        if w % 4 or len(data) < 16 + n + w:
            raise FormatError("PFR step payload has a bad index stream length")
        return cls(ideal, cbits, margin, offset, std, data[12:12 + n], data[16 + n:16 + n + w], data[16 + n + w:])


@dataclass
class PredictedFinalPayload:
    ideal_bits: float
    scale_codes: bytes
    predictor_codes: bytes
    streams: tuple[bytes, bytes, bytes]

    def to_bytes(self) -> bytes:
        out = struct.pack("<fI", self.ideal_bits, len(self.scale_codes)) + self.scale_codes
        out += struct.pack("<I", len(self.predictor_codes)) + self.predictor_codes
        return out + b"".join(struct.pack("<I", len(s)) + s for s in self.streams)

    @classmethod
    def from_bytes(cls, data: bytes, expected_codes: int | None = None) -> "PredictedFinalPayload":
        try:
            ideal, n = struct.unpack_from("<fI", data)
            scales = data[8:8 + n]
            (m,) = struct.unpack_from("<I", data, 8 + n)
            pos = 12 + n + m
            predictors = data[12 + n:pos]
            streams = []
            for _ in range(3):
                (w,) = struct.unpack_from("<I", data, pos)
                streams.append(data[pos + 4:pos + 4 + w])
                if len(streams[-1]) != w or w % 4:
                    raise FormatError("final step has a bad stream length")
                pos += 4 + w
        except struct.error:
            raise FormatError("final step payload is truncated") from None
        if pos != len(data) or len(scales) != n or len(predictors) != m:
            raise FormatError("final step payload has the wrong length")
        if expected_codes is not None and not (n == m == expected_codes):
            raise FormatError("final step has the wrong amount of side information")
        return cls(ideal, scales, predictors, tuple(streams))


def latent_payload(payload: bytes, method: str) -> tuple[str, bytes]:
    """(step method, that method's payload) of a latent chunk in a file of ``method``."""
    if method != "auto":
        return method, payload
    if not payload or payload[0] >= len(STEP_METHODS):
        raise FormatError("latent step names an unknown coding method")
    return STEP_METHODS[payload[0]], payload[1:]


def tag_latent_payload(payload: bytes, step_method: str) -> bytes:
    """The payload of a latent step coded with ``step_method`` in a per-step (auto) file."""
    return bytes([STEP_METHODS.index(step_method)]) + payload


def step_ideal_bits(chunk: "Chunk", method: str) -> float:
    """The ideal bits a chunk's payload records (its first field, whatever the method)."""
    if chunk.kind == LATENT:
        step_method, payload = latent_payload(chunk.payload, method)
        if step_method == "pfr":
            return PfrPayload.from_bytes(payload).ideal_bits
        return StepPayload.from_bytes(payload).ideal_bits
    if chunk.kind == FINAL_PRED:
        return PredictedFinalPayload.from_bytes(chunk.payload).ideal_bits
    return StepPayload.from_bytes(chunk.payload).ideal_bits


@dataclass
class Chunk:
    kind: int
    index: int
    payload: bytes

    def to_bytes(self) -> bytes:
        head = struct.pack("<BHI", self.kind, self.index, len(self.payload)) + self.payload
        return head + struct.pack("<I", zlib.crc32(head))

    @property
    def size(self) -> int:
        return 11 + len(self.payload)


@dataclass
class Parsed:
    header: Header
    chunks: list[Chunk] = field(default_factory=list)
    truncated: bool = False
    header_size: int = 0


def parse(data: bytes) -> Parsed:
    """Parse a .dfc file (possibly truncated). Raises FormatError on anything else wrong."""
    data = memoryview(bytes(data))
    if len(data) < len(MAGIC) or bytes(data[:len(MAGIC)]) != MAGIC:
        raise FormatError("not a .dfc file (bad magic)")
    pos = len(MAGIC)
    if len(data) < pos + 5:
        raise FormatError("file truncated inside the header")
    version, body_len = struct.unpack_from("<BI", data, pos)
    if version != VERSION:
        raise FormatError(f".dfc version {version} is not supported (this decoder reads {VERSION})")
    if body_len > MAX_HEADER:
        raise FormatError("implausible header length")
    end = pos + 5 + body_len
    if len(data) < end + 4:
        raise FormatError("file truncated inside the header")
    (crc,) = struct.unpack_from("<I", data, end)
    if zlib.crc32(data[pos:end]) != crc:
        raise FormatError("header is corrupt (CRC mismatch)")
    header = _parse_header_body(bytes(data[pos + 5:end]))
    out = Parsed(header, header_size=end + 4)
    pos = end + 4
    while pos < len(data):
        if len(out.chunks) >= header.num_chunks:
            raise FormatError("trailing data after the last chunk")
        if len(data) - pos < 7:
            out.truncated = True
            break
        kind, index, n = struct.unpack_from("<BHI", data, pos)
        if n > MAX_PAYLOAD:
            raise FormatError("implausible chunk length")
        if len(data) - pos < 11 + n:
            out.truncated = True
            break
        (crc,) = struct.unpack_from("<I", data, pos + 7 + n)
        if zlib.crc32(data[pos:pos + 7 + n]) != crc:
            raise FormatError(f"chunk {len(out.chunks)} is corrupt (CRC mismatch)")
        if index != len(out.chunks) or kind not in (LATENT, *FINAL_KINDS):
            raise FormatError(f"chunk {len(out.chunks)} is out of order or of unknown kind")
        if (kind in FINAL_KINDS) != (index == header.num_latent_steps):
            raise FormatError(f"chunk {index} has the wrong kind")
        out.chunks.append(Chunk(kind, index, bytes(data[pos + 7:pos + 7 + n])))
        pos += 11 + n
    if len(out.chunks) < header.num_chunks:
        out.truncated = True
    return out


def _parse_header_body(body: bytes) -> Header:
    try:
        width, height, mode = struct.unpack_from("<IIB", body, 0)
        fp = body[9:41]
        sched, T, k = struct.unpack_from("<BHH", body, 41)
        ts = struct.unpack_from(f"<{k}H", body, 46)
        pos = 46 + 2 * k
        seed, method, tile, nchunks, checksum, npal = struct.unpack_from("<QBHHIH", body, pos)
        pos += 19
        palette = body[pos:pos + npal]
        if len(palette) != npal or pos + npal != len(body):
            raise FormatError("header body has the wrong length")
    except struct.error:
        raise FormatError("header is truncated or malformed") from None
    if mode >= len(MODES):
        raise FormatError(f"unknown image mode {mode}")
    schedules = {v: k for k, v in SCHEDULE_IDS.items()}
    methods = {v: k for k, v in METHODS.items()}
    if sched not in schedules or method not in methods:
        raise FormatError("unknown schedule or coding method in header")
    header = Header(width, height, MODES[mode], bytes(fp), schedules[sched], T, tuple(ts), seed,
                    methods[method], tile, nchunks, checksum, bytes(palette))
    header.validate()
    return header
