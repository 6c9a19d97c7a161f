"""LoRA adapters: start at the base, merge exactly, switch off cleanly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model.lora import LoRALinear, adapters_disabled, add_lora, merge_lora


def trained_lora(seed: int = 0, bias: bool = True) -> LoRALinear:
    torch.manual_seed(seed)
    layer = LoRALinear(nn.Linear(12, 7, bias=bias), rank=4, alpha=8.0)
    with torch.no_grad():
        layer.lora_b.normal_()  # as if trained: B starts at zero
    return layer


def test_a_fresh_adapter_is_exactly_the_base() -> None:
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(12, 7), rank=4, alpha=8.0)
    x = torch.randn(5, 12)
    assert torch.equal(layer(x), layer.base(x))


def test_only_the_adapter_is_trainable() -> None:
    layer = trained_lora()
    assert {n for n, p in layer.named_parameters() if p.requires_grad} == {"lora_a", "lora_b"}


@pytest.mark.parametrize("bias", [True, False])
def test_merged_linear_equals_the_adapter_forward(bias: bool) -> None:
    layer = trained_lora(bias=bias)
    x = torch.randn(3, 6, 12)
    merged = layer.merged()
    assert isinstance(merged, nn.Linear) and (merged.bias is not None) == bias
    assert not torch.allclose(layer(x), layer.base(x))
    torch.testing.assert_close(merged(x), layer(x), atol=1e-5, rtol=1e-5)


def test_adapters_disabled_gives_the_base_output_and_restores() -> None:
    first, second = trained_lora(1), LoRALinear(nn.Linear(7, 12), rank=2, alpha=4.0)
    with torch.no_grad():
        second.lora_b.normal_()
    model = nn.Sequential(first, nn.ReLU(), second)
    x = torch.randn(4, 12)
    adapted = model(x)
    base = second.base(torch.relu(first.base(x)))
    with adapters_disabled(model):
        assert torch.equal(model(x), base)
    assert torch.equal(model(x), adapted)
    with pytest.raises(RuntimeError), adapters_disabled(model):
        raise RuntimeError("boom")
    assert torch.equal(model(x), adapted)  # re-enabled even after an error


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Linear(8, 8)
        self.value = nn.Linear(8, 8)
        self.other = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.other(torch.tanh(self.query(x)) + self.value(x))


def test_add_lora_wraps_only_the_targets_and_merge_lora_keeps_the_function() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(Block(), Block())
    assert add_lora(model, ("query", "value"), rank=2, alpha=4.0) == 4
    assert isinstance(model[0].query, LoRALinear) and not isinstance(model[0].other, LoRALinear)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_b.normal_()
    x = torch.randn(5, 8)
    before = model(x)
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)
