"""Checkpoints: weights in safetensors, optimizer and loop state beside them, written atomically.

Layout under a checkpoint directory::

    latest.json                    {"name": "epoch-0003", "epoch": 3}: the last complete checkpoint
    epoch-0003/weights.safetensors every tensor of the model (backbone, heads, momentum encoder);
                                   metadata: method, backbone name, in_chans, epoch
    epoch-0003/optimizer.pt        optimizer, LR scheduler and training-loop state (torch.save)
    epoch-0003/state.json          epoch, global step, method, backbone, per-epoch loss history

An epoch folder is written under a temporary name and renamed into place, then ``latest.json``
is replaced (temp + rename), each file and rename fsynced before :func:`save_checkpoint` returns:
a crash at any moment leaves the previous checkpoint intact and ``latest.json`` pointing at a
complete one. Only the newest ``keep_last`` epoch folders are kept.

:class:`SafetensorsCheckpointIO` plugs this format into Lightning, so ``trainer.save_checkpoint``
and ``trainer.fit(ckpt_path=...)`` (resume) use it; :func:`load_backbone` gives the backbone
alone, for embedding.

Example::

    backbone = load_backbone("data/models/simclr")        # latest checkpoint of a run
    backbone = load_backbone("data/models/simclr/epoch-0100/weights.safetensors")
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.checkpoint_io import CheckpointIO
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from radaudit.models.backbone import create_backbone

__all__ = [
    "WEIGHTS_FILE", "OPTIMIZER_FILE", "STATE_FILE", "LATEST_FILE", "Checkpoint", "save_checkpoint",
    "load_checkpoint", "latest_checkpoint", "load_backbone", "backbone_state", "SafetensorsCheckpointIO",
]

WEIGHTS_FILE = "weights.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"
LATEST_FILE = "latest.json"
FORMAT = "radaudit-pretrain-1"
_EPOCH_DIR = re.compile(r"^epoch-(\d+)$")

PathLike = str | os.PathLike[str]


@dataclass
class Checkpoint:
    """One loaded checkpoint.

    Attributes:
        path: The epoch folder.
        state_dict: Every tensor of the model, on the CPU.
        optimizer_state: Optimizer, scheduler and loop state (empty when not saved).
        state: The contents of ``state.json``.
    """

    path: Path
    state_dict: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def epoch(self) -> int:
        """Completed epochs when the checkpoint was written."""
        return int(self.state.get("epoch", 0))


def _backbone_name(model: nn.Module) -> str | None:
    name = getattr(model, "backbone_name", None)
    if name:
        return str(name)
    backbone = getattr(model, "backbone", model)
    cfg = getattr(backbone, "pretrained_cfg", None) or getattr(backbone, "default_cfg", None) or {}
    arch = cfg.get("architecture") if isinstance(cfg, Mapping) else None
    return str(arch) if arch else None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)  # the rename itself survives a power cut


def save_checkpoint(directory: PathLike, model: nn.Module | Mapping[str, torch.Tensor], epoch: int,
                    optimizer_state: Mapping[str, Any] | None = None, *,
                    metadata: Mapping[str, Any] | None = None, keep_last: int | None = 2) -> Path:
    """Write ``directory/epoch-NNNN/`` atomically and point ``latest.json`` at it.

    Args:
        directory: The run's checkpoint directory (created if missing).
        model: The module (its ``state_dict`` is saved) or a state dict.
        epoch: Completed epochs (1 after the first epoch).
        optimizer_state: Optimizer, scheduler and loop state, saved with ``torch.save``.
        metadata: Extra facts for ``state.json`` (JSON-serializable); ``method``, ``backbone``
            and ``in_chans`` also go into the safetensors metadata, which :func:`load_backbone` reads.
        keep_last: Keep this many newest epoch folders; None keeps all.

    Returns:
        The epoch folder.

    Raises:
        ValueError: Bad ``epoch`` or ``keep_last``.
    """
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise ValueError(f"epoch must be an int >= 0 (completed epochs), got {epoch!r}")
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last must be >= 1 or None (keep all), got {keep_last}")
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = dict(metadata or {})
    if isinstance(model, nn.Module):
        state_dict: Mapping[str, torch.Tensor] = model.state_dict()
        meta.setdefault("backbone", _backbone_name(model))
        meta.setdefault("in_chans", getattr(model, "in_chans", None))
        meta.setdefault("method", getattr(model, "METHOD", None) or None)
    else:
        state_dict = model
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}  # channels_last -> contiguous
    state = {"format": FORMAT, **meta, "epoch": epoch}
    st_meta = {k: str(state[k]) for k in ("format", "method", "backbone", "in_chans", "epoch")
               if state.get(k) is not None}

    name = f"epoch-{epoch:04d}"
    final = root / name
    # Temporary names end in .tmp: the data dir's sweep (radaudit.pacs.io.remove_stale_temps) removes
    # what a killed writer left.
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=root))
    try:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata=st_meta)
        if optimizer_state is not None:
            torch.save(dict(optimizer_state), tmp / OPTIMIZER_FILE)
        with open(tmp / STATE_FILE, "w") as f:
            json.dump(state, f, indent=2, sort_keys=True, default=str)
        for file in tmp.iterdir():
            with open(file, "rb") as fh:
                os.fsync(fh.fileno())
        old = None
        if final.exists():  # re-saving an epoch: move the old one aside first
            old = root / f".{name}.old.{os.getpid()}.tmp"
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_json_atomic(root / LATEST_FILE, {"name": name, "epoch": epoch})
    if keep_last is not None:
        epochs = sorted(_epoch_dirs(root), reverse=True)
        for _, path in epochs[keep_last:]:
            if path != final:
                shutil.rmtree(path, ignore_errors=True)
    return final


def _epoch_dirs(root: Path) -> list[tuple[int, Path]]:
    out = []
    for p in root.iterdir() if root.is_dir() else []:
        m = _EPOCH_DIR.match(p.name)
        if m and p.is_dir() and (p / WEIGHTS_FILE).is_file() and (p / STATE_FILE).is_file():
            out.append((int(m.group(1)), p))
    return out


def latest_checkpoint(directory: PathLike) -> Path | None:
    """The newest complete epoch folder of a checkpoint directory, or None if there is none."""
    root = Path(directory)
    try:
        latest = json.loads((root / LATEST_FILE).read_text())
        path = root / str(latest["name"])
        if (path / WEIGHTS_FILE).is_file() and (path / STATE_FILE).is_file():
            return path
    except (OSError, ValueError, KeyError, TypeError):
        pass
    found = _epoch_dirs(root)
    return max(found)[1] if found else None


def _resolve(path: PathLike) -> Path:
    """A checkpoint directory, an epoch folder or a weights file -> the epoch folder."""
    p = Path(path)
    if p.is_file() and p.name == WEIGHTS_FILE:
        return p.parent
    if (p / WEIGHTS_FILE).is_file():
        return p
    latest = latest_checkpoint(p)
    if latest is None:
        raise FileNotFoundError(f"no checkpoint at {p}: expected a checkpoint directory with {LATEST_FILE} "
                                f"or epoch-NNNN/ folders, an epoch folder, or a {WEIGHTS_FILE} file")
    return latest


def load_checkpoint(path: PathLike, *, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint: a checkpoint directory (its latest), an epoch folder or a weights file.

    Raises:
        FileNotFoundError: Nothing loadable at ``path``.
    """
    folder = _resolve(path)
    state_dict = load_file(str(folder / WEIGHTS_FILE), device=str(map_location))
    opt_path = folder / OPTIMIZER_FILE
    optimizer_state = torch.load(opt_path, map_location=map_location, weights_only=True) if opt_path.is_file() else {}
    state = json.loads((folder / STATE_FILE).read_text()) if (folder / STATE_FILE).is_file() else {}
    return Checkpoint(folder, state_dict, optimizer_state, state)


