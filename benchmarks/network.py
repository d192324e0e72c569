"""The ε-networks' cost: parameters, FLOPs per pixel, seconds per call and peak memory.

For each named configuration (or checkpoint): parameters; FLOPs per pixel (torch's
FlopCounter on a 64 x 64 input); seconds of one call on a W x H image with 1 and 2 threads
(inference mode, channels_last, best of 2); the peak RSS of one tiled call on a large image
(`unet.forward_tiled`, in a child process of its own), and whether the network is tile-exact
with its receptive radius.  Random weights: cost does not depend on them.

    python -m benchmarks.network --configs small,local16 --out benchmarks/results/network_cpu.json
    python -m benchmarks.network --configs tiny --size 64x48 --tiled 96x80 --smoke
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any, Sequence

from benchmarks.common import provenance, write_json


def _size(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.lower().split("x"))
    return w, h


def _net(name: str):
    import torch

    from diffcodec.unet import UNet, named_config

    torch.manual_seed(0)
    return UNet(named_config(name)).eval()


def _child(args: argparse.Namespace) -> dict[str, Any]:
    """One tiled call on a large image, in this process: its own peak memory."""
    import torch

    from diffcodec.unet import forward_tiled

    torch.set_num_threads(args.threads)
    net = _net(args.child).to(memory_format=torch.channels_last)
    w, h = _size(args.tiled)
    x = torch.randn(1, 3, h, w)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    with torch.inference_mode():
        forward_tiled(net, x, torch.tensor([300.0]))
    return {"seconds": time.perf_counter() - t0, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_before_mb": base}


def measure(name: str, size: tuple[int, int], tiled: str | None, threads: Sequence[int]) -> dict[str, Any]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from diffcodec.unet import count_parameters, receptive_radius

    net = _net(name)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        net(torch.randn(1, 3, 64, 64), torch.tensor([500.0]))
    row: dict[str, Any] = {"config": name, "parameters": count_parameters(net), "flops_per_pixel": fc.get_total_flops() / 64**2,
                           "tile_exact": net.config.tile_exact, "receptive_radius": receptive_radius(net.config)}
    net = net.to(memory_format=torch.channels_last)
    w, h = size
    x = torch.randn(1, 3, h, w).contiguous(memory_format=torch.channels_last)
    for n in threads:
        torch.set_num_threads(n)
        with torch.inference_mode():
            net(x, torch.tensor([300.0]))
            best = min(_timed(net, x) for _ in range(2))
        row[f"seconds_{w}x{h}_{n}_threads"] = best
    if tiled:
        cmd = [sys.executable, "-m", "benchmarks.network", "--child", name, "--tiled", tiled, "--threads", str(max(threads))]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr else "child failed")
        row[f"tiled_{tiled}"] = json.loads(proc.stdout.strip().splitlines()[-1])
    return row


def _timed(net, x) -> float:
    import torch

    t0 = time.perf_counter()
    net(x, torch.tensor([300.0]))
    return time.perf_counter() - t0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.network", description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default="small,local16", help="named configurations, comma-separated")
    ap.add_argument("--size", default="768x512", help="WxH of the timed calls")
    ap.add_argument("--tiled", default="4000x3000", help="WxH of the tiled call whose memory is measured ('' : none)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--out", default=None)
    ap.add_argument("--smoke", action="store_true", help="(accepted for symmetry with the other scripts)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        args.threads = int(args.threads)
        print(json.dumps(_child(args)))
        return 0
    threads = [int(t) for t in args.threads.split(",")]
    rows = [measure(name, _size(args.size), args.tiled or None, threads) for name in args.configs.split(",")]
    for r in rows:
        times = "  ".join(f"{k.split('_')[-2]} thr {v:.2f} s" for k, v in r.items() if k.startswith("seconds_"))
        tiled = next((v for k, v in r.items() if k.startswith("tiled_")), None)
        mem = f"  tiled {args.tiled}: {tiled['seconds']:.1f} s, peak {tiled['peak_rss_mb']:.0f} MB" if tiled else ""
        print(f"{r['config']:10s} {r['parameters'] / 1e6:5.2f} M params  {r['flops_per_pixel'] / 1e3:6.0f} kFLOP/px  "
              f"{times}{mem}")
    if args.out:
        write_json(args.out, {**provenance("benchmarks.network", argv), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
