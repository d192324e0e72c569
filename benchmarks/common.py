"""Helpers shared by the benchmark scripts.

Image I/O, distortion metrics (PSNR, MS-SSIM), rate units, machine
description and a writer for CompressAI-style results JSON files::

    {"name": ..., "description": ...,
     "results": {"bpp": [...], "psnr-rgb": [...], "ms-ssim-rgb": [...],
                 "encoding_time": [...], "decoding_time": [...]},
     ...extra keys...}

All metrics are computed on uint8 RGB images interpreted on the [0, 255] scale.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
from diffcodec import data as _data


#: MS-SSIM with the standard 5 scales and an 11x11 window needs the short side
#: of the image to exceed (11 - 1) * 2**4 = 160 pixels.
MS_SSIM_MIN_SIDE: int = 161


# Image reading is the library's: the same decoding and folder listing everywhere.
load_rgb = _data.load_rgb
list_images = _data.list_images


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    return np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    """Root-mean-square error between two images on the [0, 255] scale (float64)."""
    x, y = _check_pair(a, b)
    return float(np.sqrt(np.mean((x - y) ** 2)))


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """PSNR in dB over all RGB sub-pixels (peak 255); ``inf`` for identical images."""
    x, y = _check_pair(a, b)
    mse = float(np.mean((x - y) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(peak * peak / mse)


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """RGB MS-SSIM (pytorch_msssim, ``data_range=255``, 5 scales, 11x11 Gaussian window, float32).

    Images whose short side is below :data:`MS_SSIM_MIN_SIDE` (161 px) cannot be
    evaluated with the standard 5 scales (pytorch_msssim asserts on it even when
    fewer weights are given), so ``NaN`` is returned for them rather than a
    number computed with a non-standard number of scales.
    """
    x, y = _check_pair(a, b)
    if x.ndim != 3 or min(x.shape[:2]) < MS_SSIM_MIN_SIDE:
        return math.nan
    import torch
    from pytorch_msssim import ms_ssim as _ms_ssim

    # float32 is ~7x faster than float64 on CPU and agrees to ~1e-7.
    tx = torch.from_numpy(x).permute(2, 0, 1).unsqueeze(0).float()
    ty = torch.from_numpy(y).permute(2, 0, 1).unsqueeze(0).float()
    with torch.no_grad():
        return float(_ms_ssim(tx, ty, data_range=255.0, size_average=True))


def bits_per_pixel(nbytes: int, h: int, w: int) -> float:
    """Rate in bits per pixel: ``8 * nbytes / (h * w)``."""
    return 8.0 * nbytes / (h * w)


def bits_per_dim(nbytes: int, h: int, w: int, c: int = 3) -> float:
    """Rate in bits per dimension (sub-pixel): ``8 * nbytes / (h * w * c)``."""
    return 8.0 * nbytes / (h * w * c)


def _json_safe(value: Any) -> Any:
    """Recursively convert numpy scalars/arrays and non-finite floats (to ``None``) for JSON."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_results_json(
    path: str | os.PathLike[str],
    name: str,
    description: str,
    results: dict[str, Any],
    **extra: Any,
) -> Path:
    """Write a CompressAI-style results JSON file and return its path.

    ``results`` usually maps ``"bpp"``, ``"psnr-rgb"``, ``"ms-ssim-rgb"``,
    ``"encoding_time"`` and ``"decoding_time"`` to lists (one entry per
    quality setting). Any keyword arguments become extra top-level keys
    (e.g. ``per_image``, ``machine``, ``command``, ``date``). Non-finite floats
    (NaN, inf) are written as ``null`` so the file is strict JSON.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"name": name, "description": description, "results": results}
    doc.update(extra)
    out.write_text(json.dumps(_json_safe(doc), indent=2) + "\n")
    return out


def read_results_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a results JSON file written by :func:`write_results_json`."""
    return json.loads(Path(path).read_text())


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_description() -> str:
    """One-line description: CPU model, logical cores, and the CUDA device if available."""
    parts = [f"CPU: {_cpu_model()}", f"{os.cpu_count() or '?'} logical cores"]
    try:
        import torch

        if torch.cuda.is_available():
            parts.append(f"GPU: {torch.cuda.get_device_name(0)}")
        else:
            parts.append("no CUDA device")
    except Exception:  # torch missing or broken CUDA setup
        parts.append("torch unavailable")
    return ", ".join(parts)


def now_iso() -> str:
    """Current UTC time as an ISO-8601 string (seconds precision)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
