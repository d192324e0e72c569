"""Training: L_simple / L_hybrid / L_vlb, importance-sampled or codec-weighted t, AdamW, EMA,
exact resume, DDP.

Every step draws its crops, timesteps, noise and dropout from generators seeded by
(seed, step, rank), so a run resumed from a checkpoint continues exactly as the uninterrupted
run would have.  Run under ``torchrun --nproc_per_node N`` for data parallelism (NCCL on CUDA,
gloo on CPU); rank 0 writes checkpoints and shows the progress bar.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from .checkpoint import load_prior, read_checkpoint, save_checkpoint
from .data import ImageCrops
from .diffusion import DiffusionConfig, GaussianDiffusion
from .errors import DiffcodecError, OptionError
from .unet import UNet, UNetConfig, named_config


@dataclass
class TrainConfig:
    data: str = ""
    out: str = "checkpoints/model.pt"
    model: str = "small"
    schedule: str = "cosine"
    num_timesteps: int = 1000
    model_var_type: str = "learned_range"
    loss: str = "hybrid"
    importance_sampling: bool = True
    crop: int = 64
    rescale_min: float = 1.0
    batch_size: int = 16
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup: int = 200
    lr_decay: str = "none"  # 'none', 'cosine' or 'linear': from decay_start down to min_lr at ``steps``
    decay_start: int = 0  # the decay starts at max(warmup, decay_start)
    min_lr: float = 0.0
    grad_clip: float = 1.0
    ema_rate: float = 0.999
    steps: int = 1000
    seed: int = 0
    save_every: int = 500
    eval_data: str = ""
    eval_every: int = 0
    eval_crops: int = 8
    # the held-out bound's chain: the full one by default.  The learned variance collapses on respaced
    # chains as training goes on (a 50-step bound of the v2 prior rose from 3.77 to 4.27 while its
    # 1,000-step bound fell), so only the full chain's bound tracks the model (~70 s on one CPU core
    # for 8 crops of 64 px with `local16`)
    eval_steps: int = 1000
    dropout: float | None = None
    device: str = "auto"
    log_file: str = ""
    max_seconds: float = 0.0  # stop (and save) after this much wall time; 0 = no limit
    init_from: str = ""  # start a new run from this checkpoint's EMA weights (fresh optimizer)
    # 'uniform': t ~ U{0..T-1} (DDPM, iDDPM).  'codec': t drawn where the codec's chain spends its
    # bits and the eps loss taken relative to the x_0 error table of --init-from (see CodecWeighting)
    t_weighting: str = "uniform"
    # distillation: the eps MSE's target is this checkpoint's network's prediction at the same x_t
    # (same schedule and T; any architecture), not the noise drawn (see training_losses)
    distill_from: str = ""

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class ImportanceSampler:
    """Improved DDPM's loss-second-moment resampler: p(t) ~ sqrt(E[L_t^2]) once every t has
    ``history`` losses, mixed with 0.1 % uniform; uniform before that."""

    def __init__(self, num_timesteps: int, history: int = 10, uniform_prob: float = 0.001) -> None:
        self.T, self.history, self.uniform_prob = num_timesteps, history, uniform_prob
        self.losses = np.zeros((num_timesteps, history), dtype=np.float64)
        self.counts = np.zeros(num_timesteps, dtype=np.int64)

    def warmed_up(self) -> bool:
        return bool((self.counts == self.history).all())

    def weights(self) -> np.ndarray:
        if not self.warmed_up():
            return np.full(self.T, 1.0 / self.T)
        w = np.sqrt(np.mean(self.losses**2, axis=-1))
        w = w / w.sum()
        return w * (1 - self.uniform_prob) + self.uniform_prob / self.T

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n timesteps and their importance weights 1 / (T p(t))."""
        p = torch.from_numpy(self.weights())
        t = torch.multinomial(p, n, replacement=True, generator=generator)
        return t, (1.0 / (self.T * p[t])).float()

    def update(self, ts: torch.Tensor, losses: torch.Tensor) -> None:
        for t, loss in zip(ts.tolist(), losses.tolist()):
            if self.counts[t] == self.history:
                self.losses[t, :-1] = self.losses[t, 1:]
                self.losses[t, -1] = loss
            else:
                self.losses[t, self.counts[t]] = loss
                self.counts[t] += 1

    def state_dict(self) -> dict:
        return {"losses": torch.from_numpy(self.losses.copy()), "counts": torch.from_numpy(self.counts.copy())}

    def load_state_dict(self, state: dict) -> None:
        self.losses = state["losses"].numpy().astype(np.float64)
        self.counts = state["counts"].numpy().astype(np.int64)


