"""The ``diffcodec`` command: a thin layer over the library (codec, likelihood, train, sample)."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import fields, replace
from pathlib import Path

import click
import numpy as np

from .allocator import cap_heap_growth, prefer_huge_pages

prefer_huge_pages()  # before anything imports torch (network calls ~20 % faster on CPU: allocator.py)
cap_heap_growth()  # large arrays mmapped, returned when freed (a 12 MP encode's peak: allocator.py)

from .codec import EncodeOptions  # noqa: E402
from .container import DEFAULT_MAX_PIXELS  # noqa: E402
from .errors import DiffcodecError, OptionError  # noqa: E402
from .kinds import SYMMETRIES, LatentMethod, Reconstruction, values  # noqa: E402
from .trajectory import MAX_EFFORT  # noqa: E402


MODEL_HELP = "model checkpoint (default: the model shipped with diffcodec)"


class _Group(click.Group):
    """Turns every error into one line on stderr and a non-zero exit, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except (DiffcodecError, OSError) as e:  # bad input: the user's to fix
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        except MemoryError:
            click.echo("error: out of memory (try a smaller image or --max-pixels)", err=True)
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

    # delay: nothing is drawn for work that ends (or fails) within half a second
    return tqdm(total=total, desc=desc, disable=quiet, leave=False, dynamic_ncols=True, file=sys.stderr, delay=0.5)


def _advance(bar):
    """A codec ``progress(done, total)`` callback that moves ``bar`` (steps, in tenths within a
    step as the network's tiles finish)."""
    bar.bar_format = "{l_bar}{bar}| {n:.1f}/{total_fmt} steps [{elapsed}<{remaining}]"

    def progress(done: float, total: int) -> None:
        bar.total = total
        bar.update(round(done, 1) - bar.n)
    return progress


@click.group(cls=_Group)
@click.version_option(package_name="diffcodec")
def main() -> None:
    """diffcodec: a progressive, lossy-to-lossless image codec with a DDPM prior."""


device_option = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
                             show_default=True, help="where the network runs")
model_option = click.option("--model", type=click.Path(dir_okay=False), default=None, help=MODEL_HELP)
quiet_option = click.option("--quiet", "-q", is_flag=True, help="no progress bar or summary")
max_pixels_option = click.option("--max-pixels", type=click.IntRange(1), default=DEFAULT_MAX_PIXELS, show_default=True,
                                 help="refuse files whose header claims a larger image (memory is spent per pixel)")


def _symmetry_note(h) -> str:
    if h.symmetry == 1:
        return ""
    return f", symmetry {h.symmetry}" + (f" at t <= {h.symmetry_max_t}" if h.symmetry_max_t < h.num_timesteps - 1 else "")


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="output .dfc (one input)")
@click.option("--out-dir", type=click.Path(file_okay=False), help="output folder (several inputs)")
@click.option("-e", "--effort", type=click.IntRange(1, MAX_EFFORT), default=EncodeOptions.effort, show_default=True,
              help="1 (fastest) .. 9 (smallest): the network calls and PFR search the chain is planned for")
@click.option("--method", type=click.Choice(values(LatentMethod)), default=EncodeOptions.method.value,
              show_default=True, help="latent-step coders: as planned per step (auto), or all UQ / all PFR")
@click.option("--steps", type=click.IntRange(1, 4000), default=None, help="force this many latent steps")
@click.option("--t-min", type=click.IntRange(0), default=None, help="force the timestep of the last latent step")
@click.option("--tile", type=click.IntRange(0, 16384), default=EncodeOptions.tile, show_default=True,
              help="side-information tile (px, 0 = whole image)")
@click.option("--stop-after", type=click.IntRange(0), default=None, help="lossy: code only this many latent steps")
@click.option("--max-bpp", type=click.FloatRange(0, min_open=True), default=None,
              help="lossy: stop before the file exceeds this many bits per pixel")
@click.option("--seed", type=int, default=None, help="shared seed (default: random)")
@click.option("--chunk-bits", type=click.IntRange(1, 20), default=None,
              help="PFR: target bits per chunk (the search costs 2**(N + margin) candidates per dim)")
