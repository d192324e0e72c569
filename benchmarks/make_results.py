"""Write benchmarks/RESULTS.md from the results JSONs of one run folder.

Usage (from the repository root)::

    python -m benchmarks.make_results benchmarks/results/kodak --title "Kodak-24" \
        [--diffcodec-dir DIR] [--out benchmarks/RESULTS.md]

Reads the baselines' JSONs (jpeg, webp, avif, jpegxl, jpeg2000, lossless) and, when present,
diffcodec.json (benchmarks.rd_diffcodec) and bound.json (benchmarks.bound), and
writes the tables: lossless bits/dim, PSNR at 0.1/0.25/0.5/1 bpp, DDPM Table 4's analog, plus
links to the plots, with each run's machine, command and date.  Where diffcodec loses, the
tables show it; nothing here is typed by hand.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence

from benchmarks.common import BASELINES as LOSSY, LOSSLESS, interpolate_psnr_at_bpp, read_results_json, table4_markdown

RATES = (0.1, 0.25, 0.5, 1.0)


def _fmt(v: float, digits: int = 2) -> str:
    return "–" if v is None or v != v else f"{v:.{digits}f}"  # NaN/null -> dash (outside the range, or none)


def _summary_value(v: float | None) -> str:
    return "–" if v is None or v != v else f"{v:.4g}"  # null: not measured (e.g. no cost model)


def _provenance(doc: dict) -> str:
    return f"`{doc.get('command', '?')}` on {doc.get('machine', '?')}, {doc.get('date', '?')}"


def build(folder: Path, title: str, diffcodec_dir: Path | None, out_dir: Path, note: str = "") -> str:
    out = [f"# Results: {title}", ""] + ([note, ""] if note else [])
    dc_path = (diffcodec_dir or folder) / "diffcodec.json"
    dc = read_results_json(dc_path) if dc_path.exists() else None
    bound_path = (diffcodec_dir or folder) / "bound.json"
    bound = read_results_json(bound_path) if bound_path.exists() else None

    lossless = read_results_json(folder / f"{LOSSLESS}.json")
    out += ["## Lossless (bits/dim = 8·bytes / (H·W·3), mean over images)", "",
            "| codec | bits/dim | bpp |", "|---|---:|---:|"]
    res = lossless["results"]
    rows = list(zip(res["codec"], res["bits_per_dim"], res["bpp"]))
    if dc:
        s = dc["summary"]
        rows.append(("diffcodec file (real bytes)", s["lossless_bits_per_dim"], 3 * s["lossless_bits_per_dim"]))
        rows.append(("diffcodec ideal (sum of its steps' KLs)", s["ideal_bits_per_dim"], 3 * s["ideal_bits_per_dim"]))
    if bound:
        b = bound["mean"]["total"]
        rows.append((f"diffcodec model bound ({bound['steps']}-step chain, first {len(bound['per_image'])} images)", b, 3 * b))
    for name, bpd, bpp in sorted(rows, key=lambda r: r[1]):
        out.append(f"| {name} | {bpd:.3f} | {bpp:.3f} |")
    out += ["", f"Baselines: {_provenance(lossless)}."]
    if dc:
        out.append(f"diffcodec: {dc['description']}; {_provenance(dc)}.")
    if bound:
        out.append(f"Bound: {bound['description']}; {_provenance(bound)}.")

    docs = [read_results_json(folder / f"{c}.json") for c in LOSSY if (folder / f"{c}.json").exists()]
    if dc:
        docs.append(dc)
    out += ["", "## Lossy: PSNR-RGB (dB) at a rate, interpolated on each codec's mean curve", "",
            "| codec | " + " | ".join(f"{r:g} bpp" for r in RATES) + " |", "|---" * (len(RATES) + 1) + "|"]
    for doc in docs:
        out.append(f"| {doc['name']} | " + " | ".join(_fmt(interpolate_psnr_at_bpp(doc, r)) for r in RATES) + " |")
    out += ["", "A dash: the codec's measured curve does not reach that rate."]
    if dc:
        out += ["", "## diffcodec per coded step (DDPM Table 4's analog; means over images)", "",
                table4_markdown(dc["per_step"]), "", "Summary: " + ", ".join(
                    f"{k} {_summary_value(v)}" for k, v in dc["summary"].items())]
    plots = sorted(p for d in {folder, diffcodec_dir or folder} for p in d.glob("*.png"))
    if plots:
        out += ["", "## Plots", ""] + [f"![{p.stem}]({Path(os.path.relpath(p.resolve(), out_dir.resolve())).as_posix()})"
                                       for p in plots]
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.make_results", description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--title", default="Kodak-24")
    ap.add_argument("--diffcodec-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md")
    ap.add_argument("--note", default="", help="a paragraph under the title (what run this is)")
    args = ap.parse_args(argv)
    text = build(args.folder, args.title, args.diffcodec_dir, args.out.parent, args.note)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
