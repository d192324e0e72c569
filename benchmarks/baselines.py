"""Rate-distortion and lossless baselines with classical image codecs.

Lossy codecs (one quality sweep each, written to ``<out>/<codec>.json`` in
CompressAI's results format, averaged per setting over images):

* ``jpeg``     -- Pillow/libjpeg, ``quality`` sweep, default settings (4:2:0, no Huffman optimisation)
* ``webp``     -- Pillow/libwebp, ``quality`` sweep, ``method=6``
* ``avif``     -- imagecodecs/libavif (libaom), ``level`` (quality) sweep, speed 5, YUV 4:4:4
  (speed 4 is ~0.1 dB better at equal rate but ~1.4x slower; speed 5 keeps a Kodak run < 15 min)
* ``jpegxl``   -- imagecodecs/libjxl, butteraugli ``distance`` sweep, effort 7
* ``jpeg2000`` -- imagecodecs/OpenJPEG, target-PSNR (``level``) sweep, raw J2K codestream

Lossless codecs (bit-exact round trip asserted, ``<out>/lossless.json``): PNG
(Pillow, ``optimize=True, compress_level=9``), WebP lossless (``quality=100,
method=6``), JPEG-XL lossless (effort 7), JPEG 2000 reversible 5/3.

All imagecodecs encoders run single-threaded. Rates are ``8 * len(bytes)``
of the real encoded file; every file is decoded again before measuring.

Usage (from the repository root)::

    python -m benchmarks.baselines --images DIR --out DIR [--limit N]
        [--codecs jpeg,webp,avif,jpegxl,jpeg2000] [--skip-lossless] [--smoke]
"""

from __future__ import annotations

import argparse
import io
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from benchmarks.common import (
    LOSSLESS,
    bits_per_dim,
    bits_per_pixel,
    command_line,
    interpolate_psnr_at_bpp,
    list_images,
    load_rgb,
    machine_description,
    ms_ssim,
    now_iso,
    psnr,
    read_results_json,
    write_results_json,
)

Encoder = Callable[[np.ndarray, Any], bytes]
Decoder = Callable[[bytes], np.ndarray]
METRIC_KEYS: tuple[str, ...] = ("bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time")


# --------------------------------------------------------------------------- codecs


def _pil_encoder(fmt: str, **fixed: Any) -> Callable[[np.ndarray, dict[str, Any]], bytes]:
    def encode(img: np.ndarray, params: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format=fmt, **fixed, **params)
        return buf.getvalue()

    return encode


def _pil_decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _imagecodecs() -> Any:
    import imagecodecs

    return imagecodecs


@dataclass(frozen=True)
class LossyCodec:
    """A lossy codec with a quality sweep; ``settings`` are ordered from low to high quality."""

    name: str
    description: str
    param: str
    settings: tuple[float, ...]
    smoke_settings: tuple[float, ...]
    encode: Encoder
    decode: Decoder


@dataclass(frozen=True)
class LosslessCodec:
    """A lossless codec (no parameters)."""

    name: str
    description: str
    encode: Callable[[np.ndarray], bytes]
    decode: Decoder