def backbone_state(state_dict: Mapping[str, torch.Tensor], prefix: str = "backbone.") -> dict[str, torch.Tensor]:
    """The backbone's tensors of a model state dict, without the prefix."""
    out = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not out:
        raise KeyError(f"no tensors named {prefix}* in the checkpoint; is it a radaudit pretraining checkpoint?")
    return out


def load_backbone(path: PathLike, *, name: str | None = None, in_chans: int | None = None,
                  device: str | torch.device = "cpu") -> nn.Module:
    """The pretrained backbone of a checkpoint, in eval mode.

    Args:
        path: A checkpoint directory (its latest epoch), an epoch folder or a ``weights.safetensors``.
        name: timm model name; default: from the checkpoint's metadata.
        in_chans: Input channels; default: from the metadata, else 1.
        device: Where to put the backbone.

    Returns:
        The backbone (as :func:`radaudit.models.backbone.create_backbone` makes it) with the trained weights.

    Raises:
        FileNotFoundError: Nothing loadable at ``path``.
        ValueError: The checkpoint does not say which backbone it holds and ``name`` is not given.
    """
    folder = _resolve(path)
    weights = folder / WEIGHTS_FILE
    with safe_open(str(weights), framework="pt") as f:
        meta = f.metadata() or {}
    name = name or meta.get("backbone")
    if not name:
        raise ValueError(f"{weights} does not record its backbone; pass name='resnet18' (the timm model name)")
    chans = in_chans if in_chans is not None else int(meta.get("in_chans") or 1)
    backbone = create_backbone(name, in_chans=chans)
    backbone.load_state_dict(backbone_state(load_file(str(weights))), strict=True)
    return backbone.to(device).eval()


class SafetensorsCheckpointIO(CheckpointIO):
    """Lightning checkpoint I/O in this module's format.

    ``trainer.save_checkpoint(directory)`` writes ``directory/epoch-NNNN/`` (NNNN from the
    checkpoint's ``radaudit.epoch`` entry, else Lightning's ``epoch + 1``);
    ``trainer.fit(ckpt_path=...)`` accepts a checkpoint directory or an epoch folder.

    Args:
        keep_last: Newest epoch folders to keep; None keeps all.
    """

    def __init__(self, keep_last: int | None = 2) -> None:
        super().__init__()
        self.keep_last = keep_last

    def save_checkpoint(self, checkpoint: dict[str, Any], path: PathLike, storage_options: Any | None = None) -> None:
        if "state_dict" not in checkpoint:
            # A bare module state dict: ddp_spawn hands rank 0's weights back to the main process so.
            save_file({k: v.detach().contiguous().cpu() for k, v in checkpoint.items()}, str(path))
            return
        rest = dict(checkpoint)
        state_dict = rest.pop("state_dict")
        info = dict(rest.pop("radaudit", {}) or {})
        epoch = int(info.pop("epoch", int(rest.get("epoch", 0)) + 1))
        meta = {**info, "global_step": int(rest.get("global_step", 0))}
        save_checkpoint(path, state_dict, epoch, rest, metadata=meta, keep_last=self.keep_last)

    def load_checkpoint(self, path: PathLike, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        if Path(path).is_file():
            return load_file(str(path))
        ckpt = load_checkpoint(path)
        return {**ckpt.optimizer_state, "state_dict": ckpt.state_dict, "radaudit": ckpt.state}

    def remove_checkpoint(self, path: PathLike) -> None:
        p = Path(path)
        if p.is_file():
            p.unlink()
        elif p.exists():
            shutil.rmtree(p, ignore_errors=True)
