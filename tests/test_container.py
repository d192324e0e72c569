"""The .dfc container (diffcodec.container): exact round trips, truncation, hostile headers and
a mutation fuzz of real files through the whole decoder."""

from __future__ import annotations

import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image

from codec_fixtures import tiny_model_path, tiny_prior  # noqa: F401  (fixtures)
from diffcodec import container as fmt
from diffcodec.codec import EncodeOptions, decode, encode
from diffcodec.container import MAGIC, Chunk, Header, Parsed, parse
from diffcodec.errors import DiffcodecError, FormatError
from diffcodec.kinds import ChunkKind, LatentMethod
from diffcodec.varint import read_uvarint, uvarint

UQ, PFR, FINAL, FINAL_PRED = ChunkKind.UQ, ChunkKind.PFR, ChunkKind.FINAL, ChunkKind.FINAL_PRED

FP = bytes(range(32))


def make_header(**kw) -> Header:
    args = dict(width=5, height=4, mode="RGB", fingerprint=FP, schedule="cosine", num_timesteps=1000,
                timesteps=(0, 500, 999), seed=0x0123456789ABCDEF, tile=64, num_chunks=3,
                checksum=0xDEADBEEF, palette=b"")
    args.update(kw)
    return Header(**args)


def make_chunks(n: int = 3) -> list[Chunk]:
    rng = np.random.default_rng(5)
    out = []
    for i in range(n):
        payload = rng.integers(0, 256, 8 * (i + 1) + 3, dtype=np.uint8).tobytes()
        out.append(Chunk(FINAL if i == n - 1 else (UQ, PFR)[i % 2], i, 100.0 + i, payload))
    return out


