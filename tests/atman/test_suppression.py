"""Suppression factors: unit factors, conceptual neighbours (similarity-scaled, strongest from 1), checks."""

import math

import pytest
import torch

from lmkernels.atman import Suppression, Unit


def test_unit_positions_get_the_factor():
    factors = Suppression(factor=0.25).factors([Unit((1, 2), "x"), Unit((0,), "y")], 4)
    assert factors.tolist() == [[1, 0.25, 0.25, 1], [0.25, 1, 1, 1]]


def test_conceptual_neighbours_get_similarity_scaled_factors_and_the_strongest_wins():
    # e0 . e1 = 0.8, e0 . e2 = 0.6, e1 . e2 = 0.96 (unit vectors); e3 points away from all
    embeddings = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [-1.0, 0.0]])
    c = 0.1
    suppression = Suppression(factor=c, conceptual_threshold=0.7)
    (alone,) = suppression.factors([Unit((0,), "a")], 4, embeddings)
    assert alone.tolist() == pytest.approx([c, 1 - (1 - c) * 0.8, 1, 1])
    (pair,) = suppression.factors([Unit((0, 1), "ab")], 4, embeddings)
    # position 2 neighbours position 1 only (0.96 >= 0.7; 0.6 < 0.7): its factor, not 0 (the official default)
    assert pair.tolist() == pytest.approx([c, c, 1 - (1 - c) * 0.96, 1])
    low = Suppression(factor=c, conceptual_threshold=0.5).factors([Unit((0,), "a")], 4, embeddings)[0]
    assert low.tolist() == pytest.approx([c, 1 - (1 - c) * 0.8, 1 - (1 - c) * 0.6, 1])


def test_amplifying_neighbours_keep_the_strongest_amplification():
    embeddings = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [-1.0, 0.0]])
    c = 2.0
    (alone,) = Suppression(factor=c, conceptual_threshold=0.7).factors([Unit((0,), "a")], 4, embeddings)
    assert alone.tolist() == pytest.approx([c, 1 + (c - 1) * 0.8, 1, 1])
    (pair,) = Suppression(factor=c, conceptual_threshold=0.5).factors([Unit((0, 1), "ab")], 4, embeddings)
    assert pair.tolist() == pytest.approx([c, c, 1 + (c - 1) * 0.96, 1])


def test_threshold_above_one_is_single_token_suppression():
    embeddings = torch.randn(6, 8)
    units = [Unit((i,), str(i)) for i in range(6)]
    assert torch.equal(Suppression(conceptual_threshold=1.01).factors(units, 6, embeddings),
                       Suppression().factors(units, 6))


def test_negative_similarities_leave_keys_alone():
    embeddings = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    (row,) = Suppression(conceptual_threshold=-2.0).factors([Unit((0,), "a")], 2, embeddings)
    assert row.tolist() == pytest.approx([0.1, 1.0])


def test_attention_arguments():
    factors = torch.tensor([[1.0, 0.5, 0.0]])
    additive = Suppression(layers=(1,)).attention_arguments(factors)
    assert additive.key_factor is None and additive.layers == frozenset({1})
    assert additive.key_bias[0, 0] == 0 and additive.key_bias[0, 2] == -10000  # c = 0: the official -10000
    assert additive.key_bias[0, 1].item() == pytest.approx(math.log(0.5))
    multiplicative = Suppression(form="multiplicative", factor_min="all").attention_arguments(factors)
    assert multiplicative.key_bias is None and torch.equal(multiplicative.key_factor, factors)
    assert multiplicative.factor_min == "all" and multiplicative.layers is None


@pytest.mark.parametrize("kwargs, error, match", [
    ({"factor": -0.1}, ValueError, "factor"),
    ({"factor": float("nan")}, ValueError, "factor"),
    ({"factor": float("inf")}, ValueError, "factor"),
    ({"factor": "0.1"}, TypeError, "factor"),
    ({"form": "additive"}, ValueError, "form"),
    ({"factor_min": "rows"}, ValueError, "factor_min"),
    ({"layers": (-1,)}, ValueError, "layers"),
    ({"layers": ()}, ValueError, "layers"),
    ({"conceptual_threshold": float("nan")}, ValueError, "conceptual_threshold"),
])
def test_bad_settings(kwargs, error, match):
    with pytest.raises(error, match=match):
        Suppression(**kwargs)


def test_layer_index_beyond_the_model():
    with pytest.raises(IndexError, match="layers"):
        Suppression(layers=(0, 2)).check_layers(2)