@click.option("--symmetry", type=click.Choice([str(n) for n in SYMMETRIES]), default=None,
              help="average each network call over this many mirror/rotation images of x_t: smaller "
                   "files, that many times the network's time to encode and decode (default: the effort's)")
@click.option("--symmetry-max-t", type=click.IntRange(0, 65535), default=None,
              help="average only the network calls at timesteps t <= this (where the x_0 error dominates "
                   "a step's cost; 65535: every call; default: the effort's)")
@model_option
@device_option
@quiet_option
def encode(inputs, output, out_dir, effort, method, steps, t_min, tile, stop_after, max_bpp, seed, chunk_bits, symmetry,
           symmetry_max_t, model, device, quiet):
    """Encode images to .dfc (Algorithm 3): x_T, coded latent steps, then x_0 losslessly."""
    from .codec import encode as encode_image
    from .data import open_image

    if len(inputs) > 1 and output:
        raise click.UsageError("-o names one output: use --out-dir for several inputs")
    if not output and not out_dir:
        raise click.UsageError("give -o OUTPUT.dfc or --out-dir DIR")
    prior = _prior(model, device)
    opts = EncodeOptions(effort=effort, method=LatentMethod(method), steps=steps, t_min=t_min, tile=tile, seed=seed,
                         stop_after=stop_after, max_bpp=max_bpp, pfr_chunk_bits=chunk_bits,
                         symmetry=None if symmetry is None else int(symmetry), symmetry_max_t=symmetry_max_t)
    for path in inputs:
        dest = Path(output) if output else Path(out_dir) / (Path(path).stem + ".dfc")
        image = open_image(path)
        with _bar(quiet, 1, Path(path).name) as bar:
            res = encode_image(image, prior, opts, progress=_advance(bar))
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(res.data)
        if not quiet:
            h = res.header
            bpp = 8 * len(res.data) / (h.width * h.height)
            kind = "lossless" if res.lossless else f"lossy, {len(res.steps)} of {h.num_latent_steps + 1} steps"
            click.echo(f"{path} -> {dest}: {len(res.data)} bytes, {bpp:.3f} bpp, {bpp / 3:.3f} bits/dim "
                       f"({kind}, {h.num_latent_steps} latent steps, effort {effort}"
                       + _symmetry_note(h) + f"), {res.seconds:.1f} s")


@main.command()
@click.argument("input", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="output image (PNG)")
@click.option("--step", type=click.IntRange(0), default=None, help="decode only this many coded steps")
@click.option("--reconstruct", type=click.Choice(values(Reconstruction)), default=Reconstruction.MEAN.value,
              show_default=True,
              help="x_0 estimate for a partial decode: denoised mean, sample of p(x_0|x_t), or DDIM flow")
@click.option("--previews", type=click.Path(file_okay=False), default=None,
              help="also write every step's preview into this folder")
@click.option("--strip", type=click.Path(dir_okay=False), default=None,
              help="also write one image with the progression of previews")
@max_pixels_option
@model_option
@device_option
@quiet_option
def decode(input, output, step, reconstruct, previews, strip, max_pixels, model, device, quiet):
    """Decode a .dfc file (Algorithm 4) as far as asked or as far as the file goes."""
    from .codec import decode as decode_file
    from .container import parse
    from .report import export_previews

    data = Path(input).read_bytes()
    parsed = parse(data, max_pixels)
    prior = _prior(model, device)
    if parsed.truncated:
        click.echo(f"warning: {input} is truncated after {len(parsed.chunks)} of {parsed.header.num_chunks} "
                   "steps: decoding what is there", err=True)
    if previews or strip:
        total = min(len(parsed.chunks), step) if step is not None else len(parsed.chunks)
        with _bar(quiet, total + 1, "previews") as bar:
            image, last = export_previews(data, prior, previews, strip, Reconstruction(reconstruct), step, max_pixels,
                                          progress=lambda p: bar.update(1))
        image.save(output)
        result_step, lossless = last.step, last.lossless
    else:
        with _bar(quiet, 1, Path(input).name) as bar:
            res = decode_file(data, prior, step, Reconstruction(reconstruct), max_pixels, progress=_advance(bar))
        res.image.save(output)
        result_step, lossless = res.step, res.lossless
    if not quiet:
        what = "lossless" if lossless else f"preview after {result_step} coded step(s) ({reconstruct})"
        click.echo(f"{input} -> {output}: {what}")


