"""The chain's design: analytic variance, expected step costs, and the dynamic programme."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest
import torch


from diffcodec.checkpoint import Prior
from diffcodec.diffusion import DiffusionConfig, analytic_variance, get_named_beta_schedule
from diffcodec.errors import OptionError
from diffcodec.kinds import ChunkKind, LatentMethod
from diffcodec.trajectory import (DEFAULT_COSTS, EFFORTS, PLANNED_T_MIN, SMALL_IMAGE_PIXELS, SPECTRAL_TAIL_COSTS, TAIL_COSTS,
                                  PlanOptions,
                                  _costs, even_timesteps, plan_chain, step_kl_matrix, uq_overhead)


def test_analytic_variance_minimises_the_expected_kl_of_a_gaussian_toy():
    """x_0 ~ N(0, v) per dimension, x0hat = E[x_0 | x_t] (exact for this prior): for a step
    s <- t, the sigma^2 that minimises the Monte-Carlo mean of KL(q(x_s|x_t,x_0) || N(mu~(x_t,
    x0hat), sigma^2)) over a fine grid is the analytic one, and the minimum is 1/2 log(sigma^2 /
    lambda^2)."""
    rng = np.random.default_rng(0)
    abar = np.cumprod(1 - get_named_beta_schedule("cosine", 1000))
    v = 0.3
    for s, t in [(10, 134), (100, 400), (0, 5)]:
        a_s, a_t = abar[s], abar[t]
        c1 = math.sqrt(a_s) * (1 - a_t / a_s) / (1 - a_t)
        c2 = math.sqrt(a_t / a_s) * (1 - a_s) / (1 - a_t)
        lam2 = (1 - a_s) * (1 - a_t / a_s) / (1 - a_t)
        x0 = rng.normal(0, math.sqrt(v), 400_000)
        xt = math.sqrt(a_t) * x0 + math.sqrt(1 - a_t) * rng.normal(size=x0.size)
        x0hat = math.sqrt(a_t) * v / (a_t * v + 1 - a_t) * xt
        mse = np.mean((x0 - x0hat) ** 2)
        sq = (c1 * (x0 - x0hat)) ** 2  # (mu_q - mu_p)^2; c2 x_t cancels
        grid = analytic_variance(lam2, c1, mse) * np.exp(np.linspace(-0.5, 0.5, 201))
        kl = [0.5 * (np.log(g / lam2) + (lam2 + sq.mean()) / g - 1) for g in grid]
        best = grid[int(np.argmin(kl))]
        assert best == pytest.approx(analytic_variance(lam2, c1, mse), rel=0.01)
        assert min(kl) == pytest.approx(0.5 * math.log(analytic_variance(lam2, c1, mse) / lam2), rel=1e-3)
        assert c2 > 0


def test_step_kl_matrix_is_the_closed_form():
    abar = np.cumprod(1 - get_named_beta_schedule("cosine", 50))
    mse = np.linspace(1e-5, 0.2, 50)[:, None] * np.array([[1.0, 0.8, 1.2]])
    kl = step_kl_matrix(abar, mse)
    s, t = 7, 31
    c1sq = abar[s] * (1 - abar[t] / abar[s]) ** 2 / (1 - abar[t]) ** 2
    lam2 = (1 - abar[s]) * (1 - abar[t] / abar[s]) / (1 - abar[t])
    expect = np.mean([0.5 * math.log2(1 + c1sq * m / lam2) for m in mse[t]])
    assert kl[s, t] == pytest.approx(expect, rel=1e-12)
    assert np.isinf(kl[t, s]) and np.isinf(kl[5, 5])
    assert (np.diff(kl[:, 40][:40]) < 0).all()  # a longer jump to s costs more KL


@pytest.mark.parametrize("s,overhead", [(0.01, 0.0235), (0.1, 0.179), (1.0, 0.255), (4.0, 0.255)])
def test_uq_overhead_matches_the_notes(s, overhead):
    kl = 0.5 * math.log2(1 + 12 * s * s)
    assert float(uq_overhead(kl)) == pytest.approx(overhead, abs=0.004)
    assert float(uq_overhead(0.0)) == 0.0


def test_even_timesteps():
    assert even_timesteps(1000, 8, 10) == (10, 134, 257, 381, 504, 628, 752, 875, 999)
    assert even_timesteps(10, 9, 0) == tuple(range(10))
    with pytest.raises(OptionError):
        even_timesteps(10, 10, 0)
    with pytest.raises(OptionError):
        even_timesteps(10, 0, 0)


def _toy_prior(T: int, seed: int = 0) -> Prior:
    rng = np.random.default_rng(seed)
    table = np.sort(rng.uniform(1e-5, 0.25, (T, 3)), axis=0) * np.linspace(0.05, 1, T)[:, None]
    return Prior(None, None, DiffusionConfig("cosine", T, "learned_range"), "00" * 32, "toy", {}, table)


def _brute_force(prior: Prior, K: int, method: LatentMethod, level, pixels: int) -> float:
    abar = np.cumprod(1 - get_named_beta_schedule("cosine", prior.diffusion.num_timesteps))
    kl = step_kl_matrix(abar, prior.xstart_mse)
    pfr_ok = method == LatentMethod.PFR or (method == LatentMethod.AUTO and level.pfr)
    fixed = {LatentMethod.UQ: ChunkKind.UQ, LatentMethod.PFR: ChunkKind.PFR}.get(method)
    costs = _costs(prior, kl, pfr_ok, fixed, level.chunk_bits, pixels, DEFAULT_COSTS)
    cost, last = costs.step, costs.last
    T = prior.diffusion.num_timesteps
    best = math.inf
    for inner in itertools.combinations(range(PLANNED_T_MIN, T - 1), K):  # t_min .. t_{K}, then T - 1
        ts = list(inner) + [T - 1]
        total = sum(cost[ts[i - 1], ts[i]] for i in range(2, len(ts))) + last[ts[0], ts[1]]
        best = min(best, total)
    return best


@pytest.mark.parametrize("method", [LatentMethod.AUTO, LatentMethod.UQ, LatentMethod.PFR])
@pytest.mark.parametrize("K", [1, 2, 4])
def test_dynamic_programme_equals_exhaustive_search(method, K):
    prior = _toy_prior(12, seed=K)
    plan = plan_chain(prior, 1000, PlanOptions(effort=6, method=method, steps=K))
    assert len(plan.timesteps) == K + 1 and plan.timesteps[-1] == 11
    assert plan.expected_bits_per_dim == pytest.approx(_brute_force(prior, K, method, EFFORTS[6], 1000), rel=1e-12)
    assert len(plan.coders) == K and len(plan.expected_steps) == K
    if method == LatentMethod.UQ:
        assert set(plan.coders) == {ChunkKind.UQ}
    if method == LatentMethod.PFR:
        assert set(plan.coders) == {ChunkKind.PFR}


def test_free_step_count_is_the_best_of_all_counts():
    prior = _toy_prior(14, seed=3)
    free = plan_chain(prior, 1000, PlanOptions(effort=3))
    each = [plan_chain(prior, 1000, PlanOptions(effort=3, steps=k)).expected_bits_per_dim
            for k in range(1, EFFORTS[3].max_steps + 1)]
    assert free.expected_bits_per_dim == pytest.approx(min(each))
    assert len(free.timesteps) - 1 <= EFFORTS[3].max_steps


def test_higher_effort_never_plans_a_larger_file():
    prior = _toy_prior(40, seed=5)
    for model in (DEFAULT_COSTS, TAIL_COSTS):  # under the same constants (the efforts' own differ)
        costs = [plan_chain(prior, 10_000, PlanOptions(effort=e), model).expected_bits_per_dim for e in range(1, 10)]
        assert all(b <= a + 1e-12 for a, b in zip(costs, costs[1:]))


def test_each_effort_plans_with_its_own_constants_unless_given_others():
    prior = _toy_prior(40, seed=5)
    tails = [TAIL_COSTS] * 2 + [SPECTRAL_TAIL_COSTS]
    assert [EFFORTS[e].small_image_costs for e in range(1, 10)] == [DEFAULT_COSTS] * 6 + tails
    assert SPECTRAL_TAIL_COSTS.pfr_kl_factor < TAIL_COSTS.pfr_kl_factor  # only PFR's factor differs
    assert replace(SPECTRAL_TAIL_COSTS, pfr_kl_factor=TAIL_COSTS.pfr_kl_factor) == TAIL_COSTS
    for effort in range(1, 10):
        for pixels in (10_000, SMALL_IMAGE_PIXELS, SMALL_IMAGE_PIXELS + 1):
            costs = EFFORTS[effort].costs(pixels)
            small = tails[effort - 7] if effort >= 7 else DEFAULT_COSTS
            assert costs == (small if pixels <= SMALL_IMAGE_PIXELS else DEFAULT_COSTS)
            assert plan_chain(prior, pixels, PlanOptions(effort=effort)) == plan_chain(prior, pixels,
                                                                                       PlanOptions(effort=effort), costs)
    given = plan_chain(prior, 10_000, PlanOptions(effort=7), DEFAULT_COSTS)
    assert given.expected_bits_per_dim > plan_chain(prior, 10_000, PlanOptions(effort=7)).expected_bits_per_dim


def test_shipped_model_leaves_two_uq_steps_for_the_end_of_a_small_image():
    """What the efforts' constants were chosen for (Kodak and CBSD68 crops): with the shipped
    model's error table a 128 px crop's chain ends with two UQ steps at efforts 5-8, the first of
    them from t >= 30 (efforts 7-9 planned one UQ step from t = 11 with the fitted constants,
    and still do on a 768 x 512 photo, where that codes shorter); effort 9, whose constants take
    the spectral PFR layout's lower cost, runs PFR down to t = 14 and ends with one UQ step."""
    from diffcodec.checkpoint import load_prior
    prior = load_prior(None)
    for effort in range(5, 9):
        plan = plan_chain(prior, 128 * 128, PlanOptions(effort=effort))
        assert plan.coders[-2:] == (ChunkKind.UQ, ChunkKind.UQ) and ChunkKind.PFR in plan.coders
        assert plan.timesteps[0] == PLANNED_T_MIN and plan.timesteps[2] >= 30
    nine = plan_chain(prior, 128 * 128, PlanOptions(effort=9))
    assert nine.coders[-2:] == (ChunkKind.PFR, ChunkKind.UQ) and nine.timesteps[:2] == (PLANNED_T_MIN, 14)
    fitted = {pixels: plan_chain(prior, pixels, PlanOptions(effort=7), DEFAULT_COSTS) for pixels in (128 * 128, 768 * 512)}
    assert all(plan.coders[-2:] == (ChunkKind.PFR, ChunkKind.UQ) for plan in fitted.values())
    assert plan_chain(prior, 768 * 512, PlanOptions(effort=7)) == fitted[768 * 512]


