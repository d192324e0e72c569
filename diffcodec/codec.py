"""The progressive codec: DDPM's Algorithms 3 and 4 with real entropy coding.

Encoding (Algorithm 3) walks a respaced chain of K + 1 timesteps ``ts`` (ascending,
``ts[-1] = T - 1``):

* x_T is drawn from the shared seed (its KL to q(x_T | x_0) is ~0 and costs no bytes);
* each *latent step* sends x_s ~ q(x_s | x_t, x_0) under p_theta(x_s | x_t) with one of two
  channel simulators (the header's method), each an encode/decode pair below:

  - ``uq``, universal (dithered) quantization: per dimension, step Delta = sqrt(12) * sigma_q,
    shared dither u ~ U(-1/2, 1/2), symbol k = round((mu_q - mu_p) / Delta - u), receiver
    x_s = mu_p + Delta * (k + u) = mu_q + uniform noise of the posterior's variance.  k is
    coded under a discretized Gaussian with mean -u and a scale s (in units of Delta) sent as
    side information per tile and channel, chosen by the encoder to minimise the actual code
    length; about KL + 0.25 bits/dim;
  - ``pfr``, chunked Poisson functional representation (:mod:`diffcodec.pfr`): a sample of q
    (exact up to a search cap) at about KL(q || p') plus 2-4 bits per chunk of ``chunk_bits``
    bits, p' = N(mu_p, sigma_p^2) with sigma_p sent per tile and channel;
  - ``auto`` (the default), per step the shorter of the two: UQ is always coded, PFR is tried
    where its estimated cost undercuts UQ's and its search fits a budget; each latent payload
    then starts with its coder's tag.  UQ wins the high-KL steps (its +0.25 bits/dim is small
    beside their KL), PFR the low-KL ones (where UQ costs many times the KL);
* the *final step* codes x_0 exactly (256 levels) under a discretized Gaussian centred on the
  model's prediction of x_0 from the last latent, with edge bins open to +-inf, and a scale
  again sent per tile and channel; RGB channels may be predicted from the ones before
  (:mod:`diffcodec.final`).

The probabilities the latent steps' entropy decoder sees (and, for PFR, the chunk layout)
depend only on the seed and the side information, never on the network's output bits, so
latents decode identically on any machine; small floating-point differences only move x_s
slightly.  The final step's probabilities depend
on the network's mean: a CRC of the original pixels in the header tells a mismatch apart.

Decoding (Algorithm 4) replays the chain as far as asked (or as far as a truncated file goes)
and shows the model's estimate of x_0 from the current x_t (``mean``), a sample from
p_theta(x_0 | x_t) (``sample``), or a deterministic probability-flow (DDIM) decode (``flow``).
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
from . import pfr
from .checkpoint import Prior
from .diffusion import GaussianDiffusion, normal_kl, discretized_gaussian_log_likelihood, respace_betas, \
    get_named_beta_schedule
from .entropy import decode_gaussian, encode_gaussian, portable_normal, portable_uniform
from .errors import FormatError, ImageError
from .final import decode_final, encode_final

# Defaults chosen by measurement: see README.md, "Choosing the number of steps".
DEFAULT_STEPS = 8
DEFAULT_T_MIN = 10
DEFAULT_TILE = 64
DEFAULT_SPACING = 1.0
DEFAULT_METHOD = "auto"
DEFAULT_CHUNK_BITS = 8  # PFR: target KL per chunk
DEFAULT_MARGIN_BITS = 6  # PFR: a chunk searches 2**(chunk bits + margin) candidates
# auto: the most candidate x dim-pair evaluations a step's PFR search may take (an upper bound
# that ignores early stops), by the network's device: ~15 s of one CPU core, ~1 s of an H100.
DEFAULT_PFR_BUDGET = {"cpu": 2.0**26, "cuda": 2.0**36}
# auto: when the chosen (chunk bits, margin) does not fit the budget, cheaper settings are tried
# in this order (search cost ~ 2**(chunk bits + margin) per dim; smaller chunks pay more bits each).
PFR_FALLBACKS = ((6, 5), (5, 4), (4, 3), (3, 2))
RECONSTRUCTIONS = ("mean", "sample", "flow")
# Below this alpha-bar x_t holds no usable signal: the network's x_0 estimate divides its error by
# sqrt(alpha-bar) (the cosine schedule's x_T: 2.4e-9, a factor 2e4) and clips to saturated noise,
# so the mean preview is the flat mid-grey instead (RMSE 40-71 against 132-141 on Kodak crops).
PREVIEW_MIN_ALPHA_BAR = 1e-3

_SCALE_OFFSET, _SCALE_RES = 160, 8.0  # scale = 2 ** ((code - 160) / 8)
_NOISE_STREAM = 0  # stream ids of the shared generator: 0 = x_T, n + 1 = dither of step n,
_SAMPLE_STREAM = 1 << 20  # 2**20 + j = noise of the 'sample' reconstruction at index j


# ----------------------------------------------------------------------------- images


@dataclass
class SourceImage:
    """An input image as the codec codes it: float RGB on [-1, 1] plus how to restore it."""

    pixels: np.ndarray  # uint8 H x W x 3 (grey replicated) — what the chain codes
    mode: str  # 'L', 'RGB', 'P' or '1'
    palette: bytes = b""
    native: np.ndarray | None = None  # mode-native array (indices for P, grey for L/1)

    @property
    def coded_channels(self) -> int:
        return 1 if self.mode in ("L", "1") else 3

    def checksum(self) -> int:
        return zlib.crc32(np.ascontiguousarray(self.native).tobytes())


def prepare_image(image: Image.Image | np.ndarray) -> SourceImage:
    """Validate an input image: RGB, grey, bilevel and palette images are coded losslessly;
    alpha, 16-bit, float and CMYK images are refused."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3)):
            raise ImageError("arrays must be uint8 H x W (grey) or H x W x 3 (RGB)")
        image = Image.fromarray(image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    mode = image.mode
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        raise ImageError(f"images with an alpha channel ({mode}) are not supported: flatten them first")
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        raise ImageError(f"{mode} images (16-bit or float) are not supported: convert to 8-bit first")
    if mode not in fmt.MODES:
        raise ImageError(f"{mode} images are not supported (use RGB, L, P or 1)")
    w, h = image.size
    if not (1 <= w <= fmt.MAX_SIDE and 1 <= h <= fmt.MAX_SIDE) or w * h > fmt.MAX_PIXELS:
        raise ImageError(f"image size {w}x{h} is out of range (at most {fmt.MAX_SIDE} px a side)")
    if mode == "P":
        palette = bytes(image.getpalette() or [])[:768]
        native = np.asarray(image, dtype=np.uint8)
        pal = np.frombuffer(palette, dtype=np.uint8).reshape(-1, 3)
        if native.max() >= len(pal):
            raise ImageError("palette image uses indices beyond its palette")
        rgb = pal[native]
        if not np.array_equal(_palette_indices(rgb, palette), native):
            raise ImageError("palette image has duplicate colours: convert it to RGB to code it losslessly")
        return SourceImage(rgb, "P", palette, native)
    if mode in ("L", "1"):
        native = np.asarray(image.convert("L"), dtype=np.uint8)
        return SourceImage(np.repeat(native[:, :, None], 3, axis=2), mode, b"", native)
    rgb = np.asarray(image, dtype=np.uint8)
    return SourceImage(rgb, "RGB", b"", rgb)


def _palette_indices(rgb: np.ndarray, palette: bytes) -> np.ndarray:
    """Map RGB pixels back to palette indices (first index of each colour)."""
    pal = np.frombuffer(palette, dtype=np.uint8).reshape(-1, 3).astype(np.int64)
    keys = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    lut = {}
    for i, key in enumerate(keys.tolist()):
        lut.setdefault(key, i)
    flat = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    uniq, inv = np.unique(flat, return_inverse=True)
    idx = np.array([lut.get(k, 0) for k in uniq.tolist()], dtype=np.uint8)
    return idx[inv].reshape(flat.shape)


def restore_image(rgb: np.ndarray, header: fmt.Header, lossless: bool) -> Image.Image:
    """The decoded RGB array as a Pillow image in the original mode (lossless) or a preview."""
    if header.mode in ("L", "1"):
        grey = rgb[:, :, 0] if lossless else np.round(rgb.astype(np.float64).mean(axis=2)).astype(np.uint8)
        img = Image.fromarray(grey, "L")
        return img.convert("1") if header.mode == "1" and lossless else img
    if header.mode == "P" and lossless:
        img = Image.fromarray(_palette_indices(rgb, header.palette), "P")
        img.putpalette(header.palette)
        return img
    return Image.fromarray(rgb, "RGB")


def _native(img: Image.Image, mode: str) -> np.ndarray:
    return np.asarray(img.convert("L") if mode == "1" else img, dtype=np.uint8)


# ----------------------------------------------------------------------------- side information


class TileGrid:
    """Per-tile, per-channel scales: the side information of one coded step."""

    def __init__(self, channels: int, height: int, width: int, tile: int) -> None:
        self.c, self.h, self.w = channels, height, width
        self.tile = tile if tile and tile < max(height, width) else 0
        t = self.tile or max(height, width)
        self.gh, self.gw = -(-height // t), -(-width // t)
        self.rows = np.arange(height) // t
        self.cols = np.arange(width) // t

    @property
    def size(self) -> int:
        return self.c * self.gh * self.gw

    def expand(self, codes: bytes) -> np.ndarray:
        """[C, H, W] scales from the codes."""
        grid = np.frombuffer(codes, dtype=np.uint8).reshape(self.c, self.gh, self.gw).astype(np.float64)
        scales = 2.0 ** ((grid - _SCALE_OFFSET) / _SCALE_RES)
        return scales[:, self.rows][:, :, self.cols]

    def tile_sums(self, values: np.ndarray) -> np.ndarray:
        rows = np.add.reduceat(values, np.flatnonzero(np.diff(self.rows, prepend=-1)), axis=1)
        return np.add.reduceat(rows, np.flatnonzero(np.diff(self.cols, prepend=-1)), axis=2)

    def fit(self, residual: np.ndarray) -> bytes:
        """Scale codes minimising the code length of ``residual`` (= symbol minus the coder's
        mean, [C, H, W]) under unit-bin discretized Gaussians, searched per tile and channel.

        The search starts from the RMS with Sheppard's correction (a unit bin adds 1/12 to the
        variance: a residual far below one bin wants a tiny scale), tries coarse offsets of one octave
        from -3 to +4 octaves, then refines by single codes around each tile's best."""
        ms = self.tile_sums(residual**2) / np.maximum(self.tile_sums(np.ones_like(residual)), 1)
        start = np.round(_SCALE_RES * np.log2(np.sqrt(np.maximum(ms - 1 / 12, 1e-6)))) + _SCALE_OFFSET
        r = torch.from_numpy(np.abs(residual))
        best_cost, best = None, None

        def consider(codes: np.ndarray) -> None:
            nonlocal best_cost, best
            codes = np.clip(codes, 0, 255)
            s = torch.from_numpy(self.expand(codes.astype(np.uint8).tobytes()))
            p = torch.special.ndtr((0.5 - r) / s) - torch.special.ndtr((-0.5 - r) / s)
            cost = self.tile_sums(-torch.log2(p.clamp_min(1e-300)).numpy())
            if best is None:
                best_cost, best = cost, codes
            else:
                better = cost < best_cost
                best_cost, best = np.where(better, cost, best_cost), np.where(better, codes, best)

        for delta in (-24, -16, -8, 0, 8, 16, 24, 32):
            consider(start + delta)
        centre = best.copy()
        for delta in (-4, -3, -2, -1, 1, 2, 3, 4):
            consider(centre + delta)
        return best.astype(np.uint8).tobytes()


# ----------------------------------------------------------------------------- the chain


def chain_timesteps(num_timesteps: int, steps: int, t_min: int = 0, spacing: float = 1.0) -> tuple[int, ...]:
    """``steps`` latent steps + x_T: steps + 1 timesteps from t_min to T - 1 at
    t_min + (T - 1 - t_min) * (i / steps) ** spacing (1 = even; > 1 puts more steps at low noise)."""
    if steps < 1:
        raise ValueError("at least one coded step is needed")
    if not 0 <= t_min < num_timesteps - 1:
        raise ValueError(f"t_min must be in [0, {num_timesteps - 2}]")
    if not 0.25 <= spacing <= 8:
        raise ValueError("spacing must be in [0.25, 8]")
    span = num_timesteps - 1 - t_min
    if steps > span:
        raise ValueError(f"cannot fit {steps} steps between t={t_min} and T-1={num_timesteps - 1}")
    ts = [int(round(t_min + span * (i / steps) ** spacing)) for i in range(steps + 1)]
    for i in range(1, steps + 1):  # keep them strictly increasing where rounding collides
        ts[i] = max(ts[i], ts[i - 1] + 1)
    for i in range(steps - 1, -1, -1):
        ts[i] = min(ts[i], ts[i + 1] - 1)
    return tuple(ts)


class _Chain:
    """The respaced diffusion of a file and the network wrapped to run float32 on its device."""

    def __init__(self, prior: Prior, header: fmt.Header) -> None:
        cfg = prior.diffusion
        if header.fingerprint != bytes.fromhex(prior.fingerprint):
            raise FormatError("file was made with another model (fingerprint mismatch): "
                              f"file {header.fingerprint.hex()[:12]}, model {prior.fingerprint[:12]}")
        if header.schedule != cfg.schedule or header.num_timesteps != cfg.num_timesteps:
            raise FormatError("file's diffusion schedule does not match the model")
        betas = get_named_beta_schedule(cfg.schedule, cfg.num_timesteps)
        self.diffusion = GaussianDiffusion(respace_betas(betas, header.timesteps), cfg.model_var_type,
                                           timestep_map=header.timesteps, original_num_timesteps=cfg.num_timesteps)
        self.prior, self.header = prior, header
        self.device = prior.device
        self.shape = (1, 3, header.height, header.width)
        self.n = 3 * header.height * header.width
        self.grid = TileGrid(3, header.height, header.width, header.tile)
        self.net_seconds = 0.0

    def model(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        x32 = x.to(self.device, torch.float32)
        if self.device.type == "cpu":
            x32 = x32.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            out = self.prior.net(x32, s.to(self.device)).double()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.net_seconds += time.perf_counter() - t0
        return out.to(x.device)

    def t(self, j: int) -> torch.Tensor:
        return torch.tensor([j])

    def x_T(self) -> torch.Tensor:
        return torch.from_numpy(portable_normal(self.header.seed, _NOISE_STREAM, self.n)).reshape(self.shape)

    def predict(self, x: torch.Tensor, j: int) -> dict:
        return self.diffusion.p_mean_variance(self.model, x, self.t(j), clip_denoised=True)

    def dither(self, step: int) -> np.ndarray:
        return portable_uniform(self.header.seed, step + 1, self.n).reshape(self.shape[1:])

    def sigma_q(self, j: int) -> float:
        return math.sqrt(self.diffusion.posterior_variance[j])

    def delta(self, j: int) -> float:
        return math.sqrt(12.0 * self.diffusion.posterior_variance[j])

    def final_grid(self) -> TileGrid:
        channels = 1 if self.header.mode in ("L", "1") else 3
        return TileGrid(channels, self.header.height, self.header.width, self.header.tile)

    def final_mean(self, pred_xstart: torch.Tensor) -> np.ndarray:
        """Decoder mean in pixel units, [C, H, W] (grey: the channel mean)."""
        mu = ((pred_xstart[0].double() + 1.0) * 127.5).numpy()
        return mu.mean(axis=0, keepdims=True) if self.header.mode in ("L", "1") else mu

    def preview_mean(self, out: dict, j: int) -> torch.Tensor:
        """The mean preview at chain index j: the model's x_0 estimate, or mid-grey where x_t
        carries no usable signal (:data:`PREVIEW_MIN_ALPHA_BAR`)."""
        if self.diffusion.alphas_cumprod[j] < PREVIEW_MIN_ALPHA_BAR:
            return torch.zeros_like(out["pred_xstart"])
        return out["pred_xstart"]

    def reconstruct(self, x: torch.Tensor, j: int, out: dict, how: str) -> torch.Tensor:
        """x_0 estimate from x at chain index j: mean, an ancestral sample, or DDIM flow."""
        if how == "mean" or j == 0:
            return self.preview_mean(out, j)
        for i in range(j, 0, -1):
            if how == "sample":
                noise = torch.from_numpy(portable_normal(self.header.seed, _SAMPLE_STREAM + i, self.n))
                x = out["mean"] + torch.exp(0.5 * out["log_variance"]) * noise.reshape(self.shape)
            else:
                x = self.diffusion.ddim_step(out, x, self.t(i))
            out = self.predict(x, i - 1)
        return out["pred_xstart"]


def progression_strip(previews: list[np.ndarray], max_frames: int = 12) -> np.ndarray:
    """Up to ``max_frames`` previews (uint8 H x W x 3), evenly picked from first to last, side by side."""
    idx = np.unique(np.round(np.linspace(0, len(previews) - 1, min(max_frames, len(previews)))).astype(int))
    return np.concatenate([previews[i] for i in idx], axis=1)


def _to_uint8(x0: torch.Tensor) -> np.ndarray:
    return ((x0[0].double() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


# ----------------------------------------------------------------------------- encoding


@dataclass
class StepStats:
    kind: str  # 'latent' or 'final'
    timestep: int  # original timestep of x_t the step starts from
    bytes: int  # chunk bytes
    ideal_bits: float  # KL(q || p_theta) (latent) or -log2 p_theta(x_0 | x_t) (final)
    coded_bits: float  # bits of the coded stream alone (PFR: range-coded + raw index bits)
    preview_rmse: float  # RMSE on [0, 255] of the mean preview after this step
    extra: dict = field(default_factory=dict)  # method-specific statistics (PFR: chunks, caps, time)


@dataclass
class EncodeResult:
    data: bytes
    header: fmt.Header
    steps: list[StepStats] = field(default_factory=list)
    prior_rmse: float = 0.0  # preview from x_T alone (mid-grey: x_T carries no signal)
    seconds: float = 0.0
    net_seconds: float = 0.0

    @property
    def lossless(self) -> bool:
        return bool(self.steps) and self.steps[-1].kind == "final"


@dataclass
class EncodeOptions:
    steps: int = DEFAULT_STEPS
    t_min: int = DEFAULT_T_MIN
    tile: int = DEFAULT_TILE
    spacing: float = DEFAULT_SPACING
    seed: int | None = None
    stop_after: int | None = None  # lossy: code only this many latent steps
    max_bpp: float | None = None  # lossy: stop before the file exceeds this many bits/pixel
    method: str = DEFAULT_METHOD  # latent steps: 'uq', 'pfr' or 'auto' (the cheaper of the two per step)
    chunk_bits: int = DEFAULT_CHUNK_BITS  # PFR only
    margin_bits: int = DEFAULT_MARGIN_BITS  # PFR only
    pfr_budget: float | None = None  # auto: search budget per step (None: DEFAULT_PFR_BUDGET of the device)


# ----------------------------------------------------------------------------- latent steps


@dataclass
class _Coded:
    payload: bytes
    coded_bits: float
    x: torch.Tensor  # the next latent, exactly as the decoder will compute it
    extra: dict


def _uq_encode(chain: _Chain, n: int, j: int, mu_q: torch.Tensor, out: dict, ideal: float,
               opt: EncodeOptions) -> _Coded:
    """UQ: k = round((mu_q - mu_p) / Delta - u) under N(-u, s^2); x = mu_p + Delta (k + u)."""
    delta = chain.delta(j)
    u = chain.dither(n)
    d = ((mu_q - out["mean"]) / delta)[0].numpy()
    k = np.rint(d - u)
    codes = chain.grid.fit(k + u)
    lo, hi = int(k.min()), int(k.max())
    stream = encode_gaussian(k.astype(np.int32), -u, chain.grid.expand(codes), lo, hi)
    payload = fmt.StepPayload(ideal, lo, hi, codes, stream).to_bytes()
    return _Coded(payload, 8 * len(stream), out["mean"] + delta * torch.from_numpy(k + u)[None], {})


def _uq_decode(chain: _Chain, n: int, j: int, payload: bytes, out: dict) -> torch.Tensor:
    p = fmt.StepPayload.from_bytes(payload, chain.grid.size)
    u = chain.dither(n)
    k = decode_gaussian(p.stream, chain.n, -u, chain.grid.expand(p.scale_codes), p.lo, p.hi)
    return out["mean"] + chain.delta(j) * torch.from_numpy(k.reshape(u.shape) + u)[None]


def _pfr_encode(chain: _Chain, n: int, j: int, mu_q: torch.Tensor, out: dict, ideal: float,
                opt: EncodeOptions, codes: bytes | None = None) -> _Coded:
    """PFR: x = mu_p + sigma_p z_{n*}, the search running on the network's device."""
    step = pfr.encode_step(mu_q[0], out["mean"][0], chain.sigma_q(j), chain.grid, chain.header.seed, n,
                           opt.chunk_bits, opt.margin_bits, chain.device, codes=codes)
    payload = fmt.PfrPayload(ideal, opt.chunk_bits, opt.margin_bits, step.offset_code, step.std_code,
                             step.codes, step.stream, step.raw).to_bytes()
    return _Coded(payload, step.stats["index_bits"], step.x[None], step.stats)


def _pfr_decode(chain: _Chain, n: int, j: int, payload: bytes, out: dict) -> torch.Tensor:
    p = fmt.PfrPayload.from_bytes(payload, chain.grid.size)
    x = pfr.decode_step(p.kappa_codes, p.offset_code, p.std_code, p.stream, p.raw, out["mean"][0],
                        chain.sigma_q(j), chain.grid, chain.header.seed, n, p.chunk_bits, p.margin, chain.device)
    return x[None]


def _auto_encode(chain: _Chain, n: int, j: int, mu_q: torch.Tensor, out: dict, ideal: float,
                 opt: EncodeOptions) -> _Coded:
    """The smaller of UQ and PFR for this step.  UQ is always coded (it is cheap); PFR is tried,
    with the options' chunk bits and margin or else the first of :data:`PFR_FALLBACKS` whose
    search fits the budget, when its estimate (KL to its prior plus the per-chunk index
    overhead) undercuts UQ's real bits; the shorter payload wins, tagged with its method."""
    uq = _uq_encode(chain, n, j, mu_q, out, ideal, opt)
    delta = ((mu_q - out["mean"]) / chain.sigma_q(j))[0].numpy()
    budget = opt.pfr_budget if opt.pfr_budget is not None else \
        DEFAULT_PFR_BUDGET.get(chain.device.type, DEFAULT_PFR_BUDGET["cpu"])
    settings = [(opt.chunk_bits, opt.margin_bits)] + [
        (c, m) for c, m in PFR_FALLBACKS if c + m < opt.chunk_bits + opt.margin_bits]
    tiles = pfr.fit_tiles(delta, chain.grid)  # the side information does not depend on the setting
    for chunk_bits, margin in settings:  # the first setting whose search fits the budget
        est = tiles.estimate(chunk_bits, margin)
        if est.search_pairs <= budget:
            break
    notes = {"uq_bits": uq.coded_bits, "pfr_estimate_bits": est.bits, "pfr_search_pairs": est.search_pairs,
             "pfr_chunk_bits": chunk_bits, "pfr_margin_bits": margin}
    best, method = uq, "uq"
    if est.search_pairs <= budget and est.bits < uq.coded_bits:
        tried = _pfr_encode(chain, n, j, mu_q, out, ideal, replace(opt, chunk_bits=chunk_bits, margin_bits=margin),
                            codes=est.codes)
        notes["pfr_bits"] = tried.coded_bits
        if len(tried.payload) < len(uq.payload):
            best, method = tried, "pfr"
    extra = {**best.extra, **notes, "method": method}
    return _Coded(fmt.tag_latent_payload(best.payload, method), best.coded_bits, best.x, extra)


def _auto_decode(chain: _Chain, n: int, j: int, payload: bytes, out: dict) -> torch.Tensor:
    method, inner = fmt.latent_payload(payload, "auto")
    return _LATENT_CODERS[method][1](chain, n, j, inner, out)


_LATENT_CODERS = {"uq": (_uq_encode, _uq_decode), "pfr": (_pfr_encode, _pfr_decode),
                  "auto": (_auto_encode, _auto_decode)}


def encode(image, prior: Prior, options: EncodeOptions | None = None,
           progress: Callable[[int, int], None] | None = None) -> EncodeResult:
    """Encode an image (Pillow image or uint8 array) to .dfc bytes with ``prior``."""
    opt = options or EncodeOptions()
    if opt.method not in _LATENT_CODERS:
        raise ValueError(f"unknown method {opt.method!r} (choose from {tuple(_LATENT_CODERS)})")
    if opt.method in ("pfr", "auto"):
        pfr.check_params(opt.chunk_bits, opt.margin_bits)
    if opt.pfr_budget is not None and not opt.pfr_budget >= 0:
        raise ValueError("the PFR search budget must be >= 0")
    encode_step = _LATENT_CODERS[opt.method][0]
    src = image if isinstance(image, SourceImage) else prepare_image(image)
    h, w = src.pixels.shape[:2]
    cfg = prior.diffusion
    header = fmt.Header(
        w, h, src.mode, bytes.fromhex(prior.fingerprint), cfg.schedule, cfg.num_timesteps,
        chain_timesteps(cfg.num_timesteps, opt.steps, opt.t_min, opt.spacing),
        secrets.randbits(64) if opt.seed is None else opt.seed & (2**64 - 1), opt.method, opt.tile, 0,
        src.checksum(), src.palette,
    )
    t_start = time.perf_counter()
    chain = _Chain(prior, header)
    x0 = torch.from_numpy(src.pixels.transpose(2, 0, 1).astype(np.float64) / 127.5 - 1.0)[None]
    K = header.num_latent_steps
    budget = None if opt.max_bpp is None else opt.max_bpp * w * h / 8.0
    total = len(header.to_bytes())
    chunks: list[fmt.Chunk] = []
    result = EncodeResult(b"", header)

    x = chain.x_T()
    for n, j in enumerate(range(K, 0, -1)):  # chain index j -> j - 1
        out = chain.predict(x, j)
        if n == 0:
            result.prior_rmse = _rmse(chain.preview_mean(out, j), src.pixels)
        elif chunks:
            result.steps[-1].preview_rmse = _rmse(chain.preview_mean(out, j), src.pixels)
        if opt.stop_after is not None and n >= opt.stop_after:
            break
        t = chain.t(j)
        mu_q, _, logvar_q = chain.diffusion.q_posterior_mean_variance(x0, x, t)
        ideal = float(normal_kl(mu_q, logvar_q, out["mean"], out["log_variance"]).sum()) / math.log(2)
        coded = encode_step(chain, n, j, mu_q, out, ideal, opt)
        chunk = fmt.Chunk(fmt.LATENT, n, coded.payload)
        if budget is not None and total + chunk.size > budget:
            break
        chunks.append(chunk)
        total += chunk.size
        result.steps.append(StepStats("latent", header.timesteps[j], chunk.size, ideal, coded.coded_bits, math.nan,
                                      coded.extra))
        x = coded.x
        if progress:
            progress(n + 1, K + 1)
    else:
        out = chain.predict(x, 0)
        if chunks:
            result.steps[-1].preview_rmse = _rmse(out["pred_xstart"], src.pixels)
        grid = chain.final_grid()
        mu = chain.final_mean(out["pred_xstart"])
        sym = src.pixels.transpose(2, 0, 1).astype(np.int64)[:src.coded_channels]
        ideal = _decoder_bits(x0, out, grey=src.coded_channels == 1)
        coded = encode_final(sym, mu, grid, ideal)
        chunk = fmt.Chunk(coded.kind, K, coded.payload)
        if budget is None or total + chunk.size <= budget:
            chunks.append(chunk)
            result.steps.append(StepStats("final", header.timesteps[0], chunk.size, ideal, coded.coded_bits, 0.0,
                                          {"channel_prediction": coded.kind == fmt.FINAL_PRED}))
        if progress:
            progress(K + 1, K + 1)

    header.num_chunks = len(chunks)
    result.data = header.to_bytes() + b"".join(c.to_bytes() for c in chunks)
    result.seconds = time.perf_counter() - t_start
    result.net_seconds = chain.net_seconds
    return result


def _rmse(pred_xstart: torch.Tensor, pixels: np.ndarray) -> float:
    return float(np.sqrt(np.mean((_to_uint8(pred_xstart).astype(np.float64) - pixels) ** 2)))


def _decoder_bits(x0: torch.Tensor, out: dict, grey: bool) -> float:
    """-log2 p_theta(x_0 | x_t) under the model's own discretized decoder (its variance)."""
    ll = discretized_gaussian_log_likelihood(x0, out["pred_xstart"], 0.5 * out["log_variance"])
    if grey:
        ll = ll[:, :1]
    return float(-ll.sum()) / math.log(2)


# ----------------------------------------------------------------------------- decoding


@dataclass
class Preview:
    step: int  # coded steps received so far (0 = only x_T)
    timestep: int  # original timestep of the current x_t (-1 after the final step)
    bytes: int  # file bytes consumed so far
    image: np.ndarray  # uint8 H x W x 3 estimate of x_0
    lossless: bool = False
    net_seconds: float = 0.0  # network time spent so far


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


def iter_previews(data: bytes, prior: Prior, reconstruct: str = "mean", max_step: int | None = None,
                  every: bool = True) -> Iterator[Preview]:
    """Algorithm 4: yield the x_0 estimate after 0, 1, 2, ... coded steps (only the last one,
    at ``max_step`` or the end of the data, when ``every`` is False)."""
    if reconstruct not in RECONSTRUCTIONS:
        raise ValueError(f"reconstruct must be one of {RECONSTRUCTIONS}")
    parsed = fmt.parse(data)
    header = parsed.header
    chain = _Chain(prior, header)
    K = header.num_latent_steps
    decode_step = _LATENT_CODERS[header.method][1]
    last = len(parsed.chunks) if max_step is None else min(max_step, len(parsed.chunks))
    consumed = parsed.header_size
    x = chain.x_T()
    for n in range(0, last + 1):
        j = K - n
        if j < 0:
            break
        out = chain.predict(x, j)
        if every or n == last:
            preview = chain.reconstruct(x, j, out, reconstruct)
            yield Preview(n, header.timesteps[j], consumed, _to_uint8(preview), net_seconds=chain.net_seconds)
        if n == last:
            return
        chunk = parsed.chunks[n]
        consumed += chunk.size
        if j > 0:
            x = decode_step(chain, n, j, chunk.payload, out)
        else:
            sym = decode_final(chunk.kind, chunk.payload, chain.final_mean(out["pred_xstart"]), chain.final_grid())
            rgb = np.repeat(sym, 3, axis=0) if sym.shape[0] == 1 else sym
            rgb = np.ascontiguousarray(rgb.transpose(1, 2, 0))
            restored = restore_image(rgb, header, lossless=True)
            if zlib.crc32(np.ascontiguousarray(_native(restored, header.mode)).tobytes()) != header.checksum:
                raise FormatError("decoded image fails its checksum: the file is damaged, or was encoded "
                                  "on a machine whose network arithmetic differs from this one's")
            yield Preview(n + 1, -1, consumed, rgb, lossless=True, net_seconds=chain.net_seconds)
            return


def decode(data: bytes, prior: Prior, step: int | None = None, reconstruct: str = "mean") -> DecodeResult:
    """Decode as far as ``step`` coded steps (default: everything in the data)."""
    t0 = time.perf_counter()
    parsed = fmt.parse(data)
    if step is not None and step < 0:
        raise ValueError("step must be >= 0")
    preview = None
    for preview in iter_previews(data, prior, reconstruct, max_step=step, every=False):
        pass
    assert preview is not None
    header = parsed.header
    image = restore_image(preview.image, header, preview.lossless)
    return DecodeResult(image, preview.step, header.num_latent_steps + 1, preview.lossless, parsed.truncated,
                        header, time.perf_counter() - t0, preview.net_seconds)
