"""Where the time and memory of encoding and decoding go, per image and device.

For each image: a full encode, a full decode and a preview decode at step K, each in a fresh
child process (so that its peak resident memory is its own), recording wall seconds, network
seconds and calls, the seconds of each coded step beside its network call (coder work: PFR
search, UQ and final-step side information and range coding), PNG reading/writing, and the
peak RSS.  Writes a JSON and prints a table.

    python -m benchmarks.speed --images ../shared/data/kodak --limit 3 --out speed.json [--threads 2]
    python -m benchmarks.speed --tiled 4000x3000 --images ../shared/data/kodak --out speed12mp.json
    python -m benchmarks.speed --smoke --out /tmp/speed.json        # the test suite's
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from benchmarks.common import load_images, provenance, write_json


def tiled_image(images: list[np.ndarray], width: int, height: int) -> np.ndarray:
    """A ``width`` x ``height`` photo-like image made by mirror-tiling the given photos (a stand-in
    for a camera photo of that size; not committed anywhere)."""
    rows, y, i = [], 0, 0
    while y < height:
        row, x = [], 0
        h = images[i % len(images)].shape[0]
        while x < width:
            img = images[i % len(images)]
            img = img[:h] if img.shape[0] >= h else np.pad(img, ((0, h - img.shape[0]), (0, 0), (0, 0)), mode="reflect")
            row.append(img[:, ::-1] if i % 2 else img)
            x += img.shape[1]
            i += 1
        rows.append(np.concatenate(row, axis=1)[:, :width])
        y += h
    return np.ascontiguousarray(np.concatenate(rows, axis=0)[:height])


def _worker(args: argparse.Namespace) -> dict[str, Any]:
    """One operation, timed, in this (child) process."""
    import torch

    from diffcodec.allocator import prefer_huge_pages
    from diffcodec.checkpoint import load_prior
    from diffcodec.codec import EncodeOptions, decode, encode

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    prior = load_prior(args.model)
    out: dict[str, Any] = {"load_seconds": time.perf_counter() - t0, "huge_pages": prefer_huge_pages()}
    if args.worker == "encode":
        t0 = time.perf_counter()
        img = Image.open(args.input)
        img.load()
        out["png_read_seconds"] = time.perf_counter() - t0
        res = encode(img, prior, EncodeOptions(effort=args.effort, seed=1, spectral_pfr=not args.no_spectral_pfr))
        Path(args.output).write_bytes(res.data)
        out.update(seconds=res.seconds, net_seconds=res.net_seconds, net_calls=res.net_calls, bytes=len(res.data),
                   steps=[{"kind": s.kind.label, "timestep": s.timestep, "seconds": s.seconds,
                           "net_seconds": s.net_seconds, "search_seconds": s.extra.get("search_seconds", 0.0)}
                          for s in res.steps])
    else:
        data = Path(args.input).read_bytes()
        step = None if args.worker == "decode" else args.step
        res = decode(data, prior, step=step)
        t0 = time.perf_counter()
        res.image.save(args.output)
        out.update(seconds=res.seconds, net_seconds=res.net_seconds, net_calls=res.net_calls,
                   png_write_seconds=time.perf_counter() - t0, lossless=res.lossless, step=res.step)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # this process's peak (KiB)
    return out


def _run(op: str, inp: Path, outp: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.speed", "--worker", op, "--input", str(inp), "--output", str(outp),
           "--effort", str(args.effort), "--step", str(args.step), "--threads", str(args.threads)]
    if args.no_spectral_pfr:
        cmd.append("--no-spectral-pfr")
    if args.model:
        cmd += ["--model", args.model]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{op} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr else proc.returncode}")
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    doc["process_seconds"] = wall
    return doc


def markdown_table(docs: Sequence[dict[str, Any]]) -> str:
    """One markdown table of speed runs (the JSONs ``--out`` writes): a row per image, seconds
    and seconds per megapixel of encode and decode, network share, preview, peak RSS."""
    lines = ["| run | image | MP | effort | threads | encode s (s/MP) | decode s (s/MP) | network s enc / dec | "
             "preview s (step) | peak RSS MiB enc / dec | bits/dim |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for doc in docs:
        run = doc.get("date", "")[:10]
        for r in doc["images"]:
            e, d, p, mp = r["encode"], r["decode"], r["preview"], r["megapixels"]
            lines.append(f"| {run} | {r['image']} | {mp:.2f} | {doc['effort']} | {doc['threads']} | "
                         f"{e['seconds']:.1f} ({e['seconds'] / mp:.1f}) | {d['seconds']:.1f} ({d['seconds'] / mp:.1f}) | "
                         f"{e['net_seconds']:.1f} / {d['net_seconds']:.1f} | {p['seconds']:.1f} ({p['step']}) | "
                         f"{e['peak_rss_mb']:.0f} / {d['peak_rss_mb']:.0f} | {r['bits_per_dim']:.3f} |")
    commands = [f"- `{doc.get('command', '')}` ({doc.get('machine', '')})" for doc in docs]
    return "\n".join(lines + ["", "Commands and machines:", ""] + commands) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", help="folder of images")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--crop", type=int, default=None, help="centre crops of this size")
    ap.add_argument("--tiled", default=None, help="WxH: one image of this size tiled from the images")
    ap.add_argument("--model", default=None)
    ap.add_argument("--effort", type=int, default=5)
    ap.add_argument("--step", type=int, default=3, help="the preview decode's step")
    ap.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1))
    ap.add_argument("--no-spectral-pfr", action="store_true",
                    help="code every PFR step in the plain layout (to measure what the spectral one costs)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--smoke", action="store_true", help="one tiny generated image (seconds)")
    ap.add_argument("--table", nargs="+", metavar="JSON", default=None,
                    help="print a markdown table of these speed JSONs (made by --out) and exit")
    ap.add_argument("--worker", choices=["encode", "decode", "preview"], help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args)))
        return 0
    if args.table:
        print(markdown_table([json.loads(Path(p).read_text()) for p in args.table]), end="")
        return 0
    if args.smoke:
        images = {"smoke": np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)}
    else:
        if not args.images:
            ap.error("--images is needed (or --smoke)")
        images = load_images(args.images, args.limit, args.crop)
        if args.tiled:
            w, h = (int(v) for v in args.tiled.lower().split("x"))
            images = {f"tiled{w}x{h}": tiled_image(list(images.values()), w, h)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, img in images.items():
            src, dfc = Path(tmp) / f"{name}.png", Path(tmp) / f"{name}.dfc"
            Image.fromarray(img).save(src)
            row = {"image": name, "width": img.shape[1], "height": img.shape[0],
                   "megapixels": img.shape[0] * img.shape[1] / 1e6}
            row["encode"] = _run("encode", src, dfc, args)
            row["decode"] = _run("decode", dfc, Path(tmp) / "out.png", args)
            row["preview"] = _run("preview", dfc, Path(tmp) / "prev.png", args)
            if not np.array_equal(np.asarray(Image.open(Path(tmp) / "out.png").convert("RGB")), img):
                raise AssertionError(f"{name}: the decode is not lossless")
            row["bits_per_dim"] = 8 * row["encode"]["bytes"] / img.size
            rows.append(row)
            e, d, p = row["encode"], row["decode"], row["preview"]
            print(f"{name:14s} {row['megapixels']:5.2f} MP  encode {e['seconds']:6.1f} s (net {e['net_seconds']:5.1f} "
                  f"s, {e['net_calls']} calls, {e['peak_rss_mb']:6.0f} MB)  decode {d['seconds']:6.1f} s (net "
                  f"{d['net_seconds']:5.1f} s, {d['peak_rss_mb']:6.0f} MB)  preview@{p['step']} {p['seconds']:5.1f} s "
                  f"({p['net_calls']} calls)  {row['bits_per_dim']:.3f} bits/dim", flush=True)
    doc = {**provenance("benchmarks.speed", argv), "threads": args.threads, "effort": args.effort,
           "spectral_pfr": not args.no_spectral_pfr, "images": rows}
    if args.out:
        write_json(args.out, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