def test_the_planner_ends_at_t_min_1_unless_forced_to_0():
    prior = _toy_prior(20, seed=1)
    prior.xstart_mse[0] *= 1e-6  # a table whose step to t = 0 looks all but free
    for effort in (1, 5, 9):
        assert plan_chain(prior, 1000, PlanOptions(effort=effort)).timesteps[0] == PLANNED_T_MIN == 1
        assert plan_chain(prior, 1000, PlanOptions(effort=effort, t_min=0)).timesteps[0] == 0
    # forced to as many steps as the chain has timesteps, the only chain ends at 0
    assert plan_chain(prior, 1000, PlanOptions(steps=19)).timesteps == tuple(range(20))
    assert plan_chain(prior, 1000, PlanOptions(steps=18)).timesteps[0] == 1


def test_forced_options():
    prior = _toy_prior(30)
    plan = plan_chain(prior, 100, PlanOptions(t_min=4, steps=3))
    assert plan.timesteps[0] == 4 and len(plan.timesteps) == 4
    plan = plan_chain(prior, 100, PlanOptions(timesteps=(2, 9, 29), method=LatentMethod.UQ))
    assert plan.timesteps == (2, 9, 29) and plan.coders == (ChunkKind.UQ, ChunkKind.UQ)
    for t_min, steps in [(20, 10), (29, None), (-1, None)]:  # more steps than fit above t_min, or outside
        with pytest.raises(OptionError):
            plan_chain(prior, 100, PlanOptions(t_min=t_min, steps=steps))
    for bad in [(2, 9), (9, 2, 29), (-1, 29), (29,)]:
        with pytest.raises(OptionError):
            plan_chain(prior, 100, PlanOptions(timesteps=bad))
    with pytest.raises(OptionError):
        plan_chain(prior, 100, PlanOptions(effort=10))


