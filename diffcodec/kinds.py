"""The names the file format, the library, the CLI and the benchmarks share, declared once."""

from __future__ import annotations

from enum import Enum, IntEnum

from .errors import OptionError


class ChunkKind(IntEnum):
    """What a chunk of a .dfc file holds: one coded step, by the coder that made it."""

    UQ = 1  # latent step: universal quantization, interval-consistent (diffcodec.coders.uq)
    PFR = 2  # latent step: chunked Poisson functional representation (diffcodec.coders.pfr)
    FINAL = 3  # x_0, every channel under its own belief (diffcodec.coders.final)
    FINAL_PRED = 4  # x_0, RGB channels predicted from the ones decoded before them
    UQ_PRED = 5  # latent step: UQ with channels predicted from the ones decoded before them
    UQ_CTX = 6  # latent step: UQ_PRED's anchors, then the checkerboard's others predicted from them
    FINAL_CTX = 7  # x_0: FINAL_PRED's anchors, then the checkerboard's others predicted from them
    UQ_TEX = 8  # latent step: UQ_CTX with widths scaled per texture class (format version 6)
    FINAL_TEX = 9  # x_0: FINAL_CTX with widths scaled per texture class (format version 6)
    UQ_NBR = 10  # latent step: UQ_TEX's widths over 2 x 2 phases, each reading all channels' neighbours (version 7)
    FINAL_NBR = 11  # x_0: FINAL_TEX's widths over 2 x 2 phases, each reading all channels' neighbours (version 7)
    PFR_SPEC = 12  # latent step: PFR on colour components' tile DCT, a width per coefficient (version 8)

    @property
    def is_final(self) -> bool:
        return self in (ChunkKind.FINAL, ChunkKind.FINAL_PRED, ChunkKind.FINAL_CTX, ChunkKind.FINAL_TEX,
                        ChunkKind.FINAL_NBR)

    @property
    def since(self) -> int:
        """The first format version that has this kind."""
        if self == ChunkKind.PFR_SPEC:
            return 8
        if self in (ChunkKind.UQ_NBR, ChunkKind.FINAL_NBR):
            return 7
        return 6 if self in (ChunkKind.UQ_TEX, ChunkKind.FINAL_TEX) else 2

    @property
    def label(self) -> str:
        return {ChunkKind.UQ: "uq", ChunkKind.UQ_PRED: "uq+chan", ChunkKind.PFR: "pfr", ChunkKind.FINAL: "final",
                ChunkKind.FINAL_PRED: "final+chan", ChunkKind.UQ_CTX: "uq+ctx", ChunkKind.FINAL_CTX: "final+ctx",
                ChunkKind.UQ_TEX: "uq+tex", ChunkKind.FINAL_TEX: "final+tex", ChunkKind.UQ_NBR: "uq+nbr",
                ChunkKind.FINAL_NBR: "final+nbr", ChunkKind.PFR_SPEC: "pfr+spec"}[self]


class LatentMethod(str, Enum):
    """How the encoder codes latent steps: as the trajectory plan says (auto), or all with one coder."""

    AUTO = "auto"
    UQ = "uq"
    PFR = "pfr"


class Reconstruction(str, Enum):
    """The x_0 estimate a partial decode shows."""

    MEAN = "mean"  # the network's denoised estimate
    SAMPLE = "sample"  # an ancestral sample of p_theta(x_0 | x_t)
    FLOW = "flow"  # the deterministic probability-flow (DDIM) decode


class ImageMode(str, Enum):
    """Pillow modes the codec keeps losslessly; their order is the header's mode byte."""

    L = "L"
    RGB = "RGB"
    P = "P"
    BILEVEL = "1"

    @property
    def grey(self) -> bool:
        return self in (ImageMode.L, ImageMode.BILEVEL)


def values(enum) -> tuple[str, ...]:
    return tuple(e.value for e in enum)


#: How many of the square's eight symmetries a network call may be averaged over (the header's
#: symmetry field, :func:`diffcodec.unet.forward_symmetrised`).
SYMMETRIES = (1, 2, 4, 8)


def check_symmetry(symmetry: int) -> int:
    """``symmetry`` if it is one of :data:`SYMMETRIES`, else an :class:`OptionError`."""
    if symmetry not in SYMMETRIES:
        raise OptionError(f"symmetry must be one of {SYMMETRIES}")
    return symmetry
