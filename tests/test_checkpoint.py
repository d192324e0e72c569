"""Checkpoints (diffcodec.checkpoint): exact round trip, fingerprint, corruption and safe loading."""

from __future__ import annotations

import copy
import os
import struct
import zipfile
from pathlib import Path

import pytest
import torch

from diffcodec.checkpoint import FORMAT, fingerprint, load_prior, read_checkpoint, save_checkpoint
from diffcodec.diffusion import DiffusionConfig
from diffcodec.errors import CheckpointError, DiffcodecError
from diffcodec.unet import UNet, named_config
from codec_fixtures import randomize_




@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return randomize_(UNet(named_config("tiny")).eval(), 1)


@pytest.fixture()
def ckpt(tmp_path, tiny) -> tuple[Path, str]:
    path = tmp_path / "model.pt"
    fp = save_checkpoint(path, tiny.config, DiffusionConfig(), tiny.state_dict(), meta={"note": "test"})
    return path, fp


def _inputs():
    g = torch.Generator().manual_seed(5)
    return torch.randn(2, 3, 13, 10, generator=g), torch.tensor([4.0, 800.0])


def test_round_trip_identical_outputs(ckpt, tiny):
    path, fp = ckpt
    assert len(fp) == 64 and int(fp, 16) >= 0
    prior = load_prior(path)
    assert prior.fingerprint == fp
    assert prior.unet == tiny.config and prior.diffusion == DiffusionConfig()
    assert prior.meta == {"note": "test"}
    assert not prior.net.training and not any(p.requires_grad for p in prior.net.parameters())
    x, t = _inputs()
    # load_prior puts a CPU net in channels_last; the same weights in the same layout give
    # bit-identical outputs (the codec's encoder and decoder rely on that)
    same_layout = copy.deepcopy(tiny).to(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(prior.net(x, t), same_layout(x, t))
        assert torch.equal(load_prior(path).net(x, t), prior.net(x, t))
        torch.testing.assert_close(prior.net(x, t), tiny(x, t), rtol=1e-4, atol=1e-5)
    for k, v in tiny.state_dict().items():
        assert torch.equal(prior.net.state_dict()[k], v), k
    blob = read_checkpoint(path)
    assert blob["format"] == FORMAT and blob["fingerprint"] == fp


def test_fingerprint_is_deterministic_and_sensitive(tmp_path, tiny):
    sd = tiny.state_dict()
    u, d = tiny.config, DiffusionConfig()
    fp1 = save_checkpoint(tmp_path / "a.pt", u, d, sd)
    fp2 = save_checkpoint(tmp_path / "b.pt", u, d, {k: v.clone() for k, v in sd.items()})
    assert fp1 == fp2
    assert fingerprint(u.to_dict(), d.to_dict(), sd) == fp1
    # one ulp in one weight
    changed = {k: v.clone() for k, v in sd.items()}
    w = changed["input_conv.weight"].view(-1)
    w[7] = torch.nextafter(w[7], torch.tensor(10.0))
    assert fingerprint(u.to_dict(), d.to_dict(), changed) != fp1
    # the diffusion configuration is part of the identity
    assert fingerprint(u.to_dict(), DiffusionConfig(num_timesteps=4000).to_dict(), sd) != fp1
    # a different layout of the same values (channels_last) is the same model
    cl = {k: (v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v) for k, v in sd.items()}
    assert fingerprint(u.to_dict(), d.to_dict(), cl) == fp1


def test_missing_random_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError):
        read_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError):
        load_prior(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError):
        read_checkpoint(tmp_path)  # a directory
    rnd = tmp_path / "random.pt"
    rnd.write_bytes(os.urandom(5000))
    with pytest.raises(CheckpointError):
        read_checkpoint(rnd)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError):
        load_prior(empty)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(3)}}, other)
    with pytest.raises(CheckpointError, match="not a diffcodec checkpoint"):
        read_checkpoint(other)
    assert issubclass(CheckpointError, DiffcodecError)


