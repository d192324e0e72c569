"""The counter-based generator (diffcodec.philox): Random123 known answers, exact integer
arithmetic, determinism and the distributions of the derived variates."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from diffcodec import philox

# Random123 kat_vectors, philox4x32_10: (counter, key, expected output)
KATS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def _reference(ctr: tuple[int, ...], key: tuple[int, int]) -> tuple[int, ...]:
    """Philox4x32-10 in plain Python integers (an independent implementation)."""
    x0, x1, x2, x3 = ctr
    k0, k1 = key
    for r in range(10):
        if r:
            k0, k1 = (k0 + philox.W0) & 0xFFFFFFFF, (k1 + philox.W1) & 0xFFFFFFFF
        p0, p1 = philox.M0 * x0, philox.M1 * x2
        x0, x1, x2, x3 = (p1 >> 32) ^ x1 ^ k0, p1 & 0xFFFFFFFF, (p0 >> 32) ^ x3 ^ k1, p0 & 0xFFFFFFFF
    return x0, x1, x2, x3


@pytest.mark.parametrize("ctr,key,expected", KATS)
def test_known_answers(ctr, key, expected):
    assert tuple(int(w) for w in philox.philox4x32(*ctr, key=key)) == expected
    assert _reference(ctr, key) == expected
    words = philox.philox4x32(*(torch.tensor([c]) for c in ctr), key=key)
    assert all(w.dtype == torch.int64 and w.shape == (1,) for w in words)
    assert tuple(int(w[0]) for w in words) == expected


def test_matches_python_reference_on_random_counters():
    rng = np.random.default_rng(0)
    ctr = rng.integers(0, 2**32, (4, 300), dtype=np.int64)
    key = (int(rng.integers(0, 2**32)), int(rng.integers(0, 2**32)))
    words = torch.stack(philox.philox4x32(*(torch.from_numpy(c) for c in ctr), key=key)).numpy()
    assert words.min() >= 0 and words.max() < 2**32
    for i in range(0, 300, 7):
        assert tuple(words[:, i]) == _reference(tuple(int(c) for c in ctr[:, i]), key)


def test_broadcasting_and_inputs_untouched():
    a, n = torch.arange(5)[None], torch.arange(3)[:, None]
    a0, n0 = a.clone(), n.clone()
    words = philox.philox4x32(a, n, a, 7, (1, 2))
    assert all(w.shape == (3, 5) for w in words)
    assert torch.equal(a, a0) and torch.equal(n, n0)
    for i in range(3):
        for j in range(5):
            assert tuple(int(w[i, j]) for w in words) == _reference((j, i, j, 7), (1, 2))


def test_determinism_and_block_independence():
    key = philox.seed_key(2**63 + 12345)
    c = torch.arange(1000)
    a = philox.normals(key, c, 3, 4, 5)
    b = philox.normals(key, c, 3, 4, 5)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    part = philox.normals(key, c[400:410], 3, 4, 5)  # any slice regenerates the same numbers
    assert torch.equal(part[0], a[0][400:410]) and torch.equal(part[1], a[1][400:410])
    other = philox.normals(philox.seed_key(2**63 + 12346), c, 3, 4, 5)
    assert not torch.equal(other[0], a[0])


def test_seed_key():
    assert philox.seed_key(0x0123456789ABCDEF) == (0x89ABCDEF, 0x01234567)
    assert philox.seed_key(-1) == (0xFFFFFFFF, 0xFFFFFFFF)


def test_uniform_edges_and_golden():
    zero, one = torch.tensor([0]), torch.tensor([0xFFFFFFFF])
    assert float(philox.words_to_uniform(zero, zero)[0]) == 2.0**-53  # (0, 1): never 0
    assert float(philox.words_to_uniform(one, one)[0]) == 1.0 - 2.0**-53  # never 1
    u1, u2 = philox.uniforms((0, 0), 0, 0, 0, 0)
    k1 = ((0x6627E8D5 >> 5) << 26) | (0xE169C58D >> 6)
    k2 = ((0xBC57AC4C >> 5) << 26) | (0x9B00DBD8 >> 6)
    assert float(u1) == k1 * 2.0**-53 and float(u2) == k2 * 2.0**-53  # exact arithmetic


def test_uniform_moments():
    u1, u2 = philox.uniforms((7, 9), torch.arange(200_000), 1, 2, 3)
    u = torch.cat([u1, u2]).numpy()
    assert 0 < u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.003 and abs(u.var() - 1 / 12) < 0.002
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    assert abs(np.corrcoef(u1.numpy(), u2.numpy())[0, 1]) < 0.01


def test_normal_and_exponential_moments():
    z1, z2 = philox.normals((3, 4), torch.arange(200_000), 0, 0, 1)
    z = torch.cat([z1, z2]).numpy()
    assert abs(z.mean()) < 0.01 and abs(z.var() - 1) < 0.01
    assert abs(stats.kurtosis(z, fisher=False) - 3) < 0.05
    assert stats.kstest(z, "norm").pvalue > 1e-3
    assert abs(np.corrcoef(z1.numpy(), z2.numpy())[0, 1]) < 0.01
    e1, e2 = philox.exponentials((3, 4), torch.arange(200_000), 0, 0, 2)
    e = torch.cat([e1, e2]).numpy()
    assert e.min() > 0 and abs(e.mean() - 1) < 0.01 and abs(e.var() - 1) < 0.03
    assert stats.kstest(e, "expon").pvalue > 1e-3


def test_sort_keys_range():
    k = philox.sort_keys((1, 1), torch.arange(10_000), 0, 0, 3).numpy()
    assert k.min() >= 0 and k.max() < 2**62 and len(np.unique(k)) == len(k)
    assert k.max() > 2**61  # uses the top bits


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_words_are_bit_identical():
    c = torch.arange(100_000)
    cpu = philox.philox4x32(c, 1, 2, 3, (5, 6))
    gpu = philox.philox4x32(c.cuda(), 1, 2, 3, (5, 6))
    assert all(torch.equal(a, b.cpu()) for a, b in zip(cpu, gpu))
    u_cpu, u_gpu = philox.uniforms((5, 6), c, 1, 2, 3), philox.uniforms((5, 6), c.cuda(), 1, 2, 3)
    assert all(torch.equal(a, b.cpu()) for a, b in zip(u_cpu, u_gpu))
    z_cpu, z_gpu = philox.normals((5, 6), c, 1, 2, 3), philox.normals((5, 6), c.cuda(), 1, 2, 3)
    assert all(torch.allclose(a, b.cpu(), rtol=1e-14, atol=1e-14) for a, b in zip(z_cpu, z_gpu))
    assert math.isfinite(float(z_gpu[0].sum()))
