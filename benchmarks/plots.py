"""Plots for benchmark results from the command line (matplotlib, Agg backend).

* ``rd`` -- PSNR (or MS-SSIM) versus bpp, one line per CompressAI-style results JSON
  (:func:`benchmarks.common.plot_rd`).
* ``lossless`` -- bits/dim per lossless codec from ``lossless.json``, plus optional extra bars
  (e.g. a model's likelihood bound and its realized file size)
  (:func:`benchmarks.common.plot_lossless_bars`).
* ``training`` -- held-out bits/dim against training step of checkpoints
  (:func:`benchmarks.common.plot_training`).

The plotting functions live in :mod:`benchmarks.common` (``rd_diffcodec`` draws them too); they
are re-exported here.

Usage (from the repository root)::

    python -m benchmarks.plots rd OUT.png A.json B.json ... [--metric psnr-rgb] [--xmax 2]
    python -m benchmarks.plots lossless OUT.png lossless.json [--extra "ours (bound)=2.5" ...]
    python -m benchmarks.plots training OUT.png LABEL=model.pt [LABEL=run.pt ...] [--offset LABEL=STEPS]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from benchmarks.common import METRIC_LABELS, plot_lossless_bars, plot_rd, plot_training, training_history

__all__ = ["METRIC_LABELS", "main", "offset_steps", "parse_extra", "plot_lossless_bars", "plot_rd", "plot_training"]


def parse_extra(items: Sequence[str]) -> dict[str, float]:
    """``["LABEL=VALUE", ...]`` -> ``{LABEL: VALUE}`` (the label may itself contain '=')."""
    extra: dict[str, float] = {}
    for item in items:
        label, sep, value = item.rpartition("=")
        if not sep or not label:
            raise argparse.ArgumentTypeError(f"expected LABEL=VALUE, got {item!r}")
        extra[label] = float(value)
    return extra


def offset_steps(curves: dict[str, list[dict[str, float]]], offsets: dict[str, int]) -> dict[str, list[dict[str, float]]]:
    """The curves with ``offsets[label]`` added to each step of the labelled ones (a run started
    with ``--init-from`` counts its steps from 0; its initial weights had trained for some)."""
    unknown = sorted(set(offsets) - set(curves))
    if unknown:
        raise ValueError(f"--offset names no curve: {', '.join(unknown)} (curves: {', '.join(curves)})")
    return {label: [{**h, "step": h["step"] + offsets.get(label, 0)} for h in history]
            for label, history in curves.items()}


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.plots", description="Plot benchmark results.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    rd = sub.add_parser("rd", help="rate-distortion curves")
    rd.add_argument("out_png")
    rd.add_argument("jsons", nargs="+")
    rd.add_argument("--metric", default="psnr-rgb", choices=sorted(METRIC_LABELS))
    rd.add_argument("--xmax", type=float, default=2.0)
    rd.add_argument("--title", default=None)
    ll = sub.add_parser("lossless", help="lossless bits/dim bar chart")
    ll.add_argument("out_png")
    ll.add_argument("lossless_json")
    ll.add_argument("--extra", nargs="*", default=[], help='extra bars, "LABEL=VALUE"')
    ll.add_argument("--title", default=None)
    tr = sub.add_parser("training", help="held-out bound against training step")
    tr.add_argument("out_png")
    tr.add_argument("checkpoints", nargs="+", help="LABEL=checkpoint.pt")
    tr.add_argument("--title", default=None)
    tr.add_argument("--x", choices=["step", "minutes"], default="step",
                    help="against training step, or wall time (runs at equal compute)")
    tr.add_argument("--offset", action="append", default=[], metavar="LABEL=STEPS",
                    help="add STEPS to a curve's steps: a run started with --init-from counts from 0, "
                         "and this puts it after the steps its initial weights had")
    args = ap.parse_args(argv)
    if args.cmd == "rd":
        out = plot_rd(args.jsons, args.out_png, args.metric, (0.0, args.xmax), args.title)
    elif args.cmd == "training":
        curves = {label: training_history(path) for label, _, path in (c.partition("=") for c in args.checkpoints)}
        try:
            offsets = parse_extra(args.offset)
            if any(v != int(v) for v in offsets.values()):
                raise ValueError(f"--offset takes whole steps: {' '.join(args.offset)}")
            curves = offset_steps(curves, {k: int(v) for k, v in offsets.items()})
            out = plot_training(curves, args.out_png, args.title, args.x)
        except (ValueError, argparse.ArgumentTypeError) as e:
            ap.error(str(e))
    else:
        out = plot_lossless_bars(args.lossless_json, parse_extra(args.extra), args.out_png, args.title)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