T_WEIGHTINGS = ("uniform", "codec")


class CodecWeighting:
    """Timesteps and loss weights for a prior that serves the codec's short chain.

    The codec pays for the network's x_0 error where its chain calls the network: a step s <- t
    costs 1/2 log2(1 + c1^2 mse(t) / lambda^2) bits/dim, so its cost moves with log mse(t), and
    for the chains the planner picks (t_min 0-3, steps near t = 10-20 and 40-70, then ever
    smaller KLs up to T) almost all of that sensitivity lies below t = T/5.  Uniform t puts 2 %
    of the training samples below t = 20.  Here t ~ pi(t) = FOCUS x (proportional to 1 / (t + 2)
    on t < T/5) + (1 - FOCUS) x uniform, and the eps MSE at t is divided by the model's eps
    error there (from its x_0 error table, relative to the mean over t, at most 1), so that the
    focused samples ask for the same *relative* improvement (the gradient of sum_t pi(t) log
    mse(t), to first order) while the high-noise samples, where the eps error is near 0, keep
    the weight uniform training gives them.  L_vlb (the learned variance's term in L_hybrid)
    keeps its unbiased weight 1 / (T pi(t)), so the variance head sees the same objective.
    """

    FOCUS = 0.9

    def __init__(self, alphas_cumprod: np.ndarray, xstart_mse: np.ndarray) -> None:
        T = len(alphas_cumprod)
        t = np.arange(T)
        focus = np.where(t < max(1, T // 5), 1.0 / (t + 2.0), 0.0)
        self.p = (1.0 - self.FOCUS) / T + self.FOCUS * focus / focus.sum()
        self.table = np.asarray(xstart_mse, dtype=np.float64)  # kept in the training state (resume)
        mse = self.table.mean(axis=1) if self.table.ndim == 2 else self.table
        if mse.shape != (T,) or not np.all(np.isfinite(mse)) or (mse <= 0).any():
            raise DiffcodecError(f"codec weighting needs a positive x_0 error table of {T} rows")
        eps_mse = mse * alphas_cumprod / (1.0 - alphas_cumprod)  # E|eps - eps_hat|^2 at t
        self.mse_weight = np.minimum(eps_mse.mean() / eps_mse, 1.0)
        self.vb_weight = 1.0 / (T * self.p)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """n timesteps, their eps-loss weights and their L_vlb weights."""
        t = torch.multinomial(torch.from_numpy(self.p), n, replacement=True, generator=generator)
        return t, torch.from_numpy(self.mse_weight[t]).float(), torch.from_numpy(self.vb_weight[t]).float()


def _step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 64 + rank)


def data_seed(seed: int, init_fingerprint: str | None) -> int:
    """The seed of a run's batches: ``seed`` for a run from scratch; mixed with the fingerprint of
    the checkpoint a fine-tune starts from, so that successive fine-tunes (each from the last)
    draw other crops, timesteps and noise than the runs before them with the same ``--seed``
    (with ``seed`` alone, the fine-tune rounds of the tenth to thirteenth sessions replayed the
    same 2,400 batches, their loss spikes at the same steps)."""
    if not init_fingerprint:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}:{init_fingerprint}".encode()).digest()[:4], "little")  # the step generator keeps it in 64 bits


LR_DECAYS = ("none", "cosine", "linear")