def test_model_without_a_table_gets_the_even_chain():
    prior = Prior(None, None, DiffusionConfig("cosine", 1000, "learned_range"), "00" * 32, "toy")
    plan = plan_chain(prior, 100, PlanOptions())
    assert plan.timesteps == even_timesteps(1000, 8, 10) and set(plan.coders) == {ChunkKind.UQ}
    assert math.isnan(plan.expected_bits_per_dim)


def test_likelihood_with_analytic_variance(tiny_prior_with_table):
    """bits_per_dim's analytic variance comes from the checkpoint's table; without a table it is
    refused by name."""
    from diffcodec.errors import OptionError
    from diffcodec.likelihood import bits_per_dim

    prior, img = tiny_prior_with_table
    learned = bits_per_dim(img, prior, steps=6)
    analytic = bits_per_dim(img, prior, steps=6, variance="analytic")
    for t in (learned, analytic):
        assert math.isfinite(t.total) and t.total == pytest.approx(t.prior + t.latent + t.decoder)
    assert analytic.total != learned.total
    import dataclasses

    with pytest.raises(OptionError, match="error table"):
        bits_per_dim(img, dataclasses.replace(prior, xstart_mse=None), steps=6, variance="analytic")
    with pytest.raises(OptionError):
        bits_per_dim(img, prior, steps=6, variance="magic")


