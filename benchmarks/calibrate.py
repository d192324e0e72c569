"""Fit the planner's cost model (:class:`diffcodec.trajectory.CostModel`) to real files.

The planner ranks chains by the expected bits of each coded step; its constants say what a
coder really pays against the model's expected KL.  They go stale whenever a coder gets better
(a new layout codes UQ steps shorter), so they are refitted from files: encode crops of
*training* photos (not the evaluation sets) with several chains, then fit::

    python -m benchmarks.calibrate --make-crops /tmp/cal_crops --data ../shared/data/train
    python -m benchmarks.sweep_steps --images /tmp/cal_crops --crop 128 --limit 6 \\
        --effort 2,3,4,5,6,7,8 --out /tmp/cal_plan.json
    python -m benchmarks.sweep_steps --images /tmp/cal_crops --crop 128 --limit 6 \\
        --effort 5 --method uq --t-min plan,0,10 --out /tmp/cal_uq.json
    python -m benchmarks.sweep_steps --images /tmp/cal_crops --crop 128 --limit 6 \\
        --effort 5 --method pfr --out /tmp/cal_pfr.json
    python -m benchmarks.calibrate /tmp/cal_*.json --out benchmarks/results/calibration.json

A file's bits (its chunks', after the fixed bits per step and tile the cost model charges) are
the cost model's sum over its steps, with the constants as unknowns, plus one offset per image
(its difficulty, which the x_0 error table averages away), fitted by least squares over all
files: a UQ step costs ``a KL + b overhead(KL)`` (``uq_kl_factor = a``, ``uq_recovered = 1 -
b``), the last one gives ``c overhead(KL)`` back to the final step (``final_recovered = c / b``),
a PFR step ``f KL + g KL / chunk`` (``pfr_kl_factor = f``, ``pfr_chunk_overhead = g / f``), the
final step the Gaussian entropy of the x_0 error at t_min plus ``final_offset`` (the images'
mean offset).  So the constants rank chains of the same image, which is what the planner does.

What it found for format version 7 (README, "Designing the chain"): the planner's constants are
stale in level (they predict ~0.25 bits/dim too many on v7 files) but their plans still code
shorter than the refitted ones', so they were kept.

Prints the fitted constants and, per chain, the real bits/dim, each model's prediction, and each
model's error once every image's mean error is taken off (what misranks chains).  The model (``--model``, default the shipped one) must
be the one the sweeps encoded with: its x_0 error table gives the KLs.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmarks.common import provenance, write_json
from diffcodec.checkpoint import load_prior
from diffcodec.trajectory import (DEFAULT_COSTS, CostModel, alphas_cumprod, final_bits, step_kl_matrix,
                                  uq_overhead)


def observations(sweeps: list[dict], kl: np.ndarray) -> list[dict[str, Any]]:
    """One record per coded file: its steps (s, t, coder, bits) in coding order."""
    out = []
    for sweep in sweeps:
        for row in sweep["rows"]:
            for name, im in row["per_image"].items():
                if "step_bits" not in im:
                    raise SystemExit(f"{name}: the sweep has no per-step bits (re-run benchmarks.sweep_steps)")
                ts = im["timesteps"]
                pairs = [(ts[i - 1], ts[i]) for i in range(len(ts) - 1, 0, -1)]
                kinds = [c == "pfr" for c in im["coders"]]  # per step: PFR (else UQ, or the final step)
                out.append({"image": name, "effort": row["effort"], "chunk": im["pfr_bits"][0], "dims": im["dims"],
                            "pixels": im["dims"] / 3, "pairs": pairs, "pfr": kinds, "bits": im["step_bits"],
                            "kl": [float(kl[s, t]) for s, t in pairs], "t_min": ts[0],
                            "file": im["file_bits_per_dim"]})
    return out


def predict(obs: dict, model: CostModel, mse: np.ndarray) -> float:
    """The cost model's bits/dim of one coded file's chain (the planner's formula, per role)."""
    total, n = 0.0, len(obs["pairs"])
    for i, (pfr, k) in enumerate(zip(obs["pfr"], obs["kl"])):
        kk = np.array(k)
        cost = float(model.pfr(kk, obs["chunk"])) if pfr else float(model.uq(kk))
        if i == n - 1 and not pfr:
            cost -= float(model.given_back(kk))
        total += cost + model.fixed_bits(pfr, obs["pixels"]) / obs["dims"]
    fin = final_bits(mse, model)[obs["t_min"]]
    return total + float(fin) + model.fixed_bits(False, obs["pixels"]) / obs["dims"]


def fit(obs: list[dict], mse: np.ndarray, base: CostModel = DEFAULT_COSTS) -> CostModel:
    """The constants by least squares over whole files, one free offset per image (module
    docstring): what the planner needs is the difference between chains of the same image, and
    the images' difficulty (+-0.3 bits/dim) would swamp it.  The fixed bits are kept, and so is
    every constant that the files cannot tell (no PFR step, one chunk size, no UQ last step)."""
    images = sorted({o["image"] for o in obs})
    gauss = final_bits(mse, replace(base, final_offset=0.0))
    chunks = {o["chunk"] for o in obs for p in o["pfr"] if p}
    # columns: UQ KL, UQ overhead, PFR KL, PFR KL / chunk, -(last UQ step's overhead), then one per image
    x = np.zeros((len(obs), 5 + len(images)))
    y = np.zeros(len(obs))
    for r, o in enumerate(obs):
        n = len(o["pairs"])
        for i, (pfr, k) in enumerate(zip(o["pfr"], o["kl"])):
            if pfr:
                x[r, 2] += k
                x[r, 3] += k / o["chunk"]
            else:
                ovh = float(uq_overhead(np.array(k)))
                x[r, 0] += k
                x[r, 1] += ovh
                if i == n - 1:
                    x[r, 4] -= ovh
        x[r, 5 + images.index(o["image"])] = 1.0
        fixed = sum(base.fixed_bits(pfr, o["pixels"]) for pfr in o["pfr"]) + base.fixed_bits(False, o["pixels"])
        y[r] = (sum(o["bits"]) - fixed) / o["dims"] - float(gauss[o["t_min"]])
    # what the files cannot tell is moved to y at the base model's value and its column dropped
    known = {}
    if not chunks:
        known[2], known[3] = base.pfr_kl_factor, base.pfr_kl_factor * base.pfr_chunk_overhead
    elif len(chunks) == 1:  # the factor alone: the overhead per chunk kept
        x[:, 2] += base.pfr_chunk_overhead * x[:, 3]
        known[3] = 0.0
    if not x[:, 4].any():
        known[4] = base.final_recovered * (1.0 - base.uq_recovered)
    if not x[:, 0].any():
        known[0], known[1] = base.uq_kl_factor, 1.0 - base.uq_recovered
    for j, v in known.items():
        y -= v * x[:, j]
    free = [j for j in range(x.shape[1]) if j not in known]
    sol = dict(known)
    sol.update(zip(free, np.linalg.lstsq(x[:, free], y, rcond=None)[0]))
    a, b, f = sol[0], sol[1], sol[2]
    g = sol[3] if len(chunks) > 1 else f * base.pfr_chunk_overhead
    offsets = [sol[5 + i] for i in range(len(images))]
    return replace(base, uq_kl_factor=float(a), uq_recovered=float(1.0 - b), pfr_kl_factor=float(f),
                   pfr_chunk_overhead=float(g / f), final_offset=float(np.mean(offsets)),
                   final_recovered=float(sol[4] / b) if b else base.final_recovered)


def chain_errors(obs: list[dict], models: dict[str, CostModel], mse: np.ndarray) -> list[dict[str, Any]]:
    """Per chain (effort, PFR steps, t_min): the files' real bits/dim, each model's prediction, and
    its error once each image's mean error over its chains is taken off."""
    resid = {name: np.array([o["file"] - predict(o, m, mse) for o in obs]) for name, m in models.items()}
    for name, r in resid.items():
        for image in {o["image"] for o in obs}:
            idx = [i for i, o in enumerate(obs) if o["image"] == image]
            r[idx] -= r[idx].mean()
    groups: dict[tuple, list[int]] = {}
    for i, o in enumerate(obs):
        groups.setdefault((o["effort"], sum(o["pfr"]), o["t_min"]), []).append(i)
    rows = []
    for (effort, pfr, t_min), idx in sorted(groups.items()):
        row = {"effort": effort, "pfr_steps": pfr, "t_min": t_min, "files": len(idx),
               "real": float(np.mean([obs[i]["file"] for i in idx]))}
        for name, m in models.items():
            row[name] = float(np.mean([predict(obs[i], m, mse) for i in idx]))
            row[f"{name}_rank_error"] = float(np.mean(-resid[name][idx]))
        rows.append(row)
    return rows


def make_crops(data: Path, out: Path, n: int = 6, size: int = 128, seed: int = 0) -> list[Path]:
    """``n`` random ``size`` px crops of random photos under ``data`` (seeded), written as PNGs."""
    from PIL import Image

    from diffcodec.data import list_images

    rng = np.random.default_rng(seed)
    photos = list_images(data)  # every photo below data, sorted
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i in rng.choice(len(photos), size=n, replace=False):
        img = np.asarray(Image.open(photos[i]).convert("RGB"))
        y, x = (int(rng.integers(0, d - size + 1)) for d in img.shape[:2])
        written.append(out / f"{photos[i].stem}.png")
        Image.fromarray(img[y:y + size, x:x + size]).save(written[-1])
    return written


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.calibrate", description=__doc__.split("\n\n")[0])
    ap.add_argument("sweeps", type=Path, nargs="*", help="benchmarks.sweep_steps JSONs (with per-step bits)")
    ap.add_argument("--make-crops", type=Path, default=None, metavar="DIR",
                    help="write 6 random 128 px crops of --data's photos to DIR (seed 0) and stop")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/train"))
    ap.add_argument("--model", default=None, help="the model the sweeps encoded with (default: the shipped one)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.make_crops:
        for p in make_crops(args.data, args.make_crops):
            print(p)
        return 0
    if not args.sweeps:
        ap.error("give the sweeps' JSONs (or --make-crops)")
    prior = load_prior(args.model)
    if prior.xstart_mse is None:
        raise SystemExit("the model has no x_0 error table (diffcodec errtable): nothing to calibrate against")
    sweeps = [json.loads(p.read_text()) for p in args.sweeps]
    for p, s in zip(args.sweeps, sweeps):
        if s.get("model_fingerprint") != prior.fingerprint:
            raise SystemExit(f"{p}: encoded with model {s.get('model_fingerprint')}, not {prior.fingerprint}")
    mse = prior.xstart_mse
    obs = observations(sweeps, step_kl_matrix(alphas_cumprod(prior), mse))
    new = fit(obs, mse)
    print(f"{len(obs)} files, {sum(len(o['pairs']) + 1 for o in obs)} steps")
    names = [f.name for f in fields(CostModel) if not f.name.endswith(("_fixed_bits", "_tile_bits"))]
    for n in names:
        print(f"  {n:<20} {getattr(DEFAULT_COSTS, n):>8.4f} -> {getattr(new, n):>8.4f}")
    rows = chain_errors(obs, {"old": DEFAULT_COSTS, "new": new}, mse)
    print(f"{'effort':>6} {'pfr steps':>9} {'t_min':>5} {'files':>5} {'real':>8} {'old':>8} {'new':>8} "
          f"{'old rank err':>12} {'new rank err':>12}")
    for r in rows:
        print(f"{r['effort']:>6} {r['pfr_steps']:>9} {r['t_min']:>5} {r['files']:>5} {r['real']:>8.4f} {r['old']:>8.4f} "
              f"{r['new']:>8.4f} {r['old_rank_error']:>12.4f} {r['new_rank_error']:>12.4f}")
    err_old = float(np.sqrt(np.mean([r["old_rank_error"] ** 2 for r in rows])))
    err_new = float(np.sqrt(np.mean([r["new_rank_error"] ** 2 for r in rows])))
    print(f"rms error between chains of an image: old {err_old:.4f}, new {err_new:.4f} bits/dim")
    if args.out:
        write_json(args.out, {"old": asdict(DEFAULT_COSTS), "new": asdict(new), "chains": rows,
                              "rank_error_rms": {"old": err_old, "new": err_new},
                              "model": Path(prior.source).name, "model_fingerprint": prior.fingerprint,
                              "sweeps": [str(p) for p in args.sweeps], **provenance("benchmarks.calibrate", argv)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
