"""The epsilon-predicting U-Net (DDPM / Improved-DDPM architecture).

Residual blocks with GroupNorm, SiLU and a scale-shift timestep conditioning, a sinusoidal
timestep embedding, optional self-attention at chosen downsampling factors, dropout and channel
multipliers.  Outputs epsilon (3 channels) or epsilon and the variance interpolation v
(6 channels).  The network is fully convolutional: any H x W works, odd sizes included, because
the input is padded to a multiple of the total downsampling factor inside ``forward`` and the
output is cropped back.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .kinds import SYMMETRIES


NORMS = ("group", "layer")


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 3
    model_channels: int = 64
    out_channels: int = 6
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)  # downsampling factors that get attention
    dropout: float = 0.0
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_heads: int = 4
    attention_window: int = 16  # attention within windows of this many tokens a side (0 = global)
    norm: str = "group"  # "group": GroupNorm (statistics over the whole map); "layer": per pixel, over channels
    fourier: tuple[int, ...] = ()  # VDM's Fourier features of the input: sin/cos(2**n * pi * x) for each n
    middle_attention: bool = True  # self-attention between the middle ResBlocks

    def __post_init__(self) -> None:
        # Checkpoints store lists; keep the config hashable and comparable.
        object.__setattr__(self, "attention_resolutions", tuple(int(a) for a in self.attention_resolutions))
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        object.__setattr__(self, "fourier", tuple(int(n) for n in self.fourier))
        if self.model_channels < 8 or self.num_res_blocks < 1 or not self.channel_mult:
            raise ValueError(f"invalid U-Net config {self}")
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r} (choose from {NORMS})")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["attention_resolutions"] = list(self.attention_resolutions)
        d["channel_mult"] = list(self.channel_mult)
        d["fourier"] = list(self.fourier)
        return d

    @property
    def tile_exact(self) -> bool:
        """True when every output depends only on a bounded neighbourhood of the input (no
        statistic over the whole map, no attention), so the network can be run on tiles with
        a halo (:func:`receptive_radius`) and give the same output as one whole-image call."""
        return self.norm == "layer" and not self.attention_resolutions and not self.middle_attention

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)


# Named configurations. Sizes and speeds are measured in README.md ("Model configurations").
CONFIGS: dict[str, UNetConfig] = {
    "tiny": UNetConfig(model_channels=16, num_res_blocks=1, channel_mult=(1, 2), attention_resolutions=()),
    "small": UNetConfig(model_channels=32, num_res_blocks=1, channel_mult=(1, 2, 2), attention_resolutions=(4,)),
    # 7.35 M parameters: 14.7 MB as float16, under the 16 MiB a GPU run can return.
    "base": UNetConfig(model_channels=56, num_res_blocks=2, channel_mult=(1, 2, 2, 2), attention_resolutions=(8,),
                       dropout=0.1),
    # Tile-exact candidates for prior v2 (per-pixel norm, no attention, Fourier features n = 6, 7):
    "local24": UNetConfig(model_channels=24, num_res_blocks=1, channel_mult=(1, 2, 2, 2), attention_resolutions=(),
                          middle_attention=False, norm="layer", fourier=(6, 7)),
    "local16": UNetConfig(model_channels=16, num_res_blocks=1, channel_mult=(1, 2, 4, 8), attention_resolutions=(),
                          middle_attention=False, norm="layer", fourier=(6, 7)),
}


def named_config(name: str, learn_sigma: bool = True) -> UNetConfig:
    if name not in CONFIGS:
        raise ValueError(f"unknown model config {name!r} (choose from {', '.join(CONFIGS)})")
    cfg = CONFIGS[name]
    return UNetConfig(**{**cfg.to_dict(), "out_channels": 2 * cfg.in_channels if learn_sigma else cfg.in_channels})


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, shape [N, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class _GroupNorm(nn.GroupNorm):
    """nn.GroupNorm without F.group_norm's check that refuses groups of a single value (batch 1,
    one channel per group, a 1 x 1 map: a 1 x 1 image at the lowest level); normalising a single
    value is well defined (the output is the bias), and the result is otherwise identical."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        threads = torch.get_num_threads()
        if x.device.type == "cpu" and threads > 1 and not x.is_contiguous():
            # torch's channels_last CPU kernel splits each group's sums over threads, so its
            # output depends on the thread count (~1e-4 apart) and a file coded with 2 threads
            # would not decode with 4. One thread here makes the network's output the same for
            # any thread count; all GroupNorms of a 768 x 512 call take ~0.25 s on one thread
            # (a copy to NCHW and back, the other deterministic route, took 1.3 s).
            torch.set_num_threads(1)
            try:
                return self._group_norm(x)
            finally:
                torch.set_num_threads(threads)
        return self._group_norm(x)

    def _group_norm(self, x: torch.Tensor) -> torch.Tensor:
        return torch.group_norm(x, self.num_groups, self.weight, self.bias, self.eps, torch.backends.cudnn.enabled)