@pytest.fixture(scope="module")
def tiny_prior_with_table(tmp_path_factory, tiny_images):
    """The tiny random network carrying the shipped model's x_0 error table: its plans are the
    shipped model's (PFR at high noise, UQ at low), its coding as fast as the tiny network's."""
    from codec_fixtures import make_tiny_checkpoint
    from diffcodec.checkpoint import attach_xstart_mse, load_prior

    path = make_tiny_checkpoint(tmp_path_factory.mktemp("tab") / "m.pt")
    out = tmp_path_factory.mktemp("tab2") / "m_table.pt"
    attach_xstart_mse(path, out, load_prior().xstart_mse)
    return load_prior(out), tiny_images[0]


def test_measured_table_is_monotone_per_channel(tiny_images):
    """The error table measured for a network is isotonic in t and has one column per channel."""
    from codec_fixtures import make_tiny_checkpoint
    from diffcodec.checkpoint import load_prior
    from diffcodec.errtable import isotonic_increasing, measure_xstart_mse

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        prior = load_prior(make_tiny_checkpoint(Path(tmp) / "m.pt"))
    crops = torch.from_numpy(tiny_images[0][None].transpose(0, 3, 1, 2) / 127.5 - 1.0).float()
    raw = measure_xstart_mse(prior, crops, timesteps=range(0, 1000, 100))
    rows = np.arange(0, 1000, 100)
    assert np.isnan(raw[1]).all() and np.isfinite(raw[rows]).all() and raw.shape == (1000, 3)
    assert (raw[rows] <= 4.0).all() and (raw[rows] >= 0).all()  # clipped estimates: |error| <= 2
    iso = isotonic_increasing(raw[rows, 0])
    assert (np.diff(iso) >= 0).all()


def test_isotonic_regression():
    from diffcodec.errtable import isotonic_increasing

    y = np.array([1.0, 3.0, 2.0, 2.0, 5.0, 4.0])
    np.testing.assert_allclose(isotonic_increasing(y), [1.0, 7 / 3, 7 / 3, 7 / 3, 4.5, 4.5])
    z = np.random.default_rng(0).normal(size=200).cumsum()
    out = isotonic_increasing(z)
    assert (np.diff(out) >= 0).all() and out.sum() == pytest.approx(z.sum())


def test_effort_sets_the_network_symmetry():
    """Efforts 1-4 run the plain network, 5 a self-ensemble of 2 symmetries at the calls up to
    t = 60, 6-9 of 8 at the calls up to t = 60, 60, 150 and at every call; the plan carries it
    for the header."""
    prior = _toy_prior(30)
    plans = [plan_chain(prior, 1000, PlanOptions(effort=e)) for e in range(1, 10)]
    assert [p.symmetry for p in plans] == [EFFORTS[e].symmetry for e in range(1, 10)] == [1] * 4 + [2] + [8] * 4
    assert [p.symmetry_max_t for p in plans][4:] == [60, 60, 60, 150, 0xFFFF]
    forced = plan_chain(prior, 1000, PlanOptions(effort=7, timesteps=(2, 9, 29)))  # forced chains too
    assert (forced.symmetry, forced.symmetry_max_t) == (8, 60)


@pytest.mark.parametrize("effort", [1, 3, 5, 7])
def test_planned_chains_round_trip_and_every_prefix_decodes(effort, tiny_prior_with_table, tiny_images):
    """The codec codes the chains the planner emits (mixed PFR / UQ, down to low t): lossless,
    and every prefix of the file decodes to the encoder's preview of that step."""
    from diffcodec.codec import EncodeOptions, decode, encode, iter_previews
    from diffcodec.container import parse

    prior, _ = tiny_prior_with_table
    img = tiny_images[1]
    res = encode(img, prior, EncodeOptions(effort=effort, seed=3))
    assert res.header.timesteps == res.plan.timesteps and res.lossless
    assert (res.header.symmetry, res.header.symmetry_max_t) == (EFFORTS[effort].symmetry,
                                                                EFFORTS[effort].symmetry_max_t)
    if effort >= 3:  # PFR is planned for the high-noise steps, UQ for the last
        assert res.plan.coders[0] == ChunkKind.PFR and res.plan.coders[-1] == ChunkKind.UQ
    assert [s.kind.label.split("+")[0] for s in res.steps[:-1]] == [c.name.lower() for c in res.plan.coders]
    previews = list(iter_previews(res.data, prior))
    parsed = parse(res.data)
    ends = np.cumsum([parsed.header_size] + [c.size for c in parsed.chunks])
    for n, end in enumerate(ends):
        out = decode(res.data[:int(end)], prior)
        assert out.step == n
        np.testing.assert_array_equal(np.asarray(out.image.convert("RGB")), previews[n].image)
    np.testing.assert_array_equal(previews[-1].image, img)
