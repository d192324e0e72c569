"""Model checkpoints: one file with the full configuration, EMA weights and a fingerprint.

A checkpoint is a ``torch.save`` dict holding only plain data and tensors, loaded with
``weights_only=True`` so that loading never executes code from the file:

    format       "diffcodec-checkpoint"
    version      1
    unet         UNetConfig as a dict
    diffusion    DiffusionConfig as a dict
    ema          the EMA weights (state dict), the weights the codec and nll use
    fingerprint  hex SHA-256 over the configuration, the EMA tensors (dtype, shape, bytes), the
                 x_0 error table and the linear prior when there are ones
    xstart_mse   optional: float64 [T, C], the mean squared error of the codec's x_0 estimate
                 per timestep and channel on held-out photos (diffcodec.errtable): the
                 network's, or from the linear prior's from_t on the linear estimate's; the
                 codec's analytic reverse variances and trajectory come from it
    linear       optional: the linear prior (diffcodec.linear): {"mean", "basis", "log_power",
                 "from_t"} tensors; the codec estimates x_0 with it, not the network, at t >= from_t
    train        optional: {"step", "model", "optimizer", "sampler", "config", ...} to resume
    meta         optional: free-form plain data (data set, recipe, measured figures)

The fingerprint identifies the prior exactly; the codec writes it into every .dfc header and
refuses to decode a file with a model whose fingerprint differs.  On load it is recomputed,
so a corrupt file is refused with a clear error.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .diffusion import DiffusionConfig
from .errors import CheckpointError
from .linear import LinearPrior
from .unet import UNet, UNetConfig

FORMAT = "diffcodec-checkpoint"
VERSION = 1
DEFAULT_MODEL = "default.pt"
TABLE_KEY = "@xstart_mse"
LINEAR_KEY = "@linear."


def fingerprint(unet: dict, diffusion: dict, ema: dict[str, torch.Tensor],
                xstart_mse: torch.Tensor | None = None, linear: dict[str, torch.Tensor] | None = None) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"unet": unet, "diffusion": diffusion}, sort_keys=True).encode())
    tensors = dict(ema)
    if xstart_mse is not None:  # a checkpoint without a table keeps the fingerprint it always had
        tensors[TABLE_KEY] = xstart_mse
    for name, tensor in (linear or {}).items():  # likewise one without a linear prior
        tensors[LINEAR_KEY + name] = tensor
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(
    path: str | Path,
    unet: UNetConfig,
    diffusion: DiffusionConfig,
    ema: dict[str, torch.Tensor],
    train: dict | None = None,
    meta: dict | None = None,
    dtype: torch.dtype | None = None,
    xstart_mse=None,
    linear: LinearPrior | None = None,
) -> str:
    """Write a checkpoint atomically; returns its fingerprint. ``dtype`` casts the EMA weights
    (e.g. torch.float16 for a shipped model); ``xstart_mse`` is the x_0 error table, ``linear``
    the linear prior (which needs the table)."""
    ema = {k: (v.detach().cpu().to(dtype) if dtype and v.is_floating_point() else v.detach().cpu())
           for k, v in ema.items()}
    u, d = unet.to_dict(), diffusion.to_dict()
    table = None if xstart_mse is None else torch.as_tensor(np.asarray(xstart_mse, dtype=np.float64))
    if table is not None and (table.dim() != 2 or table.shape[0] != diffusion.num_timesteps):
        raise CheckpointError(f"x_0 error table must be [T={diffusion.num_timesteps}, C], got {tuple(table.shape)}")
    if linear is not None and (table is None or linear.channels != table.shape[1]):
        raise CheckpointError("a linear prior needs an x_0 error table with as many channels")
    lin = None if linear is None else linear.tensors()
    fp = fingerprint(u, d, ema, table, lin)
    blob = {"format": FORMAT, "version": VERSION, "unet": u, "diffusion": d, "ema": ema,
            "fingerprint": fp}
    if table is not None:
        blob["xstart_mse"] = table
    if lin is not None:
        blob["linear"] = lin
    if train is not None:
        blob["train"] = train
    if meta is not None:
        blob["meta"] = meta
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)
    return fp


def read_checkpoint(path: str | Path) -> dict:
    """The validated checkpoint dict (fingerprint checked); never executes code from the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to unpickle means a bad file
        raise CheckpointError(f"{path}: not a readable diffcodec checkpoint ({type(e).__name__})") from None
    return _validate(blob, str(path))


