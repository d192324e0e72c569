"""The linear x_0 estimate (diffcodec.linear): the Wiener filter is its prior's posterior mean,
the fit recovers a known spectrum, the checkpoint carries it under the fingerprint, and the
codec's steps above its ``from_t`` make no network call and still round-trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from codec_fixtures import make_tiny_checkpoint
from diffcodec.checkpoint import attach_xstart_mse, load_prior, read_checkpoint, save_checkpoint
from diffcodec.codec import EncodeOptions, decode, encode
from diffcodec.diffusion import DiffusionConfig, GaussianDiffusion, get_named_beta_schedule
from diffcodec.errors import CheckpointError
from diffcodec.linear import FREQS, LinearPrior, dct2, fit_linear_prior, measure_linear_mse, switch_timestep


def _prior(from_t: int = 1000, scale: float = 4e-3) -> LinearPrior:
    """A power-law prior (variance ~ 1/f: many coefficients matter, so Monte-Carlo means settle)
    with a rotated colour basis."""
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))
    log_power = np.log(scale) - np.log(FREQS / FREQS[0])[None, :] + np.log([[0.1], [0.3], [1.0]])  # ascending, as eigh orders
    return LinearPrior(np.array([0.1, -0.05, 0.02]), q, log_power, from_t)


def _samples(lp: LinearPrior, n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """[n, 3, h, w] draws from the prior itself: independent DCT coefficients of variance S."""
    rng = np.random.default_rng(seed)
    sd = np.sqrt(lp.power(h, w))
    out = np.empty((n, 3, h, w))
    for i in range(n):
        z = np.stack([dct2(rng.normal(size=(h, w)) * sd[k], inverse=True) for k in range(3)])
        out[i] = np.einsum("khw,ck->chw", z, lp.basis) + lp.mean[:, None, None]
    return out


@pytest.mark.parametrize("abar", [0.9999, 0.999, 0.99, 0.5])
def test_the_estimate_is_its_priors_posterior_mean(abar):
    """On draws from the prior (well inside [-1, 1], so the clip does not act), the estimate's
    squared error is the closed form mean of S nu / (S + nu) over the coefficients, and scaling
    its deviation from the mean either way errs more (where the filter passes enough of y to
    tell: at alpha-bar 0.5 it keeps under 1 % of the signal here)."""
    lp = _prior()
    h, w = 24, 32
    x0 = _samples(lp, 300, h, w)
    assert np.abs(x0).max() < 1.0
    rng = np.random.default_rng(7)
    x_t = torch.from_numpy(math.sqrt(abar) * x0 + math.sqrt(1 - abar) * rng.normal(size=x0.shape))
    est = lp.xstart(x_t, abar).numpy()
    nu = (1 - abar) / abar
    s = lp.power(h, w)
    expect = float((s * nu / (s + nu)).mean())
    got = float(((est - x0) ** 2).mean())
    assert got == pytest.approx(expect, rel=0.03)
    mean = lp.mean[:, None, None]
    for c in (0.8, 1.25) if (s / (s + nu)).mean() > 0.05 else ():
        assert float(((mean + c * (est - mean) - x0) ** 2).mean()) > got


def test_without_signal_the_estimate_is_the_mean_colour():
    lp = _prior()
    x_t = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 3, 8, 8)))
    est = lp.xstart(x_t, 1e-12).numpy()
    np.testing.assert_allclose(est, np.broadcast_to(lp.mean[None, :, None, None], est.shape), atol=1e-4)


def test_fit_recovers_a_known_spectrum():
    truth = _prior()
    fitted = fit_linear_prior(_samples(truth, 60, 128, 128, seed=3), from_t=900)
    assert fitted.from_t == 900
    np.testing.assert_allclose(fitted.mean, truth.mean, atol=0.01)
    assert np.abs(np.abs(fitted.basis.T @ truth.basis) - np.eye(3)).max() < 0.05  # columns up to sign
    err = np.abs(fitted.log_power - truth.log_power)
    # the lowest bins hold one or two coefficients a crop (60 draws: +-0.18 in log), the others many
    # (their error is mostly the bin mean against the centre value of a slope)
    assert err[:, :2].max() < 0.5 and err[:, 2:].max() < 0.2 and np.median(err) < 0.05
    with pytest.raises(ValueError, match="empty"):
        fit_linear_prior(np.zeros((2, 3, 16, 16)), from_t=900)


def test_switch_timestep_is_where_the_linear_estimate_stays_better():
    net = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])[:, None]
    assert switch_timestep(net, np.array([2.0, 1.0, 4.0, 3.5, 4.0, 5.0])[:, None]) == 3
    assert switch_timestep(net, net + 1) == 6
    assert switch_timestep(net, net - 1) == 0


def test_measured_error_follows_the_noise():
    lp = _prior()
    crops = torch.from_numpy(_samples(lp, 4, 16, 16))
    abar = np.array([0.9999, 0.999, 0.99])
    mse = measure_linear_mse(lp, crops, abar)
    assert mse.shape == (3, 3) and (np.diff(mse.mean(1)) > 0).all()
    assert mse[-1].mean() < lp.power(16, 16).mean()  # never worse than the prior's own spread


def test_p_mean_variance_takes_the_linear_estimate_without_calling_the_network():
    betas = get_named_beta_schedule("cosine", 100)
    lp = _prior(from_t=60)
    table = np.full((100, 3), 0.05)
    d = GaussianDiffusion(betas, "learned_range", xstart_mse=table, linear_xstart=lp.xstart, linear_from=60)
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 3, 8, 8)))

    def network(*_):
        raise AssertionError("the network was called")

    out = d.p_mean_variance(network, x, torch.tensor([80]))
    np.testing.assert_allclose(out["pred_xstart"].numpy(), lp.xstart(x, float(d.alphas_cumprod[80])).numpy())
    assert torch.allclose(out["variance"][0, :, 0, 0], torch.from_numpy(d.analytic_variance[80]))
    with pytest.raises(AssertionError, match="called"):
        d.p_mean_variance(network, x, torch.tensor([59]))
    with pytest.raises(ValueError, match="error table"):
        GaussianDiffusion(betas, "learned_range", linear_xstart=lp.xstart, linear_from=60)


@pytest.fixture(scope="module")
def linear_model(tmp_path_factory):
    """A tiny random network with an x_0 error table and a linear prior from t = 600."""
    root = tmp_path_factory.mktemp("linear")
    base = make_tiny_checkpoint(root / "tiny.pt", seed=4)
    table = np.linspace(1e-4, 0.3, 1000)[:, None] * np.array([[1.0, 0.9, 1.1]])
    plain = root / "plain.pt"
    attach_xstart_mse(base, plain, table)
    with_linear = root / "linear.pt"
    attach_xstart_mse(base, with_linear, table, _prior(from_t=600, scale=3e-2))
    return plain, with_linear


def test_checkpoint_carries_the_linear_prior_under_its_fingerprint(linear_model, tmp_path):
    plain, with_linear = linear_model
    a, b = load_prior(plain), load_prior(with_linear)
    assert a.linear is None and b.linear is not None and b.linear.from_t == 600
    assert a.fingerprint != b.fingerprint
    np.testing.assert_array_equal(b.linear.log_power, _prior(scale=3e-2).log_power)
    blob = read_checkpoint(with_linear)
    blob["linear"]["from_t"] = torch.tensor([500])
    torch.save(blob, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_prior(tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match="error table"):
        save_checkpoint(tmp_path / "x.pt", a.unet, DiffusionConfig("cosine", 1000, "learned_range"),
                        blob["ema"], linear=_prior())


def test_steps_above_from_t_call_no_network_and_round_trip(linear_model):
    """The chain 4 -> 336 -> 667 -> 999: the steps from 999 and 667 take the linear estimate
    (no network call), the file is lossless, every prefix decodes, and the previews of those
    steps are the linear estimate, not mid-grey."""
    from skimage import data
    from PIL import Image

    img = np.asarray(Image.fromarray(data.astronaut()).resize((24, 16), Image.Resampling.LANCZOS))
    counts = {}
    for name, path in zip(("plain", "linear"), linear_model):
        prior = load_prior(path)
        calls = []
        # the timesteps the network is called at (its time input is the timestep, T = 1000)
        prior.net.register_forward_pre_hook(lambda module, args, calls=calls: calls.append(float(args[1][0])))
        res = encode(img, prior, EncodeOptions(timesteps=(4, 336, 667, 999), seed=5, symmetry=1))
        assert res.lossless
        counts[name] = list(calls)
        calls.clear()
        out = decode(res.data, prior)
        np.testing.assert_array_equal(np.asarray(out.image), img)
        counts[name + " decode"] = list(calls)
        if name == "linear":
            for k in range(0, 4):
                preview = np.asarray(decode(res.data, prior, step=k).image)
                assert preview.shape == img.shape and preview.std() > 0
    assert counts["plain"] == counts["plain decode"] == [999.0, 667.0, 336.0, 4.0]
    assert counts["linear"] == counts["linear decode"] == [336.0, 4.0]
