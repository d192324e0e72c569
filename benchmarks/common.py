"""Helpers shared by the benchmark scripts (the only module they import besides the library).

Image I/O and centre crops, distortion metrics (PSNR, MS-SSIM), rate units, the model's bound,
the baselines' names, PSNR interpolation on an RD curve, DDPM's Table 4 as markdown, the RD and
lossless plots (matplotlib, Agg backend), machine description, the command line of a run, and
a writer for CompressAI-style results JSON files::

    {"name": ..., "description": ...,
     "results": {"bpp": [...], "psnr-rgb": [...], "ms-ssim-rgb": [...],
                 "encoding_time": [...], "decoding_time": [...]},
     ...extra keys...}

All metrics are computed on uint8 RGB images interpreted on the [0, 255] scale.
"""

from __future__ import annotations

import datetime as _dt
import inspect
import json
import math
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffcodec import data as _data
from diffcodec.checkpoint import Prior
from diffcodec.errors import OptionError
from diffcodec.likelihood import BoundTerms, bits_per_dim as _bound_bits_per_dim

#: The lossy baselines' JSON names (``<name>.json`` as written by ``benchmarks.baselines``),
#: in the order the plots and tables list them; the lossless ones share ``lossless.json``.
BASELINES: tuple[str, ...] = ("jpeg", "webp", "avif", "jpegxl", "jpeg2000")
LOSSLESS: str = "lossless"

#: The variance sources of the model's bound (``diffcodec.likelihood.bits_per_dim``'s ``variance``).
VARIANCES: tuple[str, ...] = ("model", "analytic")

#: MS-SSIM with the standard 5 scales and an 11x11 window needs the short side
#: of the image to exceed (11 - 1) * 2**4 = 160 pixels.
MS_SSIM_MIN_SIDE: int = 161


# Image reading is the library's: the same decoding and folder listing everywhere.
load_rgb = _data.load_rgb
list_images = _data.list_images


def center_crop(img: np.ndarray, size: int | None) -> np.ndarray:
    """The central ``size`` x ``size`` pixels (each side clipped to the image's); the image
    itself when ``size`` is 0 or None."""
    if not size:
        return img
    h, w = img.shape[:2]
    ch, cw = min(size, h), min(size, w)
    y, x = (h - ch) // 2, (w - cw) // 2
    return np.ascontiguousarray(img[y:y + ch, x:x + cw])


def load_images(folder: str | os.PathLike[str], limit: int | None = None, crop: int | None = None
                ) -> dict[str, np.ndarray]:
    """``{file name: uint8 H x W x 3}`` of the first ``limit`` images of a folder (all when 0 or
    None), centre-cropped to ``crop`` px when given."""
    paths = list_images(folder)[: limit or None]
    if not paths:
        raise FileNotFoundError(f"no images found in {folder}")
    return {p.name: center_crop(load_rgb(p), crop) for p in paths}


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


def check_bound_variance(prior: Prior, variance: str) -> None:
    """Raise :class:`~diffcodec.errors.OptionError` unless :func:`bound` can compute the bound
    of ``prior`` with the reverse variances ``variance`` (before any work is done)."""
    if variance not in VARIANCES:
        raise OptionError(f"variance must be one of {VARIANCES}, got {variance!r}")
    if variance == "analytic" and prior.xstart_mse is None:
        raise OptionError(f"the analytic bound needs an x_0 error table, and {Path(prior.source).name} has none "
                          "(add one with 'diffcodec errtable')")
    if variance != "model" and "variance" not in inspect.signature(_bound_bits_per_dim).parameters:
        raise OptionError("this diffcodec's likelihood.bits_per_dim has no 'variance' argument: "
                          "only the bound with the model's own variances can be computed")


def bound(image: np.ndarray, prior: Prior, steps: int | None = None, variance: str = "model",
          seed: int = 0, progress: Any = None) -> BoundTerms:
    """The model's variational bound of one image (:func:`diffcodec.likelihood.bits_per_dim`)
    with a chain respaced to ``steps`` timesteps (None: the full T) and the reverse variances
    ``variance``: the model's own, or analytic from its x_0 error table."""
    check_bound_variance(prior, variance)
    # The model's variances are bits_per_dim's default: ``variance`` is passed only when it is
    # not, so that the default also runs with a library whose bits_per_dim lacks the argument.
    extra = {} if variance == "model" else {"variance": variance}
    return _bound_bits_per_dim(image, prior, steps, seed, progress=progress, **extra)


