"""Rate-distortion and likelihood benchmark of diffcodec itself (real files, real bytes).

For every image: plan and encode with the real codec, then decode every step's preview and
record the plan (timesteps, the coder of each latent step, the cost model's expected bits/dim),
and per coded step: its coder, its bytes, ideal bits (KL or decoder NLL) and entropy-coded bits,
the cumulative file size (bpp and bits/dim), the model's ideal and the plan's expected rate up
to that step, RMSE / PSNR / MS-SSIM of the decoded preview (and the encoder's own RMSE of it);
the lossless total; encode and decode seconds, network seconds and network calls.  With
``--bound-steps`` also the model's variational bound of each image and the file's gap to it.
Results are averaged per step over images and written in CompressAI's results-JSON format
(``diffcodec.json``), plus a DDPM Table-4-like markdown table and the plots (RD against the
baselines' JSONs, rate/distortion vs step, a progression strip, lossless bars).

Usage (from the repository root)::

    python -m benchmarks.rd_diffcodec --images ../shared/data/kodak --out benchmarks/results/kodak \\
        --device cuda [--model M] [--effort 5] [--method auto|uq|pfr] [--steps K] [--t-min T] \\
        [--crop 256] [--limit N] [--symmetry 1|2|4|8] [--bound-steps 100 [--bound-variance auto|model|analytic]] \\
        [--baselines benchmarks/results/kodak]
    python -m benchmarks.rd_diffcodec --smoke --out /tmp/x     # seconds, CPU, for the test suite
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from benchmarks.common import (
    BASELINES, LOSSLESS, VARIANCES, check_bound_variance, load_images, ms_ssim, plot_lossless_bars, plot_rd,
    provenance, psnr, pyplot, rmse, save_figure, table4_markdown, write_results_json,
)
from benchmarks.common import bound as model_bound
from diffcodec.checkpoint import Prior, load_prior
from diffcodec.codec import EncodeOptions, EncodeResult, encode, iter_previews
from diffcodec.errors import OptionError
from diffcodec.kinds import SYMMETRIES, LatentMethod, values
from diffcodec.report import progression_strip
from diffcodec.trajectory import MAX_EFFORT

#: Per-step quantities averaged over images (the keys of ``per_step`` besides step/timestep/kind).
STEP_MEANS = ("bpp", "bits_per_dim", "ideal_bits_per_dim", "expected_bits_per_dim", "step_bytes", "ideal_bits",
              "coded_bits", "rmse", "encoder_rmse", "psnr", "ms_ssim")
#: Per-image quantities averaged into the summary.
SUMMARY_MEANS = ("latent_bits_per_dim", "final_bits_per_dim", "header_bits_per_dim", "ideal_latent_bits_per_dim",
                 "ideal_final_bits_per_dim", "coded_latent_bits_per_dim", "coded_final_bits_per_dim",
                 "expected_bits_per_dim", "encode_seconds", "encode_network_seconds", "encode_network_calls",
                 "decode_seconds", "decode_network_seconds", "decode_network_calls")


def smoke_image() -> np.ndarray:
    """The ``--smoke`` image: scikit-image's astronaut, 32 x 32."""
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()).resize((32, 32)))


def encode_options(args: argparse.Namespace) -> EncodeOptions:
    """The encoder's options from the command line (the library's defaults where not given)."""
    return EncodeOptions(effort=args.effort, method=LatentMethod(args.method), steps=args.steps, t_min=args.t_min,
                         tile=args.tile, seed=args.seed, pfr_chunk_bits=args.pfr_chunk_bits,
                         pfr_margin_bits=args.pfr_margin_bits, symmetry=args.symmetry)