def make_file(n: int = 3) -> tuple[bytes, Header, list[Chunk]]:
    header = make_header(timesteps=tuple(range(0, 1000, 1000 // n))[:n], num_chunks=n)
    chunks = make_chunks(n)
    return header.to_bytes() + b"".join(c.to_bytes() for c in chunks), header, chunks


def raw_header(width=5, height=4, mode=1, fp=FP, sched=1, T=1000, ts=(0, 500, 999), k=None, seed=1,
               tile=64, nchunks=0, checksum=0, palette=b"", npal=None, version=8, body_len=None, magic=MAGIC,
               crc=None, extra=b"", symmetry=1, symmetry_max_t=0xFFFF) -> bytes:
    """Header bytes with any field values (no validation), with a correct CRC unless given;
    ``version=4`` writes the fixed-width fields of versions 2-4, ``version=2`` leaves out the
    symmetry byte, as version 2 files do, ``version=3`` the symmetry_max_t field."""
    npal = len(palette) if npal is None else npal
    if version >= 5:  # varints; timesteps as the first and its successors' differences
        body = uvarint(width) + uvarint(height) + bytes([mode]) + fp + bytes([sched]) + uvarint(T)
        body += uvarint(len(ts) if k is None else k)
        body += b"".join(uvarint(d) for d in ts[:1] + tuple(b - a for a, b in zip(ts, ts[1:])))
        body += struct.pack("<Q", seed) + uvarint(tile) + bytes([symmetry]) + uvarint(symmetry_max_t)
        body += uvarint(nchunks) + struct.pack("<I", checksum) + uvarint(npal) + palette + extra
        head = bytes([version]) + uvarint(len(body) if body_len is None else body_len) + body
        return magic + head + struct.pack("<I", zlib.crc32(head) if crc is None else crc)
    body = struct.pack("<IIB", width, height, mode) + fp
    body += struct.pack("<BHH", sched, T, len(ts) if k is None else k) + struct.pack(f"<{len(ts)}H", *ts)
    if version == 2:
        body += struct.pack("<QHHIH", seed, tile, nchunks, checksum, npal)
    elif version == 3:
        body += struct.pack("<QHBHIH", seed, tile, symmetry, nchunks, checksum, npal)
    else:
        body += struct.pack("<QHBHHIH", seed, tile, symmetry, symmetry_max_t, nchunks, checksum, npal)
    body += palette + extra
    head = struct.pack("<BI", version, len(body) if body_len is None else body_len) + body
    return magic + head + struct.pack("<I", zlib.crc32(head) if crc is None else crc)


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("kw", [
    {},
    dict(width=1, height=1, mode="L", timesteps=(998, 999), num_chunks=0, tile=0, seed=0),
    dict(width=16384, height=4096, mode="1", schedule="linear", num_timesteps=4000, timesteps=(3, 17, 3999),
         seed=2**64 - 1, tile=16384, checksum=0xFFFFFFFF),
    dict(mode="P", palette=bytes(range(48)), timesteps=tuple(range(0, 1000, 7)), num_chunks=143, tile=8),
    dict(mode="P", palette=bytes(768)),
    dict(symmetry=8),
    dict(symmetry=4, symmetry_max_t=60),
    dict(symmetry=2, symmetry_max_t=0),
])
def test_header_round_trip(kw):
    header = make_header(**kw)
    data = header.to_bytes()
    assert data[:8] == MAGIC and data[8] == fmt.VERSION
    parsed = parse(data, max_pixels=fmt.MAX_PIXELS)
    assert parsed.header == header  # every field, dataclass equality
    for name in ("width", "height", "mode", "fingerprint", "schedule", "num_timesteps", "timesteps", "seed",
                 "tile", "num_chunks", "checksum", "palette"):
        assert getattr(parsed.header, name) == getattr(header, name), name
    assert parsed.header_size == len(data)
    assert parsed.chunks == [] and parsed.truncated == (header.num_chunks > 0)
    assert parsed.header.num_latent_steps == len(header.timesteps) - 1


@pytest.mark.parametrize("kw", [
    dict(width=0), dict(height=0), dict(width=16385), dict(width=16384, height=4097), dict(mode="RGBA"),
    dict(fingerprint=b"x" * 31), dict(schedule="quadratic"), dict(num_timesteps=0), dict(timesteps=()),
    dict(timesteps=(999,)), dict(timesteps=(5, 5, 999)), dict(timesteps=(5, 4)), dict(timesteps=(0, 1000)),
    dict(timesteps=(-1, 3)), dict(tile=7), dict(num_chunks=4), dict(mode="P"), dict(palette=b"\0\0\0"),
    dict(mode="P", palette=b"\0\0"), dict(mode="P", palette=bytes(771)),
])
def test_invalid_header_is_not_written(kw):
    with pytest.raises(FormatError):
        make_header(**kw).to_bytes()


def test_chunks_round_trip():
    data, header, chunks = make_file(3)
    parsed = parse(data)
    assert isinstance(parsed, Parsed) and not parsed.truncated
    assert parsed.header == header
    assert parsed.chunks == chunks
    assert [c.kind for c in parsed.chunks] == [UQ, PFR, FINAL]
    assert all(isinstance(c.kind, ChunkKind) for c in parsed.chunks)
    assert parsed.header_size + sum(c.size for c in parsed.chunks) == len(data)
    for c in chunks:
        assert c.size == len(c.to_bytes())
    assert [c.ideal_bits for c in parsed.chunks] == [100.0, 101.0, 102.0]  # exact in eighths of a bit


def test_version_2_headers_parse_with_symmetry_1():
    """Files written before the symmetry field (version 2) still parse: their network calls were
    plain ones."""
    v2 = parse(raw_header(version=2, seed=7, tile=16)).header
    v3 = parse(raw_header(version=3, seed=7, tile=16)).header
    v4 = parse(raw_header(version=4, seed=7, tile=16)).header
    v5 = parse(raw_header(version=5, seed=7, tile=16)).header
    v6 = parse(raw_header(version=6, seed=7, tile=16)).header
    v7 = parse(raw_header(version=7, seed=7, tile=16)).header
    v8 = parse(raw_header(seed=7, tile=16)).header
    assert v2 == v3 == v4 == v5 == v6 == v7 == v8 and v2.symmetry == 1 and (v2.seed, v2.tile) == (7, 16)
    assert [h.version for h in (v2, v3, v4, v5, v6, v7, v8)] == [2, 3, 4, 5, 6, 7, 8]
    assert [h.compact for h in (v4, v5, v6, v7, v8)] == [False, True, True, True, True]
    same = dict(seed=1, num_chunks=0, checksum=0)  # raw_header's defaults
    assert raw_header() == make_header(**same).to_bytes()  # the writer writes version 8
    assert raw_header(symmetry=8, symmetry_max_t=60) == make_header(**same, symmetry=8, symmetry_max_t=60).to_bytes()


def test_version_3_symmetry_serves_every_call():
    """Version 3 had no symmetry_max_t: its symmetry averaged every network call, as 65535 says."""
    h = parse(raw_header(version=3, symmetry=8)).header
    assert h.symmetry == 8 and h.symmetry_max_t == 0xFFFF
    assert [h.symmetry_at(t) for t in (0, 999, 65535)] == [8, 8, 8]
    h4 = parse(raw_header(symmetry=4, symmetry_max_t=60)).header
    assert [h4.symmetry_at(t) for t in (0, 60, 61, 999)] == [4, 4, 1, 1]


def test_version_1_files_are_refused_by_name():
    with pytest.raises(FormatError, match="version 1 .*diffcodec 0.1"):
        parse(raw_header(version=1))


def test_lossy_file_with_fewer_chunks_is_complete():
    header = make_header(num_chunks=2)
    chunks = make_chunks(3)[:2]
    parsed = parse(header.to_bytes() + b"".join(c.to_bytes() for c in chunks))
    assert not parsed.truncated and len(parsed.chunks) == 2


# ----------------------------------------------------------------------------- truncation


def test_truncation_at_every_offset():
    data, header, chunks = make_file(3)
    hsize = len(header.to_bytes())
    ends = np.cumsum([hsize] + [c.size for c in chunks])  # ends[i]: end of the first i chunks
    for cut in range(len(data) + 1):
        piece = data[:cut]
        if cut < hsize:
            with pytest.raises(FormatError):
                parse(piece)
            continue
        parsed = parse(piece)  # any other exception fails the test
        complete = int(np.searchsorted(ends, cut, side="right")) - 1
        assert parsed.chunks == chunks[:complete], cut
        assert parsed.truncated == (cut < len(data)), cut
        assert parsed.header == header and parsed.header_size == hsize


# ----------------------------------------------------------------------------- hostile input


def _peak_bytes(f) -> int:
    """Peak memory (bytes, Python and NumPy allocations) that calling f() takes."""
    tracemalloc.start()
    try:
        f()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def _refused(data: bytes, match: str) -> None:
    def attempt():
        with pytest.raises(FormatError, match=match):
            parse(data)

    assert _peak_bytes(attempt) < 1 << 20  # nothing image-sized is allocated


@pytest.mark.parametrize("kw,match", [
    (dict(width=0), "image size"),
    (dict(height=0), "image size"),
    (dict(width=2**31), "image size"),
    (dict(width=2**32 - 1, height=2**32 - 1), "image size"),
    (dict(width=16384, height=16384), "image size"),  # > 2**26 pixels
    (dict(width=8193, height=8193), "image size"),
    (dict(mode=4), "mode"),
    (dict(mode=255), "mode"),
    (dict(sched=7), "schedule"),
    (dict(T=0), "schedule"),
    (dict(ts=tuple(range(1001))), "timesteps"),  # more timesteps than T
    (dict(ts=(0, 500, 500)), "timesteps"),
    (dict(ts=(10, 5, 999), version=4), "timesteps"),  # (version 5 stores differences: none is negative)
    (dict(ts=(0, 1000)), "timesteps"),
    (dict(ts=(0, 65535)), "timesteps"),
    (dict(ts=()), "timesteps"),
    (dict(ts=(999,)), "timesteps"),
    (dict(ts=(0, 999), k=60000), "truncated or malformed"),  # K larger than the body
    (dict(ts=(0, 999), k=60000, version=4), "truncated or malformed"),
    (dict(ts=(0, 999), k=1, version=4), "wrong length"),  # K smaller than the body
    (dict(ts=(0, 999), k=70000), "number of timesteps"),
    (dict(ts=(0, 2**40)), "timestep"),
    (dict(T=70000), "num_timesteps"),
    (dict(tile=2**20), "tile"),
    (dict(symmetry_max_t=70000), "symmetry_max_t"),
    (dict(nchunks=70000), "num_chunks"),
    (dict(tile=3), "tile"),
    (dict(nchunks=4), "chunks"),
    (dict(npal=60000), "wrong length"),
    (dict(palette=b"\1\2\3"), "palette"),  # a palette for an RGB image
    (dict(mode=2), "palette"),  # a palette image without one
    (dict(mode=2, palette=b"\1\2"), "palette"),
    (dict(extra=b"\0"), "wrong length"),
    (dict(body_len=2**32 - 1), "header length"),
    (dict(body_len=65537), "header length"),
    (dict(body_len=60000), "truncated inside the header"),
    (dict(body_len=2**32 - 1, version=4), "header length"),
    (dict(body_len=65537, version=4), "header length"),
    (dict(body_len=60000, version=4), "truncated inside the header"),
    (dict(crc=0), "CRC"),
    (dict(version=9), "version 9"),
    (dict(symmetry=0), "symmetry"),
    (dict(symmetry=3), "symmetry"),
    (dict(symmetry=16), "symmetry"),
    (dict(version=2, extra=b"\1"), "wrong length"),  # a version 3 body labelled version 2
    (dict(version=3, extra=b"\1\0"), "wrong length"),  # ... version 4 bodies are 2 bytes longer
    (dict(version=4, extra=b"\0"), "wrong length"),
    (dict(version=0), "version 0"),
    (dict(magic=b"\x89PNG\r\n\x1a\n"), "magic"),
    (dict(magic=b"\x89DFC\n\x1a\n\n"), "magic"),  # text-mode mangled
])
def test_hostile_headers(kw, match):
    _refused(raw_header(**kw), match)


def test_hostile_header_field_flips_with_valid_crc():
    """Every single-byte change of a header body, with its CRC recomputed, either parses to a
    valid header or raises FormatError -- and quickly."""
    good = raw_header(nchunks=0)
    rng = np.random.default_rng(0)
    for pos in range(13, len(good) - 4):
        for value in (0, 0xFF, int(rng.integers(0, 256))):
            head = bytearray(good[8:-4])
            head[pos - 8] = value
            data = MAGIC + bytes(head) + struct.pack("<I", zlib.crc32(bytes(head)))
            try:
                h = parse(data).header
            except FormatError:
                continue
            h.validate()
            assert h.width * h.height <= fmt.MAX_PIXELS


@pytest.mark.parametrize("case,match", [
    ("huge_chunk", "implausible length"),
    ("overlong_length", "implausible length"),
    ("non_minimal_length", "not minimally encoded"),
    ("bad_crc", "chunk 0 is corrupt"),
    ("bad_crc_last", "chunk 2 is corrupt"),
    ("wrong_index", "out of place"),
    ("swapped", "chunk 0 is corrupt or out of place"),
    ("unknown_kind", "unknown kind"),
    ("predicted_final_too_early", "wrong kind"),
    ("final_too_early", "wrong kind"),
    ("latent_last", "wrong kind"),
    ("trailing", "trailing data"),
    ("extra_chunk", "trailing data"),
])
def test_hostile_chunks(case, match):
    data, header, chunks = make_file(3)
    hb = header.to_bytes()
    cb = [c.to_bytes() for c in chunks]
    if case == "huge_chunk":
        cb[0] = bytes([UQ]) + uvarint(2**31) + b"\0" * 20
    elif case == "overlong_length":  # a varint longer than a u32's five bytes
        cb[0] = bytes([UQ]) + b"\x80" * 6 + b"\0" * 20
    elif case == "non_minimal_length":  # 8 as 0x88 0x00: every value has one encoding
        cb[0] = bytes([UQ]) + b"\x88\x00" + b"\0" * 20
    elif case == "swapped":  # two valid chunks in each other's places
        cb[0], cb[1] = cb[1], cb[0]
    elif case == "bad_crc":
        cb[0] = cb[0][:-1] + bytes([cb[0][-1] ^ 1])
    elif case == "bad_crc_last":
        cb[2] = cb[2][:20] + bytes([cb[2][20] ^ 0x40]) + cb[2][21:]
    elif case == "wrong_index":
        cb[1] = Chunk(UQ, 2, 0.0, chunks[1].payload).to_bytes()
    elif case == "unknown_kind":
        body = bytes([13]) + uvarint(8) + uvarint(0) + b"\0" * 8
        cb[1] = body + struct.pack("<I", zlib.crc32(body, zlib.crc32(struct.pack("<H", 1))))
    elif case == "final_too_early":
        cb[0] = Chunk(FINAL, 0, 0.0, chunks[0].payload).to_bytes()
    elif case == "predicted_final_too_early":
        cb[1] = Chunk(FINAL_PRED, 1, 0.0, chunks[1].payload).to_bytes()
    elif case == "latent_last":
        cb[2] = Chunk(UQ, 2, 0.0, chunks[2].payload).to_bytes()
    elif case == "trailing":
        cb.append(b"garbage")
    elif case == "extra_chunk":
        cb.append(Chunk(FINAL, 3, 0.0, chunks[2].payload).to_bytes())
    _refused(hb + b"".join(cb), match)


def _as_version(data: bytes, version: int) -> bytes:
    """A version-8 file's bytes relabelled ``version`` (5, 6, 7: the same layout), header CRC mended."""
    n, p = read_uvarint(data, 9, "length")
    head = bytes([version]) + data[9:p + n]
    return MAGIC + head + struct.pack("<I", zlib.crc32(head)) + data[p + n + 4:]


@pytest.mark.parametrize("kind,since", [(ChunkKind.UQ_TEX, 6), (ChunkKind.FINAL_TEX, 6), (ChunkKind.UQ_NBR, 7),
                                        (ChunkKind.FINAL_NBR, 7), (ChunkKind.PFR_SPEC, 8)])
def test_kinds_are_read_from_their_version_on(kind, since):
    """The texture layout's kinds (8, 9) came with format version 6, the neighbourhood layout's
    (10, 11) with version 7, the spectral PFR step (12) with version 8: a file of that version or
    later may hold them, a file of the version before holding one is refused by name; the older
    kinds read in every compact version."""
    assert kind.since == since
    header = make_header(num_chunks=2, timesteps=(0, 999))
    last = kind if kind.is_final else ChunkKind.FINAL_CTX
    first = ChunkKind.UQ_CTX if kind.is_final else kind
    data = header.to_bytes() + Chunk(first, 0, 1.0, b"\1" * 8).to_bytes() + Chunk(last, 1, 1.0, b"\2" * 8).to_bytes()
    assert data[8] == 8 and [c.kind for c in parse(data).chunks] == [first, last]
    for version in range(since, 9):
        assert [c.kind for c in parse(_as_version(data, version)).chunks] == [first, last]
    _refused(_as_version(data, since - 1), f"chunk {1 if kind.is_final else 0} is of a kind that format version {since - 1}")
    old = header.to_bytes() + Chunk(ChunkKind.UQ_CTX, 0, 1.0, b"\1" * 8).to_bytes()
    old += Chunk(ChunkKind.FINAL_CTX, 1, 1.0, b"\2" * 8).to_bytes()
    for version in (5, 6, 7, 8):
        assert [c.kind for c in parse(_as_version(old, version)).chunks] == [ChunkKind.UQ_CTX, ChunkKind.FINAL_CTX]


def test_large_but_plausible_chunk_length_reads_as_truncated():
    """A chunk announcing up to 2**30 bytes in a short file is a truncated file, not an error,
    and costs no allocation."""
    header = make_header()
    data = header.to_bytes() + make_chunks(3)[0].to_bytes() + bytes([UQ]) + uvarint(2**30) + b"\0" * 9
    parsed = None

    def run():
        nonlocal parsed
        parsed = parse(data)

    assert _peak_bytes(run) < 1 << 20
    assert parsed.truncated and len(parsed.chunks) == 1


def test_pixel_limit_is_checked_before_anything_else():
    """A valid header claiming 16384 x 4096 pixels (no chunks) is refused by the parser under a
    pixel limit, with the limit named, and without allocating for the image."""
    data = make_header(width=16384, height=4096, num_chunks=0).to_bytes()
    _refused_limit = lambda: parse(data, max_pixels=25_000_000)  # noqa: E731
    with pytest.raises(FormatError, match="megapixels is above the limit of 25.0"):
        _refused_limit()
    assert parse(data, max_pixels=fmt.MAX_PIXELS).header.width == 16384  # the format itself allows it


@pytest.mark.parametrize("data", [b"", b"\x89", MAGIC, MAGIC + b"\x01", MAGIC + b"\x01\x00\x00\x00",
                                  b"hello world, this is not a dfc file\n" * 3, bytes(200)])
def test_not_a_dfc(data):
    with pytest.raises(FormatError):
        parse(data)


# ----------------------------------------------------------------------------- fuzzing real files


@pytest.fixture(scope="module")
def real_file(tiny_prior, tiny_images):
    img = np.ascontiguousarray(tiny_images[0][4:16, 8:24])  # 16 x 12
    res = encode(img, tiny_prior, EncodeOptions(steps=3, t_min=5, seed=42, method=LatentMethod.UQ))
    assert decode(res.data, tiny_prior).lossless
    return res.data, img


def _mutations(data: bytes, parsed: Parsed, rng: np.random.Generator, count: int):
    """Random damage of every kind; half of it keeps every CRC valid so that it reaches the
    payload checks, the entropy decoder and the image checksum."""
    hsize = parsed.header_size
    starts = list(np.cumsum([hsize] + [c.size for c in parsed.chunks])[:-1])
    h = parsed.header
    ns = 3 * (1 if h.tile == 0 else -(-h.width // h.tile) * -(-h.height // h.tile))  # side-information codes
    for i in range(count):
        d = bytearray(data)
        kind = (0, 1, 2, 3, 0, 3, 4, 5, 6, 9)[i % 10]
        if kind == 0:  # flip 1..4 random bytes anywhere
            for pos in rng.integers(0, len(d), int(rng.integers(1, 5))):
                d[pos] ^= int(rng.integers(1, 256))
        elif kind == 1:  # insert random bytes
            pos = int(rng.integers(0, len(d) + 1))
            d[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8).tobytes()
        elif kind == 2:  # delete a range
            pos = int(rng.integers(0, len(d)))
            del d[pos:pos + int(rng.integers(1, 9))]
        elif kind == 3:  # truncate, or random garbage (sometimes after a valid magic)
            if rng.random() < 0.5:
                d = d[:int(rng.integers(0, len(d)))]
            else:
                g = rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8).tobytes()
                d = bytearray((MAGIC + b"\x02" if rng.random() < 0.5 else b"") + g)
        elif kind in (4, 5, 6):  # CRC-valid damage of one chunk: rebuilt with a damaged payload
            c = int(rng.integers(0, len(starts)))
            chunk = parsed.chunks[c]
            payload = bytearray(chunk.payload)
            side = ns + (4 if chunk.kind == PFR else 0)  # a PFR payload starts with 4 parameter bytes
            how = int(rng.integers(0, 5))
            if how == 0:  # random bytes of the payload (widths, streams)
                for pos in rng.integers(0, len(payload), int(rng.integers(1, 4))):
                    payload[pos] ^= int(rng.integers(1, 256))
            elif how == 1:  # a width (kappa) code
                payload[side - 1 - int(rng.integers(0, ns))] = int(rng.choice([0, 255, int(rng.integers(0, 256))]))
            elif how == 2:  # the stream: random words, or cut to a shorter whole number of words
                stream = bytes(payload[side:])
                if rng.random() < 0.5 and stream:
                    stream = stream[:4 * int(rng.integers(0, len(stream) // 4))]
                else:
                    stream = rng.integers(0, 256, len(stream) // 4 * 4 + 4 * int(rng.integers(0, 3)),
                                          dtype=np.uint8).tobytes()
                payload = payload[:side] + stream
            elif how == 3:  # cut inside the side information
                payload = payload[:int(rng.integers(0, side + 1))]
            kinds = ((UQ, PFR, ChunkKind.UQ_PRED, ChunkKind.UQ_CTX, ChunkKind.UQ_TEX) if not chunk.kind.is_final
                     else (FINAL, FINAL_PRED, ChunkKind.FINAL_CTX, ChunkKind.FINAL_TEX))
            new_kind = kinds[int(rng.integers(0, len(kinds)))] if how == 4 else chunk.kind  # another layout's payload
            d[starts[c]:starts[c] + chunk.size] = Chunk(new_kind, c, chunk.ideal_bits, bytes(payload)).to_bytes()
        else:  # CRC-valid damage of the header body (size fields kept small)
            pos = int(rng.integers(8 + 5 + 9, hsize - 4))  # after width/height/mode
            d[pos] ^= int(rng.integers(1, 256))
            d[hsize - 4:hsize] = struct.pack("<I", zlib.crc32(bytes(d[8:hsize - 4])))
        yield bytes(d)


def test_fuzz_decoder_with_real_file(real_file, tiny_prior, monkeypatch):
    """1000 mutations of a real file: decode succeeds or raises a DiffcodecError, never any
    other exception (PanicException from the range coder included), and a lossless result is
    always the original image."""
    from diffcodec import entropy

    data, img = real_file
    parsed = parse(data)
    assert len(parsed.chunks) == 4
    calls = []
    real_decode = entropy.TableDecoder.decode
    monkeypatch.setattr(entropy.TableDecoder, "decode", lambda *a, **k: calls.append(1) or real_decode(*a, **k))
    rng = np.random.default_rng(20240607)
    failures, outcomes = [], {"ok": 0, "lossless": 0, "error": 0, "skipped": 0}
    for i, mutated in enumerate(_mutations(data, parsed, rng, 1000)):
        try:
            h = parse(mutated).header
            if h.width * h.height > 4096:  # a legitimately huge image: decoding it is real work
                outcomes["skipped"] += 1
                continue
            res = decode(mutated, tiny_prior)
        except DiffcodecError:
            outcomes["error"] += 1
            continue
        except BaseException as e:  # noqa: BLE001 - the point of the test (pyo3 panics are BaseException)
            failures.append((i, f"{type(e).__name__}: {e}"))
            continue
        outcomes["ok"] += 1
        if res.lossless:  # a lossless result must be the original image: no silent corruption
            outcomes["lossless"] += 1
            assert np.array_equal(np.asarray(res.image.convert("RGB")), img), i
    assert not failures, failures[:10]
    assert outcomes["error"] > 300 and outcomes["ok"] > 50 and outcomes["lossless"] > 5, outcomes
    assert len(calls) > 300  # the CRC-preserving mutations did reach the range decoder
    assert outcomes["skipped"] < 20


def test_decoded_file_is_the_encoded_image(real_file, tiny_prior):
    data, img = real_file
    res = decode(data, tiny_prior)
    assert isinstance(res.image, Image.Image) and res.lossless and not res.truncated
    np.testing.assert_array_equal(np.asarray(res.image), img)


def test_fuzz_script_runs(tiny_model_path):
    """bin/fuzz.py (the long campaign's harness) on a few mutations of files from the tiny model."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("fuzz", Path(__file__).resolve().parents[1] / "bin" / "fuzz.py")
    fuzz = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fuzz)
    assert fuzz.main(["--iterations", "16", "--model", str(tiny_model_path), "--size", "16", "--effort", "1"]) == 0
