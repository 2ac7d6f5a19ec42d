"""Dynamic-capacity checkpoints: a torch state dict (``model.pt``) plus a JSON sidecar (``model.json``).

The sidecar names the space, its fingerprint (everything that shapes the weights) and the data arguments, so a
checkpoint is rejected in one line when it comes from another space, and is never unpickled
(``torch.load(..., weights_only=True)``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from nas.train.engine import unreadable_reason
from nas.errors import HwnasError
from nas.files import atomic_path, write_json
from nas.search.capacity.space import KIND, load_capacity_space
from nas.search.capacity.vit import DynamicViT


class CheckpointError(HwnasError):
    """A checkpoint is missing, unreadable, or belongs to another space or model."""


def sidecar_path(weights: str | Path) -> Path:
    return Path(weights).with_suffix(".json")


def save_dynamic_vit(model: DynamicViT, path: str | Path, extra: dict | None = None) -> Path:
    """Write the weights and the sidecar atomically; returns the weights path."""
    path = Path(path)
    space = model.space
    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)
    write_json(sidecar_path(path), {"kind": KIND, "space": space.name, "space_file": space.path,
                                    "fingerprint": space.fingerprint(), "space_args": space.space_args(),
                                    **(extra or {})})
    return path


def read_sidecar(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    side = sidecar_path(path)
    if not side.is_file():
        raise CheckpointError(f"{path}: no sidecar {side.name} naming its space; not a {KIND} checkpoint "
                              f"(train one with `hwnas train-dynamic`)")
    try:
        meta = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:  # not JSON, or not text at all
        raise CheckpointError(f"{side}: invalid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("kind") != KIND or "space" not in meta:
        raise CheckpointError(f"{side}: not a {KIND} checkpoint sidecar")
    return meta


def load_dynamic_vit(path: str | Path, space_ref: str, *, in_channels: int | None = None,
                     classes: int | None = None) -> tuple[DynamicViT, dict]:
    """Load a checkpoint into the model of ``space_ref``; reject one trained on another space or data shape."""
    meta = read_sidecar(path)
    args = meta.get("space_args") or {}
    space = load_capacity_space(space_ref, in_channels=in_channels or args.get("in_channels"),
                                classes=classes or args.get("classes"))
    if meta["space"] != space.name:
        raise CheckpointError(f"{path}: checkpoint is from space {meta['space']!r}, not {space.name!r}")
    if meta.get("fingerprint") != space.fingerprint():
        for key, value in space.space_args().items():
            if key in args and args[key] != value:
                raise CheckpointError(f"{path}: checkpoint was trained with {key}={args[key]}, the data has {value}")
        raise CheckpointError(f"{path}: checkpoint does not match space {space.name!r} as defined in {space.path} "
                              f"(the model shape changed since it was trained)")
    model = DynamicViT(space)
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
        model.load_state_dict(state)
    except Exception as e:  # unpickling refusals, truncated files, key/shape mismatches
        raise CheckpointError(f"{path}: cannot load weights ({unreadable_reason(e)})") from None
    model.eval()
    return model, meta
