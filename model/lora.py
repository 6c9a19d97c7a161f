"""LoRA adapters: the artifact stores a few low-rank deltas instead of a fine-tuned encoder copy."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class LoRALinear(nn.Module):
    """``base(x) + (alpha / r) * B(A(x))`` with the base frozen; B starts at zero so training starts at the base."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.rank = rank
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        self.enabled = True
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        for p in self.base.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return self.base(x)
        return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scale

    def merged(self) -> nn.Linear:
        """A plain Linear with the delta folded in (for export: no extra matmuls at serving time)."""
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        with torch.no_grad():
            out.weight.copy_(self.base.weight + self.scale * self.lora_b @ self.lora_a)
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out


def add_lora(module: nn.Module, targets: tuple[str, ...], rank: int, alpha: float) -> int:
    """Wrap every ``nn.Linear`` whose attribute name is in ``targets``; returns how many were wrapped."""
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and name in targets:
                setattr(parent, name, LoRALinear(child, rank, alpha))
                count += 1
    return count


def strip_lora(module: nn.Module) -> None:
    """Replace every LoRALinear by its frozen base Linear, in place (the base weights, adapters dropped)."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                setattr(parent, name, child.base)


def merge_lora(module: nn.Module) -> None:
    """Replace every LoRALinear by its merged Linear, in place."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                setattr(parent, name, child.merged())


@contextmanager
def adapters_disabled(module: nn.Module) -> Iterator[None]:
    """Run the base weights only, e.g. for evidence text, so caption embeddings can be computed once."""
    layers = [m for m in module.modules() if isinstance(m, LoRALinear)]
    for layer in layers:
        layer.enabled = False
    try:
        yield
    finally:
        for layer in layers:
            layer.enabled = True
