"""Plots for benchmark results (matplotlib, Agg backend).

* :func:`plot_rd` -- PSNR (or MS-SSIM) versus bpp, one line per CompressAI-style results JSON.
* :func:`plot_lossless_bars` -- bits/dim per lossless codec from ``lossless.json``, plus
  optional extra bars (e.g. a model's likelihood bound and its realized file size).

Usage::

    python benchmarks/plots.py rd OUT.png A.json B.json ... [--metric psnr-rgb] [--xmax 2]
    python benchmarks/plots.py lossless OUT.png lossless.json [--extra "ours (bound)=2.5" ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

_METRIC_LABELS: dict[str, str] = {
    "psnr-rgb": "PSNR (RGB) [dB]",
    "ms-ssim-rgb": "MS-SSIM (RGB)",
    "ms-ssim-db": "MS-SSIM [dB]  (-10 log10(1 - MS-SSIM))",
}

PathLike = str | os.PathLike[str]


def _load(path: PathLike) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


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


def _save(fig: Any, out_png: PathLike) -> Path:
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_rd(
    json_paths: Sequence[PathLike],
    out_png: PathLike,
    metric: str = "psnr-rgb",
    xlim: tuple[float, float] = (0.0, 2.0),
    title: str | None = None,
) -> Path:
    """Plot ``metric`` vs bits per pixel for each results JSON (labelled by its ``name``).

    ``metric`` is a key of the JSON's ``results`` (``"psnr-rgb"``, ``"ms-ssim-rgb"``) or
    ``"ms-ssim-db"`` (MS-SSIM in dB). The y range is fitted to the points inside ``xlim``.
    """
    fig, ax = plt.subplots(figsize=(7.5, 5.5), dpi=120)
    ys_in_range: list[float] = []
    for path in json_paths:
        doc = _load(path)
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
    ax.set_ylabel(_METRIC_LABELS.get(metric, metric))
    ax.set_title(title or f"Rate-distortion: {_METRIC_LABELS.get(metric, metric)}")
    ax.grid(True, which="major", alpha=0.4)
    ax.grid(True, which="minor", alpha=0.15)
    ax.minorticks_on()
    ax.legend(loc="lower right")
    return _save(fig, out_png)


def plot_lossless_bars(
    lossless_json: PathLike,
    extra: Mapping[str, float] | None,
    out_png: PathLike,
    title: str | None = None,
) -> Path:
    """Bar chart of mean bits/dim per lossless codec, with optional ``extra`` bars appended.

    ``lossless_json`` is the ``lossless.json`` written by ``baselines.py`` (its ``results``
    holds parallel lists ``codec`` and ``bits_per_dim``). Extra bars are drawn in a second
    colour and labelled with their keys.
    """
    res = _load(lossless_json)["results"]
    names = list(res["codec"])
    values = [float(v) for v in res["bits_per_dim"]]
    colors = ["tab:gray"] * len(names)
    for k, v in (extra or {}).items():
        names.append(k)
        values.append(float(v))
        colors.append("tab:blue")
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(names) + 2), 4.8), dpi=120)
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
    return _save(fig, out_png)


def _parse_extra(items: Sequence[str]) -> dict[str, float]:
    extra: dict[str, float] = {}
    for item in items:
        label, sep, value = item.rpartition("=")
        if not sep or not label:
            raise argparse.ArgumentTypeError(f"--extra expects LABEL=VALUE, got {item!r}")
        extra[label] = float(value)
    return extra


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description="Plot benchmark results.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    rd = sub.add_parser("rd", help="rate-distortion curves")
    rd.add_argument("out_png")
    rd.add_argument("jsons", nargs="+")
    rd.add_argument("--metric", default="psnr-rgb", choices=sorted(_METRIC_LABELS))
    rd.add_argument("--xmax", type=float, default=2.0)
    rd.add_argument("--title", default=None)
    ll = sub.add_parser("lossless", help="lossless bits/dim bar chart")
    ll.add_argument("out_png")
    ll.add_argument("lossless_json")
    ll.add_argument("--extra", nargs="*", default=[], help='extra bars, "LABEL=VALUE"')
    ll.add_argument("--title", default=None)
    args = ap.parse_args(argv)
    if args.cmd == "rd":
        out = plot_rd(args.jsons, args.out_png, args.metric, (0.0, args.xmax), args.title)
    else:
        out = plot_lossless_bars(args.lossless_json, _parse_extra(args.extra), args.out_png, args.title)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
