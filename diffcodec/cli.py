"""The ``diffcodec`` command: a thin layer over the library (codec, likelihood, train, sample)."""

from __future__ import annotations

import json
import sys
from dataclasses import fields
from pathlib import Path

import click
import numpy as np

from .errors import DiffcodecError

MODEL_HELP = "model checkpoint (default: the model shipped with diffcodec)"


class _Group(click.Group):
    """Turns every error into one line on stderr and a non-zero exit, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except (DiffcodecError, ValueError, OSError) as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as e:  # noqa: BLE001 - last resort: still one line
            click.echo(f"error: internal error ({type(e).__name__}: {e})", err=True)
            sys.exit(2)


def _device(name: str):
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise DiffcodecError("--device cuda asked for, but no CUDA device is available")
    return name


def _prior(model, device):
    from .checkpoint import load_prior

    return load_prior(model, _device(device))


def _bar(quiet: bool, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=quiet, leave=False, dynamic_ncols=True, file=sys.stderr)


@click.group(cls=_Group)
@click.version_option(package_name="diffcodec")
def main() -> None:
    """diffcodec: a progressive, lossy-to-lossless image codec with a DDPM prior."""


device_option = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
                             show_default=True, help="where the network runs")
model_option = click.option("--model", type=click.Path(dir_okay=False), default=None, help=MODEL_HELP)
quiet_option = click.option("--quiet", "-q", is_flag=True, help="no progress bar or summary")


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="output .dfc (one input)")
@click.option("--out-dir", type=click.Path(file_okay=False), help="output folder (several inputs)")
@click.option("--steps", type=click.IntRange(1, 4000), default=None,
              help="number of coded latent steps (default: the measured best, see README)")
@click.option("--t-min", type=click.IntRange(0), default=None, help="timestep of the last latent step")
@click.option("--tile", type=click.IntRange(0, 16384), default=None, help="side-information tile (px, 0 = whole)")
@click.option("--spacing", type=click.FloatRange(0.25, 8), default=None,
              help="timestep spacing power (1 = even, >1 = more steps at low noise)")
@click.option("--stop-after", type=click.IntRange(0), default=None, help="lossy: code only this many latent steps")
@click.option("--max-bpp", type=click.FloatRange(0, min_open=True), default=None,
              help="lossy: stop before the file exceeds this many bits per pixel")
@click.option("--seed", type=int, default=None, help="shared seed (default: random)")
@click.option("--method", type=click.Choice(["auto", "uq", "pfr"]), default=None,
              help="latent-step coder: universal quantization, chunked Poisson functional representation, or "
                   "auto (default): per step the smaller of the two, PFR tried within --pfr-budget")
@click.option("--chunk-bits", type=click.IntRange(1, 20), default=None,
              help="PFR: target bits per chunk (the search costs 2**(N + margin) candidates per dim)")
@click.option("--pfr-budget", type=click.FloatRange(0), default=None,
              help="auto: most PFR search work per step, in candidate x dim-pair evaluations "
                   "(default 2**26 on CPU, about 10 s of a core; 2**36 on CUDA)")
@model_option
@device_option
@quiet_option
def encode(inputs, output, out_dir, steps, t_min, tile, spacing, stop_after, max_bpp, seed, method, chunk_bits,
           pfr_budget, model, device, quiet):
    """Encode images to .dfc (Algorithm 3): x_T, coded latent steps, then x_0 losslessly."""
    from .codec import DEFAULT_CHUNK_BITS, DEFAULT_METHOD, DEFAULT_SPACING, DEFAULT_STEPS, DEFAULT_T_MIN, \
        DEFAULT_TILE, EncodeOptions
    from .codec import encode as encode_image
    from .data import open_image

    if len(inputs) > 1 and output:
        raise click.UsageError("-o names one output: use --out-dir for several inputs")
    if not output and not out_dir:
        raise click.UsageError("give -o OUTPUT.dfc or --out-dir DIR")
    prior = _prior(model, device)
    opts = EncodeOptions(steps or DEFAULT_STEPS, DEFAULT_T_MIN if t_min is None else t_min,
                         DEFAULT_TILE if tile is None else tile, spacing or DEFAULT_SPACING, seed, stop_after, max_bpp,
                         method or DEFAULT_METHOD, chunk_bits or DEFAULT_CHUNK_BITS, pfr_budget=pfr_budget)
    for path in inputs:
        dest = Path(output) if output else Path(out_dir) / (Path(path).stem + ".dfc")
        image = open_image(path)
        with _bar(quiet, opts.steps + 1, Path(path).name) as bar:
            res = encode_image(image, prior, opts, progress=lambda n, k: bar.update(n - bar.n))
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(res.data)
        if not quiet:
            h = res.header
            bpp = 8 * len(res.data) / (h.width * h.height)
            kind = "lossless" if res.lossless else f"lossy, {len(res.steps)} of {h.num_latent_steps + 1} steps"
            click.echo(f"{path} -> {dest}: {len(res.data)} bytes, {bpp:.3f} bpp, {bpp / 3:.3f} bits/dim "
                       f"({kind}, {h.method}), {res.seconds:.1f} s")


@main.command()
@click.argument("input", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="output image (PNG)")
@click.option("--step", type=click.IntRange(0), default=None, help="decode only this many coded steps")
@click.option("--reconstruct", type=click.Choice(["mean", "sample", "flow"]), default="mean", show_default=True,
              help="x_0 estimate for a partial decode: denoised mean, sample of p(x_0|x_t), or DDIM flow")
@click.option("--previews", type=click.Path(file_okay=False), default=None,
              help="also write every step's preview into this folder")
@click.option("--strip", type=click.Path(dir_okay=False), default=None,
              help="also write one image with the progression of previews")
@model_option
@device_option
@quiet_option
def decode(input, output, step, reconstruct, previews, strip, model, device, quiet):
    """Decode a .dfc file (Algorithm 4) as far as asked or as far as the file goes."""
    from .codec import decode as decode_file
    from PIL import Image

    from .codec import iter_previews, progression_strip, restore_image
    from .container import parse

    data = Path(input).read_bytes()
    parsed = parse(data)
    prior = _prior(model, device)
    if parsed.truncated:
        click.echo(f"warning: {input} is truncated after {len(parsed.chunks)} of {parsed.header.num_chunks} "
                   "steps: decoding what is there", err=True)
    if previews or strip:
        frames = []
        total = min(len(parsed.chunks), step) if step is not None else len(parsed.chunks)
        with _bar(quiet, total + 1, "previews") as bar:
            for p in iter_previews(data, prior, reconstruct, max_step=step):
                img = restore_image(p.image, parsed.header, p.lossless)
                frames.append(img.convert("RGB"))
                if previews:
                    Path(previews).mkdir(parents=True, exist_ok=True)
                    img.save(Path(previews) / f"step{p.step:04d}.png")
                bar.update(1)
        if strip:
            Image.fromarray(progression_strip([np.asarray(f) for f in frames])).save(strip)
        restore_image(p.image, parsed.header, p.lossless).save(output)
        result_step, lossless = p.step, p.lossless
    else:
        res = decode_file(data, prior, step, reconstruct)
        res.image.save(output)
        result_step, lossless = res.step, res.lossless
    if not quiet:
        what = "lossless" if lossless else f"preview after {result_step} coded step(s) ({reconstruct})"
        click.echo(f"{input} -> {output}: {what}")


@main.command()
@click.argument("input", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def info(input, as_json):
    """Print a .dfc header and, per step, bytes, cumulative bpp and bits/dim, and ideal bits."""
    from .container import FINAL, FINAL_KINDS, latent_payload, parse, step_ideal_bits

    data = Path(input).read_bytes()
    parsed = parse(data)
    h = parsed.header
    pixels = h.width * h.height
    rows, cum = [], parsed.header_size
    for c in parsed.chunks:
        cum += c.size
        ideal = step_ideal_bits(c, h.method)
        final = c.kind in FINAL_KINDS
        coder = ("exact" if c.kind == FINAL else "chan") if final else latent_payload(c.payload, h.method)[0]
        rows.append({"step": c.index + 1, "kind": "final" if final else "latent", "coder": coder,
                     "from_timestep": h.timesteps[h.num_latent_steps - c.index], "bytes": c.size,
                     "cumulative_bpp": 8 * cum / pixels, "cumulative_bits_per_dim": 8 * cum / (3 * pixels),
                     "ideal_bits": ideal, "coded_over_ideal": 8 * c.size / ideal if ideal > 0 else None})
    summary = {"file": input, "bytes": len(data), "width": h.width, "height": h.height, "mode": h.mode,
               "model_fingerprint": h.fingerprint.hex(), "schedule": h.schedule, "T": h.num_timesteps,
               "coded_timesteps": list(h.timesteps), "seed": h.seed, "method": h.method, "tile": h.tile,
               "steps_in_file": len(parsed.chunks), "steps_announced": h.num_chunks,
               "truncated": parsed.truncated, "lossless": bool(parsed.chunks) and parsed.chunks[-1].kind in FINAL_KINDS,
               "header_bytes": parsed.header_size, "steps": rows}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    for k, v in summary.items():
        if k not in ("steps", "coded_timesteps"):
            click.echo(f"{k:>18}: {v}")
    click.echo(f"{'coded_timesteps':>18}: {h.timesteps[0]} .. {h.timesteps[-1]} ({len(h.timesteps)} incl. x_T)")
    click.echo(f"{'step':>5} {'kind':>6} {'coder':>5} {'from t':>7} {'bytes':>9} {'cum bpp':>9} {'cum b/dim':>9} "
               f"{'ideal bits':>11} {'coded/ideal':>11}")
    for r in rows:
        ratio = f"{r['coded_over_ideal']:.3f}" if r["coded_over_ideal"] else "-"
        click.echo(f"{r['step']:>5} {r['kind']:>6} {r['coder']:>5} {r['from_timestep']:>7} {r['bytes']:>9} "
                   f"{r['cumulative_bpp']:>9.4f} {r['cumulative_bits_per_dim']:>9.4f} {r['ideal_bits']:>11.1f} {ratio:>11}")


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--steps", type=click.IntRange(2), default=None, help="respaced chain length (default: full T)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON with the term breakdown")
@model_option
@device_option
@quiet_option
def nll(images, steps, seed, as_json, model, device, quiet):
    """Bits/dim (the variational bound, term by term) of images under the model."""
    from .data import load_rgb
    from .likelihood import bits_per_dim
    from tqdm import tqdm

    prior = _prior(model, device)
    results = []
    for path in images:
        terms = bits_per_dim(load_rgb(path), prior, steps, seed,
                             progress=None if quiet else lambda it: tqdm(it, desc=Path(path).name, leave=False))
        results.append({"image": path, "bits_per_dim": terms.total, "prior_L_T": terms.prior,
                        "latent_sum": terms.latent, "decoder_L_0": terms.decoder,
                        "steps": len(terms.timesteps)})
        if not as_json:
            click.echo(f"{path}: {terms.total:.4f} bits/dim  (L_T {terms.prior:.4f} + latents {terms.latent:.4f} "
                       f"+ L_0 {terms.decoder:.4f}; {len(terms.timesteps)} steps)")
    if as_json:
        click.echo(json.dumps(results, indent=2))
    elif len(results) > 1:
        click.echo(f"mean: {np.mean([r['bits_per_dim'] for r in results]):.4f} bits/dim over {len(results)} images")


def _train_options(f):
    from .train import TrainConfig

    for fld in reversed(fields(TrainConfig)):
        name = "--" + fld.name.replace("_", "-")
        default = fld.default
        if fld.name == "data":
            f = click.option(name, required=True, type=click.Path(exists=True, file_okay=False),
                             help="folder of training images")(f)
        elif isinstance(default, bool):
            f = click.option(name + "/--no-" + fld.name.replace("_", "-"), default=default, show_default=True)(f)
        elif default is None:
            f = click.option(name, type=float, default=None)(f)
        else:
            f = click.option(name, type=type(default), default=default, show_default=True)(f)
    return f


@main.command()
@_train_options
@click.option("--threads", type=int, default=None, help="CPU threads for torch")
def train(threads, **kwargs):
    """Train (or resume, if --out exists) an epsilon-U-Net prior on a folder of images."""
    import torch

    from .train import TrainConfig, train as run

    if threads:
        torch.set_num_threads(threads)
    summary = run(TrainConfig.from_dict(kwargs))
    if summary["rank"] == 0:
        click.echo(json.dumps({k: v for k, v in summary.items() if k != "history"}))


@main.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="grid PNG")
@click.option("-n", "--num", type=click.IntRange(1, 256), default=4, show_default=True)
@click.option("--size", type=int, default=64, show_default=True, help="square image size in px")
@click.option("--steps", type=click.IntRange(2), default=None, help="respaced sampling steps")
@click.option("--strip", type=click.Path(dir_okay=False), default=None,
              help="also write the predicted x_0 along the chain (DDPM's progressive generation)")
@click.option("--seed", type=int, default=0, show_default=True)
@model_option
@device_option
@quiet_option
def sample(output, num, size, steps, strip, seed, model, device, quiet):
    """Sample images from the model (Algorithm 2, optionally respaced)."""
    import torch
    from PIL import Image
    from tqdm import tqdm

    from .data import to_uint8

    prior = _prior(model, device)
    diffusion = prior.diffusion.build(steps)
    g = torch.Generator(device=prior.device).manual_seed(seed)
    rows, out = [], None
    keep = set(np.unique(np.round(np.linspace(0, diffusion.num_timesteps - 1, 10)).astype(int)).tolist())
    loop = diffusion.p_sample_loop_progressive(prior.net, (num, 3, size, size), prior.device, g)
    for out in tqdm(loop, total=diffusion.num_timesteps, disable=quiet, leave=False):
        if strip and out["t"] in keep:
            rows.append(np.concatenate([to_uint8(x) for x in out["pred_xstart"]], axis=0))
    grid = np.concatenate([to_uint8(x) for x in out["sample"]], axis=1)
    Image.fromarray(grid).save(output)
    if strip:
        Image.fromarray(np.concatenate(rows, axis=1)).save(strip)
    if not quiet:
        click.echo(f"wrote {num} samples to {output}")


if __name__ == "__main__":
    main()
