"""The progressive codec: DDPM's Algorithms 3 and 4 with real entropy coding.

Encoding (Algorithm 3) walks the chain a :class:`~diffcodec.trajectory.Plan` gives (timesteps
from x_T down to t_min, and the coder of each latent step), all written into the header:

* x_T is drawn from the shared seed (its KL to q(x_T | x_0) is ~0 and costs no bytes);
* each *latent step* sends x_s ~ q(x_s | x_t, x_0) under p_theta(x_s | x_t) with the step's
  coder (:mod:`diffcodec.coders`): interval-consistent universal quantization (UQ) or the
  Poisson functional representation (PFR);
* the *final step* codes x_0 exactly under the model's estimate, restricted to the levels the
  UQ steps left feasible.

Decoding (Algorithm 4) replays the chain as far as asked (or as far as a truncated file goes)
and shows an estimate of x_0 from the current x_t (:class:`~diffcodec.kinds.Reconstruction`).
The network is called only where a step or a preview needs it.

Probabilities of every step depend on the network's output, so a file decodes bit-exactly where
the network's arithmetic matches the encoder's (same device kind and library versions); a CRC
of the original pixels in the header tells a mismatch apart from a right image.
"""

from __future__ import annotations

import math
import secrets
import time
import zlib
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image

from . import container as fmt
from .chain import CodedChain, to_uint8
from .checkpoint import Prior
from .coders import CODERS, EncodeTarget, step_context
from .diffusion import discretized_gaussian_log_likelihood, normal_kl
from .errors import FormatError, OptionError
from .image import SourceImage, native_array, prepare_image, restore_image
from .intervals import Intervals
from .kinds import ChunkKind, LatentMethod, Reconstruction, check_symmetry
from .trajectory import CostModel, Plan, PlanOptions, plan_chain

DEFAULT_TILE = 64


@dataclass
class EncodeOptions:
    """How to encode; every default lives here (the CLI and the benchmarks read them)."""

    effort: int = 5  # 1 .. 9: the network-call and search budget the trajectory is planned for
    method: LatentMethod = LatentMethod.AUTO  # auto: the plan's coder per step; uq / pfr: that coder only
    steps: int | None = None  # force this many latent steps (else the plan's)
    t_min: int | None = None  # force the last latent timestep
    timesteps: tuple[int, ...] | None = None  # force the whole chain (ascending, ending at T - 1)
    tile: int = DEFAULT_TILE  # side-information tile (px, 0 = whole image)
    seed: int | None = None  # shared seed (None: random)
    stop_after: int | None = None  # lossy: code only this many latent steps
    max_bpp: float | None = None  # lossy: stop before the file exceeds this many bits/pixel
    pfr_chunk_bits: int | None = None  # PFR: target KL per chunk (None: the plan's)
    pfr_margin_bits: int | None = None  # PFR: search margin (None: the plan's)
    symmetry: int | None = None  # network calls averaged over 1, 2, 4 or 8 symmetries (None: the effort's) ...
    symmetry_max_t: int | None = None  # ... those at timesteps t <= this (None: the effort's; 65535: all)
    every_layout: bool = False  # fit the checkerboard layouts of UQ and final steps above their size limit too (measurement)
    spectral_pfr: bool = True  # PFR steps may take the spectral layout (models with a linear prior)
    cost_model: CostModel | None = None  # the planner's constants (None: the effort's; another: benchmarks.calibrate)

    def plan_options(self) -> PlanOptions:
        return PlanOptions(effort=self.effort, method=LatentMethod(self.method), steps=self.steps,
                           t_min=self.t_min, timesteps=self.timesteps, chunk_bits=self.pfr_chunk_bits,
                           margin_bits=self.pfr_margin_bits)


@dataclass
class StepStats:
    kind: ChunkKind
    timestep: int  # original timestep of x_t the step starts from
    bytes: int  # chunk bytes
    ideal_bits: float  # KL(q || p_theta) (latent) or -log2 p_theta(x_0 | x_t) (final), analytic variance
    coded_bits: float  # bits of the entropy-coded data alone
    seconds: float = 0.0  # the step's wall time, its network call included
    net_seconds: float = 0.0  # of which the network
    extra: dict = field(default_factory=dict)


