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

PROBE = """
import diffcodec.cli, os, torch
from diffcodec.allocator import prefer_huge_pages
x = torch.ones(64 << 20)  # 256 MB
p, inside, advised = x.data_ptr(), False, False
for line in open("/proc/self/smaps"):  # the mapping that holds the tensor: advised MADV_HUGEPAGE ("hg")?
    head = line.split()[0]
    if "-" in head and not head.endswith(":"):
        lo, hi = (int(v, 16) for v in head.split("-"))
        inside = lo <= p < hi
    elif inside and head == "VmFlags:":
        advised = "hg" in line.split()[1:]
print(int(prefer_huge_pages()), os.environ.get("THP_MEM_ALLOC_ENABLE"), int(advised))
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


@pytest.mark.skipif(not Path("/sys/kernel/mm/transparent_hugepage").exists() or not Path("/proc/self/smaps").exists(),
                    reason="no transparent huge pages in this kernel")
def test_the_command_asks_for_huge_pages_and_the_user_can_say_no():
    """torch advises its large blocks MADV_HUGEPAGE when the command has set the variable, and
    not when the user set it to 0.  Whether the kernel then backs them with huge pages depends on
    its THP mode and free memory, so the advice is what is asserted."""
    assert _probe() == ["1", "1", "1"]
    assert _probe(THP_MEM_ALLOC_ENABLE="0") == ["0", "0", "0"]


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


HEAP_PROBE = """
import os, sys, numpy as np
from diffcodec.allocator import cap_heap_growth
capped = cap_heap_growth() if sys.argv[1] == "1" else False
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
big = np.ones((30 << 20) // 8)  # mmapped; freeing it raises glibc's dynamic threshold to 30 MB
del big
a = np.ones((16 << 20) // 8)  # 16 MB, written: resident
before = rss()
del a
print(int(capped), int(before - rss() > (12 << 20)))
"""


def _has_mallopt() -> bool:
    import ctypes
    try:
        return hasattr(ctypes.CDLL(None), "mallopt")
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux") or not Path("/proc/self/statm").exists() or not _has_mallopt(),
                    reason="glibc's mallopt and /proc are Linux's")
def test_capped_heap_returns_a_freed_array_and_the_user_can_say_no():
    """With the cap a freed 16 MB array leaves the resident set at once (it was mmapped); without
    it glibc, its threshold raised by the 30 MB block freed before, carves it from the heap and
    keeps it.  A user's MALLOC_MMAP_THRESHOLD_ is left alone."""
    def probe(flag: str, **extra) -> list[str]:
        env = _env(**extra)
        if not extra:  # the cap is asked for (or not) in an environment without the user's setting
            env.pop("MALLOC_MMAP_THRESHOLD_", None)
        out = subprocess.run([sys.executable, "-c", HEAP_PROBE, flag], env=env, capture_output=True, text=True,
                             timeout=120, cwd=REPO)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    assert probe("1") == ["1", "1"]
    assert probe("0") == ["0", "0"]
    assert probe("1", MALLOC_MMAP_THRESHOLD_="67108864")[0] == "0"