def lossy_codecs() -> dict[str, LossyCodec]:
    """The lossy codecs benchmarked, keyed by CLI name."""
    ic = _imagecodecs
    jpeg_enc = _pil_encoder("JPEG")
    webp_enc = _pil_encoder("WEBP", method=6)
    return {
        "jpeg": LossyCodec(
            "JPEG", "JPEG (Pillow/libjpeg, quality sweep, 4:2:0, default tables)", "quality",
            (3, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95), (10, 90),
            lambda x, q: jpeg_enc(x, {"quality": int(q)}), _pil_decode),
        "webp": LossyCodec(
            "WebP", "WebP (Pillow/libwebp, quality sweep, method=6)", "quality",
            (1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95), (10, 90),
            lambda x, q: webp_enc(x, {"quality": int(q)}), _pil_decode),
        "avif": LossyCodec(
            "AVIF", "AVIF (imagecodecs/libavif+libaom, quality sweep, speed 5, YUV444)", "quality",
            (10, 20, 30, 40, 50, 60, 70, 80, 85), (20, 80),
            lambda x, q: ic().avif_encode(x, level=int(q), speed=5, pixelformat="yuv444", numthreads=1),
            lambda b: ic().avif_decode(b, numthreads=1)),
        "jpegxl": LossyCodec(
            "JPEG-XL", "JPEG XL (imagecodecs/libjxl, butteraugli distance sweep, effort 7)", "distance",
            (15.0, 12.0, 8.0, 6.0, 4.0, 3.0, 2.0, 1.5, 1.0, 0.7, 0.5), (8.0, 1.0),
            lambda x, d: ic().jpegxl_encode(x, distance=float(d), effort=7, numthreads=1),
            lambda b: ic().jpegxl_decode(b, numthreads=1)),
        "jpeg2000": LossyCodec(
            "JPEG2000", "JPEG 2000 (imagecodecs/OpenJPEG, target-PSNR sweep, 9/7 wavelet, J2K codestream)",
            "target_psnr", (22, 24, 26, 28, 30, 32, 34, 36, 38, 40, 42), (26, 38),
            lambda x, t: ic().jpeg2k_encode(x, level=int(t), codecformat=ic().JPEG2K.CODEC.J2K,
                                            numthreads=1),
            lambda b: ic().jpeg2k_decode(b, numthreads=1)),
    }


def lossless_codecs() -> dict[str, LosslessCodec]:
    """The lossless codecs benchmarked, keyed by name."""
    ic = _imagecodecs
    png_enc = _pil_encoder("PNG", optimize=True, compress_level=9)
    webp_enc = _pil_encoder("WEBP", lossless=True, quality=100, method=6)
    return {
        "png": LosslessCodec("PNG", "PNG (Pillow, optimize=True, compress_level=9)",
                             lambda x: png_enc(x, {}), _pil_decode),
        "webp-lossless": LosslessCodec("WebP-lossless", "WebP lossless (Pillow, quality=100, method=6)",
                                       lambda x: webp_enc(x, {}), _pil_decode),
        "jpegxl-lossless": LosslessCodec(
            "JPEG-XL-lossless", "JPEG XL lossless (imagecodecs/libjxl, effort 7)",
            lambda x: ic().jpegxl_encode(x, lossless=True, effort=7, numthreads=1),
            lambda b: ic().jpegxl_decode(b, numthreads=1)),
        "jpeg2000-lossless": LosslessCodec(
            "JPEG2000-lossless", "JPEG 2000 lossless (imagecodecs/OpenJPEG, reversible 5/3, J2K)",
            lambda x: ic().jpeg2k_encode(x, level=0, reversible=True,
                                         codecformat=ic().JPEG2K.CODEC.J2K, numthreads=1),
            lambda b: ic().jpeg2k_decode(b, numthreads=1)),
    }


def _as_rgb(img: np.ndarray) -> np.ndarray:
    arr = np.asarray(img)
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    return np.ascontiguousarray(arr, dtype=np.uint8)


def codec_available(encode: Callable[[np.ndarray], bytes], decode: Decoder) -> str | None:
    """Probe a codec on a tiny image; return ``None`` if it works, else the error message."""
    probe = (np.arange(32 * 32 * 3) % 251).astype(np.uint8).reshape(32, 32, 3)
    try:
        out = _as_rgb(decode(encode(probe)))
        if out.shape != probe.shape:
            return f"round trip changed shape {probe.shape} -> {out.shape}"
    except Exception as exc:  # any failure means "unavailable in this build"
        return f"{type(exc).__name__}: {exc}"
    return None


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


# --------------------------------------------------------------------------- runs


def _mean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else float("nan")


