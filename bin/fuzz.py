#!/usr/bin/env python
"""Fuzz the decoder with damaged real files: every mutation must decode or fail with a
diffcodec error (one line at the CLI), never another exception, and a lossless result must be
the original image.  Run it under a memory cap, as hostile files are about memory:

    (ulimit -v 6000000; OMP_NUM_THREADS=1 python bin/fuzz.py --iterations 2000)

Half of the mutations keep every CRC valid (the chunk is rebuilt around a damaged payload, or
the header around a damaged field) so that they reach the payload parsers, the entropy decoders
and the image checksum; the rest flip, insert, delete and cut bytes anywhere.  Prints a summary
and exits non-zero if anything else happened.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diffcodec import container as fmt  # noqa: E402
from diffcodec.checkpoint import load_prior  # noqa: E402
from diffcodec.codec import EncodeOptions, decode, encode  # noqa: E402
from diffcodec.errors import DiffcodecError  # noqa: E402
from diffcodec.kinds import ChunkKind  # noqa: E402


def sources(size: int) -> list[np.ndarray]:
    """Small natural crops (RGB, grey) from scikit-image."""
    from skimage import data

    rgb = data.astronaut()[100:100 + size, 180:180 + size + 4]
    grey = np.repeat(data.camera()[200:200 + size, 200:200 + size, None], 3, axis=2)
    return [np.ascontiguousarray(rgb), np.ascontiguousarray(grey)]


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    parsed = fmt.parse(data)
    d = bytearray(data)
    how = int(rng.integers(0, 8))
    if how == 0:  # flip 1..4 bytes anywhere
        for pos in rng.integers(0, len(d), int(rng.integers(1, 5))):
            d[pos] ^= int(rng.integers(1, 256))
    elif how == 1:  # insert bytes
        pos = int(rng.integers(0, len(d) + 1))
        d[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8).tobytes()
    elif how == 2:  # delete a range
        pos = int(rng.integers(0, len(d)))
        del d[pos:pos + int(rng.integers(1, 9))]
    elif how == 3:  # cut
        d = d[:int(rng.integers(0, len(d)))]
    elif how in (4, 5, 6):  # CRC-valid damage of one chunk's payload (or its kind)
        chunks = list(parsed.chunks)
        c = int(rng.integers(0, len(chunks)))
        payload = bytearray(chunks[c].payload)
        kind = chunks[c].kind
        if how == 4 and payload:
            for pos in rng.integers(0, len(payload), int(rng.integers(1, 4))):
                payload[pos] ^= int(rng.integers(1, 256))
        elif how == 5:
            cut = int(rng.integers(0, len(payload) + 1))
            payload = payload[:cut] + rng.integers(0, 256, int(rng.integers(0, 12)), dtype=np.uint8).tobytes()
        else:
            kinds = [k for k in ChunkKind if k.is_final == kind.is_final]
            kind = kinds[int(rng.integers(0, len(kinds)))]
        chunks[c] = fmt.Chunk(kind, c, chunks[c].ideal_bits, bytes(payload))
        d = bytearray(parsed.header.to_bytes() + b"".join(ch.to_bytes() for ch in chunks))
    else:  # a CRC-valid header with one field changed
        h = parsed.header
        field = ["width", "height", "tile", "seed", "symmetry", "symmetry_max_t", "num_chunks"][int(rng.integers(0, 7))]
        value = {"width": int(rng.integers(1, 200)), "height": int(rng.integers(1, 200)),
                 "tile": int(rng.choice([0, 8, 16, 64, 128])), "seed": int(rng.integers(0, 2**63)),
                 "symmetry": int(rng.choice([1, 2, 4, 8])), "symmetry_max_t": int(rng.integers(0, 1000)),
                 "num_chunks": int(rng.integers(0, len(h.timesteps) + 1))}[field]
        try:
            head = dataclasses.replace(h, **{field: value}).to_bytes()
        except DiffcodecError:
            head = h.to_bytes()
        d = bytearray(head + data[parsed.header_size:])
    return bytes(d)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    ap.add_argument("--size", type=int, default=24, help="side of the source crops (px)")
    ap.add_argument("--effort", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    prior = load_prior(args.model)
    rng = np.random.default_rng(args.seed)
    files = []
    for img in sources(args.size):
        res = encode(img, prior, EncodeOptions(effort=args.effort, seed=int(rng.integers(0, 2**32))))
        assert decode(res.data, prior).lossless
        files.append((res.data, img))
    outcomes = {"ok": 0, "lossless": 0, "error": 0}
    failures = []
    start = time.time()
    for i in range(args.iterations):
        data, img = files[i % len(files)]
        mutated = mutate(data, rng)
        try:
            out = decode(mutated, prior)
        except DiffcodecError:
            outcomes["error"] += 1
            continue
        except BaseException as e:  # noqa: BLE001 - the point (pyo3 panics are BaseExceptions)
            failures.append((i, f"{type(e).__name__}: {e}", traceback.format_exc(limit=3)))
            continue
        outcomes["ok"] += 1
        if out.lossless:
            outcomes["lossless"] += 1
            if not np.array_equal(np.asarray(out.image.convert("RGB")), img):
                failures.append((i, "lossless decode differs from the original", ""))
    print(f"{args.iterations} mutated files in {time.time() - start:.0f} s: {outcomes}, {len(failures)} failures")
    for i, what, tb in failures[:10]:
        print(f"  #{i}: {what}\n{tb}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