def plan_record(enc: EncodeResult) -> dict[str, Any]:
    """The trajectory the encoder planned (JSON-ready): timesteps (ascending, t_min first),
    coders (coding order), PFR settings and the cost model's expected bits/dim, in total and
    per latent step (the last one with the final step); NaN (null) and empty for a model
    without an x_0 error table."""
    p = enc.plan
    return {"timesteps": list(p.timesteps), "coders": [c.label for c in p.coders], "chunk_bits": p.chunk_bits,
            "margin_bits": p.margin_bits, "expected_bits_per_dim": p.expected_bits_per_dim,
            "expected_steps_bits_per_dim": list(p.expected_steps)}


def expected_cumulative(enc: EncodeResult) -> list[float]:
    """The plan's expected bits/dim after 0, 1, ..., K + 1 coded steps (NaN where the cost model
    does not say).  The plan's last per-step cost covers the last latent step and the final
    step together, so after the last latent step alone the expectation is NaN."""
    e = list(enc.plan.expected_steps)
    k = len(enc.plan.coders)
    cum = [0.0, *np.cumsum(e).tolist()]
    if len(e) == k + 1:  # a cost per latent step and one for the final step
        return cum
    if len(e) == k and k > 0:  # the last latent step and the final step as one cost
        return [*cum[:k], math.nan, cum[k]]
    return [math.nan] * (k + 2)


def run_image(img: np.ndarray, prior: Prior, opts: EncodeOptions, bound_steps: int | None = None,
              bound_variance: str = "model", strip_png: Path | None = None) -> dict[str, Any]:
    """Encode one image, decode every step, and measure everything per step (and write the
    progression of its previews to ``strip_png`` if given).  ``bound_steps`` (None: no bound;
    0: the full chain) also computes the model's bound of the image."""
    h, w = img.shape[:2]
    dims = 3 * h * w
    enc = encode(img, prior, opts)
    t0 = time.perf_counter()
    previews = list(iter_previews(enc.data, prior))
    decode_seconds = time.perf_counter() - t0
    if len(previews) != len(enc.steps) + 1:
        raise RuntimeError(f"{len(previews)} previews decoded for {len(enc.steps)} coded steps")
    if strip_png is not None:
        Image.fromarray(progression_strip([p.image for p in previews], max_frames=8)).save(strip_png)
    header_bytes = previews[0].bytes
    expected_cum = expected_cumulative(enc)
    steps, ideal_cum = [], 0.0
    for p in previews:
        s = enc.steps[p.step - 1] if p.step else None
        if s is not None:
            ideal_cum += s.ideal_bits
        steps.append({
            "step": p.step, "timestep": p.timestep, "kind": s.kind.label if s else None,
            "step_bytes": s.bytes if s else header_bytes, "ideal_bits": s.ideal_bits if s else 0.0,
            "coded_bits": s.coded_bits if s else 0.0, "encode_seconds": s.seconds if s else 0.0,
            "bytes": p.bytes, "bpp": 8 * p.bytes / (h * w), "bits_per_dim": 8 * p.bytes / dims,
            "ideal_bits_per_dim": ideal_cum / dims, "expected_bits_per_dim": expected_cum[p.step],
            "rmse": rmse(p.image, img), "encoder_rmse": enc.preview_rmse[p.step],
            "psnr": psnr(p.image, img), "ms_ssim": ms_ssim(p.image, img), "lossless": p.lossless,
            "decode_network_calls": p.net_calls,
        })

    def per_dim(final: bool, what: str) -> float:
        return sum(getattr(s, what) * (8 if what == "bytes" else 1)
                   for s in enc.steps if s.kind.is_final == final) / dims

    out = {
        "height": h, "width": w, "bytes": len(enc.data), "lossless": enc.lossless, "plan": plan_record(enc),
        "symmetry": enc.header.symmetry,
        "latent_coders": [s.kind.label for s in enc.steps if not s.kind.is_final],
        "final_coder": next((s.kind.label for s in enc.steps if s.kind.is_final), None),
        "header_bytes": header_bytes, "header_bits_per_dim": 8 * header_bytes / dims,
        "latent_bits_per_dim": per_dim(False, "bytes"), "final_bits_per_dim": per_dim(True, "bytes"),
        "ideal_latent_bits_per_dim": per_dim(False, "ideal_bits"),
        "ideal_final_bits_per_dim": per_dim(True, "ideal_bits"),
        "coded_latent_bits_per_dim": per_dim(False, "coded_bits"),
        "coded_final_bits_per_dim": per_dim(True, "coded_bits"),
        "expected_bits_per_dim": enc.plan.expected_bits_per_dim,
        "encode_seconds": enc.seconds, "encode_network_seconds": enc.net_seconds, "encode_network_calls": enc.net_calls,
        "decode_seconds": decode_seconds, "decode_network_seconds": previews[-1].net_seconds,
        "decode_network_calls": previews[-1].net_calls, "steps": steps,
    }
    if bound_steps is not None:
        terms = model_bound(img, prior, bound_steps or None, bound_variance)
        out.update(bound_bits_per_dim=terms.total, bound_steps=len(terms.timesteps), bound_variance=bound_variance,
                   gap_to_bound=steps[-1]["bits_per_dim"] - terms.total)
    return out