def _lr(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up to ``lr``, then constant, or decayed (cosine or linear) from
    max(warmup, decay_start) to ``min_lr`` at ``steps``."""
    if cfg.lr_decay not in LR_DECAYS:
        raise DiffcodecError(f"unknown lr decay {cfg.lr_decay!r} (choose from {LR_DECAYS})")
    lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))
    start = max(cfg.warmup, cfg.decay_start)
    if cfg.lr_decay == "none" or step < start or cfg.steps <= start:
        return lr
    f = min(1.0, (step - start) / (cfg.steps - start))
    w = 0.5 * (1.0 + math.cos(math.pi * f)) if cfg.lr_decay == "cosine" else 1.0 - f
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * w


@torch.no_grad()
def heldout_bpd(net, diffusion_cfg: DiffusionConfig, crops: torch.Tensor, steps: int, seed: int = 0) -> float:
    """Mean bits/dim bound of ``crops`` under the chain respaced to ``steps`` timesteps."""
    diffusion = diffusion_cfg.build(steps if steps < diffusion_cfg.num_timesteps else None)
    g = torch.Generator(device=crops.device).manual_seed(seed)
    out = diffusion.calc_bpd_loop(net, crops, generator=g)
    return float(out["total_bpd"].mean())


def trim_log(path: Path, step: int) -> None:
    """Drop the lines of the training log past ``step`` (the step training resumes from; 0 for a
    new run, whose log starts empty of steps): a run stopped after its last checkpoint logged
    steps that the resumed run takes again, so each step keeps the one line of the run that is
    kept."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    keep = [ln for ln in lines if not ln.split("\t", 1)[0].isdigit() or int(ln.split("\t", 1)[0]) <= step]
    if len(keep) != len(lines):
        path.write_text("".join(keep))


def _load_teacher(cfg: TrainConfig, diffusion_cfg: DiffusionConfig, device: torch.device):
    """The --distill-from network (EMA weights, frozen) and its fingerprint."""
    if cfg.loss == "vlb":
        raise OptionError("--distill-from replaces the eps MSE's target: use --loss hybrid or simple, not vlb")
    path = Path(cfg.distill_from)
    if not path.is_file():
        raise OptionError(f"--distill-from {cfg.distill_from}: no such file")
    prior = load_prior(path, device)
    if prior.diffusion != diffusion_cfg:
        raise OptionError(f"--distill-from {cfg.distill_from} has another diffusion configuration "
                          f"(schedule, T, variance): its eps would not be this chain's")
    return prior.net, prior.fingerprint


def train(cfg: TrainConfig, progress: bool = True) -> dict:
    """Run (or resume) training as ``cfg`` says; returns a summary dict."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    owns_group = distributed and not dist.is_initialized()
    if distributed:
        if owns_group:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
    else:
        rank, world = 0, 1

    try:  # the options name a schedule, variance and network: a bad name is the user's to fix
        diffusion_cfg = DiffusionConfig(cfg.schedule, cfg.num_timesteps, cfg.model_var_type)
        unet_cfg = named_config(cfg.model, learn_sigma=diffusion_cfg.learn_sigma)
    except ValueError as e:
        raise OptionError(str(e)) from None
    if cfg.dropout is not None:
        unet_cfg = type(unet_cfg)(**{**unet_cfg.to_dict(), "dropout": cfg.dropout})
    diffusion = diffusion_cfg.build()
    if cfg.t_weighting not in T_WEIGHTINGS:
        raise OptionError(f"unknown t weighting {cfg.t_weighting!r} (choose from {T_WEIGHTINGS})")
    if cfg.t_weighting == "codec" and cfg.importance_sampling:
        raise OptionError("--t-weighting codec draws its own timesteps: add --no-importance-sampling")
    data = ImageCrops(cfg.data, cfg.crop, (cfg.rescale_min, 1.0))
    heldout = ImageCrops(cfg.eval_data, cfg.crop).fixed_crops(cfg.eval_crops).to(device) \
        if cfg.eval_data and cfg.eval_every else None

    torch.manual_seed(cfg.seed)
    net = UNet(unet_cfg).to(device)
    if device.type == "cpu":
        net = net.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sampler = ImportanceSampler(cfg.num_timesteps) if cfg.importance_sampling else None
    step, history, weighting, batches_seed, resumed = 0, [], None, cfg.seed, None

    out_path = Path(cfg.out)
    if out_path.exists():
        blob = read_checkpoint(out_path)
        tr = resumed = blob.get("train")
        if not tr:
            raise DiffcodecError(f"{out_path} has no training state to resume from")
        if UNetConfig(**blob["unet"]) != unet_cfg or DiffusionConfig(**blob["diffusion"]) != diffusion_cfg:
            raise DiffcodecError(f"{out_path} was trained with another model/diffusion configuration")
        net.load_state_dict(tr["model"])
        ema.load_state_dict(blob["ema"])
        opt.load_state_dict(tr["optimizer"])
        if sampler is not None and tr.get("sampler"):
            sampler.load_state_dict(tr["sampler"])
        step, history = int(tr["step"]), list(tr.get("history", []))
        batches_seed = int(tr.get("data_seed", cfg.seed))  # runs saved before it had the plain seed
        if cfg.t_weighting == "codec":
            if tr.get("xstart_mse") is None:
                raise DiffcodecError(f"{out_path} was not trained with --t-weighting codec")
            weighting = CodecWeighting(diffusion.alphas_cumprod, tr["xstart_mse"].numpy())
    elif cfg.init_from:
        blob = read_checkpoint(cfg.init_from)
        if UNetConfig(**blob["unet"]) != unet_cfg or DiffusionConfig(**blob["diffusion"]) != diffusion_cfg:
            raise DiffcodecError(f"{cfg.init_from} has another model/diffusion configuration")
        weights = {k: v.float() for k, v in blob["ema"].items()}
        net.load_state_dict(weights)
        ema.load_state_dict(weights)
        batches_seed = data_seed(cfg.seed, blob.get("fingerprint"))
        if cfg.t_weighting == "codec":
            if blob.get("xstart_mse") is None:
                raise OptionError(f"--t-weighting codec needs a checkpoint with an x_0 error table "
                                  f"(diffcodec errtable); {cfg.init_from} has none")
            weighting = CodecWeighting(diffusion.alphas_cumprod, blob["xstart_mse"].numpy())
    if cfg.t_weighting == "codec" and weighting is None:
        raise OptionError("--t-weighting codec needs --init-from a model with an x_0 error table")
    teacher, teacher_fp = _load_teacher(cfg, diffusion_cfg, device) if cfg.distill_from else (None, None)
    if resumed is not None and resumed.get("teacher") != teacher_fp:
        raise DiffcodecError(f"{out_path} was trained with another --distill-from "
                             f"({resumed.get('teacher') or 'none'}, now {teacher_fp or 'none'})")
    model = torch.nn.parallel.DistributedDataParallel(net) if distributed else net

    def save() -> None:
        if rank == 0:
            save_checkpoint(out_path, unet_cfg, diffusion_cfg, ema.state_dict(), train={
                "step": step, "model": net.state_dict(), "optimizer": opt.state_dict(),
                "sampler": sampler.state_dict() if sampler else None, "config": asdict(cfg),
                "history": history, "xstart_mse": None if weighting is None else torch.from_numpy(weighting.table),
                "data_seed": batches_seed, "teacher": teacher_fp,
            })

    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" \
        else torch.autocast("cpu", enabled=False)
    if cfg.log_file and rank == 0:
        trim_log(Path(cfg.log_file), step)
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress or rank != 0, dynamic_ncols=True)
    running_bpd, t0, start_step = None, time.time(), step
    while step < cfg.steps:
        g = _step_generator(batches_seed, step, rank)
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=g)))
        x = data.batch(cfg.batch_size, g).to(device)
        if device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        vb_weights = None
        if weighting is not None:
            t, weights, vb_weights = weighting.sample(cfg.batch_size, g)
            vb_weights = vb_weights.to(device)
        elif sampler is not None:
            t, weights = sampler.sample(cfg.batch_size, g)
        else:
            t = torch.randint(cfg.num_timesteps, (cfg.batch_size,), generator=g)
            weights = torch.ones(cfg.batch_size)
        t, weights = t.to(device), weights.to(device)
        noise = torch.randn(x.shape, generator=g).to(device)
        for group in opt.param_groups:
            group["lr"] = _lr(cfg, step)
        with autocast:
            terms = diffusion.training_losses(model, x, t, cfg.loss, noise=noise, teacher=teacher)
        fit = terms.get("distill", terms["mse"])
        if vb_weights is None:
            loss = (terms["loss"] * weights).mean()
        else:  # the eps loss relative to the model's error at t, L_vlb unbiased
            vb = terms.get("vb", torch.zeros_like(terms["mse"])) * (cfg.num_timesteps / 1000.0)
            loss = (fit * weights + vb * vb_weights).mean()
        if not torch.isfinite(loss):
            raise DiffcodecError(f"loss became {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        rate = min(cfg.ema_rate, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p.detach(), 1 - rate)
            for be, b in zip(ema.buffers(), net.buffers()):
                be.copy_(b)

        if sampler is not None:
            per_t = terms["loss"].detach()
            ts = t
            if distributed:
                gathered_t, gathered_l = [torch.empty_like(ts) for _ in range(world)], \
                    [torch.empty_like(per_t) for _ in range(world)]
                dist.all_gather(gathered_t, ts)
                dist.all_gather(gathered_l, per_t)
                ts, per_t = torch.cat(gathered_t), torch.cat(gathered_l)
            sampler.update(ts.cpu(), per_t.float().cpu())
        if "vb" in terms:  # a running single-sample estimate of the bound (without L_T)
            est = float((terms["vb"].detach() * (weights if vb_weights is None else vb_weights)).mean()
                        * cfg.num_timesteps)
            running_bpd = est if running_bpd is None else 0.98 * running_bpd + 0.02 * est
        step += 1
        bar.update(1)
        info = {"loss": f"{loss.item():.4f}", "mse": f"{terms['mse'].mean().item():.4f}"}
        if teacher is not None:
            info["distill"] = f"{fit.mean().item():.5f}"
        if running_bpd is not None:
            info["bpd~"] = f"{running_bpd:.3f}"
        if heldout is not None and step % cfg.eval_every == 0 and rank == 0:
            bpd = heldout_bpd(ema, diffusion_cfg, heldout, cfg.eval_steps)
            history.append({"step": step, "heldout_bpd": bpd, "seconds": time.time() - t0})
            info["heldout"] = f"{bpd:.3f}"
            tqdm.write(f"step {step}: held-out bits/dim {bpd:.4f} ({cfg.eval_steps}-step bound)") if progress else None
        bar.set_postfix(info)
        if cfg.log_file and rank == 0:
            with open(cfg.log_file, "a") as f:
                f.write(f"{step}\t{loss.item():.6f}\t{terms['mse'].mean().item():.6f}\t{running_bpd}\n")
        out_of_time = bool(cfg.max_seconds) and time.time() - t0 > cfg.max_seconds
        if distributed and cfg.max_seconds:  # every rank must stop at the same step
            flag = torch.tensor([float(out_of_time)], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            out_of_time = bool(flag.item())
        if step % cfg.save_every == 0 or step == cfg.steps or out_of_time:
            save()
        if out_of_time:
            break
    bar.close()
    if step == start_step:
        save()
    elapsed = time.time() - t0
    if distributed:
        check = torch.cat([p.detach().flatten() for p in net.parameters()]).double().sum().reshape(1)
        allc = [torch.empty_like(check) for _ in range(world)]
        dist.all_gather(allc, check)
        if any(float(c) != float(check) for c in allc):
            raise DiffcodecError("data-parallel replicas diverged")
        if owns_group:  # no rank tears its connections down while another still talks
            dist.barrier()
            dist.destroy_process_group()
    return {"steps": step, "seconds": elapsed,
            "images_per_second": (step - start_step) * cfg.batch_size * world / max(elapsed, 1e-9),
            "history": history, "out": str(out_path), "rank": rank, "world": world,
            "bpd_estimate": running_bpd if running_bpd is not None else math.nan}
