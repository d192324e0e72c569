"""Latent-step coders side by side: universal quantization (UQ) against chunked PFR.

    python benchmarks/pfr_vs_uq.py --images ../shared/data/kodak --image kodim23.png --crop 64 \
        --model /tmp/interim_small.pt --chains 8:2,16:1,32:1 --chunk-bits 8 --t-min 0 --out /tmp/pfr_vs_uq.json
    python benchmarks/pfr_vs_uq.py --images ../shared/data/kodak --model /tmp/interim_small.pt \
        --chains 8:2 --chunk-bits 8,12,16 --fixed-region 16,16,16

For every chain (steps:spacing) and coder (UQ, then PFR at each chunk size) it encodes the crop
losslessly, decodes it (checking the round trip), and prints per latent step the chunk's coded
bits, the step's KL under the model (StepStats.ideal_bits) and their ratio, PFR's own prior KL
and search statistics, then the totals: file bits/dim, encode and decode seconds.

``--fixed-region Y,X,S`` instead records the posteriors (mu_q, mu_p) of the UQ chain and codes
the S x S region at (Y, X) of each recorded step with UQ and with PFR at every chunk size: the
same inputs for every coder, which isolates the effect of chunk_bits (and keeps chunk_bits 16
affordable on a CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_rgb, machine_description, now_iso  # noqa: E402
from rd_diffcodec import center_crop  # noqa: E402

import diffcodec.codec as codec  # noqa: E402
from diffcodec import pfr  # noqa: E402
from diffcodec.checkpoint import load_prior  # noqa: E402
from diffcodec.codec import EncodeOptions, TileGrid, decode, encode  # noqa: E402
from diffcodec.container import PfrPayload, StepPayload  # noqa: E402
from diffcodec.entropy import encode_gaussian  # noqa: E402


def _chains(s: str) -> list[tuple[int, float]]:
    out = []
    for item in s.split(","):
        steps, _, spacing = item.partition(":")
        out.append((int(steps), float(spacing or 1.0)))
    return out


def run_one(img: np.ndarray, prior, steps: int, spacing: float, method: str, chunk_bits: int, margin: int,
            seed: int, t_min: int) -> dict:
    opts = EncodeOptions(steps=steps, t_min=t_min, spacing=spacing, seed=seed, method=method, chunk_bits=chunk_bits,
                         margin_bits=margin)
    res = encode(img, prior, opts)
    t0 = time.perf_counter()
    out = decode(res.data, prior)
    dec = time.perf_counter() - t0
    if not np.array_equal(np.asarray(out.image.convert("RGB")), img):
        raise SystemExit(f"{method}: round trip is not lossless")
    dims = img.size
    rows = [{"timestep": s.timestep, "kind": s.kind, "bits": 8 * s.bytes, "ideal_bits": s.ideal_bits,
             "ratio": 8 * s.bytes / s.ideal_bits if s.ideal_bits > 0 else None, **s.extra} for s in res.steps]
    latent = [r for r in rows if r["kind"] == "latent"]
    return {"method": method, "steps": steps, "spacing": spacing, "chunk_bits": chunk_bits if method == "pfr" else None,
            "margin": margin if method == "pfr" else None, "file_bits_per_dim": 8 * len(res.data) / dims,
            "latent_bits_per_dim": sum(r["bits"] for r in latent) / dims,
            "latent_ideal_bits_per_dim": sum(r["ideal_bits"] for r in latent) / dims,
            "encode_seconds": res.seconds, "decode_seconds": dec, "net_seconds": res.net_seconds, "rows": rows}


def print_run(r: dict) -> None:
    name = r["method"] + (f" chunk_bits={r['chunk_bits']} margin={r['margin']}" if r["method"] == "pfr" else "")
    print(f"\n== steps={r['steps']} spacing={r['spacing']:g} {name}")
    print(f"{'t':>5} {'kind':>6} {'bits':>9} {'ideal':>9} {'bits/ideal':>10} {'KL(q|pp)':>9} {'chunks':>6} "
          f"{'dims/ch':>7} {'>cap':>5} {'top-oct':>7} {'search s':>8}")
    for x in r["rows"]:
        ratio = f"{x['ratio']:.3f}" if x["ratio"] else "-"
        extra = (f"{x['kl_prior_bits']:>9.1f} {x['chunks']:>6} {x['mean_chunk_dims']:>7.1f} {x['over_cap']:>5} "
                 f"{x['top_octave']:>7} {x['search_seconds']:>8.1f}") if "chunks" in x else ""
        print(f"{x['timestep']:>5} {x['kind']:>6} {x['bits']:>9} {x['ideal_bits']:>9.1f} {ratio:>10} {extra}")
    print(f"file {r['file_bits_per_dim']:.4f} bits/dim (latents {r['latent_bits_per_dim']:.4f}, their KL "
          f"{r['latent_ideal_bits_per_dim']:.4f}); encode {r['encode_seconds']:.1f} s (net {r['net_seconds']:.1f} s), "
          f"decode {r['decode_seconds']:.1f} s")


def fixed_region(img: np.ndarray, prior, steps: int, spacing: float, region: tuple[int, int, int],
                 chunk_bits: list[int], margin: int, seed: int, t_min: int) -> list[dict]:
    """UQ and PFR step payloads (with the 11-byte chunk framing) on the UQ chain's posteriors."""
    recorded, (y, x, size) = [], region
    uq_encode = codec._LATENT_CODERS["uq"][0]

    def spy(chain, n, j, mu_q, out, ideal, opt):
        recorded.append((n, chain.header.timesteps[j], chain.sigma_q(j), mu_q[0, :, y:y + size, x:x + size].clone(),
                         out["mean"][0, :, y:y + size, x:x + size].clone()))
        return uq_encode(chain, n, j, mu_q, out, ideal, opt)

    codec._LATENT_CODERS["uq"] = (spy, codec._LATENT_CODERS["uq"][1])
    try:
        encode(img, prior, EncodeOptions(steps=steps, t_min=t_min, spacing=spacing, seed=seed))
    finally:
        codec._LATENT_CODERS["uq"] = (uq_encode, codec._LATENT_CODERS["uq"][1])
    rows = []
    print(f"\n== fixed posteriors of the UQ chain steps={steps} spacing={spacing:g}, region {size}x{size} at ({y},{x})")
    print(f"{'t':>5} {'coder':>7} {'bits':>7} {'KL(q|pp)':>9} {'chunks':>6} {'uncert':>6} {'binds':>6} {'search s':>8}")
    for n, t, sigma_q, mu_q, mu_p in recorded:
        grid = TileGrid(3, size, size, 64)
        delta = ((mu_q - mu_p) / sigma_q).numpy()
        u = np.random.default_rng(seed).uniform(-0.5, 0.5, delta.shape)
        k = np.rint(delta / np.sqrt(12.0) - u)
        codes = grid.fit(k + u)
        stream = encode_gaussian(k.astype(np.int32), -u, grid.expand(codes), int(k.min()), int(k.max()))
        rows.append({"timestep": t, "coder": "uq", "bits": 8 * (11 + len(StepPayload(
            0.0, int(k.min()), int(k.max()), codes, stream).to_bytes()))})
        print(f"{t:>5} {'uq':>7} {rows[-1]['bits']:>7}")
        for cb in chunk_bits:
            st = pfr.encode_step(mu_q, mu_p, sigma_q, grid, seed, n, cb, margin)
            bits = 8 * (11 + len(PfrPayload(0.0, cb, margin, st.offset_code, st.std_code, st.codes, st.stream,
                                            st.raw).to_bytes()))
            rows.append({"timestep": t, "coder": f"pfr/{cb}", "bits": bits, **st.stats})
            s = st.stats
            print(f"{t:>5} {'pfr/' + str(cb):>7} {bits:>7} {s['kl_prior_bits']:>9.1f} {s['chunks']:>6} "
                  f"{s['uncertified']:>6} {s['cap_binds']:>6.1f} {s['search_seconds']:>8.1f}")
            sys.stdout.flush()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, required=True, help="folder of images")
    ap.add_argument("--image", default="kodim23.png", help="file name inside --images")
    ap.add_argument("--crop", type=int, default=64, help="centre crop size (0 = whole image)")
    ap.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--chains", type=_chains, default=_chains("8:2,16:1,32:1"), help="steps:spacing,...")
    ap.add_argument("--chunk-bits", type=lambda s: [int(x) for x in s.split(",")], default=[8])
    ap.add_argument("--margin", type=int, default=6)
    ap.add_argument("--t-min", type=int, default=0, help="timestep of the last latent step")
    ap.add_argument("--methods", default="uq,pfr")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fixed-region", default=None, help="Y,X,S: code recorded posteriors of this region")
    ap.add_argument("--out", type=Path, default=None, help="write all results as JSON")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    prior = load_prior(args.model, args.device)
    img = center_crop(load_rgb(args.images / args.image), args.crop)
    runs = []
    if args.fixed_region:
        region = tuple(int(v) for v in args.fixed_region.split(","))
        for steps, spacing in args.chains:
            runs.append({"steps": steps, "spacing": spacing, "rows": fixed_region(
                img, prior, steps, spacing, region, args.chunk_bits, args.margin, args.seed, args.t_min)})
        if args.out:
            args.out.write_text(json.dumps({"machine": machine_description(), "date": now_iso(), "runs": runs}))
        return 0
    for steps, spacing in args.chains:
        for method in args.methods.split(","):
            for cb in args.chunk_bits if method == "pfr" else [0]:
                r = run_one(img, prior, steps, spacing, method, cb, args.margin, args.seed, args.t_min)
                print_run(r)
                runs.append(r)
                sys.stdout.flush()
    print(f"\n{'steps':>5} {'space':>5} {'method':>12} {'file b/dim':>10} {'latent b/dim':>12} {'latent KL':>9} "
          f"{'enc s':>7} {'dec s':>6}")
    for r in runs:
        name = r["method"] + (f"/{r['chunk_bits']}" if r["chunk_bits"] else "")
        print(f"{r['steps']:>5} {r['spacing']:>5g} {name:>12} {r['file_bits_per_dim']:>10.4f} "
              f"{r['latent_bits_per_dim']:>12.4f} {r['latent_ideal_bits_per_dim']:>9.4f} {r['encode_seconds']:>7.1f} "
              f"{r['decode_seconds']:>6.1f}")
    if args.out:
        args.out.write_text(json.dumps({"machine": machine_description(), "date": now_iso(), "image": args.image,
                                        "crop": args.crop, "model": args.model or "default", "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
