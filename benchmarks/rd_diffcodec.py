"""Rate-distortion and likelihood benchmark of diffcodec itself (real files, real bytes).

For every image: encode with the real codec, then decode every step's preview and record, per
coded step, the cumulative file size (bpp and bits/dim), the model's ideal rate up to that step
(sum of the per-step KLs the encoder recorded), RMSE / PSNR / MS-SSIM of the preview; the
lossless total; encode and decode seconds (network vs the rest).  Results are averaged per step
over images and written in CompressAI's results-JSON format, plus a DDPM Table-4-like markdown
table and the plots (RD against the baselines' JSONs, rate/distortion vs step, a progression
strip, lossless bars).

    python benchmarks/rd_diffcodec.py --images ../shared/data/kodak --out benchmarks/results/kodak \
        --device cuda [--model M] [--steps K] [--crop 256] [--limit N] [--bound-steps 100]
    python benchmarks/rd_diffcodec.py --smoke --out /tmp/x     # seconds, CPU, for the test suite
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    list_images, load_rgb, machine_description, ms_ssim, now_iso, psnr, rmse, write_results_json,
)

from diffcodec.checkpoint import Prior, load_prior  # noqa: E402
from diffcodec.codec import EncodeOptions, encode, iter_previews, progression_strip  # noqa: E402


BASELINES = ("jpeg", "webp", "avif", "jpegxl", "jpeg2000")  # the lossy baselines' JSON names


def center_crop(img: np.ndarray, size: int | None) -> np.ndarray:
    if not size:
        return img
    h, w = img.shape[:2]
    ch, cw = min(size, h), min(size, w)
    y, x = (h - ch) // 2, (w - cw) // 2
    return np.ascontiguousarray(img[y:y + ch, x:x + cw])


def coder_description(opts: EncodeOptions) -> str:
    """How the latent steps were coded, for the results' description."""
    if opts.method == "uq":
        return "UQ"
    pfr = f"PFR {opts.chunk_bits}+{opts.margin_bits} bits"
    if opts.method == "pfr":
        return pfr
    budget = "the device's default budget" if opts.pfr_budget is None else f"budget {opts.pfr_budget:g}"
    return f"auto: UQ or {pfr} (or cheaper settings that fit) per step, {budget}"


def run_image(img: np.ndarray, prior: Prior, opts: EncodeOptions, bound_steps: int | None = None,
              strip_png: Path | None = None) -> dict[str, Any]:
    """Encode one image, decode every step, and measure everything per step (and write the
    progression of its previews to ``strip_png`` if given)."""
    h, w = img.shape[:2]
    dims = 3 * h * w
    enc = encode(img, prior, opts)
    t0 = time.perf_counter()
    previews = list(iter_previews(enc.data, prior))
    decode_seconds = time.perf_counter() - t0
    if strip_png is not None:
        Image.fromarray(progression_strip([p.image for p in previews], max_frames=8)).save(strip_png)
    ideal_cum = np.concatenate([[0.0], np.cumsum([s.ideal_bits for s in enc.steps])])
    steps = []
    for p, ideal in zip(previews, ideal_cum):
        steps.append({
            "step": p.step, "timestep": p.timestep, "bytes": p.bytes, "bpp": 8 * p.bytes / (h * w),
            "bits_per_dim": 8 * p.bytes / dims, "ideal_bits_per_dim": ideal / dims,
            "rmse": rmse(p.image, img), "psnr": psnr(p.image, img), "ms_ssim": ms_ssim(p.image, img),
            "lossless": p.lossless,
        })
    out = {
        "height": h, "width": w, "bytes": len(enc.data), "lossless": enc.lossless,
        "encode_seconds": enc.seconds, "encode_network_seconds": enc.net_seconds, "decode_seconds": decode_seconds,
        "latent_bits_per_dim": sum(8 * s.bytes for s in enc.steps if s.kind == "latent") / dims,
        "final_bits_per_dim": sum(8 * s.bytes for s in enc.steps if s.kind == "final") / dims,
        "ideal_latent_bits_per_dim": sum(s.ideal_bits for s in enc.steps if s.kind == "latent") / dims,
        "ideal_final_bits_per_dim": sum(s.ideal_bits for s in enc.steps if s.kind == "final") / dims,
        "header_bytes": previews[0].bytes, "steps": steps,
        "latent_coders": [s.extra.get("method", enc.header.method) for s in enc.steps if s.kind == "latent"],
    }
    if bound_steps:
        from diffcodec.likelihood import bits_per_dim

        out["bound_bits_per_dim"] = bits_per_dim(img, prior, bound_steps).total
        out["bound_steps"] = bound_steps
    return out


