"""Set Transformer pooling: one vector per set, invariant to the order of the set and to padding."""

from __future__ import annotations

import pytest
import torch

from model.set_transformer import SetPooler

D = 32


@pytest.fixture(params=[0, 3], ids=["SAB", "ISAB"])
def pooler(request: pytest.FixtureRequest) -> SetPooler:
    torch.manual_seed(0)
    return SetPooler(D, heads=4, blocks=2, inducing=request.param, dropout=0.0).eval()


@pytest.fixture(params=[True, False], ids=["grad", "no_grad"])
def grad_mode(request: pytest.FixtureRequest) -> bool:
    # without autograd nn.MultiheadAttention may take its fused fast path; both must behave alike
    return bool(request.param)


def run(pooler: SetPooler, tokens: torch.Tensor, pad: torch.Tensor | None, grad: bool) -> torch.Tensor:
    with torch.set_grad_enabled(grad):
        return pooler(tokens, pad).detach()


def test_output_is_one_vector_per_set(pooler: SetPooler) -> None:
    assert pooler(torch.randn(5, 7, D)).shape == (5, D)


def test_permuting_the_set_does_not_change_the_output(pooler: SetPooler, grad_mode: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randn(4, 6, D, generator=gen)
    ref = run(pooler, tokens, None, grad_mode)
    for _ in range(5):
        perm = torch.randperm(6, generator=gen)
        torch.testing.assert_close(run(pooler, tokens[:, perm], None, grad_mode), ref, atol=1e-5, rtol=1e-5)


def test_permuting_a_padded_set_does_not_change_the_output(pooler: SetPooler, grad_mode: bool) -> None:
    gen = torch.Generator().manual_seed(2)
    tokens = torch.randn(3, 8, D, generator=gen)
    pad = torch.zeros(3, 8, dtype=torch.bool)
    pad[0, 5:] = True
    pad[1, 1:] = True  # a set of one
    ref = run(pooler, tokens, pad, grad_mode)
    for _ in range(5):
        perm = torch.randperm(8, generator=gen)
        torch.testing.assert_close(
            run(pooler, tokens[:, perm], pad[:, perm], grad_mode), ref, atol=1e-5, rtol=1e-5
        )


def test_appending_padded_tokens_does_not_change_the_output(pooler: SetPooler, grad_mode: bool) -> None:
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randn(2, 4, D, generator=gen)
    ref = run(pooler, tokens, None, grad_mode)
    junk = 100 * torch.randn(2, 5, D, generator=gen)  # large values: any leak through the mask would show
    padded = torch.cat([tokens, junk], dim=1)
    pad = torch.cat([torch.zeros(2, 4, dtype=torch.bool), torch.ones(2, 5, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(run(pooler, padded, pad, grad_mode), ref, atol=1e-5, rtol=1e-5)
    # and padding interleaved with the real tokens
    order = torch.tensor([4, 0, 5, 1, 6, 7, 2, 8, 3])
    torch.testing.assert_close(
        run(pooler, padded[:, order], pad[:, order], grad_mode), ref, atol=1e-5, rtol=1e-5
    )


def test_the_output_depends_on_the_set_content(pooler: SetPooler) -> None:
    tokens = torch.randn(1, 4, D)
    changed = tokens.clone()
    changed[0, 2] += 3.0
    assert not torch.allclose(pooler(tokens), pooler(changed), atol=1e-4)
