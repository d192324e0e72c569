"""The interface every coded step implements, and what a step is given.

A coder turns one step of the chain into a payload and back.  Both sides call it with a
:class:`StepContext` holding everything the decoder knows before the step (the current latent,
the network's prediction, the feasible intervals, the chain's coefficients, the shared seed);
the encoder also passes an :class:`EncodeTarget` (the image and the options that steer the
coder).  Both return a :class:`StepOutput`: the next latent (``None`` after the final step),
the updated intervals and, for the final step, the pixels.  The encoder's output must be
exactly what the decoder will compute from the payload.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from ..errors import FormatError
from ..intervals import Intervals
from ..kinds import ChunkKind

if TYPE_CHECKING:
    from ..chain import CodedChain


@dataclass
class StepContext:
    """What both sides know before coded step ``index``."""

    chain: "CodedChain"
    index: int  # coded steps before this one (0 = the first latent step)
    j: int  # chain index of x_t: the step goes from j to j - 1 (0: the final step to x_0)
    x: torch.Tensor | None  # x_t, [1, 3, H, W] float64 on the CPU (None where the coder needs none: UQ, final)
    pred: dict  # the network's prediction at (x, j): mean, pred_xstart, variance, log_variance
    intervals: Intervals  # feasible levels of every dimension
    levels: np.ndarray | None = None  # the x_0 estimate in levels, when the caller made it already

    @property
    def coefs(self) -> tuple[float, float, float]:
        """(coef1, coef2, lambda^2) of q(x_s | x_t, x_0) = N(coef1 x_0 + coef2 x_t, lambda^2)."""
        d = self.chain.diffusion
        return (float(d.posterior_mean_coef1[self.j]), float(d.posterior_mean_coef2[self.j]),
                float(d.posterior_variance[self.j]))

    @property
    def xstart_levels(self) -> np.ndarray:
        """The network's x_0 estimate in levels, flat [3 * H * W] float64 (``levels`` if given,
        else made from ``pred["pred_xstart"]``, which is left as it was)."""
        if self.levels is not None:
            return self.levels
        return _levels(self.pred["pred_xstart"][0].to(torch.float64, copy=True))


def _levels(xstart: torch.Tensor) -> np.ndarray:
    """x_0 in [-1, 1] to levels, flat float64, in ``xstart``'s own buffer."""
    return xstart.add_(1.0).mul_(127.5).reshape(-1).numpy()


def take_xstart_levels(pred: dict) -> np.ndarray:
    """``StepContext.xstart_levels`` made in place from ``pred["pred_xstart"]``, which leaves
    ``pred`` (the same floats; no second image-sized array)."""
    return _levels(pred.pop("pred_xstart")[0].double())


def step_context(coder: "Coder", *, chain: "CodedChain", index: int, j: int, x: torch.Tensor, pred: dict,
                 intervals: Intervals) -> StepContext:
    """The context the codec's loops hand ``coder``, whose step is the last user of ``pred``
    (the preview and the ideal cost are taken before it).  A coder that reads neither x_t nor
    ``pred["pred_xstart"]`` (``needs_latent`` False) gets no x_t and the x_0 estimate in levels,
    made in place, so that neither stays alive for its sake: a caller that rebinds its x_t to
    the context's ``x`` frees it."""
    if coder.needs_latent:
        return StepContext(chain, index, j, x, pred, intervals)
    return StepContext(chain, index, j, None, pred, intervals, take_xstart_levels(pred))


@dataclass
class EncodeTarget:
    """What only the encoder knows: the image, and how hard to try."""

    levels: np.ndarray  # [3, H, W] pixel levels (any integer dtype)
    coded_channels: int  # 1 for grey images (the final step codes one channel), else 3
    pfr_chunk_bits: int = 8
    pfr_margin_bits: int = 6
    every_layout: bool = False  # fit the checkerboard layouts at any image size (to measure them)
    spectral_pfr: bool = True  # PFR steps may take the spectral layout where it codes shorter

    @property
    def flat_levels(self) -> np.ndarray:
        return self.levels.reshape(-1)

    @property
    def x0(self) -> torch.Tensor:
        """[1, 3, H, W] float64 on [-1, 1] (made when asked: it is 8 bytes a dimension)."""
        return torch.from_numpy(self.levels.astype(np.float64) / 127.5 - 1.0)[None]


@dataclass
class StepOutput:
    payload: bytes
    intervals: Intervals
    x: torch.Tensor | None = None  # the next latent (latent steps)
    pixels: np.ndarray | None = None  # [C, H, W] uint8 levels (final step)
    coded_bits: float = 0.0  # bits of the entropy-coded data alone
    stats: dict = field(default_factory=dict)


class Coder(Protocol):
    """A step coder.  ``encode`` may pick among the chunk kinds the coder owns (a layout) and
    names it in ``StepOutput.stats['kind']``; ``check`` validates a payload's structure against
    the header before anything image-sized is allocated."""

    kind: ChunkKind
    needs_latent: bool  # reads ctx.x and ctx.pred["pred_xstart"] (else see step_context)

    def encode(self, ctx: StepContext, target: EncodeTarget) -> StepOutput: ...

    def decode(self, ctx: StepContext, payload: bytes, kind: ChunkKind) -> StepOutput: ...

    def check(self, payload: bytes, header, kind: ChunkKind) -> None: ...


def take_field(data: bytes, pos: int, expected: int | None, what: str) -> tuple[int, bytes]:
    """A u32-length-prefixed field of a payload at ``pos``: (position after it, its bytes); a
    wrong length (or one other than ``expected``) is a FormatError."""
    if len(data) < pos + 4:
        raise FormatError(f"step payload is truncated before its {what}")
    (n,) = struct.unpack_from("<I", data, pos)
    if expected is not None and n != expected:
        raise FormatError(f"step payload has the wrong amount of side information ({what}: {n}, not {expected})")
    if len(data) < pos + 4 + n:
        raise FormatError(f"step payload is shorter than its {what} field says")
    return pos + 4 + n, bytes(data[pos + 4:pos + 4 + n])
