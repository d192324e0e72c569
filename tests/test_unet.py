"""The epsilon-predicting U-Net (diffcodec.unet): shapes, initialisation, layout and batching."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import diffcodec.unet as unet_module
from diffcodec.unet import (CONFIGS, UNet, UNetConfig, count_parameters, forward_symmetrised, forward_tiled, named_config,
                            receptive_radius, tile_halo, timestep_embedding)
from codec_fixtures import randomize_




@pytest.fixture(scope="module")
def tiny6():
    torch.manual_seed(0)
    return randomize_(UNet(named_config("tiny", learn_sigma=True)).eval(), 1)


@pytest.mark.parametrize("size", [(37, 23), (1, 1), (5, 7), (64, 48), (16, 16), (2, 3)])
@pytest.mark.parametrize("learn_sigma", [True, False])
def test_tiny_output_shapes(size, learn_sigma):
    net = UNet(named_config("tiny", learn_sigma=learn_sigma)).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        out = net(x, torch.tensor([0.0, 999.0]))
    assert out.shape == (2, 6 if learn_sigma else 3, *size)


@pytest.mark.parametrize("size", [(1, 1), (5, 7), (13, 9), (8, 8)])
def test_small_output_shapes(size):
    cfg = named_config("small")
    assert cfg.downsample_factor == 4 and cfg.attention_resolutions  # padding to 4 and attention are exercised
    net = randomize_(UNet(cfg).eval())
    with torch.no_grad():
        out = net(torch.randn(1, 3, *size), torch.tensor([500.0]))
    assert out.shape == (1, 6, *size) and torch.isfinite(out).all()


def test_named_configs():
    assert set(CONFIGS) >= {"tiny", "small", "base"}
    for name in CONFIGS:
        assert named_config(name, learn_sigma=True).out_channels == 6
        assert named_config(name, learn_sigma=False).out_channels == 3
    with pytest.raises(ValueError):
        named_config("huge")
    with pytest.raises(ValueError):
        UNetConfig(model_channels=4)
    # a config survives its dict (as a checkpoint stores it) and stays hashable
    cfg = named_config("small")
    again = UNetConfig(**cfg.to_dict())
    assert again == cfg and hash(again) == hash(cfg)
    assert isinstance(cfg.to_dict()["channel_mult"], list)
    assert count_parameters(UNet(named_config("tiny"))) < count_parameters(UNet(named_config("small")))


def test_zero_initialised_output():
    torch.manual_seed(0)
    net = UNet(named_config("tiny")).eval()
    x = torch.randn(3, 3, 11, 9)
    with torch.no_grad():
        out = net(x, torch.tensor([0.0, 10.0, 999.0]))
    assert torch.equal(out, torch.zeros_like(out))
    # ...and only because of the output conv: with it randomised the output is not 0
    with torch.no_grad():
        net.out[-1].weight.normal_(0, 0.05)
        out = net(x, torch.tensor([0.0, 10.0, 999.0]))
    assert out.abs().max() > 1e-3


def test_channels_last_input_matches(tiny6):
    x = torch.randn(2, 3, 20, 18)
    t = torch.tensor([3.0, 700.0])
    with torch.no_grad():
        ref = tiny6(x, t)
        cl = tiny6(x.contiguous(memory_format=torch.channels_last), t)
        net_cl = UNet(tiny6.config).eval()
        net_cl.load_state_dict(tiny6.state_dict())
        net_cl = net_cl.to(memory_format=torch.channels_last)
        both = net_cl(x.contiguous(memory_format=torch.channels_last), t)
    torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(both, ref, rtol=1e-4, atol=1e-5)


def test_batch_independence_and_time_dependence(tiny6):
    """GroupNorm (no batch statistics): an image's output does not depend on its batch-mates."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 15, 17, generator=g)
    t = torch.tensor([10.0, 500.0, 990.0])
    with torch.no_grad():
        batch = tiny6(x, t)
        single = torch.cat([tiny6(x[i:i + 1], t[i:i + 1]) for i in range(3)])
        other_t = tiny6(x, torch.tensor([11.0, 300.0, 0.0]))
    torch.testing.assert_close(batch, single, rtol=1e-4, atol=1e-5)
    for i in range(3):
        assert (other_t[i] - batch[i]).abs().max() > 1e-4  # the timestep conditions the output