@main.command()
@click.argument("input", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.option("--bound", "bound_image", type=click.Path(exists=True, dir_okay=False), default=None,
              help="the original image: also compute the model's 1,000-step bound for it and each step's share of it (slow)")
@max_pixels_option
@model_option
@device_option
def info(input, as_json, bound_image, max_pixels, model, device):
    """Print a .dfc header and, per step, bytes, cumulative bpp and bits/dim, and ideal bits;
    with --bound, also what the model's full chain spends on each step's range."""
    from .report import attach_fine_bits, file_report

    report = file_report(Path(input).read_bytes(), input, max_pixels)
    bound = None
    if bound_image:
        from .data import load_rgb
        from .likelihood import bits_per_dim

        image = load_rgb(bound_image)
        if image.shape[:2] != (report.height, report.width):
            raise OptionError(f"--bound image is {image.shape[1]}x{image.shape[0]}, the file's "
                              f"{report.width}x{report.height}")
        prior = _prior(model, device)
        if prior.diffusion.num_timesteps != report.T:  # refused before the bound's T network calls
            raise OptionError(f"the model's chain has {prior.diffusion.num_timesteps} timesteps, the file's {report.T}")
        terms = bits_per_dim(image, prior, symmetry=report.symmetry, symmetry_max_t=report.symmetry_max_t)
        attach_fine_bits(report, terms.per_step)
        bound = terms.total
    summary = report.to_dict()
    if bound is not None:
        summary["model_bound_bits_per_dim"] = bound
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    for k, v in summary.items():
        if k not in ("steps", "coded_timesteps"):
            click.echo(f"{k:>26}: {v:.4f}" if isinstance(v, float) else f"{k:>26}: {v}")
    ts = report.coded_timesteps
    click.echo(f"{'coded_timesteps':>26}: {ts[0]} .. {ts[-1]} ({len(ts)} incl. x_T)")
    fine = bound is not None
    click.echo(f"{'step':>5} {'coder':>10} {'t':>11} {'bytes':>9} {'cum bpp':>9} {'cum b/dim':>9} "
               f"{'ideal bits':>11} {'coded/ideal':>11}" + (f" {'fine bits':>11} {'coded/fine':>10}" if fine else ""))
    for r in report.steps:
        ratio = f"{r.coded_over_ideal:.3f}" if r.coded_over_ideal else "-"
        span = f"{r.from_timestep}->{r.to_timestep if r.to_timestep >= 0 else 'x0'}"
        line = (f"{r.step:>5} {r.kind:>10} {span:>11} {r.bytes:>9} {r.cumulative_bpp:>9.4f} "
                f"{r.cumulative_bits_per_dim:>9.4f} {r.ideal_bits:>11.1f} {ratio:>11}")
        if fine:
            line += f" {r.fine_bits:>11.1f} " + (f"{r.coded_over_fine:>10.3f}" if r.coded_over_fine else f"{'-':>10}")
        click.echo(line)


@main.command()
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False),
              help="held-out photos (not the training set)")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="checkpoint to write")
@click.option("--crops", type=click.IntRange(1), default=32, show_default=True, help="random crops measured")
@click.option("--crop", type=click.IntRange(8), default=64, show_default=True, help="crop size (px)")
@model_option
@device_option
@quiet_option
def errtable(data, output, crops, crop, model, device, quiet):
    """Measure the model's x_0 error per timestep on held-out photos and write a checkpoint that
    carries it (the codec's analytic variances and chain design come from it)."""
    from tqdm import tqdm

    from .checkpoint import attach_xstart_mse
    from .errtable import estimate_xstart_mse

    prior = _prior(model, device)
    table = estimate_xstart_mse(prior, data, crop, crops,
                                progress=None if quiet else lambda it: tqdm(it, desc="timesteps", leave=False))
    fp = attach_xstart_mse(prior.source, output, table)
    if not quiet:
        click.echo(f"wrote {output} (fingerprint {fp[:16]}): x_0 RMSE {np.sqrt(table[0].mean()) * 127.5:.2f} levels "
                   f"at t=0, {np.sqrt(table[-1].mean()) * 127.5:.1f} at t={len(table) - 1}")


