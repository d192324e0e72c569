"""The linear x_0 estimate at high noise: a Wiener filter under a stationary prior of photos.

At the highest noise levels the epsilon-network's x_0 estimate is poor: it divides its epsilon
error by sqrt(alpha-bar) (2.4e-9 at T - 1 on the cosine schedule), so the shipped model's
squared x_0 error is 1.19 at t = 999 where predicting the mean colour alone errs by ~0.25.  A
linear estimate does far better there, and needs no network call:

* the colours are decorrelated by a fixed orthonormal basis (the principal axes of the training
  photos' colours, around their mean colour);
* each component is a stationary Gaussian field whose orthonormal DCT-II coefficients (even
  extension at the borders, so no wrap-around edges) have the variance ``S(f)``, a table of log
  variances at :data:`FREQS` (half-octave bins of the radial frequency f in cycles per pixel),
  interpolated linearly in log f, extended as a power law below the table and flat above;
* y = x_t / sqrt(alpha-bar) is x_0 plus white noise of variance nu = (1 - alpha-bar) / alpha-bar,
  so the posterior mean of each coefficient is ``S / (S + nu)`` times y's (the Wiener filter);
  the estimate is clipped to [-1, 1] like the network's.

The checkpoint stores the prior (:meth:`LinearPrior.tensors`, covered by the fingerprint) and the
timestep ``from_t`` above which the codec uses it instead of the network: where its x_0 error,
measured on the same held-out crops as the network's table, is lower (``diffcodec linear``).  The
error table's rows from ``from_t`` on are then the linear estimate's, so the analytic variances
and the chain's design follow.  The DCT is scipy's (pocketfft), single-threaded: like the
network's arithmetic, a file decodes bit-exactly where the same library computes the same floats.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

#: Bin centres of the radial frequency (cycles per pixel) of the spectrum table: half-octaves
#: from 2^-8 (a 128 px crop's lowest non-zero DCT frequency) to 2^-0.5 (the highest in 2-D).
FREQS = 2.0 ** np.arange(-8.0, -0.25, 0.5)
#: Bin edges: half-way between centres in log f.
_EDGES = 2.0 ** np.concatenate([[-8.25], np.arange(-7.75, -0.25, 0.5), [-0.25]])


def radial_frequency(h: int, w: int) -> np.ndarray:
    """[H, W] radial frequency (cycles per pixel) of the orthonormal 2-D DCT-II coefficients of
    an H x W image; the DC coefficient gets a quarter of the lowest non-zero frequency (the
    table's power law then gives it a large but finite variance)."""
    f = np.sqrt((np.arange(h)[:, None] / (2.0 * h)) ** 2 + (np.arange(w)[None, :] / (2.0 * w)) ** 2)
    f[0, 0] = 0.25 / (2.0 * max(h, w, 1))
    return f


def dct2(x: np.ndarray, inverse: bool = False) -> np.ndarray:
    """The orthonormal 2-D DCT-II (or its inverse) over the last two axes, single-threaded."""
    from scipy.fft import dctn, idctn  # scipy comes with scikit-image

    return (idctn if inverse else dctn)(x, type=2, norm="ortho", workers=1, axes=(-2, -1))


@dataclass(frozen=True)
class LinearPrior:
    """A stationary Gaussian prior of photos and the Wiener x_0 estimate it gives (module doc)."""

    mean: np.ndarray  # [C] mean colour on [-1, 1]
    basis: np.ndarray  # [C, C] orthonormal; column k is component k's colour direction
    log_power: np.ndarray  # [C, len(FREQS)] log variance of a DCT coefficient per component
    from_t: int  # the codec estimates x_0 with this prior at original timesteps t >= from_t

    def __post_init__(self) -> None:
        c = len(self.mean)
        if (np.shape(self.basis) != (c, c) or np.shape(self.log_power) != (c, len(FREQS))
                or not all(np.isfinite(a).all() for a in (self.mean, self.basis, self.log_power))
                or not np.allclose(np.asarray(self.basis).T @ self.basis, np.eye(c), atol=1e-9)):
            raise ValueError("linear prior: wrong shapes, non-finite values or a basis that is not orthonormal")
        if self.from_t < 0:
            raise ValueError("linear prior: from_t must be >= 0")

    @property
    def channels(self) -> int:
        return len(self.mean)

    def power(self, h: int, w: int) -> np.ndarray:
        """[C, H, W] variance of each DCT coefficient of an H x W image, per component."""
        lf = np.log(radial_frequency(h, w))
        return np.stack([self._component_power(c, lf) for c in range(self.channels)])

    def _component_power(self, c: int, lf: np.ndarray) -> np.ndarray:
        """[H, W] component c's coefficient variances at log radial frequencies ``lf``."""
        x = np.log(FREQS)
        table = np.asarray(self.log_power[c], dtype=np.float64)
        slope = (table[1] - table[0]) / (x[1] - x[0])
        inside = np.interp(lf, x, table)  # flat beyond the last centre
        return np.exp(np.where(lf < x[0], table[0] + slope * (lf - x[0]), inside))

    def xstart(self, x_t: torch.Tensor, abar: float) -> torch.Tensor:
        """The posterior mean of x_0 given x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps under this
        prior, clipped to [-1, 1]: [N, C, H, W] float64 like x_t."""
        n, c, h, w = x_t.shape
        assert c == self.channels, f"linear prior has {self.channels} channels, x_t {c}"
        lf = np.log(radial_frequency(h, w))
        mean = np.asarray(self.mean, dtype=np.float64)
        basis = np.asarray(self.basis, dtype=np.float64)
        out = torch.empty(x_t.shape, dtype=torch.float64)
        for i in range(n):  # image-sized arrays: y, z, one component's gain and transform
            y = x_t[i].detach().cpu().double().numpy() / np.sqrt(abar) - mean[:, None, None]
            z = np.einsum("chw,ck->khw", y, basis)  # components
            del y
            for k in range(c):
                gain = self._component_power(k, lf)
                gain *= abar  # S / (S + nu) = S abar / (S abar + 1 - abar)
                gain /= gain + (1.0 - abar)
                z[k] = dct2(dct2(z[k]) * gain, inverse=True)
                del gain
            est = np.einsum("khw,ck->chw", z, basis)
            del z
            est += mean[:, None, None]
            out[i] = torch.from_numpy(np.clip(est, -1.0, 1.0, out=est))
        return out.to(x_t.device)

    # -- storage in a checkpoint -----------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        return {"mean": torch.as_tensor(np.asarray(self.mean, dtype=np.float64)),
                "basis": torch.as_tensor(np.asarray(self.basis, dtype=np.float64)),
                "log_power": torch.as_tensor(np.asarray(self.log_power, dtype=np.float64)),
                "from_t": torch.tensor([int(self.from_t)], dtype=torch.int64)}

    @classmethod
    def from_tensors(cls, d: dict) -> "LinearPrior":
        """From :meth:`tensors`' dict; ValueError when anything is missing or malformed."""
        try:
            from_t = d["from_t"]
            if from_t.dtype != torch.int64 or from_t.numel() != 1:
                raise ValueError("linear prior: from_t must be one int64")
            return cls(d["mean"].double().numpy(), d["basis"].double().numpy(),
                       d["log_power"].double().numpy(), int(from_t.reshape(-1)[0]))
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"linear prior: incomplete ({type(e).__name__})") from None


