"""The step coders behind one interface (:class:`~diffcodec.coders.base.Coder`), by chunk kind.

* :mod:`~diffcodec.coders.uq` — latent steps by interval-consistent universal quantization;
* :mod:`~diffcodec.coders.pfr` — latent steps by the Poisson functional representation, per
  tile or in the frequency domain (:mod:`~diffcodec.coders.spectral`);
* :mod:`~diffcodec.coders.final` — the final step to x_0, plain, channel-predicted, with context
  (:mod:`~diffcodec.coders.spatial`) or with texture classes too (:mod:`~diffcodec.coders.texture`).
"""

from __future__ import annotations

from types import MappingProxyType

from ..kinds import ChunkKind
from .base import Coder, EncodeTarget, StepContext, StepOutput, step_context
from .final import FinalCoder
from .pfr import PfrCoder
from .uq import UqCoder

_UQ, _FINAL, _PFR = UqCoder(), FinalCoder(), PfrCoder()
#: The coder of every chunk kind (read-only); a coder with several layouts owns a kind for each.
CODERS = MappingProxyType({ChunkKind.UQ: _UQ, ChunkKind.UQ_PRED: _UQ, ChunkKind.UQ_CTX: _UQ, ChunkKind.UQ_TEX: _UQ,
                           ChunkKind.UQ_NBR: _UQ, ChunkKind.PFR: _PFR, ChunkKind.PFR_SPEC: _PFR, ChunkKind.FINAL: _FINAL,
                           ChunkKind.FINAL_PRED: _FINAL, ChunkKind.FINAL_CTX: _FINAL, ChunkKind.FINAL_TEX: _FINAL,
                           ChunkKind.FINAL_NBR: _FINAL})

__all__ = ["CODERS", "Coder", "EncodeTarget", "StepContext", "StepOutput", "step_context"]