@dataclass
class EncodeResult:
    data: bytes
    header: fmt.Header
    plan: Plan
    steps: list[StepStats] = field(default_factory=list)
    # RMSE on [0, 255] of the mean preview after n coded steps, n = 0 (x_T alone: mid-grey) ..
    # len(steps) (0 when the file is lossless)
    preview_rmse: list[float] = field(default_factory=list)
    seconds: float = 0.0
    net_seconds: float = 0.0
    net_calls: int = 0
    net_evaluations: int = 0  # network evaluations: a call averaged over n symmetries counts n

    @property
    def lossless(self) -> bool:
        return bool(self.steps) and self.steps[-1].kind.is_final

    @property
    def prior_rmse(self) -> float:
        """The preview's RMSE from x_T alone."""
        return self.preview_rmse[0]


def _rmse(pred_xstart: torch.Tensor, pixels: np.ndarray) -> float:
    return float(np.sqrt(np.mean((to_uint8(pred_xstart).astype(np.float64) - pixels) ** 2)))


IDEAL_BAND_ROWS = 256  # rows per band of the ideal-cost diagnostics (bounds their temporaries)


def _ideal_bits(chain: CodedChain, target: EncodeTarget, x: torch.Tensor, j: int, out: dict, grey: bool) -> float:
    """The step's cost under the model's Gaussian (analytic variance where the model has a table):
    KL(q || p_theta) for a latent step, the discretized decoder's NLL for the final step; one
    channel and one band of rows at a time (the temporaries stay a fraction of an image)."""
    total = 0.0
    for c in range(1 if grey and j == 0 else 3):
        for r in range(0, chain.height, IDEAL_BAND_ROWS):
            sl = (slice(None), slice(c, c + 1), slice(r, r + IDEAL_BAND_ROWS))
            x0 = torch.from_numpy(target.levels[c, r:r + IDEAL_BAND_ROWS].astype(np.float64) / 127.5 - 1.0)[None, None]
            if j > 0:
                mu_q, _, logvar_q = chain.diffusion.q_posterior_mean_variance(x0, x[sl], chain.t(j))
                total += float(normal_kl(mu_q, logvar_q, out["mean"][sl], out["log_variance"][sl]).sum())
            else:
                total -= float(discretized_gaussian_log_likelihood(x0, out["pred_xstart"][sl],
                                                                   0.5 * out["log_variance"][sl]).sum())
    return total / math.log(2)


