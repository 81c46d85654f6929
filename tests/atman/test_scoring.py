"""Scores from losses: cross-entropy, postprocessing, min-max normalisation."""

import pytest
import torch
import torch.nn.functional as F

from lmkernels.atman.scoring import min_max, scores, token_losses


def test_token_losses_are_cross_entropies():
    logits = torch.randn(3, 4, 11, dtype=torch.bfloat16)
    targets = torch.randint(11, (4,))
    expected = F.cross_entropy(logits.float().flatten(0, 1), targets.repeat(3), reduction="none").view(3, 4)
    torch.testing.assert_close(token_losses(logits, targets), expected)


def test_postprocessing_then_sum_then_normalise():
    relevance = torch.tensor([[1.0, -2.0], [-0.5, 0.5], [0.0, 0.0]])
    token, unit = scores(relevance)
    assert torch.equal(token, relevance) and unit.tolist() == [-1.0, 0.0, 0.0]
    assert scores(relevance, "abs")[1].tolist() == [3.0, 1.0, 0.0]
    assert scores(relevance, "square")[1].tolist() == [5.0, 0.5, 0.0]
    token, unit = scores(relevance, "square", normalize=True)
    assert unit.tolist() == pytest.approx([1.0, 0.1, 0.0])
    assert token[:, 0].tolist() == pytest.approx([1.0, 0.25, 0.0])
    with pytest.raises(ValueError, match="postprocessing"):
        scores(relevance, "log")


def test_min_max_of_a_constant_is_ones():
    assert min_max(torch.tensor([2.0, 2.0])).tolist() == [1.0, 1.0]
    assert min_max(torch.tensor([3.0])).tolist() == [1.0]