def interpolate_psnr_at_bpp(results_json: dict[str, Any], bpp: float, metric: str = "psnr-rgb") -> float:
    """Linearly interpolate the averaged ``metric``-vs-bpp curve of a results JSON at ``bpp``.

    Points are sorted by bpp; returns ``NaN`` if ``bpp`` is outside the measured range
    (no extrapolation) or the curve has no finite points.
    """
    res = results_json["results"]
    xs = np.asarray([np.nan if v is None else v for v in res["bpp"]], dtype=np.float64)
    ys = np.asarray([np.nan if v is None else v for v in res[metric]], dtype=np.float64)
    ok = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[ok], ys[ok]
    if xs.size == 0 or bpp < xs.min() or bpp > xs.max():
        return float("nan")
    order = np.argsort(xs)
    return float(np.interp(bpp, xs[order], ys[order]))


def _num(v: Any, digits: int) -> str:
    """A table cell: ``inf`` for an infinite PSNR (JSON stores it as null), a dash for NaN."""
    if v is None or v == float("inf"):
        return "inf"
    return "–" if v != v else f"{v:.{digits}f}"


def table4_markdown(per_step: dict[str, list]) -> str:
    """DDPM Table 4's analog: per coded step, the rate so far and the preview's distortion.

    ``per_step`` holds parallel lists ``step``, ``timestep`` (-1: x_0), ``bits_per_dim``,
    ``ideal_bits_per_dim``, ``bpp``, ``rmse``, ``psnr`` and, from codec v2 on, ``kind`` (the
    coder of the step that led there; None for the header and x_T).  One row per step."""
    has_kind = "kind" in per_step
    head = "| step | " + ("coder | " if has_kind else "") + \
        "from t | rate (bits/dim) | ideal (bits/dim) | bpp | RMSE [0,255] | PSNR (dB) |"
    lines = [head, "|---:|" + ("---|" if has_kind else "") + "---:|---:|---:|---:|---:|---:|"]
    for i in range(len(per_step["step"])):
        t = per_step["timestep"][i]
        kind = (f"{per_step['kind'][i] or '–'} | " if has_kind else "")
        lines.append(f"| {per_step['step'][i]} | {kind}{'x_0' if t < 0 else t} | {per_step['bits_per_dim'][i]:.4f} | "
                     f"{per_step['ideal_bits_per_dim'][i]:.4f} | {per_step['bpp'][i]:.4f} | "
                     f"{_num(per_step['rmse'][i], 3)} | {_num(per_step['psnr'][i], 2)} |")
    return "\n".join(lines)


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    """How a script was run, for the results' provenance: ``python -m <module> <args>`` (the
    arguments are ``argv`` when ``main`` was called with them, else the process's)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", "-m", module, *(str(a) for a in args)])


def provenance(module: str, argv: Sequence[str] | None = None) -> dict[str, str]:
    """The fields every results JSON carries: the machine, the date and the command."""
    return {"machine": machine_description(), "date": now_iso(), "command": command_line(module, argv)}


def json_safe(value: Any) -> Any:
    """Recursively convert numpy scalars/arrays and non-finite floats (to ``None``) for JSON."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
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
    doc: dict[str, Any] = {"name": name, "description": description, "results": results}
    doc.update(extra)
    return write_json(path, doc)


def write_json(path: str | os.PathLike[str], doc: dict[str, Any]) -> Path:
    """Write ``doc`` as strict JSON (numpy values converted, NaN and inf as ``null``), creating
    the folder; returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(json_safe(doc), indent=2) + "\n")
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


# --------------------------------------------------------------------------- plots

#: y-axis labels of the metrics :func:`plot_rd` can draw.
METRIC_LABELS: dict[str, str] = {
    "psnr-rgb": "PSNR (RGB) [dB]",
    "ms-ssim-rgb": "MS-SSIM (RGB)",
    "ms-ssim-db": "MS-SSIM [dB]  (-10 log10(1 - MS-SSIM))",
}


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (files only, no display); imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finite(v: Any) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def _curve(doc: Mapping[str, Any], metric: str) -> tuple[list[float], list[float]]:
    """Points (bpp, metric) of a results JSON, sorted by bpp, non-finite points dropped."""
    res = doc["results"]
    key = "ms-ssim-rgb" if metric == "ms-ssim-db" else metric
    pts = []
    for x, y in zip(res["bpp"], res[key]):
        if not (_finite(x) and _finite(y)):
            continue
        if metric == "ms-ssim-db":
            if y >= 1.0:
                continue
            y = -10.0 * math.log10(1.0 - y)
        pts.append((float(x), float(y)))
    pts.sort()
    return [p[0] for p in pts], [p[1] for p in pts]


def save_figure(fig: Any, out_png: str | os.PathLike[str]) -> Path:
    """Lay out, write (creating the folder) and close a figure; returns the file's path."""
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    pyplot().close(fig)
    return out