def encode(image, prior: Prior, options: EncodeOptions | None = None,
           progress: Callable[[float, int], None] | None = None) -> EncodeResult:
    """Encode an image (Pillow image or uint8 array) to .dfc bytes with ``prior``.
    ``progress(done, total)`` is told the steps done (a fraction within a step as the network's
    tiles finish) out of the steps planned."""
    opt = options or EncodeOptions()
    if opt.symmetry is not None:
        check_symmetry(opt.symmetry)
    if opt.symmetry_max_t is not None and not 0 <= opt.symmetry_max_t <= fmt.ALL_TIMESTEPS:
        raise OptionError(f"symmetry_max_t must be in 0 .. {fmt.ALL_TIMESTEPS}")
    src = image if isinstance(image, SourceImage) else prepare_image(image)
    h, w = src.pixels.shape[:2]
    plan = plan_chain(prior, h * w, opt.plan_options(), opt.cost_model)
    cfg = prior.diffusion
    # the chain's parameters; the header written is this with the number of chunks coded
    spec = fmt.Header(w, h, src.mode, bytes.fromhex(prior.fingerprint), cfg.schedule, cfg.num_timesteps,
                      plan.timesteps, secrets.randbits(64) if opt.seed is None else opt.seed & (2**64 - 1),
                      opt.tile, 0, src.checksum(), src.palette, opt.symmetry or plan.symmetry,
                      plan.symmetry_max_t if opt.symmetry_max_t is None else opt.symmetry_max_t)
    t_start = time.perf_counter()
    chain = CodedChain(prior, spec)
    target = EncodeTarget(np.ascontiguousarray(src.pixels.transpose(2, 0, 1)), src.coded_channels, plan.chunk_bits,
                          plan.margin_bits, opt.every_layout, opt.spectral_pfr)
    grey = src.coded_channels == 1
    K = spec.num_latent_steps
    budget = None if opt.max_bpp is None else opt.max_bpp * w * h / 8.0
    total = len(spec.to_bytes())  # the header's size does not depend on num_chunks
    chunks: list[fmt.Chunk] = []
    steps: list[StepStats] = []
    rmse: list[float] = []
    x, ints = chain.x_T(), Intervals(chain.n)
    for n in range(K + 1):  # step n goes from chain index j = K - n to j - 1 (j = 0: the final step)
        j = K - n
        t0, net0 = time.perf_counter(), chain.net_seconds
        if progress:
            chain.on_tile = lambda done, tiles, n=n: progress(n + done / tiles, K + 1)
        out = chain.predict(x, j)
        rmse.append(_rmse(chain.preview_mean(out, j), src.pixels))  # the preview after n coded steps
        if opt.stop_after is not None and n >= opt.stop_after:
            break
        kind = plan.coders[n] if j > 0 else ChunkKind.FINAL
        ideal = _ideal_bits(chain, target, x, j, out, grey)  # before the coder, the prediction's last user
        ctx = step_context(CODERS[kind], chain=chain, index=n, j=j, x=x, pred=out, intervals=ints)
        x = ctx.x  # None where the coder needs no x_t: it is freed
        coded = CODERS[kind].encode(ctx, target)
        kind = coded.stats.pop("kind", kind)
        chunk = fmt.Chunk(kind, n, ideal, coded.payload)
        if budget is not None and total + chunk.size > budget:
            break
        chunks.append(chunk)
        total += chunk.size
        steps.append(StepStats(kind, spec.timesteps[j], chunk.size, chunk.ideal_bits, coded.coded_bits,
                               time.perf_counter() - t0, chain.net_seconds - net0, coded.stats))
        if j == 0:
            rmse.append(0.0)
        else:
            x, ints = coded.x, coded.intervals
            if grey:
                ints = _intersect_channels(ints)
        # this step's image-sized arrays (the prediction: 2 x 8 bytes a dimension) go before
        # the next network call, not after it
        del out, ctx, coded
        if progress:
            progress(n + 1, K + 1)
    header = replace(spec, num_chunks=len(chunks))
    return EncodeResult(header.to_bytes() + b"".join(c.to_bytes() for c in chunks), header, plan, steps, rmse,
                        time.perf_counter() - t_start, chain.net_seconds, chain.net_calls, chain.net_evaluations)


def _intersect_channels(ints: Intervals) -> Intervals:
    """A grey image's three chain channels hold one level: each may use what all three ruled out."""
    lo = ints.lo.reshape(3, -1).max(axis=0)
    hi = ints.hi.reshape(3, -1).min(axis=0)
    return Intervals(len(ints.lo), np.tile(lo, 3), np.tile(hi, 3))


# ----------------------------------------------------------------------------- decoding


@dataclass
class Preview:
    step: int  # coded steps received so far (0 = only x_T)
    timestep: int  # original timestep of the current x_t (-1 after the final step)
    bytes: int  # file bytes consumed so far
    image: np.ndarray  # uint8 H x W x 3 estimate of x_0
    lossless: bool = False
    net_seconds: float = 0.0  # network time spent so far
    net_calls: int = 0


@dataclass
class DecodeResult:
    image: Image.Image
    step: int
    total_steps: int
    lossless: bool
    truncated: bool
    header: fmt.Header
    seconds: float = 0.0
    net_seconds: float = 0.0
    net_calls: int = 0


def check_chunks(parsed: fmt.Parsed) -> None:
    """Every chunk's structure against the header (side-information counts, stream lengths,
    coder parameters), before anything image-sized is allocated or any network call is made."""
    for chunk in parsed.chunks:
        CODERS[chunk.kind].check(chunk.payload, parsed.header, chunk.kind)


