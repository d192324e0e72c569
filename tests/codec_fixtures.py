"""Shared helpers and fixtures for the codec, container, entropy and CLI tests.

Import the fixtures you need by name into a test module (``from codec_fixtures import
tiny_model_path, tiny_prior``); the tests folder is on ``sys.path`` under pytest's default
import mode.  The models are tiny random U-Nets: fast, deterministic, and different enough from
each other that their fingerprints and predictions differ.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from diffcodec.checkpoint import Prior, load_prior, save_checkpoint
from diffcodec.diffusion import DiffusionConfig, get_named_beta_schedule
from diffcodec.unet import UNet, named_config

DIFFUSION = DiffusionConfig("cosine", 1000, "learned_range")


def randomize_(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give the zero-initialised layers random weights so the network's output depends on
    everything (and is not identically 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return net


def make_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """Save a tiny random U-Net whose output is not identically zero (the output conv is
    zero-initialised, so every parameter gets a little noise)."""
    torch.manual_seed(seed)
    cfg = named_config("tiny")
    net = UNet(cfg)
    g = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    save_checkpoint(path, cfg, DIFFUSION, net.state_dict())
    return path


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("models") / "tiny.pt", seed=0)


@pytest.fixture(scope="session")
def other_model_path(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("models_b") / "other.pt", seed=1)


@pytest.fixture(scope="session")
def tiny_prior(tiny_model_path) -> Prior:
    return load_prior(tiny_model_path)


@pytest.fixture(scope="session")
def other_prior(other_model_path) -> Prior:
    return load_prior(other_model_path)


def random_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


class OracleNet(nn.Module):
    """A 'cheating' epsilon-network that knows the image: for x_t it returns the exact noise
    eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t) (float64 tables of the full chain) and
    v = 0, so its x_0 prediction is exact at every step."""

    def __init__(self, pixels: np.ndarray, diffusion: DiffusionConfig = DIFFUSION) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))  # Prior.device looks at the parameters
        self.config = named_config("tiny")  # what the tiled evaluation asks of a network
        self.x0 = torch.from_numpy(pixels.transpose(2, 0, 1).astype(np.float64) / 127.5 - 1.0)[None]
        self.abar = np.cumprod(1.0 - get_named_beta_schedule(diffusion.schedule, diffusion.num_timesteps))
        self.T = diffusion.num_timesteps
        self.calls = 0

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        t = int(round(float(s[0]) * self.T / 1000.0))
        a = float(self.abar[t])
        eps = (x.double() - np.sqrt(a) * self.x0) / np.sqrt(1.0 - a)
        return torch.cat([eps, torch.zeros_like(eps)], dim=1).to(x.dtype)


def oracle_prior(pixels: np.ndarray) -> Prior:
    net = OracleNet(pixels)
    return Prior(net, named_config("tiny"), DIFFUSION, "ab" * 32, "oracle")


class GaussianPriorNet(nn.Module):
    """An analytic epsilon-network in float64: the exact posterior-mean denoiser for pixels that
    are independent N(0, VAR) on [-1, 1].  No learned weights and only IEEE-exact arithmetic
    (+, *, /, sqrt), so its outputs — and the golden files made with it — are the same on every
    machine."""

    VAR = 0.25

    def __init__(self, diffusion: DiffusionConfig = DIFFUSION) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.config = named_config("tiny")
        self.abar = np.cumprod(1.0 - get_named_beta_schedule(diffusion.schedule, diffusion.num_timesteps))
        self.T = diffusion.num_timesteps

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        t = int(round(float(s[0]) * self.T / 1000.0))
        a = float(self.abar[t])
        x = x.double()
        x0 = (np.sqrt(a) * self.VAR / (a * self.VAR + 1.0 - a)) * x
        eps = (x - np.sqrt(a) * x0) / np.sqrt(1.0 - a)
        return torch.cat([eps, torch.zeros_like(eps)], dim=1)


def analytic_prior() -> Prior:
    return Prior(GaussianPriorNet(), named_config("tiny"), DIFFUSION, "9a" * 32, "analytic")


def with_chunk(data: bytes, index: int, kind, payload: bytes) -> bytes:
    """``data`` with chunk ``index`` replaced by a CRC-valid chunk of ``kind`` holding ``payload``."""
    from diffcodec.container import Chunk, parse

    parsed = parse(data)
    chunks = list(parsed.chunks)
    chunks[index] = Chunk(kind, index, 0.0, payload)
    return data[:parsed.header_size] + b"".join(ch.to_bytes() for ch in chunks)


def decode_outcome(data: bytes, prior, original: np.ndarray) -> str:
    """'error' for a FormatError, else 'ok' — after checking that a lossless result is the
    original image (damage must never decode to a wrong image)."""
    from diffcodec.codec import decode
    from diffcodec.errors import FormatError

    try:
        out = decode(data, prior)
    except FormatError:
        return "error"
    if out.lossless:
        np.testing.assert_array_equal(np.asarray(out.image), original)
    return "ok"


def toy_linear_prior(from_t: int = 1000):
    """A linear prior (diffcodec.linear) with a rotated colour basis and a 1/f^2 power law:
    ``from_t`` = T (the default) leaves the chain's x_0 estimate the network's, so that only the
    spectral PFR layout reads it."""
    from diffcodec.linear import FREQS, LinearPrior

    q, _ = np.linalg.qr(np.array([[1.0, 0.4, 0.2], [1.0, -0.5, 0.1], [1.0, 0.1, -0.6]]))
    log_power = np.stack([np.log(a * 1e-4 / FREQS**2) for a in (3.0, 0.5, 0.2)])
    return LinearPrior(np.zeros(3), q, log_power, from_t)


def with_linear(prior: Prior, linear=None) -> Prior:
    """``prior`` with a linear prior (:func:`toy_linear_prior` unless given), same fingerprint."""
    from dataclasses import replace

    return replace(prior, linear=toy_linear_prior() if linear is None else linear)