@main.command()
@click.option("--train", "train_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="photos whose spectrum the linear prior takes (the training set)")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False),
              help="held-out photos: the ones the model's x_0 error table was measured on")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="checkpoint to write")
@click.option("--fit-crops", type=click.IntRange(1), default=512, show_default=True,
              help="random 128 px crops of --train the spectrum is fitted on")
@click.option("--crops", type=click.IntRange(1), default=32, show_default=True,
              help="random crops of --data measured (as errtable's)")
@click.option("--crop", type=click.IntRange(8), default=64, show_default=True, help="their size (as errtable's)")
@model_option
@device_option
@quiet_option
def linear(train_dir, data, output, fit_crops, crops, crop, model, device, quiet):
    """Fit the linear (Wiener) x_0 estimate on photos, measure its error on the held-out crops
    of the model's error table, and write a checkpoint in which it replaces the network at the
    timesteps where it errs less (no network call there)."""
    from tqdm import tqdm

    from .checkpoint import attach_xstart_mse
    from .data import ImageCrops
    from .errtable import isotonic_increasing
    from .linear import fit_linear_prior, measure_linear_mse, switch_timestep
    from .trajectory import alphas_cumprod

    prior = _prior(model, device)
    if prior.xstart_mse is None:
        raise OptionError("the model has no x_0 error table: run diffcodec errtable first")
    if prior.linear is not None:
        raise OptionError("the model already has a linear prior: start from the one without")
    net = prior.xstart_mse
    fit_on = ImageCrops(train_dir, 128).fixed_crops(fit_crops, seed=0).double().numpy()
    lin = fit_linear_prior(fit_on, from_t=prior.diffusion.num_timesteps)
    del fit_on
    held = ImageCrops(data, crop).fixed_crops(crops, seed=0)
    mse = measure_linear_mse(lin, held, alphas_cumprod(prior), seed=0,
                             progress=None if quiet else lambda it: tqdm(it, desc="timesteps", leave=False))
    mse = np.stack([isotonic_increasing(mse[:, c]) for c in range(mse.shape[1])], axis=1)  # as errtable's
    t0 = switch_timestep(net, mse)
    if t0 >= len(net):
        raise OptionError("the linear estimate errs more than the network at every timestep: nothing to write")
    lin = replace(lin, from_t=t0)
    table = np.where((np.arange(len(net)) >= t0)[:, None], mse, net)
    fp = attach_xstart_mse(prior.source, output, table, lin)
    if not quiet:
        click.echo(f"wrote {output} (fingerprint {fp[:16]}): the linear estimate from t={t0} on "
                   f"(x_0 RMSE at t={len(net) - 1}: {np.sqrt(mse[-1].mean()) * 127.5:.1f} levels against the "
                   f"network's {np.sqrt(net[-1].mean()) * 127.5:.1f})")


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--steps", type=click.IntRange(2), default=None, help="respaced chain length (default: full T)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON with the term breakdown")
@click.option("--variance", type=click.Choice(["model", "analytic"]), default="model", show_default=True,
              help="reverse variances: the model's own, or analytic from its x_0 error table")
@click.option("--symmetry", type=click.Choice([str(n) for n in SYMMETRIES]), default="1", show_default=True,
              help="the network averaged over this many mirror/rotation images of x_t (as encode --symmetry)")
@model_option
@device_option
@quiet_option
def nll(images, steps, seed, as_json, variance, symmetry, model, device, quiet):
    """Bits/dim (the variational bound, term by term) of images under the model."""
    from .data import load_rgb
    from .likelihood import bits_per_dim
    from tqdm import tqdm

    prior = _prior(model, device)
    results = []
    for path in images:
        terms = bits_per_dim(load_rgb(path), prior, steps, seed, variance=variance, symmetry=int(symmetry),
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
    if summary["world"] > 1:
        # A torchrun worker leaves without the interpreter's finalisation: once DDP has run, torch
        # keeps the gloo process group (and its threads) alive past destroy_process_group, and
        # tearing those threads down at exit aborts now and then ("terminate called without an
        # active exception", SIGABRT after the checkpoint is written; ~1 run in 30 under load).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


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