def test_wrong_version_and_incomplete(tmp_path, ckpt):
    path, _ = ckpt
    blob = torch.load(path, weights_only=True)
    blob["version"] = 2
    torch.save(blob, tmp_path / "v2.pt")
    with pytest.raises(CheckpointError, match="version"):
        read_checkpoint(tmp_path / "v2.pt")
    blob = torch.load(path, weights_only=True)
    del blob["ema"]
    torch.save(blob, tmp_path / "noema.pt")
    with pytest.raises(CheckpointError):
        read_checkpoint(tmp_path / "noema.pt")


def test_tampered_weights_fingerprint_mismatch(tmp_path, ckpt):
    path, _ = ckpt
    blob = torch.load(path, weights_only=True)
    blob["ema"]["out.2.bias"][0] += 1e-3
    bad = tmp_path / "tampered.pt"
    torch.save(blob, bad)
    with pytest.raises(CheckpointError, match="fingerprint"):
        read_checkpoint(bad)
    with pytest.raises(CheckpointError, match="fingerprint"):
        load_prior(bad)
    # tampering with the configuration is caught the same way
    blob = torch.load(path, weights_only=True)
    blob["diffusion"]["num_timesteps"] = 4000
    torch.save(blob, bad)
    with pytest.raises(CheckpointError, match="fingerprint"):
        read_checkpoint(bad)


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch warns about some mangled pickles
def test_flipped_bytes_raise_only_checkpoint_error(tmp_path):
    """Flip one byte at many offsets: the result is a CheckpointError or (for bytes that carry no
    model information, e.g. zip padding) the identical model -- never another exception and
    never a silently different model.  A small stand-in state dict keeps this fast."""
    g = torch.Generator().manual_seed(0)
    ema = {"a.weight": torch.randn(8, 3, 3, 3, generator=g), "a.bias": torch.randn(8, generator=g),
           "b.weight": torch.randn(16, 8, generator=g).half(), "n.count": torch.arange(5)}
    path = tmp_path / "m.pt"
    fp = save_checkpoint(path, named_config("tiny"), DiffusionConfig(), ema, meta={"data": "x"})
    data = path.read_bytes()
    with zipfile.ZipFile(path) as z:
        infos = {i.filename.split("/", 1)[1]: i for i in z.infolist()}
    pkl = infos["data.pkl"]
    # every byte of the pickle (and its local header), every 11th byte of the rest
    offsets = sorted(set(range(0, pkl.header_offset + 100 + pkl.file_size)) | set(range(0, len(data), 11)))
    bad = tmp_path / "bad.pt"
    caught = 0
    for k in offsets:
        b = bytearray(data)
        b[k] ^= 0xFF
        bad.write_bytes(bytes(b))
        try:
            blob = read_checkpoint(bad)
        except CheckpointError:
            caught += 1
            continue
        except Exception as e:  # pragma: no cover - the failure this test looks for
            pytest.fail(f"flipping byte {k} raised {type(e).__name__}: {e}")
        assert blob["fingerprint"] == fp, k
        assert blob["ema"].keys() == ema.keys()
        assert all(torch.equal(blob["ema"][n], ema[n]) for n in ema), k
    assert caught > 0.5 * len(offsets)
    # a flip inside a weight tensor is always caught, by the fingerprint
    ema_record = max((i for n, i in infos.items() if n.startswith("data/")), key=lambda i: i.file_size)
    assert ema_record.compress_type == zipfile.ZIP_STORED
    name_len, extra_len = struct.unpack("<HH", data[ema_record.header_offset + 26:ema_record.header_offset + 30])
    start = ema_record.header_offset + 30 + name_len + extra_len  # the stored tensor bytes
    b = bytearray(data)
    b[start + ema_record.file_size // 2] ^= 0x01
    bad.write_bytes(bytes(b))
    with pytest.raises(CheckpointError):
        read_checkpoint(bad)


def test_truncated_file(tmp_path, ckpt):
    path, _ = ckpt
    data = path.read_bytes()
    for n in (10, len(data) // 2, len(data) - 1):
        bad = tmp_path / f"trunc{n}.pt"
        bad.write_bytes(data[:n])
        with pytest.raises(CheckpointError):
            read_checkpoint(bad)


def test_fp16_checkpoint(tmp_path, tiny):
    p32, p16 = tmp_path / "m32.pt", tmp_path / "m16.pt"
    fp32 = save_checkpoint(p32, tiny.config, DiffusionConfig(), tiny.state_dict())
    fp16 = save_checkpoint(p16, tiny.config, DiffusionConfig(), tiny.state_dict(), dtype=torch.float16)
    assert fp16 != fp32
    ratio = p16.stat().st_size / p32.stat().st_size
    assert 0.45 < ratio < 0.6, ratio
    blob = read_checkpoint(p16)
    assert all(v.dtype == torch.float16 for v in blob["ema"].values() if v.is_floating_point())
    prior = load_prior(p16)
    assert prior.fingerprint == fp16
    assert all(p.dtype == torch.float32 for p in prior.net.parameters())
    x, t = _inputs()
    with torch.no_grad():
        ref, got = tiny(x, t), prior.net(x, t)
    assert not torch.equal(got, ref)  # really rounded
    torch.testing.assert_close(got, ref, rtol=0, atol=2e-2 * ref.abs().max().item())
    for k, v in tiny.state_dict().items():
        torch.testing.assert_close(prior.net.state_dict()[k], v.half().float(), rtol=0, atol=0)


def test_config_weight_mismatch_is_a_checkpoint_error(tmp_path, tiny):
    # the tiny weights with the small configuration: a consistent fingerprint, but no such net
    path = tmp_path / "mismatch.pt"
    save_checkpoint(path, named_config("small"), DiffusionConfig(), tiny.state_dict())
    read_checkpoint(path)  # the file itself is intact
    with pytest.raises(CheckpointError, match="does not match"):
        load_prior(path)
    # a 6-channel net with a fixed variance
    path2 = tmp_path / "var.pt"
    save_checkpoint(path2, tiny.config, DiffusionConfig(model_var_type="fixed_small"), tiny.state_dict())
    with pytest.raises(CheckpointError, match="variance"):
        load_prior(path2)
    # an unknown configuration key
    blob = torch.load(tmp_path / "var.pt", weights_only=True)
    u = dict(blob["unet"], depth=3)
    path3 = tmp_path / "key.pt"
    save_checkpoint(path3, tiny.config, DiffusionConfig(), tiny.state_dict())
    blob = torch.load(path3, weights_only=True)
    blob["unet"] = u
    blob["fingerprint"] = fingerprint(u, blob["diffusion"], blob["ema"])
    torch.save(blob, path3)
    with pytest.raises(CheckpointError):
        load_prior(path3)


class _Payload:
    """Unpickling this runs os.mkdir(marker): the stand-in for arbitrary code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("force_unsafe_env", [False, True])
def test_loading_never_executes_code(tmp_path, ckpt, monkeypatch, force_unsafe_env):
    path, _ = ckpt
    marker = tmp_path / "PWNED"
    # 1. the payload is live: an unrestricted unpickler does run it
    probe = tmp_path / "probe.pt"
    torch.save({"x": _Payload(str(marker))}, probe)
    torch.load(probe, weights_only=False)
    assert marker.is_dir()
    marker.rmdir()

    # 2. a bare payload and one hidden inside an otherwise valid checkpoint are refused unexecuted
    if force_unsafe_env:  # explicit weights_only=True must win over this override
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    blob = torch.load(path, weights_only=True)
    blob["meta"] = {"note": _Payload(str(marker))}
    hidden = tmp_path / "hidden.pt"
    torch.save(blob, hidden)
    for evil in (probe, hidden):
        with pytest.raises(CheckpointError):
            read_checkpoint(evil)
        with pytest.raises(CheckpointError):
            load_prior(evil)
        assert not marker.exists()
