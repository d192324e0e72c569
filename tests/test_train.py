"""Training (diffcodec.train): it learns, it resumes exactly, it refuses a wrong resume, DDP runs."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from diffcodec.checkpoint import load_prior, read_checkpoint, save_checkpoint
from diffcodec.data import ImageCrops
from diffcodec.diffusion import DiffusionConfig
from diffcodec.errors import CheckpointError, DiffcodecError
from diffcodec.errors import OptionError
from diffcodec.train import CodecWeighting, ImportanceSampler, TrainConfig, heldout_bpd, train
from diffcodec.unet import named_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def two_images(image_folder, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("two")
    for name in ("astronaut.png", "coffee.png"):
        shutil.copy(Path(image_folder) / name, folder / name)
    return str(folder)


def _fixed_hybrid_loss(net, dcfg: DiffusionConfig, x: torch.Tensor) -> float:
    """The hybrid training loss on a fixed batch, fixed noise and timesteps spread over 0..T-1."""
    d = dcfg.build()
    t = torch.linspace(0, dcfg.num_timesteps - 1, x.shape[0]).long()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return float(d.training_losses(net, x, t, "hybrid", noise=noise)["loss"].mean())


def test_tiny_model_overfits_two_images(two_images, tmp_path):
    common = dict(data=two_images, model="tiny", crop=16, batch_size=8, lr=2e-3, warmup=10, ema_rate=0.9,
                  device="cpu", save_every=10**6, eval_data=two_images, eval_every=50, eval_crops=4, eval_steps=10)
    # steps=0 writes the untrained initial model (same seed, so the same init as the real run)
    train(TrainConfig(out=str(tmp_path / "init.pt"), steps=0, **common), progress=False)
    log = tmp_path / "log.tsv"
    summary = train(TrainConfig(out=str(tmp_path / "model.pt"), steps=100, log_file=str(log), **common),
                    progress=False)
    assert summary["steps"] == 100 and summary["world"] == 1

    dcfg = DiffusionConfig()  # TrainConfig's defaults: cosine, 1000 steps, learned_range
    init, final = load_prior(tmp_path / "init.pt"), load_prior(tmp_path / "model.pt")
    assert final.diffusion == dcfg and final.unet == named_config("tiny")

    # the training loss (hybrid) on a fixed batch of crops of the same images falls clearly
    batch = ImageCrops(two_images, 16).fixed_crops(32, seed=1)
    loss0, loss1 = _fixed_hybrid_loss(init.net, dcfg, batch), _fixed_hybrid_loss(final.net, dcfg, batch)
    assert loss1 < 0.3 * loss0, (loss0, loss1)

    # the logged per-step eps-MSE falls too (1.0 for the zero-initialised net)
    rows = np.loadtxt(log, usecols=(0, 1, 2))
    assert rows.shape == (100, 3) and np.array_equal(rows[:, 0], np.arange(1, 101))
    assert rows[:10, 2].mean() > 0.8 and rows[-10:, 2].mean() < 0.5 * rows[:10, 2].mean()

    # the held-out bound (10-step respaced chain) on fixed crops of the same images
    crops = ImageCrops(two_images, 16).fixed_crops(8)
    bpd0, bpd1 = heldout_bpd(init.net, dcfg, crops, 10), heldout_bpd(final.net, dcfg, crops, 10)
    assert np.isfinite(bpd0) and np.isfinite(bpd1)
    assert bpd1 < 0.6 * bpd0 and bpd1 < 10.0, (bpd0, bpd1)
    # ... and the in-training evaluation recorded the same kind of figure
    hist = summary["history"]
    assert [h["step"] for h in hist] == [50, 100]
    assert hist[-1]["heldout_bpd"] < 0.6 * bpd0
    assert read_checkpoint(tmp_path / "model.pt")["train"]["history"] == hist


def _resume_cfg(data: str, out: Path, steps: int) -> TrainConfig:
    # T = 2 so that the importance sampler warms up (10 losses per t) within a few steps, and
    # dropout > 0 so that the per-step RNG of the network is part of what must be reproduced.
    return TrainConfig(data=data, out=str(out), model="tiny", crop=16, rescale_min=0.6, batch_size=4,
                       num_timesteps=2, lr=1e-3, warmup=3, steps=steps, dropout=0.1, save_every=4,
                       device="cpu", ema_rate=0.99)


def _assert_same_state(a, b, path=""):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_same_state(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_state(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def test_resume_is_exact(image_folder, tmp_path):
    n = 10
    train(_resume_cfg(image_folder, tmp_path / "a.pt", n), progress=False)
    half = _resume_cfg(image_folder, tmp_path / "b.pt", n // 2)
    train(half, progress=False)
    mid = read_checkpoint(tmp_path / "b.pt")
    assert mid["train"]["step"] == n // 2
    shutil.copy(tmp_path / "b.pt", tmp_path / "b_mid.pt")
    train(replace(half, steps=n), progress=False)

    a, b = read_checkpoint(tmp_path / "a.pt"), read_checkpoint(tmp_path / "b.pt")
    assert a["train"]["step"] == b["train"]["step"] == n
    assert a["fingerprint"] == b["fingerprint"]
    _assert_same_state(a["ema"], b["ema"], "ema")
    _assert_same_state(a["train"]["model"], b["train"]["model"], "model")
    _assert_same_state(a["train"]["optimizer"], b["train"]["optimizer"], "optimizer")
    _assert_same_state(a["train"]["sampler"], b["train"]["sampler"], "sampler")
    steps = {float(s["step"]) for s in a["train"]["optimizer"]["state"].values()}
    assert steps == {float(n)}
    # the sampler did warm up, so its state (not just uniform draws) went through the resume
    assert bool((a["train"]["sampler"]["counts"] == 10).all())
    assert not bool((mid["train"]["sampler"]["counts"] == 10).all())
    # the second half really trained (the comparison is not between two copies of the midpoint)
    assert not torch.equal(mid["ema"]["input_conv.weight"], a["ema"]["input_conv.weight"])

    # the EMA update of one step: ema <- ema + (1 - rate) (model - ema), rate = min(0.99, (1 + s) / (10 + s))
    one = tmp_path / "c.pt"
    shutil.copy(tmp_path / "b_mid.pt", one)
    train(replace(half, out=str(one), steps=n // 2 + 1), progress=False)
    c = read_checkpoint(one)
    s = n // 2
    rate = min(0.99, (1 + s) / (10 + s))
    for k, v in c["ema"].items():
        expect = mid["ema"][k].lerp(c["train"]["model"][k], 1 - rate)
        torch.testing.assert_close(v, expect, rtol=0, atol=1e-7, msg=k)
    assert any(not torch.equal(c["ema"][k], c["train"]["model"][k]) for k in c["ema"])

    # resuming a finished run changes nothing
    summary = train(_resume_cfg(image_folder, tmp_path / "a.pt", n), progress=False)
    assert summary["steps"] == n
    again = read_checkpoint(tmp_path / "a.pt")
    _assert_same_state(again["ema"], a["ema"])
    _assert_same_state(again["train"]["model"], a["train"]["model"])


def test_resumed_run_logs_each_step_once(image_folder, tmp_path):
    """A run that died after its last checkpoint logged steps the resumed run takes again: the
    log keeps one line a step, the resumed run's from the checkpoint on."""
    log = tmp_path / "log.tsv"
    first = replace(_resume_cfg(image_folder, tmp_path / "m.pt", 4), log_file=str(log))
    train(first, progress=False)  # checkpoint at step 4
    with open(log, "a") as f:  # the steps 5-6 of a run killed before its next checkpoint
        f.write("5\t9.0\t9.0\tNone\n6\t9.0\t9.0\tNone\n")
    train(replace(first, steps=8), progress=False)
    rows = np.loadtxt(log, usecols=(0, 1))
    np.testing.assert_array_equal(rows[:, 0], np.arange(1, 9))
    assert (rows[:, 1] < 9.0).all()  # the dead run's lines are gone
    from diffcodec.train import trim_log
    trim_log(tmp_path / "none.tsv", 3)  # no log yet: nothing to do
    assert not (tmp_path / "none.tsv").exists()


