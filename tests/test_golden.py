"""Golden .dfc files (CompressAI keeps MD5s of its bitstreams): small files made with an analytic
float64 prior, one per coder and image mode, committed with their source pixels.  A format
change fails these tests until the files are regenerated on purpose:

    DIFFCODEC_REGEN_GOLDEN=1 python -m pytest -q tests/test_golden.py

then check the diff of tests/golden/MD5SUMS and commit it with the files.  Files made by earlier
encoders stay, never regenerated, and must keep decoding: tests/golden/v2/ (format version 2),
tests/golden/v3/ (version 3 before the context layout: channel-predicted UQ steps, UQ_PRED) and
tests/golden/v3ctx/ (version 3 with the context layout, before symmetry_max_t: rgb_sym8's
symmetry serves every network call), tests/golden/v4/ (version 4: fixed-width fields, a stream
per channel or pass), tests/golden/v5/ (version 5: before the texture layout), tests/golden/v6/
(version 6: before the neighbourhood layout) and tests/golden/v7/ (version 7: before the spectral
PFR layout).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffcodec.codec import decode
from diffcodec.container import parse
from diffcodec.kinds import ChunkKind
from golden_cases import CASES, case_prior, encode_case

GOLDEN = Path(__file__).resolve().parent / "golden"


def _regenerate() -> None:
    lines = []
    for name in CASES:
        data, source = encode_case(name)
        (GOLDEN / f"{name}.dfc").write_bytes(data)
        source.save(GOLDEN / f"{name}.png")
        lines.append(f"{hashlib.md5(data).hexdigest()}  {name}.dfc")
    (GOLDEN / "MD5SUMS").write_text("\n".join(lines) + "\n")


if os.environ.get("DIFFCODEC_REGEN_GOLDEN") == "1":
    _regenerate()
MD5 = dict(reversed(line.split()) for line in (GOLDEN / "MD5SUMS").read_text().splitlines())
#: Folders of files from earlier encoders, with the format version their files carry.
LEGACY = {GOLDEN / "v2": 2, GOLDEN / "v3": 3, GOLDEN / "v3ctx": 3, GOLDEN / "v4": 4, GOLDEN / "v5": 5, GOLDEN / "v6": 6,
          GOLDEN / "v7": 7}
LEGACY_MD5 = {folder: dict(reversed(line.split()) for line in (folder / "MD5SUMS").read_text().splitlines())
              for folder in LEGACY}


def test_cases_hold_the_kinds_the_encoder_writes():
    """The golden files pin the chunk kinds the encoder writes today, the neighbourhood layout's
    UQ step too (its final step: test_final.py's golden payload; the analytic prior leaves the
    final step's residuals no spatial correlation for it to take), and the earlier files the
    texture kinds."""
    kinds = {c.kind for name in CASES for c in parse((GOLDEN / f"{name}.dfc").read_bytes()).chunks}
    assert {ChunkKind.UQ, ChunkKind.PFR, ChunkKind.FINAL, ChunkKind.UQ_CTX, ChunkKind.UQ_NBR,
            ChunkKind.FINAL_TEX, ChunkKind.PFR_SPEC} <= kinds
    v6 = {c.kind for name in LEGACY_MD5[GOLDEN / "v6"] for c in parse((GOLDEN / "v6" / name).read_bytes()).chunks}
    assert {ChunkKind.UQ_TEX, ChunkKind.FINAL_TEX} <= v6


@pytest.mark.parametrize("name", list(CASES))
def test_committed_file_is_the_pinned_one(name):
    data = (GOLDEN / f"{name}.dfc").read_bytes()
    assert hashlib.md5(data).hexdigest() == MD5[f"{name}.dfc"]


@pytest.mark.parametrize("name", list(CASES))
def test_encoder_reproduces_the_golden_bytes(name):
    data, _ = encode_case(name)
    assert data == (GOLDEN / f"{name}.dfc").read_bytes()


@pytest.mark.parametrize("folder,name", [(GOLDEN, n) for n in CASES]
                         + [(f, n) for f in LEGACY for n in sorted(LEGACY_MD5[f])])
def test_golden_file_decodes_to_its_source(folder, name):
    name = name.removesuffix(".dfc")
    data = (folder / f"{name}.dfc").read_bytes()
    if folder in LEGACY:  # untouched, and of its version
        assert hashlib.md5(data).hexdigest() == LEGACY_MD5[folder][f"{name}.dfc"] and data[8] == LEGACY[folder]
    source = Image.open(GOLDEN / f"{name}.png")
    out = decode(data, case_prior(name))
    parsed = parse(data)
    assert out.lossless == (parsed.chunks[-1].kind.is_final)
    if out.lossless:
        assert out.image.mode == source.mode
        np.testing.assert_array_equal(np.asarray(out.image), np.asarray(source))
    else:
        assert out.step == len(parsed.chunks) and out.image.size == source.size
