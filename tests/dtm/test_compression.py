"""Magnitude pruning (exact sparsity, deterministic ties, nested masks) and int8 absmax."""

import pytest
import torch

from lmkernels import dtm


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.33, 0.9, 1.0])
def test_magnitude_pruning_hits_the_exact_sparsity(sparsity):
    weight = torch.randn(37, 29)
    pruned = dtm.magnitude_prune(weight, sparsity)
    zeros = pruned == 0
    assert int(zeros.sum()) == round(sparsity * weight.numel())
    assert dtm.sparsity_of(pruned) == pytest.approx(round(sparsity * weight.numel()) / weight.numel())
    assert torch.equal(pruned[~zeros], weight[~zeros])
    if 0 < sparsity < 1:
        assert weight[zeros].abs().max() <= weight[~zeros].abs().min()


def test_ties_break_by_lower_index_and_masks_nest():
    weight = torch.tensor([[2.0, -1.0, 1.0, 3.0], [1.0, -2.0, 1.0, 0.5]])
    assert dtm.magnitude_prune(weight, 0.5).tolist() == [[2.0, 0.0, 0.0, 3.0], [0.0, -2.0, 1.0, 0.0]]
    original = torch.randn(20, 10)
    once = dtm.magnitude_prune(dtm.magnitude_prune(original, 0.3), 0.6)
    assert torch.equal(once, dtm.magnitude_prune(original, 0.6))
    assert torch.equal(dtm.magnitude_prune(original, 0.5), dtm.MagnitudePruning(0.5)(original))


def test_int8_is_the_op():
    weight = torch.randn(8, 16)
    assert torch.equal(dtm.Int8Absmax()(weight), dtm.int8_absmax(weight))
    assert (dtm.int8_absmax(weight) / (weight.abs().amax(1, keepdim=True) / 127)).round().abs().max() <= 127


@pytest.mark.parametrize("sparsity", [-0.1, 1.5, float("nan"), "0.5", True])
def test_bad_sparsity(sparsity):
    with pytest.raises(ValueError, match="sparsity"):
        dtm.magnitude_prune(torch.ones(2, 2), sparsity)
    with pytest.raises(ValueError, match="sparsity"):
        dtm.MagnitudePruning(sparsity)
