"""``RUN/checkpoint.pt``: everything ``--resume`` needs to continue a run as if it had never stopped.

Trainable weights in float32 (the artifact's fp16 copy would not resume to the same weights), optimizer,
LR schedule, fp16 scaler, position in the epoch, early-stopping state and every rank's RNG states. Written
to a temporary file and renamed, so a run killed while saving keeps its previous checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

CHECKPOINT = "checkpoint.pt"


@dataclass
class Position:
    """Where training stands: the next optimizer step to take."""

    epoch: int = 0
    step: int = 0  # optimizer steps already taken in ``epoch``
    global_step: int = 0


@dataclass
class EarlyStopping:
    best: dict[str, Any] = field(default_factory=lambda: {"f1": -1.0})
    stale: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    elapsed: float = 0.0  # training seconds before this process started
    running_loss: float = 0.0


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters that train, plus every buffer; the frozen encoder weights come from their package."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    names |= {n for n, _ in model.named_buffers()}
    return {
        k: v.detach().float().cpu() if v.is_floating_point() else v.cpu()
        for k, v in model.state_dict().items()
        if k in names
    }


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> Path:
    path = run_dir / CHECKPOINT
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)  # atomic on POSIX: readers see the old or the new file, never half of one
    return path


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise SystemExit(f"--resume {run_dir}: no {CHECKPOINT} there")
    # our own file: python/numpy RNG states are not plain tensors, so weights_only cannot read it
    return torch.load(path, map_location="cpu", weights_only=False)  # type: ignore[no-any-return]