def iter_previews(data: bytes, prior: Prior, reconstruct: Reconstruction = Reconstruction.MEAN,
                  max_step: int | None = None, every: bool = True,
                  max_pixels: int = fmt.DEFAULT_MAX_PIXELS,
                  progress: Callable[[float, int], None] | None = None) -> Iterator[Preview]:
    """Algorithm 4: yield the x_0 estimate after 0, 1, 2, ... coded steps (only the last one,
    at ``max_step`` or the end of the data, when ``every`` is False).  Network calls are made
    only for the steps decoded and the previews shown.  ``progress(done, total)`` is told the
    steps decoded (a fraction within a step as the network's tiles finish) out of those asked."""
    reconstruct = Reconstruction(reconstruct)
    parsed = fmt.parse(data, max_pixels)
    header = parsed.header
    check_chunks(parsed)
    chain = CodedChain(prior, header)
    grey = header.mode in ("L", "1")
    K = header.num_latent_steps
    last = len(parsed.chunks) if max_step is None else min(max_step, len(parsed.chunks))
    consumed = parsed.header_size
    units = last if last == K + 1 else last + 1  # steps decoded, plus the preview's network call
    x = ints = None  # made when a step or a preview needs them (not for a header-only file's grey preview)
    for n in range(0, last + 1):
        j = K - n
        show = every or n == last
        need = n < last or (show and (chain.has_signal(j) or reconstruct != Reconstruction.MEAN))
        if need and x is None:
            x, ints = chain.x_T(), Intervals(chain.n)
        if progress:
            chain.on_tile = lambda done, tiles, n=n: progress(n + done / tiles, units)
        out = chain.predict(x, j) if need else None
        if progress and n == last:
            progress(units, units)
        if show:
            img = to_uint8(chain.reconstruct(x, j, out, reconstruct)) if need else \
                np.full((header.height, header.width, 3), 128, dtype=np.uint8)  # x_T alone: mid-grey
            yield Preview(n, header.timesteps[j], consumed, img, net_seconds=chain.net_seconds,
                          net_calls=chain.net_calls)
        if n == last:
            return
        chunk = parsed.chunks[n]
        consumed += chunk.size
        # the preview is made: the step is the prediction's last user
        ctx = step_context(CODERS[chunk.kind], chain=chain, index=n, j=j, x=x, pred=out, intervals=ints)
        x = ctx.x  # None where the coder needs no x_t: it is freed
        step = CODERS[chunk.kind].decode(ctx, chunk.payload, chunk.kind)
        out = ctx = None  # the prediction is freed before the next network call
        if progress:
            progress(n + 1, units)
        if j > 0:
            x, ints = step.x, (_intersect_channels(step.intervals) if grey else step.intervals)
            step = None
            continue
        sym = step.pixels
        rgb = np.ascontiguousarray((np.repeat(sym, 3, axis=0) if sym.shape[0] == 1 else sym).transpose(1, 2, 0))
        restored = restore_image(rgb, header, lossless=True)
        if zlib.crc32(np.ascontiguousarray(native_array(restored, header.mode)).tobytes()) != header.checksum:
            raise FormatError("decoded image fails its checksum: the file is damaged, or was encoded "
                              "on a machine whose network arithmetic differs from this one's")
        yield Preview(n + 1, -1, consumed, rgb, lossless=True, net_seconds=chain.net_seconds,
                      net_calls=chain.net_calls)
        return


def decode(data: bytes, prior: Prior, step: int | None = None,
           reconstruct: Reconstruction = Reconstruction.MEAN, max_pixels: int = fmt.DEFAULT_MAX_PIXELS,
           progress: Callable[[float, int], None] | None = None) -> DecodeResult:
    """Decode as far as ``step`` coded steps (default: everything in the data); ``progress`` as
    :func:`iter_previews` says."""
    t0 = time.perf_counter()
    if step is not None and step < 0:
        raise OptionError("step must be >= 0")
    parsed = fmt.parse(data, max_pixels)
    preview = None
    for preview in iter_previews(data, prior, reconstruct, max_step=step, every=False, max_pixels=max_pixels,
                                 progress=progress):
        pass
    assert preview is not None
    header = parsed.header
    image = restore_image(preview.image, header, preview.lossless)
    return DecodeResult(image, preview.step, header.num_latent_steps + 1, preview.lossless, parsed.truncated,
                        header, time.perf_counter() - t0, preview.net_seconds, preview.net_calls)