def test_resume_refuses_another_configuration(image_folder, tmp_path):
    out = tmp_path / "m.pt"
    cfg = TrainConfig(data=image_folder, out=str(out), model="tiny", crop=16, batch_size=2, num_timesteps=50,
                      steps=1, device="cpu", save_every=10**6)
    train(cfg, progress=False)
    before = out.read_bytes()
    for change in ({"model": "small"}, {"schedule": "linear"}, {"num_timesteps": 100},
                   {"model_var_type": "fixed_small"}, {"dropout": 0.3}):
        with pytest.raises(DiffcodecError, match="another model/diffusion configuration"):
            train(replace(cfg, steps=2, **change), progress=False)
    assert out.read_bytes() == before  # nothing was overwritten

    # a checkpoint without training state (a shipped model) cannot be resumed
    blob = read_checkpoint(out)
    bare = tmp_path / "bare.pt"
    save_checkpoint(bare, named_config("tiny"), DiffusionConfig("cosine", 50), blob["ema"])
    with pytest.raises(DiffcodecError, match="no training state"):
        train(replace(cfg, out=str(bare), steps=2), progress=False)
    # a corrupt one is a CheckpointError (a DiffcodecError)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(before[: len(before) // 2])
    with pytest.raises(CheckpointError):
        train(replace(cfg, out=str(broken), steps=2), progress=False)