def aggregate(per_image: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean per step over images (every image has the same number of steps)."""
    runs = list(per_image.values())
    n_steps = min(len(r["steps"]) for r in runs)
    mean = lambda key: [float(np.mean([r["steps"][i][key] for r in runs])) for i in range(n_steps)]  # noqa: E731
    table = {k: mean(k) for k in ("bpp", "bits_per_dim", "ideal_bits_per_dim", "rmse", "psnr", "ms_ssim")}
    table["step"] = list(range(n_steps))
    table["timestep"] = [runs[0]["steps"][i]["timestep"] for i in range(n_steps)]
    summary = {k: float(np.mean([r[k] for r in runs])) for k in (
        "latent_bits_per_dim", "final_bits_per_dim", "ideal_latent_bits_per_dim", "ideal_final_bits_per_dim",
        "encode_seconds", "encode_network_seconds", "decode_seconds")}
    summary["lossless_bits_per_dim"] = float(np.mean([r["steps"][-1]["bits_per_dim"] for r in runs]))
    summary["ideal_bits_per_dim"] = float(np.mean([r["steps"][-1]["ideal_bits_per_dim"] for r in runs]))
    if all("bound_bits_per_dim" in r for r in runs):
        summary["bound_bits_per_dim"] = float(np.mean([r["bound_bits_per_dim"] for r in runs]))
    return {"per_step": table, "summary": summary}


def table4_markdown(per_step: dict[str, list]) -> str:
    """DDPM Table 4's analog: per coded step, the rate so far and the preview's distortion."""
    lines = ["| step | from t | rate (bits/dim) | ideal (bits/dim) | bpp | RMSE [0,255] | PSNR (dB) |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    def num(v, digits: int) -> str:  # JSON stores an infinite PSNR (lossless) as null
        return "inf" if v is None or v == float("inf") else f"{v:.{digits}f}"

    for i in range(len(per_step["step"])):
        t = per_step["timestep"][i]
        lines.append(f"| {per_step['step'][i]} | {'x_0' if t < 0 else t} | {per_step['bits_per_dim'][i]:.4f} | "
                     f"{per_step['ideal_bits_per_dim'][i]:.4f} | {per_step['bpp'][i]:.4f} | "
                     f"{per_step['rmse'][i]:.3f} | {num(per_step['psnr'][i], 2)} |")
    return "\n".join(lines)


def plot_rate_distortion_vs_step(per_step: dict[str, list], out_png: Path) -> None:
    """DDPM Figure 5's analog: distortion and rate against the coded step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    a.plot(per_step["step"], per_step["rmse"], marker="o")
    a.set_xlabel("coded steps received")
    a.set_ylabel("RMSE of the x_0 preview [0, 255]")
    b.plot(per_step["step"], per_step["bits_per_dim"], marker="o", label="file (real bytes)")
    b.plot(per_step["step"], per_step["ideal_bits_per_dim"], marker=".", label="ideal (sum of KLs)")
    b.set_xlabel("coded steps received")
    b.set_ylabel("cumulative rate [bits/dim]")
    b.legend()
    for ax in (a, b):
        ax.grid(alpha=0.4)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, help="folder of images")
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--model", default=None, help="checkpoint (default: shipped model)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=None, help="coded latent steps (default: codec default)")
    ap.add_argument("--tile", type=int, default=None)
    ap.add_argument("--method", choices=["auto", "uq", "pfr"], default=None, help="latent coder (default: codec's)")
    ap.add_argument("--pfr-budget", type=float, default=None, help="auto: PFR search budget per step")
    ap.add_argument("--crop", type=int, default=0, help="centre-crop images to this size (CPU runs)")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N images")
    ap.add_argument("--bound-steps", type=int, default=0, help="also compute the bound with this chain length")
    ap.add_argument("--baselines", type=Path, default=None, help="folder of baseline JSONs to plot against")
    ap.add_argument("--smoke", action="store_true", help="one small generated image, for tests")
    args = ap.parse_args(argv)

    prior = load_prior(args.model, args.device)
    opts = EncodeOptions(seed=0)
    if args.steps:
        opts.steps = args.steps
    if args.tile is not None:
        opts.tile = args.tile
    if args.method:
        opts.method = args.method
    opts.pfr_budget = args.pfr_budget
    if args.smoke:
        from skimage import data

        images = {"astronaut_32": np.asarray(Image.fromarray(data.astronaut()).resize((32, 32)))}
    else:
        paths = list_images(args.images)[: args.limit or None]
        images = {p.name: center_crop(load_rgb(p), args.crop) for p in paths}
    per_image = {}
    args.out.mkdir(parents=True, exist_ok=True)
    for i, (name, img) in enumerate(images.items()):
        strip = args.out / "diffcodec_progression.png" if i == 0 else None
        per_image[name] = r = run_image(img, prior, opts, args.bound_steps or None, strip)
        print(f"{name}: {r['steps'][-1]['bits_per_dim']:.4f} bits/dim lossless "
              f"(ideal {r['steps'][-1]['ideal_bits_per_dim']:.4f}), enc {r['encode_seconds']:.1f} s, "
              f"dec {r['decode_seconds']:.1f} s", flush=True)
    agg = aggregate(per_image)
    ps = agg["per_step"]
    lossy = [i for i, r in enumerate(ps["rmse"]) if r > 0]
    n = len(images)
    json_path = write_results_json(
        args.out / "diffcodec.json", "diffcodec",
        f"diffcodec ({Path(prior.source).name}, {opts.steps} steps, {coder_description(opts)}, tile {opts.tile}) "
        f"on {n} image(s)"
        + (f", centre crops {args.crop}px" if args.crop else ""),
        {"bpp": [ps["bpp"][i] for i in lossy], "psnr-rgb": [ps["psnr"][i] for i in lossy],
         "ms-ssim-rgb": [ps["ms_ssim"][i] for i in lossy],
         "encoding_time": [agg["summary"]["encode_seconds"]] * len(lossy),
         "decoding_time": [agg["summary"]["decode_seconds"]] * len(lossy)},
        per_step=ps, summary=agg["summary"], per_image=per_image, model_fingerprint=prior.fingerprint,
        machine=machine_description(), command=" ".join(sys.argv), date=now_iso(), device=args.device,
    )
    (args.out / "diffcodec_table4.md").write_text(table4_markdown(ps) + "\n")
    plot_rate_distortion_vs_step(ps, args.out / "diffcodec_rate_distortion_vs_step.png")
    if args.baselines and args.baselines.is_dir():
        from plots import plot_lossless_bars, plot_rd

        jsons = [args.baselines / f"{c}.json" for c in BASELINES if (args.baselines / f"{c}.json").exists()]
        plot_rd([*jsons, json_path], args.out / "rd_psnr.png")
        if (args.baselines / "lossless.json").exists():
            extra = {"diffcodec (file)": agg["summary"]["lossless_bits_per_dim"],
                     "diffcodec (ideal)": agg["summary"]["ideal_bits_per_dim"]}
            if "bound_bits_per_dim" in agg["summary"]:
                extra["diffcodec (bound)"] = agg["summary"]["bound_bits_per_dim"]
            plot_lossless_bars(args.baselines / "lossless.json", extra, args.out / "lossless_bars.png")
    print(table4_markdown(ps))
    print({k: round(v, 4) for k, v in agg["summary"].items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