def _validate(blob, where: str) -> dict:
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{where}: not a diffcodec checkpoint")
    if blob.get("version") != VERSION:
        raise CheckpointError(f"{where}: checkpoint version {blob.get('version')} is not supported")
    try:
        linear = blob.get("linear")
        if linear is not None and not isinstance(linear, dict):
            raise TypeError("linear")
        got = fingerprint(blob["unet"], blob["diffusion"], blob["ema"], blob.get("xstart_mse"), linear)
    except (KeyError, TypeError, AttributeError, RuntimeError):
        raise CheckpointError(f"{where}: checkpoint is incomplete or corrupt") from None
    if got != blob.get("fingerprint"):
        raise CheckpointError(f"{where}: checkpoint is corrupt (fingerprint mismatch)")
    return blob


@dataclass
class Prior:
    """A loaded model: the network (EMA weights, eval mode) and its diffusion configuration."""

    net: UNet
    unet: UNetConfig
    diffusion: DiffusionConfig
    fingerprint: str
    source: str
    meta: dict = field(default_factory=dict)
    xstart_mse: np.ndarray | None = None  # [T, C] x_0 error table, when the checkpoint has one
    linear: LinearPrior | None = None  # the x_0 estimate at t >= linear.from_t, when it has one

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device


def default_model_path() -> Path:
    return Path(str(resources.files("diffcodec") / "models" / DEFAULT_MODEL))


def load_prior(path: str | Path | None = None, device: str | torch.device = "cpu") -> Prior:
    """Load a checkpoint (the shipped default model when ``path`` is None) for inference."""
    path = default_model_path() if path is None else Path(path)
    blob = read_checkpoint(path)
    try:
        ucfg = UNetConfig(**blob["unet"])
        dcfg = DiffusionConfig(**blob["diffusion"])
        net = UNet(ucfg)
        net.load_state_dict({k: v.float() for k, v in blob["ema"].items()})
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: configuration does not match the weights ({e})") from None
    if dcfg.learn_sigma != (ucfg.out_channels == 2 * ucfg.in_channels):
        raise CheckpointError(f"{path}: variance type and output channels disagree")
    net.eval().requires_grad_(False)
    device = torch.device(device)
    if device.type == "cpu":
        net = net.to(memory_format=torch.channels_last)
    table = blob.get("xstart_mse")
    if table is not None:
        table = table.double().numpy()
        if table.ndim != 2 or table.shape[0] != dcfg.num_timesteps or not np.isfinite(table).all():
            raise CheckpointError(f"{path}: its x_0 error table has the wrong shape or values")
    linear = None
    if blob.get("linear") is not None:
        try:
            linear = LinearPrior.from_tensors(blob["linear"])
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from None
        if table is None or linear.channels != ucfg.in_channels or linear.from_t > dcfg.num_timesteps:
            raise CheckpointError(f"{path}: its linear prior does not fit the model")
    return Prior(net.to(device), ucfg, dcfg, blob["fingerprint"], str(path), blob.get("meta") or {}, table, linear)


def checkpoint_bytes(blob: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(blob, buf)
    return buf.getvalue()


def attach_xstart_mse(src: str | Path, dst: str | Path, table, linear: LinearPrior | None = None) -> str:
    """Write ``dst``: the checkpoint ``src`` (EMA weights, configuration, meta; no training
    state) with the x_0 error table ``table`` [T, C] and the linear prior ``linear`` (none when
    None); returns its (new) fingerprint."""
    blob = read_checkpoint(src)
    meta = dict(blob.get("meta") or {})
    meta["xstart_mse_of"] = blob["fingerprint"]
    return save_checkpoint(dst, UNetConfig(**blob["unet"]), DiffusionConfig(**blob["diffusion"]), blob["ema"],
                           meta=meta, xstart_mse=table, linear=linear)
