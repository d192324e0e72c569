"""Gaussian diffusion math: schedules, q, the posterior, p_theta and the variational bound.

Everything here follows Ho et al. (2020, "DDPM") and Nichol & Dhariwal (2021, "Improved
DDPM") and uses their names.  Timesteps are 0-based indices ``t = 0 .. T-1`` into the
schedule tables: index ``t`` is the paper's ``x_{t+1}``, so ``x_start`` is the paper's x_0 and
index 0 is the paper's x_1, whose decoder p(x_0 | x_1) is the discretized Gaussian (Eq. 13).

All schedule tables are float64 numpy arrays; they are cast to the dtype of the tensor they
are applied to, so a float64 computation (the bound, the codec's posteriors) stays float64.

A diffusion can be *respaced* (Improved DDPM, Sec. 4): a subset of the original timesteps is
kept and the betas are recomputed from alpha-bar so that q(x_t | x_0) is unchanged at the kept
steps.  The network is always called with the *original* timestep (scaled to [0, 1000)), so
one trained network serves every respacing.

A diffusion with an x_0 error table may also carry a *linear* x_0 estimate (a function of x_t
and alpha-bar, :mod:`diffcodec.linear`) and the original timestep from which on it replaces the
network: p_theta's mean there comes from it and the network is not called.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

MODEL_VAR_TYPES = ("fixed_small", "fixed_large", "learned_range")
# The reverse variance can also come from the network's measured x_0 error (:func:`analytic_variance`):
VARIANCE_SOURCES = ("model", "analytic")
SCHEDULES = ("linear", "cosine")
LOSS_TYPES = ("simple", "hybrid", "vlb")

# Pixels live on [-1, 1]; 256 levels, so one bin is 2/255 wide.
NUM_LEVELS = 256
HALF_BIN = 1.0 / 255.0


# ----------------------------------------------------------------------------- schedules


def get_named_beta_schedule(name: str, num_timesteps: int) -> np.ndarray:
    """Betas (float64) of a named schedule with ``num_timesteps`` steps.

    ``linear``: DDPM's beta from 1e-4 to 0.02 at T = 1000; for other T the end points are scaled
    by 1000 / T (as in Improved DDPM) so that the total amount of noise stays the same.
    ``cosine``: Improved DDPM's alpha-bar(t) = cos^2(((t/T + s)/(1 + s)) * pi/2), s = 0.008,
    with beta clipped at 0.999.
    """
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if name == "linear":
        scale = 1000.0 / num_timesteps
        return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)
    if name == "cosine":
        s = 0.008
        return betas_for_alpha_bar(
            num_timesteps, lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2
        )
    raise ValueError(f"unknown beta schedule {name!r} (choose from {SCHEDULES})")


def betas_for_alpha_bar(
    num_timesteps: int, alpha_bar: Callable[[float], float], max_beta: float = 0.999
) -> np.ndarray:
    """Discretize a continuous alpha-bar(u), u in [0, 1], into betas clipped at ``max_beta``."""
    betas = []
    for i in range(num_timesteps):
        u1, u2 = i / num_timesteps, (i + 1) / num_timesteps
        betas.append(min(1.0 - alpha_bar(u2) / alpha_bar(u1), max_beta))
    return np.array(betas, dtype=np.float64)


def space_timesteps(num_timesteps: int, count: int) -> np.ndarray:
    """``count`` evenly spaced timesteps out of ``num_timesteps``, always keeping 0 and T-1."""
    if not 1 <= count <= num_timesteps:
        raise ValueError(f"cannot keep {count} of {num_timesteps} timesteps")
    if count == 1:
        return np.array([num_timesteps - 1])
    steps = np.round(np.linspace(0, num_timesteps - 1, count)).astype(np.int64)
    return np.unique(steps)


def respace_betas(betas: np.ndarray, use_timesteps: Sequence[int]) -> np.ndarray:
    """Betas of the chain that keeps only ``use_timesteps``, with alpha-bar preserved there."""
    alphas_cumprod = np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))
    use = np.asarray(sorted(set(int(t) for t in use_timesteps)), dtype=np.int64)
    if use.size == 0 or use[0] < 0 or use[-1] >= len(alphas_cumprod):
        raise ValueError("use_timesteps must be a non-empty subset of 0..T-1")
    kept = alphas_cumprod[use]
    prev = np.append(1.0, kept[:-1])
    return 1.0 - kept / prev


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class DiffusionConfig:
    """What a checkpoint records about its diffusion (so nothing is repeated at load time)."""

    schedule: str = "cosine"
    num_timesteps: int = 1000
    model_var_type: str = "learned_range"

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}")
        if self.model_var_type not in MODEL_VAR_TYPES:
            raise ValueError(f"unknown model_var_type {self.model_var_type!r}")
        if self.num_timesteps < 1:
            raise ValueError("num_timesteps must be >= 1")

    @property
    def learn_sigma(self) -> bool:
        return self.model_var_type == "learned_range"

    def to_dict(self) -> dict:
        return asdict(self)

    def build(self, steps: int | Sequence[int] | None = None,
              xstart_mse: np.ndarray | None = None, linear=None) -> "GaussianDiffusion":
        """The diffusion, respaced to ``steps`` (a count or explicit timesteps) if given.  With
        ``xstart_mse`` (the model's error table, one row per original timestep) the reverse
        variances are the analytic ones (:func:`analytic_variance`) instead of the model's, and
        ``linear`` (a :class:`diffcodec.linear.LinearPrior`, with the table only) estimates x_0
        from its ``from_t`` on."""
        betas = get_named_beta_schedule(self.schedule, self.num_timesteps)
        if steps is None:
            use = np.arange(self.num_timesteps)
        elif isinstance(steps, (int, np.integer)):
            use = space_timesteps(self.num_timesteps, steps)
        else:
            use = np.asarray(sorted(set(int(s) for s in steps)))
        table = None if xstart_mse is None else np.asarray(xstart_mse, dtype=np.float64)[use]
        lin = {} if linear is None or table is None else {"linear_xstart": linear.xstart, "linear_from": linear.from_t}
        if steps is None:
            return GaussianDiffusion(betas, self.model_var_type, xstart_mse=table, **lin)
        return GaussianDiffusion(
            respace_betas(betas, use), self.model_var_type, timestep_map=use,
            original_num_timesteps=self.num_timesteps, xstart_mse=table, **lin,
        )


# ----------------------------------------------------------------------------- helpers


def _extract(arr: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """arr[t] as a tensor of like's dtype/device, broadcastable against ``like``."""
    dtype = like.dtype if like.dtype.is_floating_point else torch.float32
    out = torch.as_tensor(arr, dtype=torch.float64, device=like.device)[t].to(dtype)
    return out.reshape(out.shape + (1,) * (like.dim() - out.dim()))


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.dim())))


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    logvar1 = torch.as_tensor(logvar1, dtype=mean1.dtype, device=mean1.device)
    logvar2 = torch.as_tensor(logvar2, dtype=mean1.dtype, device=mean1.device)
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def analytic_variance(posterior_variance: np.ndarray, coef1: np.ndarray, xstart_mse: np.ndarray) -> np.ndarray:
    """The variance of p(x_s | x_t) that minimises the expected KL to q(x_s | x_t, x_0) when
    the mean is the posterior mean at the network's estimate x0hat (Bao et al. 2022, the
    imperfect-mean form): sigma^2 = lambda^2 + coef1^2 E[(x_0 - x0hat)^2], with the x_0 error
    clipped to [1e-10, 1] (data on [-1, 1]); it is never below the posterior variance
    lambda^2.  At the decoder step (lambda = 0, coef1 = 1) it is the x_0 error itself.  The
    expected KL per dimension is then 1/2 log(sigma^2 / lambda^2)."""
    mse = np.clip(np.asarray(xstart_mse, dtype=np.float64), 1e-10, 1.0)
    return np.asarray(posterior_variance, dtype=np.float64) + np.asarray(coef1, dtype=np.float64) ** 2 * mse


