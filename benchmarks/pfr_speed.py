"""Throughput of the PFR encoder's search and of its decoder on one device.

Usage (from the repository root)::

    python -m benchmarks.pfr_speed --size 64 --device cpu
    python -m benchmarks.pfr_speed --size 512 --device cuda --kl 0.02,0.2,1.0 [--chunk-bits 8 --margin 6]

A synthetic latent step of size x size x 3 dims whose normalised offsets (mu_q - mu_p) / sigma_q
are Gaussian with the variance that gives KL(q || p') = ``--kl`` bits/dim, coded with
:func:`diffcodec.coders.pfr.encode_step` and decoded (on the CPU) from its payload: the
encoder's search (candidate x dim-pair evaluations per second; the effort levels'
``pfr_work`` budgets, :data:`diffcodec.trajectory.EFFORTS`, are in these units per pixel), its
bits against the KL, and the decoder's time.  The search cost per dim is about
2**(chunk_bits + margin) / 2 pair evaluations whatever the KL, so this rate says which image
sizes an effort level can afford.  Chunk bits and margin default to effort 5's.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Sequence

import torch

from benchmarks.common import provenance, write_json
from diffcodec.codec import EncodeOptions
from diffcodec.coders import pfr
from diffcodec.philox import seed_key
from diffcodec.sideinfo import TileGrid
from diffcodec.trajectory import EFFORTS

#: Chunk bits and margin when not given: those of the encoder's default effort.
DEFAULT_EFFORT = EFFORTS[5]


def run(size: int, kl: float, device: str, chunk_bits: int, margin: int, seed: int = 0,
        tile: int = EncodeOptions.tile) -> dict:
    """Code one synthetic step and decode it again; raises if the decoder's sample is not the
    encoder's."""
    gen = torch.Generator().manual_seed(seed)
    var = 2.0 ** (2.0 * kl) - 1.0  # KL-optimal r^2 = 1 + mean(delta^2) gives KL = log2(r) bits/dim
    mu_p = torch.randn((3, size, size), generator=gen, dtype=torch.float64)
    mu_q = mu_p + math.sqrt(var) * torch.randn((3, size, size), generator=gen, dtype=torch.float64)
    grid = TileGrid(3, size, size, tile)
    key = seed_key(seed)
    t0 = time.perf_counter()
    step = pfr.encode_step(mu_q, mu_p, 1.0, grid, key, 0, chunk_bits, margin, device)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    enc = time.perf_counter() - t0
    payload = pfr.PfrPayload(chunk_bits, margin, step.offset_code, step.std_code, step.codes, step.stream, step.raw)
    data = payload.to_bytes()
    t0 = time.perf_counter()
    x = pfr.decode_step(pfr.PfrPayload.from_bytes(data, grid.size), mu_p, 1.0, grid, key, 0, "cpu")
    dec = time.perf_counter() - t0
    if not torch.allclose(x, step.x.cpu(), rtol=0, atol=1e-9):
        raise AssertionError("the PFR decoder's sample differs from the encoder's")
    s = step.stats
    dims = 3 * size * size
    return {"size": size, "kl_bits_per_dim": kl, "device": device, "chunk_bits": chunk_bits, "margin": margin,
            "tile": tile, "chunks": s["chunks"], "kl_prior_bits": s["kl_prior_bits"], "coded_bits": s["index_bits"],
            "coded_over_kl": s["index_bits"] / s["kl_prior_bits"], "payload_bytes": len(data),
            "candidate_pairs": s["candidates"], "search_seconds": s["search_seconds"],
            "pairs_per_second": s["candidates"] / s["search_seconds"],
            "encode_seconds": enc, "decode_seconds_cpu": dec, "encode_seconds_per_megadim": enc / dims * 1e6}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.pfr_speed", description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--kl", default="0.02,0.2,1.0", help="KL(q || p') in bits/dim, comma-separated")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--chunk-bits", type=int, default=DEFAULT_EFFORT.chunk_bits,
                    help=f"target KL per chunk (default {DEFAULT_EFFORT.chunk_bits}: effort 5's)")
    ap.add_argument("--margin", type=int, default=DEFAULT_EFFORT.margin_bits,
                    help=f"search margin in bits (default {DEFAULT_EFFORT.margin_bits}: effort 5's)")
    ap.add_argument("--tile", type=int, default=EncodeOptions.tile, help="side-information tile in px")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="JSON output")
    args = ap.parse_args(argv)
    rows = [run(args.size, float(k), args.device, args.chunk_bits, args.margin, args.seed, args.tile)
            for k in args.kl.split(",")]
    for r in rows:
        print(f"{r['size']}px KL {r['kl_bits_per_dim']:.2f} b/dim: {r['chunks']} chunks, coded/KL "
              f"{r['coded_over_kl']:.3f}, {r['pairs_per_second'] / 1e6:.1f} M pairs/s, encode {r['encode_seconds']:.2f} s "
              f"({r['encode_seconds_per_megadim']:.1f} s per M dims), decode {r['decode_seconds_cpu']:.3f} s (CPU)")
    if args.out:
        write_json(args.out, {**provenance("benchmarks.pfr_speed", argv), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
