"""Choose the codec's defaults by measurement: lossless file size against the encoder's effort,
a forced number of latent steps and last latent timestep t_min, the latent coder, the
side-information tile and the network's self-ensemble (``--symmetry``, at the timesteps up to
``--symmetry-max-t``).

Usage (from the repository root)::

    python -m benchmarks.sweep_steps --images ../shared/data/kodak --crop 128 --limit 6 \\
        --effort 1,3,5,7 --out benchmarks/results/sweep_effort.json
    python -m benchmarks.sweep_steps --images ../shared/data/kodak --crop 128 --limit 6 \\
        --steps plan,4,8,12,16 --t-min plan,0,20 --tile 0,32,64 --out benchmarks/results/sweep.json
    python -m benchmarks.sweep_steps --images <crops> --effort 5,9 --symmetry plan,1,2,8
    python -m benchmarks.sweep_steps --images <crops> --effort 5 --cost-model <benchmarks.calibrate JSON>

``--steps``, ``--t-min`` and ``--symmetry`` take comma-separated values; ``plan`` leaves the
choice to the trajectory planner and the effort (the default).  Every combination of the lists is one setting.  Prints one
row per setting: mean real bits/dim of the lossless file, of its latent steps and of its final
step, the model's ideal bits/dim of the same chain (sum of KLs + decoder NLL), the plan's
expected bits/dim (cost model; '–' for a model without an x_0 error table), the file's ratio to
the ideal, encode seconds and network calls.  The JSON also holds per image: the timesteps, the
coder and bits of each step, the cost model's expectation of each, encode seconds and network
calls (``python -m benchmarks.calibrate`` fits the cost model to them).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmarks.common import load_images, provenance, write_json
from diffcodec.checkpoint import Prior, load_prior
from diffcodec.codec import EncodeOptions, encode
from diffcodec.errors import OptionError
from diffcodec.kinds import LatentMethod, values
from diffcodec.trajectory import MAX_EFFORT, CostModel

#: Per-image measurements averaged into a row.
ROW_MEANS = ("file_bits_per_dim", "latent_bits_per_dim", "final_bits_per_dim", "ideal_bits_per_dim",
             "expected_bits_per_dim", "encode_seconds", "network_calls", "network_evaluations")


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def _ints_or_plan(s: str) -> list[int | None]:
    """``"plan,4,8"`` -> ``[None, 4, 8]`` (None: the planner decides)."""
    return [None if x.strip() == "plan" else int(x) for x in s.split(",") if x.strip()]


def _chains(s: str) -> list[tuple[int, ...] | None]:
    """``"plan;1,14,999"`` -> ``[None, (1, 14, 999)]`` (None: the planner decides)."""
    return [None if c.strip() == "plan" else tuple(int(x) for x in c.split(",") if x.strip())
            for c in s.split(";") if c.strip()]


def measure(img: np.ndarray, prior: Prior, opts: EncodeOptions) -> dict[str, Any]:
    """Encode one image losslessly and record what the sweep compares."""
    dims = img.size
    r = encode(img, prior, opts)
    if not r.lossless:
        raise RuntimeError("the sweep's encode did not reach the final step")
    return {
        "file_bits_per_dim": 8 * len(r.data) / dims,
        "latent_bits_per_dim": sum(8 * s.bytes for s in r.steps if not s.kind.is_final) / dims,
        "final_bits_per_dim": sum(8 * s.bytes for s in r.steps if s.kind.is_final) / dims,
        "ideal_bits_per_dim": sum(s.ideal_bits for s in r.steps) / dims,
        "expected_bits_per_dim": r.plan.expected_bits_per_dim,
        "timesteps": list(r.plan.timesteps),
        "coders": [s.kind.label for s in r.steps],
        "dims": dims, "step_bits": [8 * s.bytes for s in r.steps],  # each chunk's bits, in coding order (benchmarks.calibrate)
        "step_expected_bits_per_dim": list(r.plan.expected_steps),  # the cost model's, latent steps (last: + final)
        "pfr_bits": [r.plan.chunk_bits, r.plan.margin_bits],  # what PFR steps searched with (chunk, margin)
        "symmetry": r.header.symmetry, "symmetry_max_t": r.header.symmetry_max_t,
        "encode_seconds": r.seconds, "network_seconds": r.net_seconds, "network_calls": r.net_calls,
        "network_evaluations": r.net_evaluations,
    }


def _fmt(v: float, width: int, digits: int = 4) -> str:
    return f"{'–':>{width}}" if not math.isfinite(v) else f"{v:>{width}.{digits}f}"


def _pfr_pairs(text: str) -> list[tuple[int, int]]:
    """'5+3,7+1' -> [(5, 3), (7, 1)]: PFR chunk and margin bits."""
    try:
        return [tuple(int(v) for v in part.split("+", 1)) for part in text.split(",")]  # type: ignore[misc]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected chunk+margin pairs like 5+3,7+1, got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    defaults = EncodeOptions()
    ap = argparse.ArgumentParser(prog="python -m benchmarks.sweep_steps", description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--limit", type=int, default=6)
    ap.add_argument("--effort", type=_ints, default=[defaults.effort],
                    help=f"efforts 1..{MAX_EFFORT}, comma-separated (default {defaults.effort})")
    ap.add_argument("--steps", type=_ints_or_plan, default=[None],
                    help="forced latent steps, comma-separated; plan: the planner's (default)")
    ap.add_argument("--t-min", type=_ints_or_plan, default=[None],
                    help="forced last latent timesteps, comma-separated; plan: the planner's (default)")
    ap.add_argument("--timesteps", type=_chains, default=[None],
                    help="forced chains, ';'-separated, each its timesteps ascending and comma-separated, ending "
                         "at T - 1 (the coders are the planner's for them); plan: the planner's (default)")
    ap.add_argument("--tile", type=_ints, default=[defaults.tile], help=f"tiles in px (default {defaults.tile})")
    ap.add_argument("--method", choices=values(LatentMethod), default=LatentMethod(defaults.method).value)
    ap.add_argument("--pfr", type=_pfr_pairs, default=[None],
                    help="PFR chunk+margin bits, comma-separated, e.g. 5+3,7+1 (default: the effort's)")
    ap.add_argument("--symmetry", type=_ints_or_plan, default=[None],
                    help="network self-ensembles (1, 2, 4, 8), comma-separated; plan: the effort's (default)")
    ap.add_argument("--symmetry-max-t", type=_ints_or_plan, default=[None],
                    help="largest timesteps whose network calls are symmetrised, comma-separated (65535: all); "
                         "plan: the effort's (default)")
    ap.add_argument("--cost-model", type=Path, default=None,
                    help="plan with the constants a benchmarks.calibrate JSON fitted ('new'; default: the shipped ones)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    prior = load_prior(args.model, args.device)
    costs = CostModel(**json.loads(args.cost_model.read_text())["new"]) if args.cost_model else None
    images = load_images(args.images, args.limit, args.crop)
    rows = []
    print(f"{'effort':>6} {'pfr':>5} {'steps':>5} {'t_min':>5} {'tile':>4} {'sym':>4} {'file b/dim':>10} {'latent':>8} "
          f"{'final':>8} {'ideal':>8} {'expected':>8} {'file/ideal':>10} {'enc s':>7} {'calls':>5} {'evals':>5}")
    for effort, pfr, steps, t_min, chain, tile, sym, sym_t in itertools.product(
            args.effort, args.pfr, args.steps, args.t_min, args.timesteps, args.tile, args.symmetry,
            args.symmetry_max_t):
        chunk, margin = pfr or (None, None)
        opts = EncodeOptions(effort=effort, method=LatentMethod(args.method), steps=steps, t_min=t_min,
                             timesteps=chain, tile=tile,
                             seed=args.seed, pfr_chunk_bits=chunk, pfr_margin_bits=margin, symmetry=sym,
                             symmetry_max_t=sym_t, cost_model=costs)
        try:
            per_image = {name: measure(img, prior, opts) for name, img in images.items()}
        except OptionError as e:
            print(f"skip effort={effort} steps={steps} t_min={t_min} tile={tile}: {e}")
            continue
        row: dict[str, Any] = {"effort": effort, "steps": steps, "t_min": t_min,
                               "timesteps": list(chain) if chain else None, "tile": tile, "method": args.method,
                               "pfr_chunk_bits": chunk, "pfr_margin_bits": margin,
                               "symmetry": next(iter(per_image.values()))["symmetry"],
                               "symmetry_max_t": next(iter(per_image.values()))["symmetry_max_t"]}
        row.update({k: float(np.mean([m[k] for m in per_image.values()])) for k in ROW_MEANS})
        row["per_image"] = per_image
        rows.append(row)
        print(f"{effort:>6} {f'{chunk}+{margin}' if pfr else 'plan':>5} {steps or 'plan':>5} {'plan' if t_min is None else t_min:>5} {tile:>4} "
              f"{row['symmetry']:>4} {row['file_bits_per_dim']:>10.4f} {row['latent_bits_per_dim']:>8.4f} {row['final_bits_per_dim']:>8.4f} "
              f"{row['ideal_bits_per_dim']:>8.4f} {_fmt(row['expected_bits_per_dim'], 8)} "
              f"{row['file_bits_per_dim'] / row['ideal_bits_per_dim']:>10.3f} {row['encode_seconds']:>7.2f} "
              f"{row['network_calls']:>5.0f} {row['network_evaluations']:>5.0f}", flush=True)
    if args.out:
        write_json(args.out, {"rows": rows, "model": Path(prior.source).name, "model_fingerprint": prior.fingerprint,
                              "cost_model": str(args.cost_model) if args.cost_model else "default",
                              "method": args.method, "images": list(images), "crop": args.crop,
                              **provenance("benchmarks.sweep_steps", argv)})
    best = min(rows, key=lambda r: r["file_bits_per_dim"]) if rows else None
    if best:
        print("best:", {k: v for k, v in best.items() if k != "per_image"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