def _same(values_: list) -> Any:
    """The value all images share, else their distinct values joined by '/'."""
    distinct = list(dict.fromkeys(values_))
    return distinct[0] if len(distinct) == 1 else "/".join(str(v) for v in distinct)


def aggregate(per_image: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean per step over images (every image has the same number of steps with the same options
    and sizes; with different ones, the first ``min`` steps) and the summary."""
    runs = list(per_image.values())
    n_steps = min(len(r["steps"]) for r in runs)

    def mean(key: str, i: int) -> float:
        return float(np.mean([r["steps"][i][key] for r in runs]))

    table: dict[str, list] = {"step": list(range(n_steps)),
                              "timestep": [_same([r["steps"][i]["timestep"] for r in runs]) for i in range(n_steps)],
                              "kind": [_same([r["steps"][i]["kind"] for r in runs]) for i in range(n_steps)]}
    table.update({k: [mean(k, i) for i in range(n_steps)] for k in STEP_MEANS})
    summary = {k: float(np.mean([r[k] for r in runs])) for k in SUMMARY_MEANS}
    summary["lossless_bits_per_dim"] = float(np.mean([r["steps"][-1]["bits_per_dim"] for r in runs]))
    summary["ideal_bits_per_dim"] = float(np.mean([r["steps"][-1]["ideal_bits_per_dim"] for r in runs]))
    if all("bound_bits_per_dim" in r for r in runs):
        summary["bound_bits_per_dim"] = float(np.mean([r["bound_bits_per_dim"] for r in runs]))
        summary["gap_to_bound"] = summary["lossless_bits_per_dim"] - summary["bound_bits_per_dim"]
    return {"per_step": table, "summary": summary}


def describe(prior: Prior, opts: EncodeOptions, per_image: dict[str, dict[str, Any]]) -> str:
    """One line: the model, the options and the chain the encoder planned and used."""
    first = next(iter(per_image.values()))
    plan = first["plan"]
    ts = plan["timesteps"]
    used = Counter(c for r in per_image.values() for c in r["latent_coders"])
    coders = " + ".join(f"{n} {c}" for c, n in sorted(used.items()))
    finals = "/".join(sorted({r["final_coder"] or "none" for r in per_image.values()}))
    chains = {tuple(r["plan"]["timesteps"]) for r in per_image.values()}
    chain = f"{len(ts) - 1} latent steps t={ts[-1]}..{ts[0]}" + ("" if len(chains) == 1 else " (chains vary)")
    pfr = f", PFR {plan['chunk_bits']}+{plan['margin_bits']} bits" if "pfr" in used else ""
    return (f"diffcodec ({Path(prior.source).name}, effort {opts.effort}, method {LatentMethod(opts.method).value}: "
            f"{chain}, latent steps coded {coders} over {len(per_image)} image(s){pfr}, final {finals}, "
            f"tile {opts.tile})")


def plot_rate_distortion_vs_step(per_step: dict[str, list], out_png: Path, bound: float | None = None) -> Path:
    """DDPM Figure 5's analog: distortion and rate against the coded step (1200 x 480 px)."""
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    a.plot(per_step["step"], per_step["rmse"], marker="o")
    a.set_xlabel("coded steps received")
    a.set_ylabel("RMSE of the x_0 preview [0, 255]")
    b.plot(per_step["step"], per_step["bits_per_dim"], marker="o", label="file (real bytes)")
    b.plot(per_step["step"], per_step["ideal_bits_per_dim"], marker=".", label="ideal (sum of KLs)")
    if np.isfinite(per_step["expected_bits_per_dim"]).any():
        b.plot(per_step["step"], per_step["expected_bits_per_dim"], marker="x", linestyle=":",
               label="expected (plan's cost model)")
    if bound is not None:
        b.axhline(bound, color="black", linestyle="--", linewidth=1, label=f"model's bound {bound:.3f}")
    b.set_xlabel("coded steps received")
    b.set_ylabel("cumulative rate [bits/dim]")
    b.legend()
    for ax in (a, b):
        ax.grid(alpha=0.4)
    return save_figure(fig, out_png)


def main(argv: Sequence[str] | None = None) -> int:
    defaults = EncodeOptions()
    ap = argparse.ArgumentParser(prog="python -m benchmarks.rd_diffcodec", description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, help="folder of images")
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--model", default=None, help="checkpoint (default: shipped model)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--effort", type=int, default=defaults.effort, choices=range(1, MAX_EFFORT + 1),
                    metavar=f"1..{MAX_EFFORT}", help=f"encoder effort (default {defaults.effort})")
    ap.add_argument("--method", choices=values(LatentMethod), default=LatentMethod(defaults.method).value,
                    help="latent coder: the plan's per step (auto), or UQ / PFR for every step")
    ap.add_argument("--steps", type=int, default=None, help="force this many latent steps (default: the plan's)")
    ap.add_argument("--t-min", type=int, default=None, help="force the last latent timestep (default: the plan's)")
    ap.add_argument("--tile", type=int, default=defaults.tile, help="side-information tile in px (0: whole image)")
    ap.add_argument("--pfr-chunk-bits", type=int, default=None, help="PFR chunk bits (default: the effort's)")
    ap.add_argument("--pfr-margin-bits", type=int, default=None, help="PFR search margin (default: the effort's)")
    ap.add_argument("--symmetry", type=int, choices=SYMMETRIES, default=None,
                    help="network self-ensemble (default: the effort's)")
    ap.add_argument("--seed", type=int, default=0, help="shared seed of every file")
    ap.add_argument("--crop", type=int, default=0, help="centre-crop images to this size (CPU runs)")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N images")
    ap.add_argument("--bound-steps", type=int, default=None, metavar="N",
                    help="also compute the model's bound with an N-step chain (0: the full T) and the file's gap to it")
    ap.add_argument("--bound-variance", choices=("auto", *VARIANCES), default="auto",
                    help="reverse variances of the bound: auto = analytic when the model has an x_0 error table "
                         "(what the codec codes with), else the model's")
    ap.add_argument("--baselines", type=Path, default=None, help="folder of baseline JSONs to plot against")
    ap.add_argument("--smoke", action="store_true", help="one small generated image, for tests")
    args = ap.parse_args(argv)
    if not args.smoke and args.images is None:
        ap.error("--images is required (or --smoke)")

    prior = load_prior(args.model, args.device)
    opts = encode_options(args)
    bound_variance = args.bound_variance
    if bound_variance == "auto":
        bound_variance = "analytic" if prior.xstart_mse is not None else "model"
    if args.bound_steps is not None:
        try:
            check_bound_variance(prior, bound_variance)
        except OptionError as e:
            ap.error(f"--bound-steps with {bound_variance} variances: {e}")
    images = {"astronaut_32": smoke_image()} if args.smoke else load_images(args.images, args.limit, args.crop)
    per_image = {}
    args.out.mkdir(parents=True, exist_ok=True)
    for i, (name, img) in enumerate(images.items()):
        strip = args.out / "diffcodec_progression.png" if i == 0 else None
        per_image[name] = r = run_image(img, prior, opts, args.bound_steps, bound_variance, strip)
        bound = (f", bound {r['bound_bits_per_dim']:.4f} (gap {r['gap_to_bound']:+.4f})"
                 if "bound_bits_per_dim" in r else "")
        print(f"{name}: {r['steps'][-1]['bits_per_dim']:.4f} bits/dim lossless "
              f"(ideal {r['steps'][-1]['ideal_bits_per_dim']:.4f}, expected {r['expected_bits_per_dim']:.4f}{bound}), "
              f"coders {' '.join(r['latent_coders'])} {r['final_coder']}, "
              f"enc {r['encode_seconds']:.1f} s ({r['encode_network_calls']} net calls), "
              f"dec {r['decode_seconds']:.1f} s ({r['decode_network_calls']} net calls)", flush=True)
    agg = aggregate(per_image)
    ps, summary = agg["per_step"], agg["summary"]
    lossy = [i for i, r in enumerate(ps["rmse"]) if r > 0]
    description = describe(prior, opts, per_image) + (f", centre crops {args.crop}px" if args.crop else "")
    json_path = write_results_json(
        args.out / "diffcodec.json", "diffcodec", description,
        {"bpp": [ps["bpp"][i] for i in lossy], "psnr-rgb": [ps["psnr"][i] for i in lossy],
         "ms-ssim-rgb": [ps["ms_ssim"][i] for i in lossy],
         "encoding_time": [summary["encode_seconds"]] * len(lossy),
         "decoding_time": [summary["decode_seconds"]] * len(lossy)},
        per_step=ps, summary=summary, per_image=per_image, plan=per_image[next(iter(per_image))]["plan"],
        options={"effort": opts.effort, "method": LatentMethod(opts.method).value, "steps": opts.steps,
                 "t_min": opts.t_min, "tile": opts.tile, "seed": opts.seed, "pfr_chunk_bits": opts.pfr_chunk_bits,
                 "pfr_margin_bits": opts.pfr_margin_bits, "symmetry": per_image[next(iter(per_image))]["symmetry"],
                 "crop": args.crop, "bound_steps": args.bound_steps,
                 "bound_variance": bound_variance if args.bound_steps is not None else None},
        model=Path(prior.source).name, model_fingerprint=prior.fingerprint, device=args.device,
        **provenance("benchmarks.rd_diffcodec", argv),
    )
    (args.out / "diffcodec_table4.md").write_text(table4_markdown(ps) + "\n")
    plot_rate_distortion_vs_step(ps, args.out / "diffcodec_rate_distortion_vs_step.png",
                                 summary.get("bound_bits_per_dim"))
    if args.baselines and args.baselines.is_dir():
        jsons = [args.baselines / f"{c}.json" for c in BASELINES if (args.baselines / f"{c}.json").exists()]
        plot_rd([*jsons, json_path], args.out / "rd_psnr.png")
        if (args.baselines / f"{LOSSLESS}.json").exists():
            extra = {"diffcodec (file)": summary["lossless_bits_per_dim"],
                     "diffcodec (ideal)": summary["ideal_bits_per_dim"]}
            if "bound_bits_per_dim" in summary:
                extra["diffcodec (bound)"] = summary["bound_bits_per_dim"]
            plot_lossless_bars(args.baselines / f"{LOSSLESS}.json", extra, args.out / "lossless_bars.png")
    print(table4_markdown(ps))
    print({k: round(v, 4) for k, v in summary.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
