"""Throughput of the PFR encoder's search and of its decoder on one device.

    python benchmarks/pfr_speed.py --size 64 --device cpu
    python benchmarks/pfr_speed.py --size 512 --device cuda --kl 0.02,0.2,1.0

A synthetic latent step of size x size x 3 dims whose normalised offsets (mu_q - mu_p) / sigma_q
are Gaussian with the variance that gives KL(q || p') = ``--kl`` bits/dim: the encoder's search
(candidate x dim-pair evaluations per second, the unit of ``--pfr-budget``), its bits against
the KL, and the decoder's time.  The search cost per dim is about 2**(chunk_bits + margin) / 2
pair evaluations whatever the KL, so this rate says which image sizes ``auto`` can afford.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_description, now_iso  # noqa: E402

from diffcodec import pfr  # noqa: E402
from diffcodec.codec import DEFAULT_CHUNK_BITS, DEFAULT_MARGIN_BITS, TileGrid  # noqa: E402


def run(size: int, kl: float, device: str, chunk_bits: int, margin: int, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    var = 2.0 ** (2.0 * kl) - 1.0  # KL-optimal r^2 = 1 + mean(delta^2) gives KL = log2(r) bits/dim
    mu_p = torch.randn((3, size, size), generator=gen, dtype=torch.float64)
    mu_q = mu_p + math.sqrt(var) * torch.randn((3, size, size), generator=gen, dtype=torch.float64)
    grid = TileGrid(3, size, size, 64)
    t0 = time.perf_counter()
    step = pfr.encode_step(mu_q, mu_p, 1.0, grid, seed, 0, chunk_bits, margin, device)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    enc = time.perf_counter() - t0
    t0 = time.perf_counter()
    x = pfr.decode_step(step.codes, step.offset_code, step.std_code, step.stream, step.raw, mu_p, 1.0, grid, seed,
                        0, chunk_bits, margin, "cpu")
    dec = time.perf_counter() - t0
    assert torch.allclose(x, step.x.cpu(), rtol=0, atol=1e-9)
    s = step.stats
    dims = 3 * size * size
    return {"size": size, "kl_bits_per_dim": kl, "device": device, "chunk_bits": chunk_bits, "margin": margin,
            "chunks": s["chunks"], "kl_prior_bits": s["kl_prior_bits"], "coded_bits": s["index_bits"],
            "coded_over_kl": s["index_bits"] / s["kl_prior_bits"], "candidate_pairs": s["candidates"],
            "search_seconds": s["search_seconds"], "pairs_per_second": s["candidates"] / s["search_seconds"],
            "encode_seconds": enc, "decode_seconds_cpu": dec, "encode_seconds_per_megadim": enc / dims * 1e6}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--kl", default="0.02,0.2,1.0", help="KL(q || p') in bits/dim, comma-separated")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--chunk-bits", type=int, default=DEFAULT_CHUNK_BITS)
    ap.add_argument("--margin", type=int, default=DEFAULT_MARGIN_BITS)
    ap.add_argument("--out", type=Path, default=None, help="JSON output")
    args = ap.parse_args(argv)
    rows = [run(args.size, float(k), args.device, args.chunk_bits, args.margin) for k in args.kl.split(",")]
    for r in rows:
        print(f"{r['size']}px KL {r['kl_bits_per_dim']:.2f} b/dim: {r['chunks']} chunks, coded/KL "
              f"{r['coded_over_kl']:.3f}, {r['pairs_per_second'] / 1e6:.1f} M pairs/s, encode {r['encode_seconds']:.2f} s "
              f"({r['encode_seconds_per_megadim']:.1f} s per M dims), decode {r['decode_seconds_cpu']:.3f} s (CPU)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": machine_description(), "date": now_iso(),
                                        "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
