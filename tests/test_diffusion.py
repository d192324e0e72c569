"""Gaussian diffusion math (diffcodec.diffusion) against independent float64 computations.

Every reference value here is computed from the papers' formulas (numpy / scipy / mpmath),
not by calling back into the code under test.
"""

from __future__ import annotations

import itertools
import math

import mpmath
import numpy as np
import pytest
import torch
from scipy import special, stats

from diffcodec.data import to_tensor
from diffcodec.diffusion import (
    DiffusionConfig,
    GaussianDiffusion,
    discretized_gaussian_log_likelihood,
    discretized_gaussian_pmf,
    get_named_beta_schedule,
    normal_kl,
    respace_betas,
    space_timesteps,
)
from diffcodec.unet import UNet, named_config
from codec_fixtures import randomize_

LN2 = math.log(2.0)
HALF = 1.0 / 255.0


# ----------------------------------------------------------------------------- references


def cos_f(u):
    """Improved DDPM's f(t) = cos^2(((t/T + s) / (1 + s)) * pi / 2), s = 0.008."""
    return np.cos((np.asarray(u, dtype=np.float64) + 0.008) / 1.008 * np.pi / 2) ** 2


def ref_cosine_betas(T: int) -> np.ndarray:
    i = np.arange(T, dtype=np.float64)
    return np.minimum(1.0 - cos_f((i + 1) / T) / cos_f(i / T), 0.999)


def ref_alphas_cumprod(betas: np.ndarray) -> np.ndarray:
    out, prod = [], 1.0
    for b in betas:  # a plain running product, not np.cumprod
        prod *= 1.0 - float(b)
        out.append(prod)
    return np.array(out)


def ref_posterior(betas: np.ndarray, t: int, x0: np.ndarray, xt: np.ndarray):
    """q(x_{t-1} | x_t, x_0) as a product of two Gaussians in x_{t-1} (0-based index t >= 1).

    Likelihood q(x_t | x_{t-1}) = N(x_t; sqrt(a_t) x_{t-1}, b_t), i.e. in x_{t-1} a Gaussian with
    mean x_t / sqrt(a_t) and variance b_t / a_t; prior q(x_{t-1} | x_0) = N(sqrt(ab_{t-1}) x_0,
    1 - ab_{t-1}).  Precisions add; the mean is the precision-weighted mean.
    """
    ab = ref_alphas_cumprod(betas)
    a_t = 1.0 - betas[t]
    lik_mean, lik_var = xt / math.sqrt(a_t), betas[t] / a_t
    pri_mean, pri_var = math.sqrt(ab[t - 1]) * x0, 1.0 - ab[t - 1]
    var = 1.0 / (1.0 / lik_var + 1.0 / pri_var)
    mean = var * (lik_mean / lik_var + pri_mean / pri_var)
    return mean, var


def mp_log_bin_prob(x: float, mu: float, log_scale: float) -> float:
    """log P(bin of level x) under N(mu, e^(2 log_scale)), edge bins open, with mpmath."""
    mpmath.mp.dps = 50
    s = mpmath.e ** mpmath.mpf(log_scale)
    x, mu, h = mpmath.mpf(x), mpmath.mpf(mu), mpmath.mpf(1) / 255
    lo = -mpmath.inf if x < -0.999 else (x - mu - h) / s
    hi = mpmath.inf if x > 0.999 else (x - mu + h) / s
    # The upper tail by symmetry (mpmath's 1 - 1 would cancel just like floats).
    p = mpmath.ncdf(-lo) - mpmath.ncdf(-hi) if lo > 0 else mpmath.ncdf(hi) - mpmath.ncdf(lo)
    return float(mpmath.log(p))


def scipy_log_bin_prob(x: float, mu: float, log_scale: float) -> float:
    s = math.exp(log_scale)
    lo = -math.inf if x < -0.999 else (x - mu - HALF) / s
    hi = math.inf if x > 0.999 else (x - mu + HALF) / s
    if lo > 0:
        p = stats.norm.sf(lo) - stats.norm.sf(hi)
    else:
        p = stats.norm.cdf(hi) - stats.norm.cdf(lo)
    return math.log(p) if p > 1e-300 else -math.inf  # beyond float: see the mpmath test


def dgll(x: float, mu: float, ls: float) -> float:
    t = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    return float(discretized_gaussian_log_likelihood(t(x), t(mu), t(ls)))


def level(k: int) -> float:
    return k / 127.5 - 1.0


