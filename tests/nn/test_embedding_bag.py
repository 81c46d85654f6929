"""lmkernels.nn.EmbeddingBag: the module around lmk::embedding_bag."""

import pytest
import torch

from lmkernels import reference
from lmkernels.nn import EmbeddingBag


def test_csr_and_fixed_size_bags_agree_with_reference():
    module = EmbeddingBag(50, 8, mode="mean")
    indices = torch.randint(0, 50, (6, 4))
    offsets = torch.arange(0, 25, 4)
    expected = reference.embedding_bag(module.weight, indices.flatten(), offsets, mode="mean")
    torch.testing.assert_close(module(indices), expected)
    torch.testing.assert_close(module(indices.flatten(), offsets), expected)


def test_trains_with_sparse_adam():
    module = EmbeddingBag(40, 4, sparse=True)
    before = module.weight.detach().clone()
    optimiser = torch.optim.SparseAdam(module.parameters(), lr=0.1)
    indices = torch.tensor([[1, 2], [2, 3]])
    module(indices).pow(2).sum().backward()
    assert module.weight.grad.is_sparse
    optimiser.step()
    changed = (module.weight.detach() != before).any(1).nonzero().flatten().tolist()
    assert changed == [1, 2, 3]


def test_from_pretrained_and_weights():
    table = torch.randn(10, 3)
    module = EmbeddingBag.from_pretrained(table)
    assert not module.weight.requires_grad
    weights = torch.rand(2, 2)
    out = module(torch.tensor([[0, 1], [2, 3]]), per_sample_weights=weights)
    torch.testing.assert_close(out[0], weights[0, 0] * table[0] + weights[0, 1] * table[1])


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        EmbeddingBag(3, 2, mode="max")
    with pytest.raises(ValueError, match="indices: expected 2-D"):
        EmbeddingBag(3, 2)(torch.tensor([0, 1]))


def test_two_dimensional_indices_with_empty_bags_give_zero_rows():
    for mode in ("sum", "mean"):
        out = EmbeddingBag(10, 4, mode=mode)(torch.zeros(3, 0, dtype=torch.long))
        assert out.shape == (3, 4) and not out.any()
