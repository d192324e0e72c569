#!/usr/bin/env python
"""Export a training checkpoint's EMA weights as a shippable model (no optimizer state).

    python bin/export_model.py runs/base.pt diffcodec/models/default.pt --dtype float16 \
        --meta '{"data": "shared/data/train (561 photos)", "recipe": "hybrid, cosine, T=1000"}'
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from diffcodec.checkpoint import read_checkpoint, save_checkpoint
from diffcodec.diffusion import DiffusionConfig
from diffcodec.unet import UNetConfig


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    ap.add_argument("--meta", default="{}", help="JSON object stored in the checkpoint's meta")
    args = ap.parse_args(argv)
    blob = read_checkpoint(args.src)
    meta = dict(blob.get("meta") or {})
    meta.update(json.loads(args.meta))
    train = blob.get("train") or {}
    meta.setdefault("train_steps", int(train.get("step", 0)))
    if train.get("config"):
        meta.setdefault("train_config", train["config"])
    if train.get("history"):
        meta.setdefault("heldout_history", train["history"])
    fp = save_checkpoint(args.dst, UNetConfig(**blob["unet"]), DiffusionConfig(**blob["diffusion"]), blob["ema"],
                         meta=meta, dtype=getattr(torch, args.dtype))
    print(f"wrote {args.dst} (fingerprint {fp[:16]}, step {meta['train_steps']})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