class Oracle:
    """An eps-"network" that knows x_0: it returns the true eps = (x_t - sqrt(ab) x_0) / sqrt(1 - ab).

    It is called like the real network, with the *model time* (original timestep scaled to
    [0, 1000)), so it also checks the timestep map of respaced chains.
    """

    def __init__(self, diffusion: GaussianDiffusion, x0: torch.Tensor, v: float | None = None):
        self.d, self.x0, self.v = diffusion, x0, v
        self.seen: list[int] = []

    def __call__(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        orig = torch.round(s.double() * self.d.original_num_timesteps / 1000.0).long()
        tmap = torch.as_tensor(self.d.timestep_map, dtype=torch.long)
        idx = torch.searchsorted(tmap, orig)
        assert torch.equal(tmap[idx], orig), "model time is not a kept timestep"
        self.seen.extend(idx.tolist())
        ab = torch.as_tensor(self.d.alphas_cumprod, dtype=torch.float64)[idx].view(-1, 1, 1, 1)
        eps = (x - ab.sqrt() * self.x0) / (1 - ab).sqrt()
        if self.v is None:
            return eps
        return torch.cat([eps, torch.full_like(eps, self.v)], dim=1)


@pytest.fixture(scope="module")
def x0_levels(tiny_images) -> torch.Tensor:
    """Two 8x8 crops of real images at the 256 levels, float64, with edge levels present."""
    x = torch.stack([to_tensor(tiny_images[0][10:18, 12:20]), to_tensor(tiny_images[1][4:12, 3:11])]).double()
    x[0, 0, 0, :3] = -1.0
    x[1, 2, 5, 4:6] = 1.0
    return x




# ----------------------------------------------------------------------------- schedules


def test_linear_schedule_endpoints():
    b = get_named_beta_schedule("linear", 1000)
    assert b.dtype == np.float64 and b.shape == (1000,)
    assert b[0] == pytest.approx(1e-4, rel=1e-12)
    assert b[-1] == pytest.approx(0.02, rel=1e-12)
    assert np.all(np.diff(b) > 0)
    # Other T: end points scaled by 1000 / T, so the total noise (sum of betas) is the same.
    b4 = get_named_beta_schedule("linear", 4000)
    assert b4[0] == pytest.approx(2.5e-5, rel=1e-12) and b4[-1] == pytest.approx(0.005, rel=1e-12)
    assert b4.sum() == pytest.approx(b.sum(), rel=1e-12)


@pytest.mark.parametrize("T", [1000, 4000, 10])
def test_cosine_schedule(T):
    b = get_named_beta_schedule("cosine", T)
    assert b.shape == (T,) and b.dtype == np.float64
    assert np.all(b > 0) and np.all(b <= 0.999)
    assert b[-1] == 0.999  # f(1) = cos^2(pi/2) ~ 0: the last beta is the clipped one
    d = DiffusionConfig("cosine", T, "fixed_small").build()
    ab = d.alphas_cumprod
    assert np.all(np.diff(ab) < 0) and ab[0] < 1 and ab[-1] > 0
    # alpha-bar at index t is f((t+1)/T) / f(0) wherever beta was not clipped.
    for t in sorted({0, 1, T // 4, T // 2, (3 * T) // 4, T - 2}):
        assert ab[t] == pytest.approx(cos_f((t + 1) / T) / cos_f(0.0), rel=1e-10), t
    np.testing.assert_allclose(b, ref_cosine_betas(T), rtol=1e-12, atol=0)
    np.testing.assert_allclose(ab, ref_alphas_cumprod(b), rtol=1e-12, atol=0)


def test_invalid_schedules_are_refused():
    with pytest.raises(ValueError):
        get_named_beta_schedule("quadratic", 100)
    with pytest.raises(ValueError):
        get_named_beta_schedule("cosine", 0)
    with pytest.raises(ValueError):
        DiffusionConfig("cosine", 100, "learned")
    # The scaled linear schedule reaches beta >= 1 for T <= 20: alpha-bar would hit 0 and every
    # x_0-prediction divide by sqrt(0).  It must be refused, not produce a NaN bound.
    for T in (10, 20):
        with pytest.raises(ValueError):
            DiffusionConfig("linear", T, "fixed_small").build()
    d = DiffusionConfig("linear", 25, "fixed_small").build()
    assert np.isfinite(d.sqrt_recip_alphas_cumprod).all()


# ----------------------------------------------------------------------------- respacing


@pytest.mark.parametrize("T,K", [(1000, 1), (1000, 2), (1000, 10), (1000, 50), (1000, 999), (1000, 1000),
                                 (4000, 250), (20, 7), (10, 10)])
def test_space_timesteps(T, K):
    use = space_timesteps(T, K)
    assert len(use) == K and len(set(use.tolist())) == K
    assert np.all(np.diff(use) > 0) and use.min() >= 0 and use.max() == T - 1
    if K >= 2:
        assert use[0] == 0
    # evenly spaced: gaps differ by at most one
    if K >= 3:
        gaps = np.diff(use)
        assert gaps.max() - gaps.min() <= 1
    with pytest.raises(ValueError):
        space_timesteps(T, T + 1)
    with pytest.raises(ValueError):
        space_timesteps(T, 0)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize("K", [1, 2, 10, 37, 1000])
def test_respacing_preserves_alpha_bar(schedule, K):
    T = 1000
    cfg = DiffusionConfig(schedule, T, "learned_range")
    full = cfg.build()
    d = cfg.build(steps=K)
    use = np.round(np.linspace(0, T - 1, K)).astype(int) if K > 1 else np.array([T - 1])
    assert d.num_timesteps == K and len(d.betas) == K
    np.testing.assert_array_equal(d.timestep_map, use)
    assert d.original_num_timesteps == T
    # q(x_t | x_0) is unchanged at the kept steps (alpha-bar ~ 2e-9 at T-1 is carried through a
    # beta = 1 - 2e-9, so only an absolute ~1e-16 survives there)
    np.testing.assert_allclose(d.alphas_cumprod, full.alphas_cumprod[use], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(d.alphas_cumprod[:-1], full.alphas_cumprod[use][:-1], rtol=1e-12, atol=0)
    assert np.all((d.betas > 0) & (d.betas < 1))
    # the network sees the original timestep, scaled to [0, 1000)
    t = torch.arange(K)
    np.testing.assert_allclose(d.model_time(t).numpy(), use * (1000.0 / T), rtol=1e-6)


def test_respacing_explicit_steps_and_model_time():
    cfg = DiffusionConfig("cosine", 4000, "fixed_small")
    d = cfg.build(steps=[3999, 0, 17, 17, 2000])
    np.testing.assert_array_equal(d.timestep_map, [0, 17, 2000, 3999])
    full = cfg.build()
    np.testing.assert_allclose(d.alphas_cumprod, full.alphas_cumprod[[0, 17, 2000, 3999]], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(d.model_time(torch.arange(4)).numpy(), [0.0, 4.25, 500.0, 999.75], rtol=1e-6)
    # respace_betas directly: betas recomputed from alpha-bar
    b = get_named_beta_schedule("cosine", 100)
    rb = respace_betas(b, [0, 50, 99])
    ab = ref_alphas_cumprod(b)
    np.testing.assert_allclose(rb, [1 - ab[0], 1 - ab[50] / ab[0], 1 - ab[99] / ab[50]], rtol=1e-12)
    with pytest.raises(ValueError):
        respace_betas(b, [100])


# ----------------------------------------------------------------------------- q and posterior


@pytest.mark.parametrize("steps", [None, 9])
def test_posterior_matches_product_of_gaussians(steps):
    cfg = DiffusionConfig("cosine", 50, "fixed_small")
    d = cfg.build(steps)
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, size=(1, 3, 4, 5))
    xt = rng.normal(size=(1, 3, 4, 5))
    T = d.num_timesteps
    for t in sorted({1, 2, T // 2, T - 1}):
        mean, var, log_var = d.q_posterior_mean_variance(
            torch.from_numpy(x0), torch.from_numpy(xt), torch.tensor([t]))
        ref_mean, ref_var = ref_posterior(d.betas, t, x0, xt)
        assert mean.dtype == torch.float64
        np.testing.assert_allclose(mean.numpy(), ref_mean, rtol=1e-11, atol=1e-12)
        assert float(var.flatten()[0]) == pytest.approx(ref_var, rel=1e-11)
        assert float(log_var.flatten()[0]) == pytest.approx(math.log(ref_var), rel=1e-11)
    # t = 0: q(x_{-1} | x_0, x_t) is the point mass at x_0; the log variance is clipped to beta~_1.
    mean, var, log_var = d.q_posterior_mean_variance(torch.from_numpy(x0), torch.from_numpy(xt), torch.tensor([0]))
    np.testing.assert_allclose(mean.numpy(), x0, rtol=1e-12, atol=1e-13)
    assert float(var.flatten()[0]) == 0.0
    assert float(log_var.flatten()[0]) == pytest.approx(math.log(ref_posterior(d.betas, 1, x0, xt)[1]), rel=1e-11)


def test_posterior_batch_of_timesteps_broadcasts_per_image():
    d = DiffusionConfig("cosine", 30, "fixed_small").build()
    rng = np.random.default_rng(1)
    x0 = rng.uniform(-1, 1, size=(3, 2, 3, 3))
    xt = rng.normal(size=(3, 2, 3, 3))
    ts = [29, 4, 11]
    mean, _, _ = d.q_posterior_mean_variance(torch.from_numpy(x0), torch.from_numpy(xt), torch.tensor(ts))
    for i, t in enumerate(ts):
        ref_mean, _ = ref_posterior(d.betas, t, x0[i], xt[i])
        np.testing.assert_allclose(mean[i].numpy(), ref_mean, rtol=1e-11, atol=1e-12)


def test_q_sample_statistics():
    d = DiffusionConfig("cosine", 50, "fixed_small").build()
    n = 100_000
    x0 = torch.tensor([0.9, -0.5, 0.0, -1.0], dtype=torch.float64).view(4, 1, 1, 1).expand(4, 1, 1, n)
    t = torch.tensor([0, 10, 30, 49])
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        xt = d.q_sample(x0, t)
    mean, var, log_var = d.q_mean_variance(x0, t)
    ab = ref_alphas_cumprod(ref_cosine_betas(50))[t.numpy()]
    np.testing.assert_allclose(mean[:, 0, 0, 0].numpy(), np.sqrt(ab) * x0[:, 0, 0, 0].numpy(), rtol=1e-12)
    np.testing.assert_allclose(var.flatten().numpy(), 1 - ab, rtol=1e-12)
    np.testing.assert_allclose(log_var.flatten().numpy(), np.log(1 - ab), rtol=1e-12)
    for i in range(4):
        sample = xt[i].flatten()
        v = float(var.flatten()[i])
        se = math.sqrt(v / n)
        assert abs(float(sample.mean()) - float(mean[i, 0, 0, 0])) < 5 * se, i
        assert float(sample.var()) == pytest.approx(v, rel=5 * math.sqrt(2 / n)), i
    # with explicit noise it is exactly sqrt(ab) x0 + sqrt(1 - ab) noise
    noise = torch.randn(4, 1, 1, 8, dtype=torch.float64)
    x0s = x0[..., :8]
    ref = torch.from_numpy(np.sqrt(ab)).view(4, 1, 1, 1) * x0s + torch.from_numpy(np.sqrt(1 - ab)).view(4, 1, 1, 1) * noise
    torch.testing.assert_close(d.q_sample(x0s, t, noise), ref, rtol=1e-13, atol=1e-14)


def test_predict_xstart_and_eps_round_trip():
    d = DiffusionConfig("cosine", 100, "fixed_small").build()
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(5, 3, 6, 7, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(5, 3, 6, 7, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 50, 98, 99])
    xt = d.q_sample(x0, t, eps)
    torch.testing.assert_close(d.predict_xstart_from_eps(xt, t, eps), x0, rtol=0, atol=1e-9)
    torch.testing.assert_close(d.predict_eps_from_xstart(xt, t, x0), eps, rtol=0, atol=1e-9)
    # a wrong eps gives a wrong x_0 (the test can fail)
    assert (d.predict_xstart_from_eps(xt, t, eps + 0.1) - x0).abs().max() > 1e-3


# ----------------------------------------------------------------------------- KL and the decoder


def test_normal_kl():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(100, generator=g, dtype=torch.float64)
    lv = torch.randn(100, generator=g, dtype=torch.float64)
    assert normal_kl(m, lv, m, lv).abs().max() < 1e-14
    for m1, s1, m2, s2 in [(0.0, 1.0, 0.0, 1.0), (0.3, 0.5, -1.2, 2.0), (1.0, 3.0, 1.0, 0.1), (-2.0, 0.01, 5.0, 1.0)]:
        ref = math.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5
        got = normal_kl(torch.tensor([m1], dtype=torch.float64), torch.tensor([2 * math.log(s1)], dtype=torch.float64),
                        torch.tensor([m2], dtype=torch.float64), 2 * math.log(s2))
        assert float(got) == pytest.approx(ref, rel=1e-12, abs=1e-15)
    # KL >= 0
    kl = normal_kl(m, lv, m.flip(0), lv.flip(0))
    assert (kl >= 0).all() and kl.max() > 0


@pytest.mark.parametrize("log_scale", [-14.0, -10.0, -6.0, -4.5, -2.0, 0.0, 2.0, 5.0, 8.0])
def test_discretized_pmf_sums_to_one(log_scale):
    means = torch.linspace(-1.2, 1.2, 61, dtype=torch.float64)
    pmf = discretized_gaussian_pmf(means, torch.full_like(means, log_scale))
    assert pmf.shape == (61, 256) and pmf.dtype == torch.float64
    assert (pmf >= 0).all() and (pmf <= 1).all()
    np.testing.assert_allclose(pmf.sum(-1).numpy(), 1.0, rtol=0, atol=1e-9)
    if log_scale <= -6:  # narrow: the mass sits on the level nearest to the mean
        nearest = torch.round((means.clamp(-1, 1) + 1) * 127.5).long()
        inside = ((means + 1) * 127.5 - (means + 1).mul(127.5).round()).abs() < 0.45  # not near a boundary
        assert torch.equal(pmf.argmax(-1)[inside], nearest[inside])


def test_discretized_pmf_shape_batches():
    means = torch.zeros(2, 3, 4, dtype=torch.float32)
    ls = torch.full((2, 3, 4), -3.0)
    pmf = discretized_gaussian_pmf(means, ls)
    assert pmf.shape == (2, 3, 4, 256) and pmf.dtype == torch.float64
    # symmetric about 0: level k and level 255 - k are mirror images around -> mean 0 between 127 and 128
    torch.testing.assert_close(pmf[..., :128], pmf[..., 128:].flip(-1), rtol=1e-12, atol=1e-15)


def test_discretized_log_likelihood_matches_scipy():
    levels = [0, 1, 2, 64, 127, 128, 200, 253, 254, 255]
    worst, compared = 0.0, 0
    for k, mu, ls in itertools.product(levels, [-1.1, -0.5, 0.0, 0.3, 1.1], [-6.0, -4.0, -2.0, 0.0, 1.0]):
        ref = scipy_log_bin_prob(level(k), mu, ls)
        got = dgll(level(k), mu, ls)
        assert math.isfinite(got) and got <= 0, (k, mu, ls)
        if math.isfinite(ref):
            compared += 1
            worst = max(worst, abs(got - ref) / max(1.0, abs(ref)))
    assert compared >= 170  # of 250; the rest underflow in scipy
    assert worst < 1e-9


def test_discretized_log_likelihood_extreme_tails_match_mpmath():
    cases = []
    for k, mu, ls in itertools.product([0, 1, 128, 254, 255], [-1.2, 0.0, 1.2], [-14.0, -8.0, -5.0, 5.0, 10.0]):
        cases.append((k, mu, ls))
    for k, mu, ls in cases:
        ref = mp_log_bin_prob(level(k), mu, ls)
        got = dgll(level(k), mu, ls)
        assert math.isfinite(got) and got <= 0, (k, mu, ls, got)
        assert abs(got - ref) <= 1e-9 * max(1.0, abs(ref)), (k, mu, ls, got, ref)
    # far beyond float probabilities (p ~ exp(-1e30)) the log-probability stays finite
    for k, mu, ls in [(0, 1.2, -30.0), (255, -1.2, -30.0), (128, 1.2, -30.0), (128, -1.2, -40.0), (3, 0.9, -25.0)]:
        got = dgll(level(k), mu, ls)
        assert math.isfinite(got) and got < -1e20, (k, mu, ls, got)
        assert got == pytest.approx(mp_log_bin_prob(level(k), mu, ls), rel=1e-9)
    # float32 in, float32 out, same value
    x = torch.tensor([level(3), level(255)], dtype=torch.float32)
    got32 = discretized_gaussian_log_likelihood(x, torch.tensor([0.9, -1.2]), torch.tensor([-6.0, -6.0]))
    assert got32.dtype == torch.float32 and torch.isfinite(got32).all()


def test_discretized_log_likelihood_edge_bins_are_open():
    # The bin of level 0 is (-inf, -1 + 1/255]: a mean far below -1 puts ~all mass there.
    assert dgll(-1.0, -5.0, -3.0) == pytest.approx(0.0, abs=1e-12)
    assert dgll(1.0, 5.0, -3.0) == pytest.approx(0.0, abs=1e-12)
    # ... while an inner level with the same mean offset would have vanishing mass
    assert dgll(level(1), -5.0, -3.0) < -1000
    # edge bins: log Phi((edge - mu) / s)
    assert dgll(-1.0, 0.2, -1.0) == pytest.approx(stats.norm.logcdf((-1 + HALF - 0.2) / math.exp(-1.0)), rel=1e-12)
    assert dgll(1.0, 0.2, -1.0) == pytest.approx(stats.norm.logsf((1 - HALF - 0.2) / math.exp(-1.0)), rel=1e-12)


# ----------------------------------------------------------------------------- p_theta with an oracle


def _closed_form_bound(alphas_cumprod: np.ndarray, x0: np.ndarray, decoder_var: float) -> tuple[np.ndarray, np.ndarray]:
    """(prior_bpd, L_0 in bpd) per image, for an exact eps oracle, from the formulas.

    L_T = KL(N(sqrt(ab_T) x0, 1 - ab_T) || N(0, 1)); L_0 = -log P(bin of x0) under N(x0, decoder_var)
    (at index 0 the posterior mean is exactly x_0), where an inner bin has probability
    erf(h / (sigma sqrt 2)) and an edge bin 1/2 (1 + erf(h / (sigma sqrt 2))).
    """
    ab = alphas_cumprod[-1]
    prior = 0.5 * (-1.0 - math.log(1 - ab) + (1 - ab) + ab * x0**2)
    e = special.erf(HALF / math.sqrt(2 * decoder_var))
    edge = (x0 < -0.999) | (x0 > 0.999)
    l0 = np.where(edge, -np.log(0.5 * (1 + e)), -np.log(e))
    axes = tuple(range(1, x0.ndim))
    return prior.mean(axes) / LN2, l0.mean(axes) / LN2


@pytest.mark.parametrize("T,steps", [(20, None), (1000, 8)])
def test_oracle_bound_fixed_small(x0_levels, T, steps):
    cfg = DiffusionConfig("cosine", T, "fixed_small")
    d = cfg.build(steps)
    oracle = Oracle(d, x0_levels)
    K = d.num_timesteps

    # p's mean is the posterior mean at every t
    g = torch.Generator().manual_seed(3)
    for t in range(K):
        tt = torch.full((2,), t)
        xt = d.q_sample(x0_levels, tt, torch.randn(x0_levels.shape, generator=g, dtype=torch.float64))
        out = d.p_mean_variance(oracle, xt, tt)
        post_mean, _, post_log_var = d.q_posterior_mean_variance(x0_levels, xt, tt)
        torch.testing.assert_close(out["mean"], post_mean, rtol=0, atol=1e-10)
        torch.testing.assert_close(out["pred_xstart"], x0_levels, rtol=0, atol=1e-10)
        torch.testing.assert_close(out["log_variance"], post_log_var.expand_as(xt), rtol=1e-12, atol=0)

    res = d.calc_bpd_loop(oracle, x0_levels, generator=torch.Generator().manual_seed(0))
    assert sorted(set(oracle.seen)) == list(range(K))
    assert res["vb"].shape == (2, K) and res["total_bpd"].shape == (2,)
    assert res["vb"][:, 1:].abs().max() < 1e-9  # L_{t-1} = KL(q || p) = 0 for t > 0
    assert res["xstart_mse"].max() < 1e-18 and res["mse"].max() < 1e-12

    # the closed form, from an independently computed schedule
    ab_full = ref_alphas_cumprod(ref_cosine_betas(T))
    use = np.arange(T) if steps is None else np.round(np.linspace(0, T - 1, steps)).astype(int)
    ab = ab_full[use]
    beta1 = 1 - ab[1] / ab[0]
    decoder_var = beta1 * (1 - ab[0]) / (1 - ab[1])  # beta~ at index 1 (DDPM's clipped log variance)
    prior, l0 = _closed_form_bound(ab, x0_levels.numpy(), decoder_var)
    np.testing.assert_allclose(res["prior_bpd"].numpy(), prior, rtol=1e-10, atol=1e-14)  # L_T ~ 1e-9 here
    np.testing.assert_allclose(res["vb"][:, 0].numpy(), l0, rtol=1e-9)
    np.testing.assert_allclose(res["total_bpd"].numpy(), prior + l0, rtol=1e-9)
    assert (l0 > 0.5).all()  # a non-trivial decoder term


def test_oracle_learned_range_and_fixed_large(x0_levels):
    T = 20
    cfg_small = DiffusionConfig("cosine", T, "fixed_small")
    base = cfg_small.build().calc_bpd_loop(Oracle(cfg_small.build(), x0_levels), x0_levels,
                                           generator=torch.Generator().manual_seed(0))
    learned = DiffusionConfig("cosine", T, "learned_range").build()

    # v = -1: the variance is beta~ (the clipped posterior variance): the same bound as fixed_small
    res_lo = learned.calc_bpd_loop(Oracle(learned, x0_levels, v=-1.0), x0_levels,
                                   generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(res_lo["total_bpd"], base["total_bpd"], rtol=1e-12, atol=0)

    # v = +1: the variance is beta_t; with an exact mean L_{t-1} = KL(N(m, b~) || N(m, b)).
    res_hi = learned.calc_bpd_loop(Oracle(learned, x0_levels, v=1.0), x0_levels,
                                   generator=torch.Generator().manual_seed(0))
    betas = ref_cosine_betas(T)
    ab = ref_alphas_cumprod(betas)
    bt = betas[1:] * (1 - ab[:-1]) / (1 - ab[1:])
    kl = 0.5 * (-1 + np.log(betas[1:] / bt) + bt / betas[1:]) / LN2
    np.testing.assert_allclose(res_hi["vb"][:, 1:].numpy(), np.broadcast_to(kl, (2, T - 1)), rtol=1e-9)
    _, l0 = _closed_form_bound(ab, x0_levels.numpy(), betas[0])  # decoder variance beta_0
    np.testing.assert_allclose(res_hi["vb"][:, 0].numpy(), l0, rtol=1e-9)

    # fixed_large: beta_t for t >= 1 (so the same KL terms), beta~_1 at t = 0 (so fixed_small's L_0)
    large = DiffusionConfig("cosine", T, "fixed_large").build()
    res_large = large.calc_bpd_loop(Oracle(large, x0_levels), x0_levels, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(res_large["vb"][:, 1:], res_hi["vb"][:, 1:], rtol=1e-10, atol=0)
    torch.testing.assert_close(res_large["vb"][:, 0], base["vb"][:, 0], rtol=1e-10, atol=0)


def test_learned_range_variance_interpolates_logs():
    d = DiffusionConfig("cosine", 50, "learned_range").build()
    like = torch.zeros(3, 3, 2, 2, dtype=torch.float64)
    t = torch.tensor([1, 25, 49])
    log_beta = torch.from_numpy(np.log(d.betas[t.numpy()])).view(3, 1, 1, 1)
    betas = ref_cosine_betas(50)
    ab = ref_alphas_cumprod(betas)
    bt = betas * np.append(np.nan, 1 - ab[:-1]) / (1 - ab)
    log_bt = torch.from_numpy(np.log(bt[t.numpy()])).view(3, 1, 1, 1)
    var, log_var = d.model_variance(t, like, torch.ones_like(like))
    torch.testing.assert_close(log_var, log_beta.expand_as(like), rtol=1e-12, atol=0)
    torch.testing.assert_close(var, log_beta.exp().expand_as(like), rtol=1e-12, atol=0)
    _, log_var = d.model_variance(t, like, -torch.ones_like(like))
    torch.testing.assert_close(log_var, log_bt.expand_as(like), rtol=1e-12, atol=0)
    v = torch.rand(like.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    _, log_var = d.model_variance(t, like, v)
    frac = (v + 1) / 2
    torch.testing.assert_close(log_var, frac * log_beta + (1 - frac) * log_bt, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError):
        d.model_variance(t, like)


# ----------------------------------------------------------------------------- p_theta with a network


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    return {
        "learned_range": randomize_(UNet(named_config("tiny", learn_sigma=True)).eval(), 1),
        "fixed_small": randomize_(UNet(named_config("tiny", learn_sigma=False)).eval(), 2),
    }


@pytest.mark.parametrize("var_type", ["learned_range", "fixed_small", "fixed_large"])
def test_p_mean_variance_keys_and_shapes(nets, var_type):
    d = DiffusionConfig("cosine", 100, var_type).build(10)
    net = nets["learned_range" if var_type == "learned_range" else "fixed_small"]
    x = torch.randn(2, 3, 9, 11)
    t = torch.tensor([0, 9])
    with torch.no_grad():
        out = d.p_mean_variance(net, x, t)
    assert set(out) == {"mean", "variance", "log_variance", "pred_xstart", "eps"}
    for k, v in out.items():
        assert v.shape == x.shape, k
        assert torch.isfinite(v).all(), k
    assert out["pred_xstart"].abs().max() <= 1.0  # clip_denoised
    torch.testing.assert_close(out["variance"].log()[1], out["log_variance"][1], rtol=1e-5, atol=1e-6)
    # wrong channel count is refused
    other = nets["fixed_small" if var_type == "learned_range" else "learned_range"]
    with pytest.raises(ValueError):
        with torch.no_grad():
            d.p_mean_variance(other, x, t)


@pytest.mark.parametrize("loss_type", ["simple", "hybrid", "vlb"])
@pytest.mark.parametrize("var_type", ["learned_range", "fixed_small"])
def test_training_losses_finite(nets, loss_type, var_type):
    d = DiffusionConfig("cosine", 200, var_type).build()
    net = nets[var_type]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 12, 10, generator=g) * 2 - 1
    t = torch.tensor([0, 1, 100, 199])
    noise = torch.randn(x.shape, generator=g)
    terms = d.training_losses(net, x, t, loss_type, noise=noise)
    assert terms["loss"].shape == (4,) and torch.isfinite(terms["loss"]).all()
    assert terms["mse"].shape == (4,) and torch.isfinite(terms["mse"]).all()
    eps = net(d.q_sample(x, t, noise), d.model_time(t))[:, :3]
    torch.testing.assert_close(terms["mse"], ((noise - eps) ** 2).mean((1, 2, 3)), rtol=1e-5, atol=1e-6)
    if loss_type == "simple":
        torch.testing.assert_close(terms["loss"], terms["mse"])
    else:
        assert torch.isfinite(terms["vb"]).all() and (terms["vb"] >= 0).all()
        if loss_type == "vlb":
            torch.testing.assert_close(terms["loss"], terms["vb"] * 200)
        else:
            torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"] * 0.2)
    with pytest.raises(ValueError):
        d.training_losses(net, x, t, "l1", noise=noise)


def test_hybrid_vb_term_sends_no_gradient_to_eps():
    d = DiffusionConfig("cosine", 100, "learned_range").build()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 6, 6, generator=g) * 2 - 1
    t = torch.tensor([0, 7, 60])
    noise = torch.randn(x.shape, generator=g)
    raw = torch.randn(3, 6, 6, 6, generator=g) * 0.5

    def grads(loss_type, key):
        out = raw.clone().requires_grad_(True)
        terms = d.training_losses(lambda xt, s: out, x, t, loss_type, noise=noise)
        terms[key].sum().backward()
        return out.grad

    g_vb = grads("hybrid", "vb")
    assert g_vb[:, :3].abs().max() == 0  # stop-gradient on the mean
    assert g_vb[:, 3:].abs().max() > 0  # the variance is trained by L_vlb
    g_loss = grads("hybrid", "loss")
    n = x[0].numel()
    torch.testing.assert_close(g_loss[:, :3], -2 * (noise - raw[:, :3]) / n, rtol=1e-5, atol=1e-8)
    # the plain vlb does train the mean through the bound (so the check above can fail)
    assert grads("vlb", "vb")[:, :3].abs().max() > 0
    # L_simple with a learned variance leaves v untrained
    assert grads("simple", "loss")[:, 3:].abs().max() == 0


def test_p_sample_loop_progressive(nets):
    d = DiffusionConfig("cosine", 1000, "learned_range").build(6)
    shape = (2, 3, 10, 13)
    outs = list(d.p_sample_loop_progressive(nets["learned_range"], shape, generator=torch.Generator().manual_seed(0)))
    assert [o["t"] for o in outs] == [5, 4, 3, 2, 1, 0]
    for o in outs:
        assert o["sample"].shape == shape and torch.isfinite(o["sample"]).all()
        assert o["pred_xstart"].shape == shape and o["pred_xstart"].abs().max() <= 1
    # the last step (t = 0) returns the mean, without noise
    assert torch.equal(outs[-1]["sample"], outs[-1]["mean"])
    assert not torch.equal(outs[-2]["sample"], outs[-2]["mean"])
    # deterministic given the generator
    again = list(d.p_sample_loop_progressive(nets["learned_range"], shape, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(again[-1]["sample"], outs[-1]["sample"])
    other = list(d.p_sample_loop_progressive(nets["learned_range"], shape, generator=torch.Generator().manual_seed(1)))
    assert not torch.equal(other[-1]["sample"], outs[-1]["sample"])


def test_untrained_net_sampling_full_chain_short_T():
    """An untrained network predicts eps = 0 (its output layer starts at zero), so every step's
    x_0 estimate is x_t / sqrt(abar_t), clipped, and its mean the posterior mean at that
    estimate: Algorithm 2 must follow exactly that recursion."""
    d = DiffusionConfig("linear", 30, "fixed_small").build()
    net = UNet(named_config("tiny", learn_sigma=False)).eval()
    assert not net(torch.randn(1, 3, 5, 7), torch.tensor([3.0])).any()
    outs = list(d.p_sample_loop_progressive(net, (1, 3, 5, 7), generator=torch.Generator().manual_seed(0)))
    assert len(outs) == 30 and [o["t"] for o in outs] == list(range(29, -1, -1))
    for prev, o in zip(outs, outs[1:]):
        t = o["t"]
        x0 = (prev["sample"] / math.sqrt(d.alphas_cumprod[t])).clamp(-1, 1)
        torch.testing.assert_close(o["pred_xstart"], x0)
        mean = d.posterior_mean_coef1[t] * x0 + d.posterior_mean_coef2[t] * prev["sample"]
        torch.testing.assert_close(o["mean"], mean.float())
    assert torch.equal(outs[-1]["sample"], outs[-1]["mean"])  # no noise at t = 0