def run_lossy(codec: LossyCodec, images: dict[str, np.ndarray], settings: Sequence[float]) -> dict[str, Any]:
    """Sweep ``settings`` over ``images``; return averaged results and per-image numbers."""
    per_image: dict[str, dict[str, list[float]]] = {n: {k: [] for k in METRIC_KEYS} for n in images}
    for name, img in tqdm(images.items(), desc=codec.name, unit="img", leave=False):
        h, w = img.shape[:2]
        for s in settings:
            data, t_enc = _timed(lambda: codec.encode(img, s))
            rec, t_dec = _timed(lambda: _as_rgb(codec.decode(data)))
            row = per_image[name]
            row["bpp"].append(bits_per_pixel(len(data), h, w))
            row["psnr-rgb"].append(psnr(img, rec))
            row["ms-ssim-rgb"].append(ms_ssim(img, rec))
            row["encoding_time"].append(t_enc)
            row["decoding_time"].append(t_dec)
    results = {k: [_mean([per_image[n][k][i] for n in images]) for i in range(len(settings))]
               for k in METRIC_KEYS}
    return {"results": results, "per_image": per_image}


def run_lossless(codec: LosslessCodec, images: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Encode every image losslessly, assert a bit-exact round trip, return per-image numbers."""
    per_image: dict[str, dict[str, float]] = {}
    for name, img in tqdm(images.items(), desc=codec.name, unit="img", leave=False):
        h, w, c = img.shape
        data, t_enc = _timed(lambda: codec.encode(img))
        rec, t_dec = _timed(lambda: _as_rgb(codec.decode(data)))
        if rec.shape != img.shape or not np.array_equal(rec, img):  # explicit: survives ``python -O``
            raise AssertionError(f"{codec.name} round trip is not bit-exact on {name}")
        per_image[name] = {"bytes": len(data), "bpp": bits_per_pixel(len(data), h, w),
                           "bits_per_dim": bits_per_dim(len(data), h, w, c),
                           "encoding_time": t_enc, "decoding_time": t_dec}
    return per_image


def run_baselines(
    images_dir: str | Path,
    out_dir: str | Path,
    limit: int | None = None,
    codecs: Sequence[str] | None = None,
    lossless: bool = True,
    smoke: bool = False,
    command: str | None = None,
) -> dict[str, Path]:
    """Run the lossy sweeps and the lossless comparison; return ``{codec: json_path}``.

    Codecs whose encoder is missing or fails on a probe image are skipped with a
    :class:`RuntimeWarning`; an error during a codec's run also only skips that codec.
    The lossless file is keyed ``"lossless"``.
    """
    all_lossy = lossy_codecs()
    names = list(codecs) if codecs is not None else list(all_lossy)
    unknown = [n for n in names if n not in all_lossy]
    if unknown:
        raise ValueError(f"unknown codec(s) {unknown}; choose from {sorted(all_lossy)}")
    paths = list_images(images_dir)[:limit]
    if not paths:
        raise FileNotFoundError(f"no images found in {images_dir}")
    images = {p.name: load_rgb(p) for p in paths}
    out = Path(out_dir)
    extra = {"machine": machine_description(), "date": now_iso(), "images": list(images),
             "images_dir": str(images_dir), "command": command or "run_baselines()", "smoke": smoke}
    written: dict[str, Path] = {}
    # MS-SSIM (torch) runs single-threaded like the encoders: on a small shared machine this
    # is faster than contended threads. The caller's thread setting is restored afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _run_all_lossy(names, all_lossy, images, out, smoke, extra, written)
        if lossless:
            written[LOSSLESS] = _run_all_lossless(images, out, extra)
    finally:
        torch.set_num_threads(threads)
    return written


def _run_all_lossy(names: Sequence[str], all_lossy: dict[str, LossyCodec], images: dict[str, np.ndarray],
                   out: Path, smoke: bool, extra: dict[str, Any], written: dict[str, Path]) -> None:
    """Run each requested lossy codec and write ``<out>/<key>.json``; record paths in ``written``."""
    for key in names:
        codec = all_lossy[key]
        settings = codec.smoke_settings if smoke else codec.settings
        problem = codec_available(lambda x: codec.encode(x, settings[-1]), codec.decode)
        if problem is not None:
            warnings.warn(f"skipping {codec.name}: encoder unavailable ({problem})", RuntimeWarning)
            continue
        try:
            res = run_lossy(codec, images, settings)
        except Exception as exc:
            warnings.warn(f"skipping {codec.name}: failed during run ({type(exc).__name__}: {exc})",
                          RuntimeWarning)
            continue
        written[key] = write_results_json(
            out / f"{key}.json", codec.name, codec.description, res["results"],
            settings={"param": codec.param, "values": list(settings)},
            per_image=res["per_image"], **extra)
        print(f"{codec.name:10s} -> {written[key]}")


def _run_all_lossless(images: dict[str, np.ndarray], out: Path, extra: dict[str, Any]) -> Path:
    """Run every available lossless codec and write ``<out>/lossless.json`` (means + per image)."""
    summary: dict[str, list[Any]] = {k: [] for k in ("codec", "bits_per_dim", "bpp",
                                                       "encoding_time", "decoding_time")}
    per_codec: dict[str, dict[str, dict[str, float]]] = {}
    descriptions: dict[str, str] = {}
    for codec in lossless_codecs().values():
        problem = codec_available(codec.encode, codec.decode)
        if problem is not None:
            warnings.warn(f"skipping {codec.name}: encoder unavailable ({problem})", RuntimeWarning)
            continue
        try:
            per = run_lossless(codec, images)
        except AssertionError:
            raise  # a non-exact "lossless" round trip is a real bug, not an availability issue
        except Exception as exc:
            warnings.warn(f"skipping {codec.name}: failed during run ({type(exc).__name__}: {exc})",
                          RuntimeWarning)
            continue
        per_codec[codec.name] = per
        descriptions[codec.name] = codec.description
        summary["codec"].append(codec.name)
        for k in ("bits_per_dim", "bpp", "encoding_time", "decoding_time"):
            summary[k].append(_mean([v[k] for v in per.values()]))
        print(f"{codec.name:18s} {summary['bits_per_dim'][-1]:.3f} bits/dim")
    return write_results_json(
        out / f"{LOSSLESS}.json", LOSSLESS, "Classical lossless codecs; bit-exact round trips verified; "
        "bits/dim = 8*bytes/(H*W*3), means over images", summary,
        codecs=descriptions, per_image=per_codec, **extra)


# --------------------------------------------------------------------------- analysis


def summary_table(json_paths: Sequence[str | Path], rates: Sequence[float] = (0.25, 0.5, 1.0)) -> str:
    """Markdown table of interpolated PSNR (dB) at ``rates`` for each results JSON."""
    head = "| codec | " + " | ".join(f"PSNR @ {r:g} bpp" for r in rates) + " |"
    lines = [head, "|---" * (len(rates) + 1) + "|"]
    for p in json_paths:
        doc = read_results_json(p)
        vals = [interpolate_psnr_at_bpp(doc, r) for r in rates]
        lines.append(f"| {doc['name']} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.baselines", description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", required=True, help="folder of test images")
    ap.add_argument("--out", required=True, help="output folder for the JSON files")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N images")
    ap.add_argument("--codecs", default=",".join(lossy_codecs()), help="comma-separated lossy codecs")
    ap.add_argument("--skip-lossless", action="store_true", help="do not run the lossless codecs")
    ap.add_argument("--smoke", action="store_true", help="2 settings per codec (for tests)")
    args = ap.parse_args(argv)
    codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    command = command_line("benchmarks.baselines", argv)
    t0 = time.perf_counter()
    written = run_baselines(args.images, args.out, args.limit, codecs, not args.skip_lossless,
                            args.smoke, command)
    lossy = [p for k, p in written.items() if k != LOSSLESS]
    if lossy:
        print(summary_table(lossy))
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