def plot_rd(
    json_paths: Sequence[str | os.PathLike[str]],
    out_png: str | os.PathLike[str],
    metric: str = "psnr-rgb",
    xlim: tuple[float, float] = (0.0, 2.0),
    title: str | None = None,
) -> Path:
    """Plot ``metric`` vs bits per pixel for each results JSON (labelled by its ``name``).

    ``metric`` is a key of the JSON's ``results`` (``"psnr-rgb"``, ``"ms-ssim-rgb"``) or
    ``"ms-ssim-db"`` (MS-SSIM in dB). The y range is fitted to the points inside ``xlim``.
    The figure is 7.5 x 5.5 in at 120 dpi (900 x 660 px).
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5.5), dpi=120)
    ys_in_range: list[float] = []
    for path in json_paths:
        doc = read_results_json(path)
        xs, ys = _curve(doc, metric)
        if not xs:
            continue
        ax.plot(xs, ys, marker="o", markersize=3.5, linewidth=1.6, label=str(doc.get("name", path)))
        ys_in_range += [y for x, y in zip(xs, ys) if xlim[0] <= x <= xlim[1]]
    ax.set_xlim(*xlim)
    if ys_in_range:
        lo, hi = min(ys_in_range), max(ys_in_range)
        pad = 0.05 * (hi - lo or 1.0)
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("Bit rate [bpp]")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.set_title(title or f"Rate-distortion: {METRIC_LABELS.get(metric, metric)}")
    ax.grid(True, which="major", alpha=0.4)
    ax.grid(True, which="minor", alpha=0.15)
    ax.minorticks_on()
    ax.legend(loc="lower right")
    return save_figure(fig, out_png)


def lossless_bars_figsize(bars: int) -> tuple[float, float]:
    """Size in inches (at 120 dpi) of the lossless bar chart with ``bars`` bars."""
    return max(6.0, 1.1 * bars + 2), 4.8


def plot_lossless_bars(
    lossless_json: str | os.PathLike[str],
    extra: Mapping[str, float] | None,
    out_png: str | os.PathLike[str],
    title: str | None = None,
) -> Path:
    """Bar chart of mean bits/dim per lossless codec, with optional ``extra`` bars appended.

    ``lossless_json`` is the ``lossless.json`` written by ``benchmarks.baselines`` (its
    ``results`` holds parallel lists ``codec`` and ``bits_per_dim``). Extra bars are drawn in a
    second colour and labelled with their keys.
    """
    res = read_results_json(lossless_json)["results"]
    names = list(res["codec"])
    values = [float(v) for v in res["bits_per_dim"]]
    colors = ["tab:gray"] * len(names)
    for k, v in (extra or {}).items():
        names.append(k)
        values.append(float(v))
        colors.append("tab:blue")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=lossless_bars_figsize(len(names)), dpi=120)
    bars = ax.bar(range(len(names)), values, color=colors, edgecolor="black", linewidth=0.6)
    for bar, v in zip(bars, values):
        ax.annotate(f"{v:.2f}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom",
                    fontsize=9, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=20, ha="right")
    ax.set_ylabel("bits / dim  (8 * bytes / (H * W * 3))")
    ax.set_ylim(0, max(values + [1.0]) * 1.15)
    ax.set_title(title or "Lossless compression")
    ax.grid(True, axis="y", alpha=0.4)
    ax.set_axisbelow(True)
    return save_figure(fig, out_png)


def training_history(checkpoint: str | os.PathLike[str]) -> list[dict[str, float]]:
    """The held-out bound over training of a checkpoint: its training state's history, else the
    history its meta carries (a shipped model's), as [{"step", "heldout_bpd", ...}]."""
    from diffcodec.checkpoint import read_checkpoint

    blob = read_checkpoint(checkpoint)
    history = (blob.get("train") or {}).get("history") or (blob.get("meta") or {}).get("heldout_history") or []
    return [dict(h) for h in history]


def plot_training(curves: Mapping[str, list[dict[str, float]]], out_png: str | os.PathLike[str],
                  title: str | None = None, x: str = "step") -> Path:
    """Held-out bits/dim against training step (``x="step"``) or the run's wall time
    (``x="minutes"``: runs compared at equal compute), one line per labelled history."""
    if x not in ("step", "minutes"):
        raise ValueError(f"x must be 'step' or 'minutes', not {x!r}")
    if x == "minutes":
        missing = [label for label, history in curves.items() if any("seconds" not in h for h in history)]
        if missing:
            raise ValueError(f"no wall time in the history of {', '.join(missing)}: plot against step")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, history in curves.items():
        xs = [h["step"] if x == "step" else h["seconds"] / 60.0 for h in history]
        ax.plot(xs, [h["heldout_bpd"] for h in history], marker="o", ms=3, label=label)
    ax.set_xlabel("training step (batch 16)" if x == "step" else "training wall time (minutes, evaluations included)")
    ax.set_ylabel("held-out bound (bits/dim)")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    return save_figure(fig, out_png)