def test_importance_sampler():
    s = ImportanceSampler(4, history=2)
    g = torch.Generator().manual_seed(0)
    np.testing.assert_allclose(s.weights(), 0.25)
    t, w = s.sample(100, g)
    assert torch.all(w == 1.0)
    for _ in range(2):
        s.update(torch.arange(4), torch.tensor([1.0, 1.0, 2.0, 4.0]))
    assert s.warmed_up()
    p = s.weights()
    assert p.sum() == pytest.approx(1.0)
    assert p[3] == pytest.approx(0.999 * 4 / 8 + 0.001 / 4)
    t, w = s.sample(2000, g)
    # importance weights 1 / (T p(t)) make the estimate unbiased: E[w L_t] = mean_t L_t
    losses = torch.tensor([1.0, 1.0, 2.0, 4.0])
    assert float((w * losses[t]).mean()) == pytest.approx(2.0, rel=0.05)
    # a full history shifts out the oldest value
    s.update(torch.tensor([0]), torch.tensor([3.0]))
    assert s.losses[0].tolist() == [1.0, 3.0]
    s2 = ImportanceSampler(4, history=2)
    s2.load_state_dict(s.state_dict())
    np.testing.assert_array_equal(s2.weights(), s.weights())


def test_codec_weighting_draws_low_t_and_keeps_vlb_unbiased():
    dcfg = DiffusionConfig()
    d = dcfg.build()
    T = dcfg.num_timesteps
    # an x_0 error table shaped like a real one: grows with the noise, saturates at high t
    mse = np.minimum(1e-5 + 0.25 * (1.0 - d.alphas_cumprod), 0.3)[:, None].repeat(3, axis=1)
    w = CodecWeighting(d.alphas_cumprod, mse)
    assert w.p.sum() == pytest.approx(1.0) and (w.p > 0).all()
    assert w.p[:20].sum() > 0.4  # uniform t: 0.02
    assert np.all(np.diff(w.p[: T // 5]) < 0) and np.all(w.p[T // 5:] == w.p[-1])
    # L_vlb keeps its unbiased weight: E_pi[vb_weight(t) f(t)] = mean_t f(t) for any f
    f = np.random.default_rng(0).random(T)
    assert float((w.p * w.vb_weight * f).sum()) == pytest.approx(f.mean(), rel=1e-12)
    # the eps loss is relative to the model's eps error at t (same weight x error everywhere the cap
    # does not bind), never above uniform training's weight of 1
    eps_mse = mse[:, 0] * d.alphas_cumprod / (1.0 - d.alphas_cumprod)
    free = w.mse_weight < 1.0
    assert free[:100].all() and not free.all()
    np.testing.assert_allclose(w.mse_weight[free] * eps_mse[free], eps_mse.mean(), rtol=1e-12)
    g = torch.Generator().manual_seed(0)
    t, mw, vw = w.sample(4000, g)
    assert float((t < 20).float().mean()) == pytest.approx(w.p[:20].sum(), abs=0.03)
    np.testing.assert_array_equal(mw.numpy(), w.mse_weight[t.numpy()].astype(np.float32))
    np.testing.assert_array_equal(vw.numpy(), w.vb_weight[t.numpy()].astype(np.float32))
    with pytest.raises(DiffcodecError, match="positive x_0 error table"):
        CodecWeighting(d.alphas_cumprod, np.zeros(T))


def test_codec_weighted_training_needs_a_table_and_resumes_exactly(image_folder, tmp_path):
    base = TrainConfig(data=image_folder, model="tiny", crop=16, batch_size=2, num_timesteps=50, steps=0,
                       device="cpu", save_every=10**6, importance_sampling=False)
    init = tmp_path / "init.pt"
    train(replace(base, out=str(init)), progress=False)
    codec = replace(base, t_weighting="codec", init_from=str(init), steps=4)
    with pytest.raises(OptionError, match="needs a checkpoint with an x_0 error table"):
        train(replace(codec, out=str(tmp_path / "x.pt")), progress=False)
    with pytest.raises(OptionError, match="--no-importance-sampling"):
        train(replace(codec, out=str(tmp_path / "x.pt"), importance_sampling=True), progress=False)
    with pytest.raises(OptionError, match="needs --init-from"):
        train(replace(codec, out=str(tmp_path / "x.pt"), init_from=""), progress=False)
    with pytest.raises(OptionError, match="unknown t weighting"):
        train(replace(codec, out=str(tmp_path / "x.pt"), t_weighting="elbo"), progress=False)
    assert not (tmp_path / "x.pt").exists()

    blob = read_checkpoint(init)
    table = np.linspace(1e-5, 0.2, 50)[:, None].repeat(3, axis=1)
    with_table = tmp_path / "init_table.pt"
    save_checkpoint(with_table, named_config("tiny"), DiffusionConfig("cosine", 50), blob["ema"], xstart_mse=table)
    codec = replace(codec, init_from=str(with_table))
    train(replace(codec, out=str(tmp_path / "a.pt")), progress=False)
    train(replace(codec, out=str(tmp_path / "b.pt"), steps=2), progress=False)
    train(replace(codec, out=str(tmp_path / "b.pt")), progress=False)  # resumes from step 2
    a, b = read_checkpoint(tmp_path / "a.pt"), read_checkpoint(tmp_path / "b.pt")
    np.testing.assert_array_equal(a["train"]["xstart_mse"].numpy(), table)
    _assert_same_state(a["ema"], b["ema"], "ema")
    _assert_same_state(a["train"]["model"], b["train"]["model"], "model")
    assert not torch.equal(a["ema"]["input_conv.weight"], blob["ema"]["input_conv.weight"])
    # a fine-tune draws its batches from its seed mixed with the fingerprint it starts from, and
    # keeps drawing them so when resumed (b above equals a)
    from diffcodec.train import data_seed
    start = read_checkpoint(with_table)["fingerprint"]
    assert a["train"]["data_seed"] == b["train"]["data_seed"] == data_seed(0, start) != 0


def test_fine_tunes_from_other_models_draw_other_batches(image_folder, tmp_path):
    """Each round of fine-tuning starts from the last round's model: with one --seed, rounds must
    not replay the same crops, timesteps and noise (they did before the seed was mixed)."""
    from diffcodec.train import data_seed

    assert data_seed(7, None) == data_seed(7, "") == 7  # a run from scratch: the seed itself
    assert data_seed(0, "a" * 64) == data_seed(0, "a" * 64) != data_seed(0, "b" * 64) != data_seed(1, "b" * 64)
    base = TrainConfig(data=image_folder, model="tiny", crop=16, batch_size=2, num_timesteps=50, device="cpu",
                       save_every=10**6)
    train(replace(base, out=str(tmp_path / "init.pt"), steps=1), progress=False)
    train(replace(base, out=str(tmp_path / "fine.pt"), steps=1, init_from=str(tmp_path / "init.pt")), progress=False)
    init, fine = read_checkpoint(tmp_path / "init.pt"), read_checkpoint(tmp_path / "fine.pt")
    assert init["train"]["data_seed"] == 0  # from scratch
    assert fine["train"]["data_seed"] == data_seed(0, init["fingerprint"]) != 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ddp_two_processes_gloo_cpu(image_folder, tmp_path):
    """Data-parallel training as README runs it: `torchrun -m diffcodec.cli train` with 2 ranks on
    gloo (CPU). train() itself checks that the replicas end with identical weights (a divergence
    exits non-zero), rank 0 prints the summary and writes a loadable checkpoint, and both workers
    exit 0 (torch's gloo teardown at interpreter exit used to abort rank 0 now and then)."""
    out = tmp_path / "ddp.pt"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                          "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
               GLOO_SOCKET_IFNAME="lo", TORCHELASTIC_ERROR_FILE=str(tmp_path / "error.json"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "diffcodec.cli", "train",
           "--data", image_folder, "--out", str(out), "--model", "tiny", "--crop", "16", "--batch-size", "2",
           "--num-timesteps", "50", "--steps", "3", "--device", "cpu", "--save-every", str(10**6), "--threads", "1"]
    try:
        proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"DDP run hung (killed after 120 s); output so far:\n{e.stdout}\n{e.stderr}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summaries = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1  # rank 0 only
    assert (summaries[0]["steps"], summaries[0]["rank"], summaries[0]["world"]) == (3, 0, 2)
    blob = read_checkpoint(out)
    assert blob["train"]["step"] == 3
    prior = load_prior(out)
    assert prior.unet == named_config("tiny")
    assert any(v.abs().sum() > 0 for k, v in blob["ema"].items() if k.startswith("out."))  # it trained


def test_learning_rate_schedules():
    from diffcodec.train import _lr

    base = dict(lr=1e-3, warmup=10, steps=110)
    const = TrainConfig(**base)
    assert _lr(const, 0) == pytest.approx(1e-4) and _lr(const, 9) == pytest.approx(1e-3) and _lr(const, 100) == 1e-3
    cos = TrainConfig(**base, lr_decay="cosine", min_lr=1e-4)
    assert _lr(cos, 4) == pytest.approx(5e-4)  # warm-up unchanged
    assert _lr(cos, 10) == pytest.approx(1e-3)
    assert _lr(cos, 60) == pytest.approx(1e-4 + 0.9e-3 * 0.5)  # half way: cos(pi/2) = 0
    assert _lr(cos, 110) == pytest.approx(1e-4) and _lr(cos, 500) == pytest.approx(1e-4)
    lin = TrainConfig(**base, lr_decay="linear", decay_start=60)
    assert _lr(lin, 59) == pytest.approx(1e-3) and _lr(lin, 85) == pytest.approx(5e-4)
    with pytest.raises(DiffcodecError, match="lr decay"):
        _lr(TrainConfig(**base, lr_decay="step"), 0)


def test_distillation_loss_targets_the_teachers_eps():
    """With a teacher, the MSE the loss uses is against the teacher's eps at the same x_t (closed
    form below); the reported ``mse`` is still the true noise's; a student equal to its teacher
    pays exactly nothing for the mean."""
    import copy

    from diffcodec.unet import UNet

    d = DiffusionConfig("cosine", 50).build()
    torch.manual_seed(1)
    teacher = UNet(named_config("tiny")).eval()
    torch.manual_seed(2)
    student = UNet(named_config("tiny")).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
    t = torch.tensor([0, 7, 25, 49])
    noise = torch.randn(x.shape, generator=g)
    with torch.no_grad():
        plain = d.training_losses(student, x, t, "hybrid", noise=noise)
        terms = d.training_losses(student, x, t, "hybrid", noise=noise, teacher=teacher)
        x_t = d.q_sample(x, t, noise)
        te = d.split_model_output(teacher(x_t, d.model_time(t)), 3)[0]
        se = d.split_model_output(student(x_t, d.model_time(t)), 3)[0]
        same = d.training_losses(copy.deepcopy(teacher), x, t, "hybrid", noise=noise, teacher=teacher)
    torch.testing.assert_close(terms["distill"], ((te - se) ** 2).mean(dim=(1, 2, 3)))
    torch.testing.assert_close(terms["mse"], plain["mse"])
    torch.testing.assert_close(terms["vb"], plain["vb"])
    torch.testing.assert_close(terms["loss"], terms["distill"] + terms["vb"] * (50 / 1000.0))
    assert not torch.allclose(terms["distill"], terms["mse"])
    assert torch.equal(same["distill"], torch.zeros(4)) and bool((same["mse"] > 0).all())


def test_distilled_training_resumes_exactly_and_refuses_another_teacher(image_folder, tmp_path):
    base = TrainConfig(data=image_folder, model="tiny", crop=16, batch_size=2, num_timesteps=50, steps=0,
                       device="cpu", save_every=10**6, importance_sampling=False)
    t1, t2, t100 = tmp_path / "t1.pt", tmp_path / "t2.pt", tmp_path / "t100.pt"
    train(replace(base, out=str(t1)), progress=False)
    train(replace(base, out=str(t2), seed=1), progress=False)
    train(replace(base, out=str(t100), num_timesteps=100), progress=False)
    distil = replace(base, distill_from=str(t1), steps=3)
    train(replace(distil, out=str(tmp_path / "a.pt")), progress=False)
    train(replace(distil, out=str(tmp_path / "b.pt"), steps=1), progress=False)
    train(replace(distil, out=str(tmp_path / "b.pt")), progress=False)  # resumes from step 1
    train(replace(base, out=str(tmp_path / "plain.pt"), steps=3), progress=False)
    a, b = read_checkpoint(tmp_path / "a.pt"), read_checkpoint(tmp_path / "b.pt")
    plain = read_checkpoint(tmp_path / "plain.pt")
    _assert_same_state(a["ema"], b["ema"], "ema")
    _assert_same_state(a["train"]["model"], b["train"]["model"], "model")
    assert a["train"]["teacher"] == read_checkpoint(t1)["fingerprint"] and plain["train"]["teacher"] is None
    assert any(not torch.equal(a["ema"][k], plain["ema"][k]) for k in a["ema"])  # the teacher was used

    with pytest.raises(DiffcodecError, match="another --distill-from"):
        train(replace(distil, out=str(tmp_path / "b.pt"), distill_from=str(t2), steps=4), progress=False)
    with pytest.raises(DiffcodecError, match="another --distill-from"):
        train(replace(distil, out=str(tmp_path / "b.pt"), distill_from="", steps=4), progress=False)
    with pytest.raises(OptionError, match="another diffusion configuration"):
        train(replace(distil, out=str(tmp_path / "x.pt"), distill_from=str(t100)), progress=False)
    with pytest.raises(OptionError, match="not vlb"):
        train(replace(distil, out=str(tmp_path / "x.pt"), loss="vlb"), progress=False)
    with pytest.raises(OptionError, match="no such file"):
        train(replace(distil, out=str(tmp_path / "x.pt"), distill_from=str(tmp_path / "none.pt")), progress=False)
    assert not (tmp_path / "x.pt").exists()