def _log_ndtr_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(Phi(b) - Phi(a)) for a < b, stable in both tails (float64)."""
    # Work on the side of zero where the CDFs are small: for a > 0 use the upper tail.
    flip = a > 0
    lo = torch.where(flip, -b, a)
    hi = torch.where(flip, -a, b)
    log_hi = torch.special.log_ndtr(hi)
    log_lo = torch.special.log_ndtr(lo)
    return log_hi + torch.log1p(-torch.exp(torch.clamp(log_lo - log_hi, max=0.0)))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """log p(x) under DDPM's discretized Gaussian decoder (Eq. 13), elementwise, in nats.

    ``x`` holds pixel values on [-1, 1] at the 256 levels.  Each level owns the bin
    [x - 1/255, x + 1/255]; the edge bins are open to -inf and +inf, so the probabilities of
    the 256 levels sum to exactly 1.  The normal CDF is exact (``log_ndtr``), in float64.
    """
    x64, mu, ls = x.double(), means.double(), log_scales.double()
    inv_std = torch.exp(-ls)
    lower = torch.where(x64 < -0.999, torch.full_like(x64, -math.inf), (x64 - mu - HALF_BIN) * inv_std)
    upper = torch.where(x64 > 0.999, torch.full_like(x64, math.inf), (x64 - mu + HALF_BIN) * inv_std)
    return _log_ndtr_diff(lower, upper).to(x.dtype if x.dtype.is_floating_point else torch.float64)


def discretized_gaussian_pmf(means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """Probabilities of all 256 levels, shape ``means.shape + (256,)`` (float64)."""
    levels = torch.arange(NUM_LEVELS, dtype=torch.float64, device=means.device) / 127.5 - 1.0
    shape = means.shape + (NUM_LEVELS,)
    ll = discretized_gaussian_log_likelihood(
        levels.expand(shape), means.double().unsqueeze(-1).expand(shape),
        log_scales.double().unsqueeze(-1).expand(shape),
    )
    return ll.exp()


# ----------------------------------------------------------------------------- the diffusion


class GaussianDiffusion:
    """q, the true posterior, p_theta and the bound for one (possibly respaced) chain.

    ``model(x_t, s)`` is an epsilon-predicting network called with ``s`` = the original
    timestep scaled to [0, 1000); with ``model_var_type='learned_range'`` it returns 6 channels,
    epsilon and v, and the variance is exp(frac * log beta_t + (1 - frac) * log beta~_t) with
    frac = (v + 1) / 2 (Improved DDPM Eq. 15).
    """

    def __init__(
        self,
        betas: np.ndarray,
        model_var_type: str = "learned_range",
        timestep_map: Sequence[int] | None = None,
        original_num_timesteps: int | None = None,
        xstart_mse: np.ndarray | None = None,
        linear_xstart: Callable[[torch.Tensor, float], torch.Tensor] | None = None,
        linear_from: int | None = None,
    ) -> None:
        if model_var_type not in MODEL_VAR_TYPES:
            raise ValueError(f"unknown model_var_type {model_var_type!r}")
        betas = np.asarray(betas, dtype=np.float64)
        # beta = 1 would make alpha-bar 0 from there on (1 / sqrt(alpha-bar) = inf, a NaN bound).
        if betas.ndim != 1 or not ((betas > 0) & (betas < 1)).all():
            raise ValueError("betas must be a 1-D array in (0, 1)")
        self.betas = betas
        self.model_var_type = model_var_type
        self.num_timesteps = T = len(betas)
        self.timestep_map = np.arange(T) if timestep_map is None else np.asarray(timestep_map)
        self.original_num_timesteps = original_num_timesteps or T

        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1.0)
        # q(x_{t-1} | x_t, x_0)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # beta~ at t = 0 is 0; clip its log to the next value, as DDPM does.
        pv1 = self.posterior_variance[1] if T > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(np.append(pv1, self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        # Fixed-large variance: beta_t, with beta~_1 at t = 0 (DDPM's choice for a good decoder).
        self.fixed_large_variance = np.append(pv1, betas[1:])
        # Analytic variance from the model's x_0 error at each kept timestep ([T] or [T, C]).
        self.analytic_variance = None
        if xstart_mse is not None:
            mse = np.asarray(xstart_mse, dtype=np.float64)
            if mse.shape[0] != T or mse.ndim not in (1, 2):
                raise ValueError(f"x_0 error table must have {T} rows, got shape {mse.shape}")
            coef1 = self.posterior_mean_coef1.reshape(-1, *([1] * (mse.ndim - 1)))
            pv = self.posterior_variance.reshape(coef1.shape)
            self.analytic_variance = analytic_variance(pv, coef1, mse)
        # The linear x_0 estimate (x_t, alpha-bar) -> x_0 at original timesteps >= linear_from.
        if linear_xstart is not None and (self.analytic_variance is None or linear_from is None):
            raise ValueError("a linear x_0 estimate needs an x_0 error table and its first timestep")
        self.linear_xstart = linear_xstart
        self.linear_from = linear_from

    # -- model time --------------------------------------------------------------------------
    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """The network's time input: the original timestep scaled to [0, 1000)."""
        scaled = self.timestep_map.astype(np.float64) * (1000.0 / self.original_num_timesteps)
        return torch.as_tensor(scaled, dtype=torch.float32, device=t.device)[t]

    # -- q -----------------------------------------------------------------------------------
    def q_mean_variance(self, x_start, t):
        mean = _extract(self.sqrt_alphas_cumprod, t, x_start) * x_start
        variance = _extract(1.0 - self.alphas_cumprod, t, x_start)
        log_variance = _extract(self.log_one_minus_alphas_cumprod, t, x_start)
        return mean, variance, log_variance

    def q_sample(self, x_start, t, noise=None):
        """A sample of q(x_t | x_0)."""
        if noise is None:
            noise = torch.randn_like(x_start)
        return (
            _extract(self.sqrt_alphas_cumprod, t, x_start) * x_start
            + _extract(self.sqrt_one_minus_alphas_cumprod, t, x_start) * noise
        )

    def q_posterior_mean_variance(self, x_start, x_t, t):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = (
            _extract(self.posterior_mean_coef1, t, x_t) * x_start
            + _extract(self.posterior_mean_coef2, t, x_t) * x_t
        )
        variance = _extract(self.posterior_variance, t, x_t)
        log_variance = _extract(self.posterior_log_variance_clipped, t, x_t)
        return mean, variance, log_variance

    def predict_xstart_from_eps(self, x_t, t, eps):
        return (
            _extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - _extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
        )

    def predict_eps_from_xstart(self, x_t, t, pred_xstart):
        return (
            _extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - pred_xstart
        ) / _extract(self.sqrt_recipm1_alphas_cumprod, t, x_t)

    # -- p_theta -----------------------------------------------------------------------------
    def model_variance(self, t, like, model_v=None):
        """(variance, log_variance) of p_theta(x_{t-1} | x_t), broadcast like ``like``: the
        analytic one when the diffusion has an x_0 error table, else the model's."""
        if self.analytic_variance is not None:
            var = torch.as_tensor(self.analytic_variance, dtype=like.dtype, device=like.device)[t]
            if var.dim() == 1:  # [N] -> [N, 1, 1, 1]
                var = var.reshape(-1, *([1] * (like.dim() - 1)))
            else:  # [N, C] -> [N, C, 1, 1]
                var = var.reshape(*var.shape, *([1] * (like.dim() - 2)))
            return var.expand_as(like), torch.log(var).expand_as(like)  # views: no image-sized copies
        if self.model_var_type == "learned_range":
            if model_v is None:
                raise ValueError("learned_range needs the network's v output")
            min_log = _extract(self.posterior_log_variance_clipped, t, like)
            max_log = _extract(np.log(self.betas), t, like)
            frac = (model_v.to(like.dtype) + 1) / 2
            log_variance = frac * max_log + (1 - frac) * min_log
            return torch.exp(log_variance), log_variance
        table = self.posterior_variance if self.model_var_type == "fixed_small" else self.fixed_large_variance
        log_table = (
            self.posterior_log_variance_clipped if self.model_var_type == "fixed_small" else np.log(table)
        )
        variance = _extract(table, t, like).expand_as(like)
        return variance, _extract(log_table, t, like).expand_as(like)

    def uses_linear(self, t: torch.Tensor) -> bool:
        """Whether p_theta at (respaced) timesteps ``t`` (all the same) takes x_0 from the linear
        estimate rather than the network."""
        if self.linear_xstart is None:
            return False
        first = int(t.reshape(-1)[0])
        assert bool((t == first).all()), "a linear step needs one timestep for the whole batch"
        return int(self.timestep_map[first]) >= self.linear_from

    def split_model_output(self, out: torch.Tensor, channels: int):
        if self.analytic_variance is not None:  # any v output is not used
            return out[:, :channels], None
        if self.model_var_type == "learned_range":
            if out.shape[1] != 2 * channels:
                raise ValueError(f"learned variance needs {2 * channels} output channels, got {out.shape[1]}")
            return out[:, :channels], out[:, channels:]
        if out.shape[1] != channels:
            raise ValueError(f"expected {channels} output channels, got {out.shape[1]}")
        return out, None

    def p_mean_variance(self, model, x, t, clip_denoised: bool = True, model_output=None) -> dict:
        """p_theta(x_{t-1} | x_t) as a distribution.

        Returns ``mean``, ``variance``, ``log_variance`` (all shaped like x), ``pred_xstart``
        (the model's estimate of x_0, clipped to [-1, 1] if ``clip_denoised``) and ``eps``.
        """
        if model_output is None and self.uses_linear(t):  # no network call
            pred_xstart = self.linear_xstart(x, float(self.alphas_cumprod[int(t.reshape(-1)[0])])).to(x.dtype)
            eps = self.predict_eps_from_xstart(x, t, pred_xstart)
            variance, log_variance = self.model_variance(t, x, None)
        else:
            if model_output is None:
                model_output = model(x, self.model_time(t))
            eps, v = self.split_model_output(model_output, x.shape[1])
            eps = eps.to(x.dtype)
            variance, log_variance = self.model_variance(t, x, v)
            pred_xstart = self.predict_xstart_from_eps(x, t, eps)
            if clip_denoised:
                pred_xstart = pred_xstart.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {"mean": mean, "variance": variance, "log_variance": log_variance,
                "pred_xstart": pred_xstart, "eps": eps}

    def p_sample(self, model, x, t, clip_denoised=True, generator=None) -> dict:
        """One step of Algorithm 2: a sample of p_theta(x_{t-1} | x_t) (the mean at t = 0)."""
        out = self.p_mean_variance(model, x, t, clip_denoised)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        nonzero = (t != 0).to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        out["sample"] = out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise
        return out

    def ddim_step(self, out: dict, x, t):
        """The deterministic (eta = 0) DDIM step x_t -> x_{t-1} from a p_mean_variance output:
        the probability-flow decode of Song et al. (2021)."""
        prev = _extract(self.alphas_cumprod_prev, t, x)
        eps = self.predict_eps_from_xstart(x, t, out["pred_xstart"])
        return out["pred_xstart"] * torch.sqrt(prev) + torch.sqrt(1 - prev) * eps

    @torch.no_grad()
    def p_sample_loop_progressive(self, model, shape, device="cpu", generator=None,
                                  clip_denoised=True) -> Iterator[dict]:
        """Algorithm 2, yielding every step's output (``sample`` and ``pred_xstart``)."""
        x = torch.randn(shape, generator=generator, device=device)
        for i in reversed(range(self.num_timesteps)):
            t = torch.full((shape[0],), i, device=device, dtype=torch.long)
            out = self.p_sample(model, x, t, clip_denoised, generator)
            out["t"] = i
            yield out
            x = out["sample"]

    # -- the bound ---------------------------------------------------------------------------
    def prior_bpd(self, x_start) -> torch.Tensor:
        """L_T = KL(q(x_T | x_0) || N(0, I)) per image, in bits/dim."""
        t = torch.full((x_start.shape[0],), self.num_timesteps - 1, device=x_start.device, dtype=torch.long)
        mean, _, log_var = self.q_mean_variance(x_start, t)
        return mean_flat(normal_kl(mean, log_var, torch.zeros_like(mean), 0.0)) / math.log(2.0)

    def vb_terms_bpd(self, model, x_start, x_t, t, clip_denoised=True, model_output=None) -> dict:
        """L_{t-1} (t > 0, Gaussian KL) or L_0 (t = 0, discretized decoder NLL) in bits/dim."""
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(model, x_t, t, clip_denoised, model_output)
        kl = mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x_start, out["mean"], 0.5 * out["log_variance"])
        nll = mean_flat(nll) / math.log(2.0)
        return {"output": torch.where(t == 0, nll, kl), "pred_xstart": out["pred_xstart"]}

    def training_losses(self, model, x_start, t, loss_type: str = "hybrid", noise=None, teacher=None) -> dict:
        """Per-image losses: ``simple`` (eps MSE), ``hybrid`` (MSE + lambda * L_vlb with
        lambda = 0.001 and a stop-gradient on the mean) or ``vlb`` (the bound itself).

        With a ``teacher`` network (distillation) the MSE's target is the teacher's eps
        prediction at the same x_t instead of the noise drawn: the regression target of the
        mean without the noise's unpredictable part (E[eps | x_t] as well as the teacher knows it),
        a far less noisy gradient.  ``mse`` stays the error against the true noise; the MSE the
        loss uses is ``distill``.  The learned variance keeps its L_vlb term (the true posterior)."""
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown loss type {loss_type!r}")
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise)
        out = model(x_t, self.model_time(t))
        eps, v = self.split_model_output(out, x_start.shape[1])
        terms = {"mse": mean_flat((noise - eps.float()) ** 2)}
        if teacher is not None:
            with torch.no_grad():
                target = self.split_model_output(teacher(x_t, self.model_time(t)), x_start.shape[1])[0].float()
            assert target.shape == eps.shape, (target.shape, eps.shape)
            terms["distill"] = mean_flat((target - eps.float()) ** 2)
        fit = terms.get("distill", terms["mse"])
        if loss_type == "simple" and self.model_var_type != "learned_range":
            terms["loss"] = fit
            return terms
        # L_vlb term. For hybrid the mean gets its gradient from the MSE only (stop-gradient).
        frozen = eps.detach() if loss_type == "hybrid" else eps
        model_output = frozen if v is None else torch.cat([frozen, v], dim=1)
        vb = self.vb_terms_bpd(None, x_start, x_t, t, clip_denoised=False,
                               model_output=model_output.float())["output"]
        terms["vb"] = vb
        if loss_type == "vlb":
            terms["loss"] = vb * self.num_timesteps
        elif loss_type == "hybrid":
            # lambda * L_vlb = 0.001 * T * L_t  (Improved DDPM Sec. 3.1)
            terms["loss"] = fit + vb * (self.num_timesteps / 1000.0)
        else:  # simple with a learned variance: the variance is not trained by L_simple
            terms["loss"] = fit
        return terms

    @torch.no_grad()
    def calc_bpd_loop(self, model, x_start, clip_denoised=True, generator=None, progress=None) -> dict:
        """The full variational bound per image, term by term, in bits/dim.

        Returns ``total_bpd`` [N], ``prior_bpd`` [N] (L_T), ``vb`` [N, T] (column t is L_t,
        column 0 the decoder term L_0), ``xstart_mse`` [N, T] and ``mse`` [N, T] (eps MSE).
        """
        n, T = x_start.shape[0], self.num_timesteps
        vb, xstart_mse, mse = (torch.zeros(n, T, dtype=torch.float64) for _ in range(3))
        steps = range(T - 1, -1, -1)
        for i in (progress(steps) if progress else steps):
            t = torch.full((n,), i, device=x_start.device, dtype=torch.long)
            noise = torch.randn(x_start.shape, generator=generator, device=x_start.device, dtype=x_start.dtype)
            x_t = self.q_sample(x_start, t, noise)
            out = self.vb_terms_bpd(model, x_start, x_t, t, clip_denoised)
            vb[:, i] = out["output"].double().cpu()
            xstart_mse[:, i] = mean_flat((out["pred_xstart"] - x_start) ** 2).double().cpu()
            eps = self.predict_eps_from_xstart(x_t, t, out["pred_xstart"])
            mse[:, i] = mean_flat((eps - noise) ** 2).double().cpu()
        prior = self.prior_bpd(x_start).double().cpu()
        return {"total_bpd": vb.sum(1) + prior, "prior_bpd": prior, "vb": vb,
                "xstart_mse": xstart_mse, "mse": mse}
