"""Huge pages for torch's CPU blocks (diffcodec.allocator): the `diffcodec` command turns them on
before torch is imported, a user's THP_MEM_ALLOC_ENABLE=0 wins, and the files do not change.
Each case runs in a fresh interpreter: torch reads the variable once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from codec_fixtures import tiny_model_path  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
MODE = THP.read_text().split("[")[1].split("]")[0] if THP.exists() else "never"

PROBE = """
import diffcodec.cli, os, torch
from diffcodec.allocator import prefer_huge_pages
x = torch.ones(64 << 20)  # 256 MB
huge = [l for l in open("/proc/self/smaps_rollup") if l.startswith("AnonHugePages")]
print(int(prefer_huge_pages()), os.environ.get("THP_MEM_ALLOC_ENABLE"), int(huge[0].split()[1]) // 1024 if huge else -1)
"""


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    env.update(extra, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    return env


def _probe(**extra) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE], env=_env(**extra), capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.skipif(MODE == "never" or not Path("/proc/self/smaps_rollup").exists(), reason="no transparent huge pages")
def test_the_command_gets_huge_pages_and_the_user_can_say_no():
    on, value, huge_mb = _probe()
    assert (on, value) == ("1", "1") and int(huge_mb) >= 128  # most of a 256 MB tensor
    off, value, huge_mb = _probe(THP_MEM_ALLOC_ENABLE="0")
    assert (off, value) == ("0", "0")
    if MODE == "madvise":  # with "always" the kernel gives huge pages to everything
        assert huge_mb == "0"


def test_huge_pages_do_not_change_the_file(tiny_model_path, tmp_path):  # noqa: F811
    rng = np.random.default_rng(5)
    base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8).repeat(24, 0).repeat(24, 1)  # 192 x 192, smooth-ish
    img = np.clip(base.astype(int) + rng.integers(-6, 7, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "img.png")
    files = []
    for flag in ("1", "0"):
        out = tmp_path / f"thp{flag}.dfc"
        proc = subprocess.run([sys.executable, "-m", "diffcodec.cli", "encode", str(tmp_path / "img.png"), "-o", str(out),
                               "--model", str(tiny_model_path), "--seed", "3", "--effort", "1", "-q"],
                              env=_env(THP_MEM_ALLOC_ENABLE=flag), capture_output=True, text=True, timeout=300, cwd=REPO)
        assert proc.returncode == 0, proc.stderr
        files.append(out.read_bytes())
    assert files[0] == files[1]