def test_odd_size_output_is_local_and_finite(tiny6):
    """Padding to the downsampling factor is inside forward: the crop of an odd-sized input's
    output lines up with the input (a change at the top-left corner leaves the far corner of a
    large image's output untouched by the pad)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, 37, 23, generator=g)
    t = torch.tensor([100.0])
    with torch.no_grad():
        a = tiny6(x, t)
        x2 = x.clone()
        x2[..., 0, 0] += 5.0
        b = tiny6(x2, t)
    assert torch.isfinite(a).all()
    diff = (a - b).abs()[0].amax(0)
    assert diff[0, 0] > 1e-4
    # the middle attention block is global, so far pixels may change a little; the corner pixel
    # changes the most
    assert diff.max() == diff[:4, :4].max()


def test_all_parameters_get_gradients():
    """Every parameter is used (DDP without find_unused_parameters requires it)."""
    torch.manual_seed(0)
    net = randomize_(UNet(named_config("tiny")))
    out = net(torch.randn(2, 3, 12, 10), torch.tensor([1.0, 900.0]))
    out.square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name


def test_timestep_embedding():
    t = torch.tensor([0.0, 1.0, 999.5])
    for dim in (16, 17):
        emb = timestep_embedding(t, dim)
        assert emb.shape == (3, dim)
        half = dim // 2
        torch.testing.assert_close(emb[0, :half], torch.ones(half))  # cos(0)
        torch.testing.assert_close(emb[0, half:2 * half], torch.zeros(half))  # sin(0)
        # highest frequency is 1: emb[1] = cos(1), sin(1)
        assert float(emb[1, 0]) == pytest.approx(math.cos(1.0), abs=1e-6)
        assert float(emb[1, half]) == pytest.approx(math.sin(1.0), abs=1e-6)
        if dim % 2:
            assert torch.equal(emb[:, -1], torch.zeros(3))
    # fractional timesteps (respaced chains) give distinct embeddings
    assert not torch.allclose(timestep_embedding(torch.tensor([4.25]), 16), timestep_embedding(torch.tensor([4.0]), 16))


@pytest.mark.parametrize("name,size", [("small", (96, 144)), ("local16", (64, 96))])
def test_output_words_do_not_depend_on_thread_count(name, size):
    """Encoder and decoder may run with different thread counts (another machine): the network's
    CPU inference output must be the same floats for any, or files stop decoding. torch's
    channels_last GroupNorm and its GEMM-based 1 x 1 convolutions were not (1e-6..1e-4 apart)."""
    torch.manual_seed(1)
    net = randomize_(UNet(named_config(name)).eval(), 2).to(memory_format=torch.channels_last)
    net.requires_grad_(False)
    x = torch.randn(1, 3, *size).contiguous(memory_format=torch.channels_last)
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            with torch.inference_mode():
                outs.append(net(x, torch.tensor([400])))
    finally:
        torch.set_num_threads(before)
    assert outs[0].abs().max() > 1e-3
    for other in outs[1:]:
        assert torch.equal(other, outs[0])


def test_pixel_norm_channels_last_path_matches_its_formula():
    """The fused layer_norm taken for channels_last input is the same per-pixel LayerNorm."""
    from diffcodec.unet import _PixelNorm
    torch.manual_seed(0)
    norm = _PixelNorm(24)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
        x = 3 * torch.randn(2, 24, 9, 13) + 1
        fused = norm(x.contiguous(memory_format=torch.channels_last))
        plain = norm(x)
    assert fused.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    mean, var = x.mean(1, keepdim=True), x.var(1, keepdim=True, unbiased=False)
    torch.testing.assert_close(plain, (x - mean) / torch.sqrt(var + 1e-5) * norm.weight[:, None, None]
                               + norm.bias[:, None, None], rtol=1e-5, atol=1e-5)


def test_tiled_evaluation_of_a_tile_exact_network_equals_the_whole_image_call(monkeypatch):
    """A network without whole-map statistics or attention, run over tiles with a halo of its
    receptive radius, gives the whole-image output (to float rounding), and reports each tile;
    with too small a halo it does not."""
    cfg = UNetConfig(model_channels=8, num_res_blocks=1, channel_mult=(1, 2), attention_resolutions=(),
                     middle_attention=False, norm="layer")
    assert cfg.tile_exact
    halo = tile_halo(cfg)
    assert halo == -(-receptive_radius(cfg) // 2) * 2 < 40
    net = randomize_(UNet(cfg).eval(), 3)
    x = torch.randn(1, 3, 70, 90, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([17])
    seen = []
    with torch.inference_mode():
        whole = net(x, t)
        tiled = forward_tiled(net, x, t, tile_pixels=24 * 24, on_tile=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 12) for i in range(1, 13)]  # 3 x 4 tiles of 24 px (aligned to the factor 2)
    assert tiled.shape == whole.shape
    torch.testing.assert_close(tiled, whole, rtol=0, atol=2e-6)  # measured: 6e-7
    monkeypatch.setattr(unet_module, "tile_halo", lambda cfg: halo // 2)
    with torch.inference_mode():
        short = forward_tiled(net, x, t, tile_pixels=24 * 24)
    assert (short - whole).abs().max() > 1e-3


def test_kept_channels_are_the_same_floats(tiny6):
    """``channels=3`` (the codec's eps without the variance output) gives exactly the first three
    channels of the full output, whole or tiled, plain or symmetrised, in a buffer of only those;
    ``dtype`` converts the input tile by tile to the same floats."""
    t = torch.tensor([120])
    with torch.inference_mode():
        for tile, (h, w) in itertools.product((None, 24 * 24), ((40, 56), (41, 57))):  # 41 x 57 is padded
            x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(2))
            full = forward_tiled(tiny6, x, t, tile_pixels=tile)
            kept = forward_tiled(tiny6, x, t, tile_pixels=tile, channels=3)
            assert full.shape[1] == 6 and kept.shape == (1, 3, h, w)
            assert torch.equal(kept, full[:, :3])
            if tile is not None:
                assert 2 * kept.untyped_storage().nbytes() == full.untyped_storage().nbytes()  # 3 of 6 channels
            ensemble = 8 if tile is None else 2  # the transposes whole, a mirror tiled (seconds, not tens)
            assert torch.equal(forward_symmetrised(tiny6, x, t, ensemble, tile, channels=3),
                               forward_symmetrised(tiny6, x, t, ensemble, tile)[:, :3])
            # a float64 input converted tile by tile: the same floats as converting it whole
            x64 = x.double() + 1e-9
            for sym in (1, ensemble):
                assert torch.equal(forward_symmetrised(tiny6, x64, t, sym, tile, channels=3, dtype=torch.float32),
                                   forward_symmetrised(tiny6, x64.float(), t, sym, tile, channels=3))


# ----------------------------------------------------------------------------- self-ensemble

_MIRROR_LR = lambda x: x.flip(-1)  # noqa: E731
_MIRROR_UD = lambda x: x.flip(-2)  # noqa: E731
_TRANSPOSE = lambda x: x.transpose(-2, -1)  # noqa: E731


def test_symmetrised_call_is_equivariant_to_its_symmetries(tiny6):
    """A mean over a group of the square's symmetries is equivariant to that group although the
    network is not; symmetry 1 is the plain call; a non-square image works (transposes swap H, W)."""
    x = torch.randn(1, 3, 24, 40, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([300])
    with torch.inference_mode():
        plain = forward_tiled(tiny6, x, t)
        assert torch.equal(forward_symmetrised(tiny6, x, t, 1), plain)
        assert (forward_tiled(tiny6, _MIRROR_LR(x), t) - _MIRROR_LR(plain)).abs().max() > 1e-2  # not equivariant
        two, eight = forward_symmetrised(tiny6, x, t, 2), forward_symmetrised(tiny6, x, t, 8)
        assert two.shape == eight.shape == plain.shape
        torch.testing.assert_close(forward_symmetrised(tiny6, _MIRROR_LR(x), t, 2), _MIRROR_LR(two), rtol=0, atol=1e-6)
        for g in (_MIRROR_LR, _MIRROR_UD, _TRANSPOSE):
            torch.testing.assert_close(forward_symmetrised(tiny6, g(x), t, 8), g(eight), rtol=0, atol=1e-6)
        # the mean of the 8 plain calls on the transformed inputs, transformed back
        calls = [forward_tiled(tiny6, x, t), _MIRROR_LR(forward_tiled(tiny6, _MIRROR_LR(x), t)),
                 _TRANSPOSE(forward_tiled(tiny6, _TRANSPOSE(x), t))]
        assert (two - (calls[0] + calls[1]) / 2).abs().max() < 1e-6
    with pytest.raises(ValueError, match="symmetry"):
        forward_symmetrised(tiny6, x, t, 3)


def test_symmetrised_call_reports_progress_over_all_its_calls():
    cfg = UNetConfig(model_channels=8, num_res_blocks=1, channel_mult=(1, 2), attention_resolutions=(),
                     middle_attention=False, norm="layer")
    net = randomize_(UNet(cfg).eval(), 3)
    seen = []
    with torch.inference_mode():
        forward_symmetrised(net, torch.randn(1, 3, 30, 30), torch.tensor([5]), 4, tile_pixels=16 * 16,
                            on_tile=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 16) for i in range(1, 17)]  # 4 calls x 2 x 2 tiles