def fit_linear_prior(crops: np.ndarray, from_t: int) -> LinearPrior:
    """The prior of ``crops`` ([N, C, H, W] on [-1, 1], square or not, at least 16 px a side):
    mean colour, principal colour axes, and the mean squared DCT coefficient per component in
    each frequency bin (every bin must hold coefficients: crops of 128 px or more fill them)."""
    crops = np.asarray(crops, dtype=np.float64)
    n, c, h, w = crops.shape
    pixels = crops.transpose(0, 2, 3, 1).reshape(-1, c)
    mean = pixels.mean(axis=0)
    _, basis = np.linalg.eigh(np.cov((pixels - mean).T).reshape(c, c))
    f = radial_frequency(h, w)
    sums = np.zeros((c, len(FREQS)))
    counts = np.zeros(len(FREQS))
    which = np.digitize(f, _EDGES) - 1  # bin of each coefficient (-1 / len: outside)
    inside = (which >= 0) & (which < len(FREQS))
    np.add.at(counts, which[inside], n)
    for img in crops:
        z = np.einsum("chw,ck->khw", img - mean[:, None, None], basis)
        for k in range(c):
            np.add.at(sums[k], which[inside], dct2(z[k])[inside] ** 2)
    if (counts == 0).any():
        raise ValueError(f"crops of {h} x {w} px leave frequency bins empty: use 128 px or more")
    return LinearPrior(mean, basis, np.log(sums / counts), from_t)


def measure_linear_mse(prior: LinearPrior, crops: torch.Tensor, abar: np.ndarray, seed: int = 0,
                       progress: Callable | None = None) -> np.ndarray:
    """[T, C] mean squared error of the linear estimate on ``crops`` ([N, C, H, W] on [-1, 1])
    at every timestep of ``abar``, one noise draw per timestep (as the network's table)."""
    crops = crops.double().cpu()
    g = torch.Generator().manual_seed(seed)
    out = np.zeros((len(abar), crops.shape[1]))
    steps = range(len(abar))
    for t in progress(steps) if progress else steps:
        a = float(abar[t])
        noise = torch.randn(crops.shape, generator=g, dtype=torch.float64)
        x_t = np.sqrt(a) * crops + np.sqrt(1.0 - a) * noise
        out[t] = ((prior.xstart(x_t, a) - crops) ** 2).mean(dim=(0, 2, 3)).numpy()
    return out


def switch_timestep(net_mse: np.ndarray, linear_mse: np.ndarray) -> int:
    """The smallest t from which on the linear estimate errs less than the network at every
    timestep (channel means); T when it never does at T - 1."""
    better = np.asarray(linear_mse).reshape(len(linear_mse), -1).mean(1) < np.asarray(net_mse).reshape(
        len(net_mse), -1).mean(1)
    t = len(better)
    while t > 0 and better[t - 1]:
        t -= 1
    return t
