"""The golden files' cases: which image, which options (tests/golden/, test_golden.py)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from codec_fixtures import analytic_prior, with_linear
from diffcodec.codec import EncodeOptions, encode
from diffcodec.kinds import LatentMethod


def _source(mode: str, photo: str = "chelsea", size: tuple[int, int] = (14, 10)) -> Image.Image:
    from skimage import data

    rgb = Image.fromarray(getattr(data, photo)()).resize(size, Image.Resampling.LANCZOS)
    if mode == "RGB":
        return rgb
    if mode == "P":
        return rgb.quantize(12)
    return rgb.convert(mode)


# the plain network at every call, as the default effort ran it when these files were made (effort 5
# has averaged 2 symmetries at t <= 60 since; rgb_sym8 and rgb_sym_low pin the ensemble)
_UQ = dict(steps=3, t_min=4, seed=20261124, method=LatentMethod.UQ, tile=8, symmetry=1, symmetry_max_t=0xFFFF)
CASES = {
    "rgb_uq": ("RGB", _UQ),
    "rgb_pfr": ("RGB", dict(_UQ, method=LatentMethod.PFR, pfr_chunk_bits=5, pfr_margin_bits=3)),
    "grey_uq": ("L", _UQ),
    "bilevel_uq": ("1", _UQ),
    "palette_uq": ("P", _UQ),
    "rgb_lossy": ("RGB", dict(_UQ, stop_after=2)),
    # the context layout's UQ steps (UQ_CTX) win on this photo: their layout is pinned too (the
    # channel-predicted UQ_PRED steps this case had before are pinned by tests/golden/v3/)
    "rgb_chanpred": ("RGB", dict(_UQ, tile=16), "astronaut", (48, 32)),
    # a larger crop of it, the chain ending at t = 20: the UQ steps take the neighbourhood layout
    # (UQ_NBR: format version 7), the final step the texture layout (FINAL_TEX: version 6); the
    # version-6 file (tests/golden/v6/) has UQ_TEX steps
    "rgb_texture": ("RGB", dict(_UQ, tile=64, t_min=20), "astronaut", (96, 64)),
    # every network call averaged over the square's 8 symmetries (header version 3's field)
    "rgb_sym8": ("RGB", dict(_UQ, symmetry=8)),
    # only the calls at t <= 400 (x_t at 336 and 4) averaged over 4 (header version 4's field)
    "rgb_sym_low": ("RGB", dict(_UQ, symmetry=4, symmetry_max_t=400)),
    # the analytic prior with a linear prior: PFR's noisy steps take the spectral layout (PFR_SPEC:
    # format version 8), the last one the plain layout
    "rgb_spectral": ("RGB", dict(_UQ, steps=4, method=LatentMethod.PFR, pfr_chunk_bits=6, pfr_margin_bits=4,
                                 tile=16), "astronaut", (40, 24)),
}
#: The cases whose model has a linear prior (codec_fixtures.toy_linear_prior).
LINEAR = {"rgb_spectral"}


def case_prior(name: str):
    """The model a case is encoded and decoded with."""
    return with_linear(analytic_prior()) if name in LINEAR else analytic_prior()


def encode_case(name: str) -> tuple[bytes, Image.Image]:
    mode, options, *photo = CASES[name]
    src = _source(mode, *photo)
    return encode(src, case_prior(name), EncodeOptions(**options)).data, src


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img)
