"""The coded chain, designed by optimisation: timesteps and coders from the model's error table.

A chain codes x_T (free), K latent steps t_K = T-1 > ... > t_1 = t_min, then x_0.  Its expected
size follows from the model's x_0 error table E[(x_0 - x0hat(x_t))^2] (:mod:`diffcodec.errtable`):

* a latent step s <- t carries, with the analytic variance, KL = 1/2 log2(1 + coef1^2 mse(t) /
  lambda^2) bits per dimension in expectation (Bao et al. 2022), averaged over channels;
* a coder pays more than the KL (:class:`CostModel`): UQ the entropy of a dithered quantizer
  under a Gaussian (``../shared/notes/coding-overhead.md``), of which the interval-consistent
  coding recovers a calibrated share; PFR about ``pfr_chunk_overhead`` bits per chunk of
  ``chunk_bits`` bits of KL, and a search whose work grows as 2 ** (chunk bits + margin) per
  dimension whatever the KL;
* the final step from t_min costs about the entropy of a discretized Gaussian of the x_0 error
  at t_min, less what the intervals already pinned down.

:func:`plan_chain` minimises the expected total by dynamic programming over all pairs of
timesteps (O(K T^2)) under a budget of network calls and of PFR search work that the encoder's
``effort`` sets (like cjxl's effort: higher is slower and smaller).  The result, a
:class:`Plan`, goes into the file's header (timesteps) and chunks (coders).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from .checkpoint import Prior
from .container import ALL_TIMESTEPS
from .errors import OptionError
from .diffusion import get_named_beta_schedule
from .kinds import ChunkKind, LatentMethod

MAX_EFFORT = 9


@dataclass(frozen=True)
class CostModel:
    """Expected bits per dimension of a coded step.  The constants were fitted to 66 real files
    (6 random 128 px crops of the training photos x 11 chains: efforts 2-8, UQ only, PFR only,
    t_min forced to 0 and 10; README, "Designing the chain"): an intermediate UQ step pays
    0.81x its KL (channel prediction) + 0.88x UQ's overhead, the final step gets the last UQ
    step's overhead back (its cells narrow the final step's levels), PFR pays 1.18x the model's
    KL plus 2.5 bits per chunk (1.14-1.27x over chunk sizes 4-8)."""

    uq_kl_factor: float = 0.81  # a UQ step's bits per bit of the model's KL
    uq_recovered: float = 0.12  # share of an intermediate UQ step's overhead recovered later
    pfr_chunk_overhead: float = 2.5  # bits per PFR chunk beyond its KL
    pfr_kl_factor: float = 1.18  # PFR's bits relative to the model's expected KL (per-tile priors, images)
    final_offset: float = -0.07  # bits/dim added to the Gaussian-entropy estimate of the final step
    final_recovered: float = 1.0  # share of the last UQ step's overhead the final step gets back
    # Every coded step's fixed bits, and per 64 px tile its side information (widths; PFR: kappa
    # codes; UQ's channel-predicted layouts: predictor codes too).  The fixed bits were format
    # version 4's framing (15 bytes), the coder's fields and its flushes; version 5 spends ~12
    # (UQ) and ~18 (PFR) bytes, but with those values the planner chose 24 steps at efforts 8-9
    # where 20 code shorter (four Kodak crops, effort 8: 3.555 against 3.548), so the per-step
    # cost is kept as fitted: it also absorbs the cost model's optimism about long PFR chains.
    uq_fixed_bits: float = 8 * (15 + 4 + 4)
    uq_tile_bits: float = 8 * 3 * 1.5
    pfr_fixed_bits: float = 8 * (15 + 8 + 4 + 4 + 1)
    pfr_tile_bits: float = 8 * 3

    def uq(self, kl: np.ndarray) -> np.ndarray:
        return self.uq_kl_factor * kl + (1.0 - self.uq_recovered) * uq_overhead(kl)

    def pfr(self, kl: np.ndarray, chunk_bits: int) -> np.ndarray:
        kl = kl * self.pfr_kl_factor
        return kl * (1.0 + self.pfr_chunk_overhead / chunk_bits)

    def given_back(self, kl: np.ndarray) -> np.ndarray:
        """What the final step gets back of the last latent step's cost when that step is UQ
        (its cells narrow the final step's levels): the recovered share of UQ's overhead."""
        return self.final_recovered * (1.0 - self.uq_recovered) * uq_overhead(kl)

    def fixed_bits(self, pfr: bool, pixels: float) -> float:
        """A coded step's fixed bits (framing, coder fields) and its side information per 64 px
        tile: a PFR step's, else a UQ or final step's."""
        tiles = max(1.0, pixels / 64.0**2)
        if pfr:
            return self.pfr_fixed_bits + self.pfr_tile_bits * tiles
        return self.uq_fixed_bits + self.uq_tile_bits * tiles


DEFAULT_COSTS = CostModel()

#: The constants the planner uses at efforts 7-9 on small images (up to SMALL_IMAGE_PIXELS).
#: With the fitted ones it ended those chains with one UQ step after PFR down to t = 11; on small
#: images chains that leave two UQ steps for the end (from t ~ 40-50 to ~14, then to 1) code
#: shorter: fewer PFR steps, each paying its fixed bytes over few pixels, and the neighbourhood
#: layout codes low-noise UQ steps below the KL the fitted constants charge.  On four Kodak
#: crops (128 px), effort 7's budget, 8 chains (its plan and 7 forced ones, 3.437-3.482 bits/dim)
#: rank by the fitted constants no better than chance (14 of 28 pairs inverted, rms 0.039
#: bits/dim after one offset) and by these well (4 inverted, rms 0.008): a UQ step pays 0.70x its
#: KL and 0.70x its overhead.  Effort 7 with them: 128 px crops -0.023 (four Kodak) and -0.058
#: (six CBSD68), 256 px crops -0.007 (kodim07, kodim23), but kodim07 at 768 x 512 +0.028 (2.9505
#: against 2.9229): larger images keep the fitted constants (README, "Designing the chain").
TAIL_COSTS = CostModel(uq_kl_factor=0.70, uq_recovered=0.30)
SMALL_IMAGE_PIXELS = 256 * 256  # the largest image the measurements above found TAIL_COSTS better on
#: Effort 9's constants on small images: TAIL_COSTS with PFR 5 % cheaper, since the spectral PFR
#: layout (format version 8, :mod:`diffcodec.coders.spectral`) codes those steps ~10 % shorter.
#: On four 128 px Kodak crops, effort 9 (``benchmarks.sweep_steps --effort 9 --cost-model``),
#: pfr_kl_factor 1.18 / 1.12 / 1.06 / 1.00 / 0.95 gave 3.3731 / 3.3566 / 3.3566 / 3.3707 / 3.3879
#: bits/dim: from 1.12 down the plan runs PFR to t = 14 and ends with one UQ step (17 latent steps
#: instead of 14).  Effort 9's plan for a 256 px crop is the same under both; effort 5 with 1.06
#: (its plan then ends the same way) lost 0.071 bits/dim on eight Kodak 256 px crops (3.611 ->
#: 3.682), so the other efforts keep their constants.
SPECTRAL_TAIL_COSTS = replace(TAIL_COSTS, pfr_kl_factor=1.12)


@dataclass(frozen=True)
class EffortLevel:
    max_steps: int  # latent steps (network calls: one more, less the steps the linear estimate takes)
    chunk_bits: int  # PFR's chunk size in bits of KL (0: no PFR at this effort)
    margin_bits: int  # PFR's search margin: a step searches about 2 ** (chunk + margin) candidates per dim
    symmetry: int = 1  # network calls averaged over this many of the square's symmetries ...
    symmetry_max_t: int = ALL_TIMESTEPS  # ... those at timesteps t <= this
    small_image_costs: CostModel = DEFAULT_COSTS  # the planner's constants up to SMALL_IMAGE_PIXELS

    def costs(self, pixels: int) -> CostModel:
        """The planner's constants for an image of ``pixels`` pixels at this effort."""
        return self.small_image_costs if pixels <= SMALL_IMAGE_PIXELS else DEFAULT_COSTS

    @property
    def pfr(self) -> bool:
        return self.chunk_bits > 0

    @property
    def pfr_work_per_dim(self) -> float:
        return 2.0 ** (self.chunk_bits + self.margin_bits) if self.pfr else 0.0


#: What each effort may spend: network calls (latent steps + 1) and PFR search work per step,
#: dims x 2 ** (chunk + margin) candidate evaluations (~370 M a second on one core of the CPU
#: in README with the compiled search: 0.8 s a step for a 768 x 512 photo at 6 + 2).  At equal
#: work a bigger chunk with a smaller margin codes shorter (PFR's overhead per chunk is about
#: log2(KL + 1) bits, and a chunk whose KL outruns the margin still sends a near-exact sample):
#: measured with ``benchmarks.sweep_steps --pfr`` on Kodak crops (README, "Designing the chain").
#: From effort 6 on, network calls are averaged over 8 of the square's symmetries
#: (:func:`diffcodec.unet.forward_symmetrised`): smaller files at that many times the network's
#: time, in the encoder and the decoder alike.  Effort 5 averages 2 at t <= 60: the calls the
#: linear x_0 estimate saves at the top of the chain (:mod:`diffcodec.linear`) and two more (on
#: four Kodak crops 15 evaluations against 13 before the linear estimate, 3.496 bits/dim against
#: 3.514 plain and 3.519 before; README, "Designing the chain").
#: Efforts 6-8 average only the calls at t <= 60 or 150, where the x_0 error sets a step's cost:
#: on four Kodak crops (README, "Self-ensemble") the calls above t = 150 gave 0.002 bits/dim for
#: half or more of the evaluations; effort 6 is effort 5's chain with the ensemble (3.692 bits/dim
#: in 34 evaluations, where 16 steps with 2 symmetries everywhere gave 3.701 in 34).
EFFORTS = {
    1: EffortLevel(4, 0, 0),
    2: EffortLevel(6, 0, 0),
    3: EffortLevel(8, 4, 2),
    4: EffortLevel(10, 5, 2),
    5: EffortLevel(12, 6, 2, symmetry=2, symmetry_max_t=60),
    6: EffortLevel(12, 6, 2, symmetry=8, symmetry_max_t=60),
    7: EffortLevel(20, 10, 1, symmetry=8, symmetry_max_t=60, small_image_costs=TAIL_COSTS),
    8: EffortLevel(28, 10, 2, symmetry=8, symmetry_max_t=150, small_image_costs=TAIL_COSTS),
    9: EffortLevel(40, 12, 2, symmetry=8, small_image_costs=SPECTRAL_TAIL_COSTS),
}


@dataclass(frozen=True)
class PlanOptions:
    effort: int = 5
    method: LatentMethod = LatentMethod.AUTO
    steps: int | None = None  # force K
    t_min: int | None = None  # force the last latent timestep
    timesteps: tuple[int, ...] | None = None  # force the chain
    chunk_bits: int | None = None
    margin_bits: int | None = None


@dataclass(frozen=True)
class Plan:
    timesteps: tuple[int, ...]  # ascending; timesteps[-1] = T - 1 is x_T, timesteps[0] = t_min
    coders: tuple[ChunkKind, ...]  # per latent step, in coding order (from x_T down)
    chunk_bits: int = 5
    margin_bits: int = 3
    expected_bits_per_dim: float = math.nan  # the cost model's total (nan when not planned)
    expected_steps: tuple[float, ...] = field(default=(), compare=False)  # per latent step; the last one includes the final step
    symmetry: int = 1  # the network's self-ensemble (the effort's; the header records it) ...
    symmetry_max_t: int = ALL_TIMESTEPS  # ... at the network calls of timesteps t <= this


#: The lowest last latent timestep the planner picks by itself (``--t-min 0`` still forces 0).
#: Ending the chain at t = 0 never paid in a real file although the cost model ranks it level or
#: better: four 128 px Kodak crops, effort 5, model e9466d11: t_min 0 3.839 against 1 3.835
#: bits/dim; model c472d480: 3.741+ against 3.739; effort 9, model 016ca309: 3.6175 against
#: 3.5988 (the model predicted 0.0006 in favour of 0); effort 8 on two 256 px Kodak crops: 3.6163
#: against 3.6036 (predicted level to 0.001).  On kodim07's crop the cost model put the
#: last UQ step and the final step 0.161 bits/dim cheaper from t = 0; the file saved 0.128.
PLANNED_T_MIN = 1


# ----------------------------------------------------------------------------- UQ's entropy


def _uq_bits(s: float) -> float:
    """Entropy (bits) of the dithered quantizer's symbol k = round(d - u) for d ~ N(0, s^2)
    (s in units of the step), u ~ U(-1/2, 1/2), averaged over u (40-point midpoint rule)."""
    from scipy.stats import norm  # scipy comes with scikit-image

    us = (np.arange(40) + 0.5) / 40 - 0.5
    kmax = int(8 * s) + 3
    ks = np.arange(-kmax, kmax + 1)
    p = norm.cdf((ks[None] + us[:, None] + 0.5) / s) - norm.cdf((ks[None] + us[:, None] - 0.5) / s)
    p = np.where(p > 0, p, 1.0)
    return float(-(p * np.log2(p)).sum(axis=1).mean())


_S = np.exp(np.linspace(np.log(1e-3), np.log(64.0), 120))
_KL = 0.5 * np.log2(1 + 12 * _S**2)
_UQ = None


def uq_overhead(kl: np.ndarray) -> np.ndarray:
    """UQ's bits over the KL for a step of ``kl`` bits/dim (the prior a Gaussian of the
    receiver's true uncertainty): ~30x the KL at 0.001 bits, +0.25 bits above 1 bit."""
    global _UQ
    if _UQ is None:  # computed once, on first use (a cache, not state that changes results)
        _UQ = np.array([_uq_bits(s) for s in _S])
    kl = np.asarray(kl, dtype=np.float64)
    return np.interp(kl, _KL, _UQ - _KL, left=0.0, right=float(_UQ[-1] - _KL[-1])) * (kl > 0)


# ----------------------------------------------------------------------------- the step costs


def alphas_cumprod(prior: Prior) -> np.ndarray:
    cfg = prior.diffusion
    return np.cumprod(1.0 - get_named_beta_schedule(cfg.schedule, cfg.num_timesteps))


def step_kl_matrix(abar: np.ndarray, mse: np.ndarray) -> np.ndarray:
    """[T, T] expected KL in bits/dim of the step from t (column) to s (row), s < t, under the
    analytic variance; inf elsewhere.  ``mse`` is the [T, C] x_0 error table."""
    T = len(abar)
    a_s, a_t = abar[:, None], abar[None, :]
    ratio = np.where(np.arange(T)[:, None] < np.arange(T)[None, :], a_t / a_s, 0.0)
    c1sq = a_s * (1 - ratio) ** 2 / (1 - a_t) ** 2
    lam2 = (1 - a_s) * (1 - ratio) / (1 - a_t)
    m = np.clip(np.asarray(mse, dtype=np.float64).reshape(T, -1), 1e-10, 1.0)
    kl = np.zeros((T, T))
    with np.errstate(divide="ignore", invalid="ignore"):
        for c in range(m.shape[1]):
            kl += 0.5 * np.log2(1 + c1sq * m[None, :, c] / lam2)
    kl /= m.shape[1]
    kl[~(np.arange(T)[:, None] < np.arange(T)[None, :])] = np.inf
    return kl


def final_bits(mse: np.ndarray, model: CostModel = DEFAULT_COSTS) -> np.ndarray:
    """[T] expected bits/dim of the final step from each t: a discretized Gaussian with the
    x_0 error at t (in levels), plus the calibrated offset."""
    var = np.asarray(mse, dtype=np.float64).reshape(len(mse), -1) * 127.5**2 + 1.0 / 12
    return (0.5 * np.log2(2 * math.pi * math.e * var)).mean(axis=1) + model.final_offset


# ----------------------------------------------------------------------------- planning


def _check_fits(num_timesteps: int, steps: int | None, t_min: int) -> None:
    """Refuse a forced t_min outside the chain, or more forced steps than fit above it."""
    if not 0 <= t_min < num_timesteps - 1 or (steps is not None and steps > num_timesteps - 1 - t_min):
        raise OptionError(f"cannot fit {steps} steps between t={t_min} and T-1={num_timesteps - 1}")


def even_timesteps(num_timesteps: int, steps: int, t_min: int = 0) -> tuple[int, ...]:
    """``steps`` latent steps evenly spaced from t_min to T - 1 (steps + 1 timesteps)."""
    if steps < 1:
        raise OptionError("at least one coded step is needed")
    _check_fits(num_timesteps, steps, t_min)
    ts = np.round(np.linspace(t_min, num_timesteps - 1, steps + 1)).astype(int)
    return tuple(int(t) for t in ts)


def plan_chain(prior: Prior, pixels: int, opt: PlanOptions = PlanOptions(),
               model: CostModel | None = None) -> Plan:
    """The chain for an image of ``pixels`` pixels: forced by ``opt`` where it says so, else
    the cheapest in expected bits under the effort's budgets and cost model (``model``, where
    given, instead).  Models without an x_0 error table get evenly spaced UQ steps (8, ending
    at t = 10)."""
    if not 1 <= opt.effort <= MAX_EFFORT:
        raise OptionError(f"effort must be in 1 .. {MAX_EFFORT}")
    level = EFFORTS[opt.effort]
    model = level.costs(pixels) if model is None else model
    chunk_bits = opt.chunk_bits or level.chunk_bits or EFFORTS[5].chunk_bits
    margin = opt.margin_bits if opt.margin_bits is not None else (level.margin_bits if level.pfr else EFFORTS[5].margin_bits)
    T = prior.diffusion.num_timesteps
    method = LatentMethod(opt.method)
    fixed = {LatentMethod.UQ: ChunkKind.UQ, LatentMethod.PFR: ChunkKind.PFR}.get(method)
    if opt.timesteps is not None:
        ts = tuple(int(t) for t in opt.timesteps)
        if len(ts) < 2 or ts[-1] != T - 1 or any(b <= a for a, b in zip(ts, ts[1:])) or ts[0] < 0:
            raise OptionError(f"timesteps must increase strictly from t_min >= 0 to T - 1 = {T - 1}")
        plan = _assign(prior, ts, fixed, level, chunk_bits, margin, pixels, model)
    elif prior.xstart_mse is None:
        ts = even_timesteps(T, opt.steps or 8, 10 if opt.t_min is None else opt.t_min)
        plan = Plan(ts, tuple([fixed or ChunkKind.UQ] * (len(ts) - 1)), chunk_bits, margin)
    else:
        plan = _optimise(prior, pixels, opt, level, chunk_bits, margin, fixed, model)
    return replace(plan, symmetry=level.symmetry, symmetry_max_t=level.symmetry_max_t)


def _pfr_allowed(level: EffortLevel, chunk_bits: int, margin: int, fixed: ChunkKind | None) -> bool:
    """PFR may be planned where the method forces it, or where the effort's search budget covers
    the chunk size and margin asked for."""
    if fixed is not None:
        return fixed == ChunkKind.PFR
    return level.pfr and 2.0 ** (chunk_bits + margin) <= level.pfr_work_per_dim


@dataclass
class _Costs:
    """Expected bits/dim of every (s, t) step as an intermediate step and as the last latent
    step (plus the final step from s), and whether PFR codes it in each role."""

    step: np.ndarray  # [T, T]
    step_pfr: np.ndarray  # [T, T] bool
    last: np.ndarray  # [T, T]
    last_pfr: np.ndarray  # [T, T] bool


def _costs(prior: Prior, kl: np.ndarray, pfr_ok: bool, fixed: ChunkKind | None, chunk_bits: int, pixels: int,
           model: CostModel) -> _Costs:
    """Every step's cost under each allowed coder, the cheaper taken per role; a last UQ step
    hands its overhead back to the final step, so a step's coder may differ between roles.
    Each coded step also pays its fixed bytes (framing and side information) over the image."""
    k = np.where(np.isfinite(kl), kl, 0.0)
    dims = 3.0 * max(pixels, 1)
    uq = model.uq(k) + model.fixed_bits(False, pixels) / dims
    pfr = model.pfr(k, chunk_bits) + model.fixed_bits(True, pixels) / dims
    uq_last = uq - model.given_back(k)
    if fixed == ChunkKind.UQ or not pfr_ok:
        step_pfr = last_pfr = np.zeros(kl.shape, dtype=bool)
    elif fixed == ChunkKind.PFR:
        step_pfr = last_pfr = np.ones(kl.shape, dtype=bool)
    else:
        step_pfr, last_pfr = pfr < uq, pfr < uq_last
    fin = final_bits(prior.xstart_mse, model) + model.fixed_bits(False, pixels) / dims
    inf = ~np.isfinite(kl)
    step = np.where(inf, np.inf, np.where(step_pfr, pfr, uq))
    last = np.where(inf, np.inf, np.where(last_pfr, pfr, uq_last) + fin[:, None])
    return _Costs(step, step_pfr, last, last_pfr)


def _optimise(prior: Prior, pixels: int, opt: PlanOptions, level: EffortLevel, chunk_bits: int, margin: int,
              fixed: ChunkKind | None, model: CostModel) -> Plan:
    abar = alphas_cumprod(prior)
    T = len(abar)
    kl = step_kl_matrix(abar, prior.xstart_mse)
    pfr_ok = _pfr_allowed(level, chunk_bits, margin, fixed)
    costs = _costs(prior, kl, pfr_ok, fixed, chunk_bits, pixels, model)
    cost, last = costs.step, costs.last
    if opt.t_min is not None:
        _check_fits(T, opt.steps, opt.t_min)
    K = opt.steps or level.max_steps
    K = min(K, T - 1)
    # best[k, s]: cheapest way from T - 1 down to s in k steps (not counting the final step)
    best = np.full((K + 1, T), np.inf)
    arg = np.zeros((K + 1, T), dtype=np.int64)
    best[0, T - 1] = 0.0
    total = np.full(K + 1, np.inf)
    ends = np.zeros(K + 1, dtype=np.int64)
    starts = np.zeros(K + 1, dtype=np.int64)
    # the floor gives way only where a forced step count cannot fit above it (T - 1 steps end at 0)
    floor = PLANNED_T_MIN if opt.steps is None else min(PLANNED_T_MIN, T - 1 - K)
    allowed_end = np.arange(T) >= floor if opt.t_min is None else (np.arange(T) == opt.t_min)
    for k in range(1, K + 1):
        step = best[k - 1][None, :] + cost  # [s, t]
        arg[k] = step.argmin(axis=1)
        best[k] = step.min(axis=1)
        # the k-th step is the last: its cost is taken from ``last`` instead of ``cost``
        fin = best[k - 1][None, :] + last
        fin[~allowed_end] = np.inf
        s, t = np.unravel_index(np.argmin(fin), fin.shape)
        total[k], ends[k], starts[k] = fin[s, t], s, t
    ks = [K] if opt.steps else range(1, K + 1)
    k = min(ks, key=lambda q: total[q])
    path = [int(ends[k]), int(starts[k])]
    for q in range(k - 1, 0, -1):
        path.append(int(arg[q][path[-1]]))
    ts = tuple(path)  # ascending: t_min, ..., T - 1
    return _assign(prior, ts, fixed, level, chunk_bits, margin, pixels, model, costs=costs)


def _assign(prior: Prior, ts: tuple[int, ...], fixed: ChunkKind | None, level: EffortLevel, chunk_bits: int,
            margin: int, pixels: int, model: CostModel, costs: _Costs | None = None) -> Plan:
    """The coder of each step of a given chain (and its expected cost when the model has a table)."""
    if prior.xstart_mse is None:
        return Plan(ts, tuple([fixed or ChunkKind.UQ] * (len(ts) - 1)), chunk_bits, margin)
    if costs is None:
        kl = step_kl_matrix(alphas_cumprod(prior), prior.xstart_mse)
        costs = _costs(prior, kl, _pfr_allowed(level, chunk_bits, margin, fixed), fixed, chunk_bits, pixels, model)
    pairs = [(ts[i - 1], ts[i]) for i in range(len(ts) - 1, 0, -1)]  # coding order: (s, t)
    roles = [(costs.step, costs.step_pfr)] * (len(pairs) - 1) + [(costs.last, costs.last_pfr)]
    coders = tuple(ChunkKind.PFR if pfr[s, t] else ChunkKind.UQ for (s, t), (_, pfr) in zip(pairs, roles))
    expected = [float(c[s, t]) for (s, t), (c, _) in zip(pairs, roles)]
    return Plan(ts, coders, chunk_bits, margin, float(sum(expected)), tuple(expected))
