"""What a file holds, step by step, and its previews as images: the library behind ``info`` and
``decode --previews/--strip``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from . import container as fmt
from .checkpoint import Prior
from .codec import Preview, iter_previews
from .image import restore_image
from .kinds import Reconstruction


@dataclass
class StepRow:
    step: int  # 1-based
    kind: str  # the coder: uq, pfr, final, final+chan
    from_timestep: int
    to_timestep: int  # -1: x_0
    bytes: int
    cumulative_bpp: float
    cumulative_bits_per_dim: float
    ideal_bits: float  # the step's KL (or decoder NLL) under the model's variances
    coded_over_ideal: float | None
    fine_bits: float | None = None  # what the model's full chain spends on the same range (attach_fine_bits)
    coded_over_fine: float | None = None


@dataclass
class FileReport:
    file: str
    bytes: int
    width: int
    height: int
    mode: str
    model_fingerprint: str
    schedule: str
    T: int
    coded_timesteps: list[int]
    seed: int
    tile: int
    symmetry: int
    symmetry_max_t: int  # network calls at t <= this are symmetrised (65535: all)
    steps_in_file: int
    steps_announced: int
    truncated: bool
    lossless: bool
    header_bytes: int
    ideal_bits_per_dim: float  # sum of the steps' ideal bits over the dims (complete files)
    steps: list[StepRow] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def file_report(data: bytes, name: str = "", max_pixels: int = fmt.DEFAULT_MAX_PIXELS) -> FileReport:
    parsed = fmt.parse(data, max_pixels)
    h = parsed.header
    pixels, dims = h.pixels, 3 * h.pixels
    rows, cum = [], parsed.header_size
    K = h.num_latent_steps
    for c in parsed.chunks:
        cum += c.size
        ideal = float(c.ideal_bits)
        j = K - c.index
        rows.append(StepRow(c.index + 1, c.kind.label, h.timesteps[j], h.timesteps[j - 1] if j else -1, c.size,
                            8 * cum / pixels, 8 * cum / dims, ideal, 8 * c.size / ideal if ideal > 0 else None))
    lossless = bool(parsed.chunks) and parsed.chunks[-1].kind.is_final
    return FileReport(name, len(data), h.width, h.height, h.mode, h.fingerprint.hex(), h.schedule, h.num_timesteps,
                      list(h.timesteps), h.seed, h.tile, h.symmetry, h.symmetry_max_t, len(parsed.chunks), h.num_chunks, parsed.truncated, lossless,
                      parsed.header_size, sum(r.ideal_bits for r in rows) / dims, rows)


def attach_fine_bits(report: FileReport, per_step: np.ndarray) -> None:
    """Give each step of ``report`` its share of the model's full-chain bound: ``per_step[k]``
    is the bound's term at timestep k in bits/dim (:class:`diffcodec.likelihood.BoundTerms`, k = 0
    the decoder term), a latent step from t to s covers the terms s + 1 .. t and the final step
    from t_min the terms 0 .. t_min, so the steps of a complete file partition the bound (x_T's
    prior term, ~0, is not coded).  The gap between a step's bytes and its share is what the
    coarse chain and its coders lose on that range."""
    per_step = np.asarray(per_step, dtype=np.float64)
    if len(per_step) != report.T:
        raise ValueError(f"per_step has {len(per_step)} terms, the file's chain T = {report.T}")
    dims = 3 * report.width * report.height
    for r in report.steps:
        lo = 0 if r.to_timestep < 0 else r.to_timestep + 1
        r.fine_bits = float(per_step[lo:r.from_timestep + 1].sum()) * dims
        r.coded_over_fine = 8 * r.bytes / r.fine_bits if r.fine_bits > 0 else None


def progression_strip(previews: list[np.ndarray], max_frames: int = 12) -> np.ndarray:
    """Up to ``max_frames`` previews (uint8 H x W x 3), evenly picked from first to last, side by side."""
    idx = np.unique(np.round(np.linspace(0, len(previews) - 1, min(max_frames, len(previews)))).astype(int))
    return np.concatenate([previews[i] for i in idx], axis=1)


def export_previews(data: bytes, prior: Prior, folder: str | Path | None = None, strip: str | Path | None = None,
                    reconstruct: Reconstruction = Reconstruction.MEAN, max_step: int | None = None,
                    max_pixels: int = fmt.DEFAULT_MAX_PIXELS, progress: Callable[[Preview], None] | None = None
                    ) -> tuple[Image.Image, Preview]:
    """Decode step by step, writing every preview into ``folder`` (step0000.png, ...) and/or a
    progression strip; returns the last preview as an image in the file's mode, and itself."""
    header = fmt.parse(data, max_pixels).header
    frames, last = [], None
    for last in iter_previews(data, prior, reconstruct, max_step=max_step, max_pixels=max_pixels):
        img = restore_image(last.image, header, last.lossless)
        if folder is not None:
            Path(folder).mkdir(parents=True, exist_ok=True)
            img.save(Path(folder) / f"step{last.step:04d}.png")
        if strip is not None:
            frames.append(np.asarray(img.convert("RGB")))
        if progress:
            progress(last)
    assert last is not None
    if strip is not None:
        Image.fromarray(progression_strip(frames)).save(strip)
    return restore_image(last.image, header, last.lossless), last