class _Conv1x1(nn.Conv2d):
    """A 1 x 1 convolution whose CPU inference output does not depend on the thread count.

    torch sends 1 x 1 convolutions to a GEMM whose blocking changes with the threads (a third of
    the shapes tried differ by ~1e-6 between 1 and 2 threads: a file coded on one machine would
    not decode on another with more cores); oneDNN's convolution, which every 3 x 3 layer
    already uses, gives the same words for any thread count and is faster. Training (gradients
    wanted) keeps the ordinary path; the weights are the same either way."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available()
                and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))):
            return torch.mkldnn_convolution(x, self.weight, self.bias, [0, 0], [1, 1], [1, 1], 1)
        return super().forward(x)


class _PixelNorm(nn.Module):
    """LayerNorm over the channels at each pixel: no statistic crosses pixels, so the network
    stays local (tile-exact)."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_contiguous(memory_format=torch.channels_last):
            # NHWC in memory: one fused layer_norm over the last (channel) axis, a pixel per row
            y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
            return y.permute(0, 3, 1, 2)
        mean = x.mean(dim=1, keepdim=True)
        var = (x - mean).square().mean(dim=1, keepdim=True)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight[:, None, None] + self.bias[:, None, None]


class _SiLU(nn.SiLU):
    """SiLU, in place where no gradient is wanted (inference): every use below acts on a fresh
    tensor (a norm's output), and a 768 x 512 call saves allocating ~1 GB of activations."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x, inplace=not torch.is_grad_enabled())


def _norm(channels: int, kind: str = "group") -> nn.Module:
    if kind == "layer":
        return _PixelNorm(channels)
    groups = 32 if channels % 32 == 0 else 8 if channels % 8 == 0 else 1
    return _GroupNorm(groups, channels)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, out_channels: int, dropout: float,
                 norm: str = "group") -> None:
        super().__init__()
        self.in_layers = nn.Sequential(_norm(channels, norm), _SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
        self.out_norm = _norm(out_channels, norm)
        self.out_layers = nn.Sequential(
            _SiLU(), nn.Dropout(dropout), _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        )
        self.skip = nn.Identity() if channels == out_channels else _Conv1x1(channels, out_channels)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        scale, shift = self.emb_layers(emb)[:, :, None, None].chunk(2, dim=1)
        if not torch.is_grad_enabled():  # inference: the same sums with fewer full-size temporaries
            h = torch.addcmul(shift, self.out_norm(h), 1 + scale)
            return self.out_layers(h).add_(self.skip(x))
        h = self.out_norm(h) * (1 + scale) + shift
        return self.skip(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over windows of ``window`` x ``window`` positions.

    A map no larger than one window (any training crop up to window * downsampling factor)
    gets global attention; a larger one (a whole photo) is split into windows, padded at the
    bottom/right with masked-out positions, so attention at test time sees the same number of
    tokens as in training and costs linear, not quadratic, time in the image size."""

    def __init__(self, channels: int, num_heads: int, window: int = 0) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels do not split into {num_heads} heads")
        self.num_heads, self.window = num_heads, window
        self.norm = _norm(channels)
        self.qkv = _Conv1x1(channels, 3 * channels)
        self.proj = _zero(_Conv1x1(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        qkv = self.qkv(self.norm(x))
        win = self.window
        if not win or (h <= win and w <= win):
            return x + self.proj(self._attend(qkv, None).reshape(n, c, h, w))
        ph, pw = (-h) % win, (-w) % win
        qkv = F.pad(qkv, (0, pw, 0, ph))
        nh, nw = (h + ph) // win, (w + pw) // win
        # [n, 3c, nh*win, nw*win] -> [n*nh*nw, 3c, win, win]
        tiles = qkv.reshape(n, 3 * c, nh, win, nw, win).permute(0, 2, 4, 1, 3, 5).reshape(-1, 3 * c, win, win)
        mask = None
        if ph or pw:
            valid = torch.zeros(h + ph, w + pw, dtype=torch.bool, device=x.device)
            valid[:h, :w] = True
            valid = valid.reshape(nh, win, nw, win).permute(0, 2, 1, 3).reshape(nh * nw, 1, 1, win * win)
            mask = valid.repeat(n, 1, 1, 1)  # [n*nh*nw, 1, 1, tokens]: keys that are real
        out = self._attend(tiles, mask).reshape(n, nh, nw, c, win, win)
        out = out.permute(0, 3, 1, 4, 2, 5).reshape(n, c, h + ph, w + pw)[:, :, :h, :w]
        return x + self.proj(out)

    def _attend(self, qkv: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """qkv [B, 3c, a, b] -> attention output [B, c, a*b]."""
        b, c3, ha, wb = qkv.shape
        c = c3 // 3
        qkv = qkv.reshape(b, 3, self.num_heads, c // self.num_heads, ha * wb)
        # [B, heads, tokens, d], contiguous: on CPU, strided inputs send scaled_dot_product_attention
        # to its unfused math path (5x slower, materialising every B x heads x tokens^2 score)
        q, k, v = (qkv[:, i].transpose(-1, -2).contiguous() for i in range(3))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return out.transpose(-1, -2).reshape(b, c, ha * wb)


class UNet(nn.Module):
    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = cfg = config
        ch = cfg.model_channels
        emb_ch = 4 * ch
        self.time_embed = nn.Sequential(nn.Linear(ch, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        self.input_conv = nn.Conv2d(cfg.in_channels * (1 + 2 * len(cfg.fourier)), ch, 3, padding=1)
        nm = cfg.norm

        self.down = nn.ModuleList()
        skip_channels = [ch]
        cur, ds = ch, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                blocks = nn.ModuleList([ResBlock(cur, emb_ch, mult * ch, cfg.dropout, nm)])
                cur = mult * ch
                if ds in cfg.attention_resolutions:
                    blocks.append(AttentionBlock(cur, cfg.num_heads, cfg.attention_window))
                self.down.append(blocks)
                skip_channels.append(cur)
            if level != len(cfg.channel_mult) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(cur, cur, 3, stride=2, padding=1)]))
                skip_channels.append(cur)
                ds *= 2

        self.middle = nn.ModuleList([
            ResBlock(cur, emb_ch, cur, cfg.dropout, nm),
            *([AttentionBlock(cur, cfg.num_heads, cfg.attention_window)] if cfg.middle_attention else []),
            ResBlock(cur, emb_ch, cur, cfg.dropout, nm),
        ])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                blocks = nn.ModuleList([ResBlock(cur + skip_channels.pop(), emb_ch, mult * ch, cfg.dropout, nm)])
                cur = mult * ch
                if ds in cfg.attention_resolutions:
                    blocks.append(AttentionBlock(cur, cfg.num_heads, cfg.attention_window))
                if level and i == cfg.num_res_blocks:
                    blocks.append(_Upsample(cur))
                    ds //= 2
                self.up.append(blocks)

        self.out = nn.Sequential(_norm(cur, nm), _SiLU(), _zero(nn.Conv2d(cur, cfg.out_channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x: [N, C, H, W] on [-1, 1]-ish scale; t: [N] model time in [0, 1000)."""
        h_in, w_in = x.shape[-2:]
        f = self.config.downsample_factor
        pad_h, pad_w = (-h_in) % f, (-w_in) % f
        if pad_h or pad_w:
            mode = "reflect" if pad_h < h_in and pad_w < w_in else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(x.dtype))
        if self.config.fourier:
            x = torch.cat([x] + [f(x * (2.0**n * math.pi)) for n in self.config.fourier for f in (torch.sin, torch.cos)],
                          dim=1)
        h = self.input_conv(x)
        skips = [h]
        for blocks in self.down:
            for layer in blocks:
                h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            skips.append(h)
        for layer in self.middle:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        for blocks in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            for layer in blocks:
                h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return self.out(h)[..., :h_in, :w_in]


class _Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())




# ----------------------------------------------------------------------------- tiled evaluation

#: Images above this many pixels are evaluated in tiles of about this area (plus a halo).
DEFAULT_TILE_PIXELS = 1024 * 1024
#: Halo of a network that is not tile-exact (GroupNorm statistics, attention): its tiles then
#: compute a (documented) approximation of the whole-image function, the same one on every run.
APPROX_HALO = 64


def receptive_radius(cfg: UNetConfig) -> int:
    """How far (in input pixels) an output pixel of a tile-exact network can see: the sum of
    the 3 x 3 convolutions' reach at their strides, plus a stride of slack at each nearest
    upsampling.  ``inf`` for networks with attention or whole-map statistics."""
    if not cfg.tile_exact:
        return math.inf
    r, jump = 1, 1  # the input convolution
    for level in range(len(cfg.channel_mult)):
        r += 2 * jump * cfg.num_res_blocks
        if level != len(cfg.channel_mult) - 1:
            r += jump
            jump *= 2
    r += 4 * jump  # middle ResBlocks
    for level in reversed(range(len(cfg.channel_mult))):
        r += 2 * jump * (cfg.num_res_blocks + 1)
        if level:
            jump //= 2
            r += 2 * jump  # upsampling slack + its convolution
    return r + 1  # the output convolution


def tile_halo(cfg: UNetConfig) -> int:
    """Halo around each tile, a multiple of the downsampling factor."""
    f = cfg.downsample_factor
    r = receptive_radius(cfg)
    r = APPROX_HALO if r == math.inf else r
    return -(-r // f) * f


def forward_tiled(net: "UNet", x: torch.Tensor, t: torch.Tensor, tile_pixels: int | None = None,
                  on_tile: Callable[[int, int], None] | None = None, channels: int | None = None,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """``net(x, t)`` for one image ([1, C, H, W]) with memory bounded by the tile size: images
    above ``tile_pixels`` (default :data:`DEFAULT_TILE_PIXELS`) are cut into square tiles aligned
    to the downsampling factor, each run with a halo of :func:`tile_halo` pixels (clipped at the
    image border) and cropped back.  For a tile-exact network this equals the whole-image call
    to float rounding; for others it is a fixed approximation that depends only on the image size
    and ``tile_pixels``.  ``on_tile(done, total)`` is called after each tile (once, with (1, 1),
    for a whole-image call).  ``channels``: only the first that many output channels are kept (a
    tiled call's whole-image buffer holds only those: the codec drops the variance output).
    ``dtype``: the network's input type, ``x`` converted tile by tile where the image needs no
    padding (no whole-image copy of the input; the same floats as converting it whole)."""
    dtype = x.dtype if dtype is None else dtype

    def prepared(v: torch.Tensor) -> torch.Tensor:  # the network's input: channels_last on CPU
        if v.device.type == "cpu":
            return v.to(dtype=dtype, memory_format=torch.channels_last)
        return v.to(dtype=dtype)

    h, w = x.shape[-2:]
    limit = DEFAULT_TILE_PIXELS if tile_pixels is None else tile_pixels
    if x.shape[0] != 1 or h * w <= limit:
        out = net(prepared(x), t)
        if on_tile:
            on_tile(1, 1)
        return out if channels is None else out[:, :channels]
    cfg = net.config
    f = cfg.downsample_factor
    ph, pw = (-h) % f, (-w) % f
    tile_input = prepared
    if ph or pw:  # pad once as forward() would, so every tile's size is a multiple of f
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(prepared(x), (0, pw, 0, ph), mode=mode)
        tile_input = lambda v: v  # noqa: E731  (the padded copy is the network's input already)
    H, W = x.shape[-2:]
    core = max(f, int(math.sqrt(limit)) // f * f)
    halo = tile_halo(cfg)
    out = None
    origins = [(y0, x0) for y0 in range(0, H, core) for x0 in range(0, W, core)]
    for done, (y0, x0) in enumerate(origins, 1):
        y1, x1 = min(y0 + core, H), min(x0 + core, W)
        ya, xa = max(0, y0 - halo), max(0, x0 - halo)
        yb, xb = min(H, y1 + halo), min(W, x1 + halo)
        part = net(tile_input(x[..., ya:yb, xa:xb]), t)
        if channels is not None:
            part = part[:, :channels]
        if out is None:
            out = torch.empty((1, part.shape[1], H, W), dtype=part.dtype, device=part.device)
        out[..., y0:y1, x0:x1] = part[..., y0 - ya:y1 - ya, x0 - xa:x1 - xa]
        del part
        if on_tile:
            on_tile(done, len(origins))
    return out[..., :h, :w]


__all__ = ["UNet", "UNetConfig", "CONFIGS", "named_config", "timestep_embedding", "count_parameters",
           "receptive_radius", "tile_halo", "forward_tiled", "DEFAULT_TILE_PIXELS"]


# ----------------------------------------------------------------------------- self-ensemble

#: The square's symmetries in the order a symmetrised call uses them.  The first 2 (identity,
#: left-right mirror) and the first 4 (with the up-down mirrors) are subgroups, so a mean over
#: the first 1, 2, 4 or 8 (:data:`diffcodec.kinds.SYMMETRIES`) is equivariant to those symmetries.
_D4 = tuple((tr, fv, fh) for tr in (0, 1) for fv in (0, 1) for fh in (0, 1))  # (transpose, flip rows, flip cols)


def _apply(x: torch.Tensor, g: tuple[int, int, int]) -> torch.Tensor:
    tr, fv, fh = g
    x = x.transpose(-2, -1) if tr else x
    x = x.flip(-2) if fv else x
    return x.flip(-1) if fh else x


def _undo(x: torch.Tensor, g: tuple[int, int, int]) -> torch.Tensor:
    tr, fv, fh = g
    x = x.flip(-1) if fh else x
    x = x.flip(-2) if fv else x
    return x.transpose(-2, -1) if tr else x


def forward_symmetrised(net: "UNet", x: torch.Tensor, t: torch.Tensor, symmetry: int = 1,
                        tile_pixels: int | None = None,
                        on_tile: Callable[[int, int], None] | None = None,
                        channels: int | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The mean of :func:`forward_tiled` over the first ``symmetry`` of the square's eight
    symmetries (input transformed, output transformed back, summed in that fixed order): a
    self-ensemble whose x_0 estimate errs less than one call (on Kodak crops 2 % lower squared
    error with 2, 4 % with 8) for ``symmetry`` times the work.  ``symmetry=1`` is the plain call;
    ``channels`` and ``dtype`` as :func:`forward_tiled` says."""
    if symmetry not in SYMMETRIES:
        raise ValueError(f"symmetry must be one of {SYMMETRIES}")
    total = None
    for k, g in enumerate(_D4[:symmetry]):
        hook = None if on_tile is None else (lambda done, n, k=k: on_tile(k * n + done, symmetry * n))
        # a transformed input is a copy (flip copies): made in the network's type, as before
        xg = _apply(x.to(dtype) if dtype is not None and any(g) else x, g)
        out = _undo(forward_tiled(net, xg, t, tile_pixels, hook, channels, dtype), g)
        del xg
        total = out if total is None else total.add_(out)
    return total if symmetry == 1 else total.div_(symmetry)
