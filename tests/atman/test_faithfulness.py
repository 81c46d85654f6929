"""Faithfulness with known ground truth: a small model trained on in-context associative recall answers
from the queried pair, so AtMan's top unit must be that pair's value or key token."""

import random

import pytest

from lmkernels.atman import explain
from lmkernels.atman.recall import RecallSettings, accuracy, probe, train_recall


@pytest.fixture(scope="module")
def recall_model():
    model, _ = train_recall(RecallSettings(num_layers=1, steps=150))
    return model


def _hit_rate(model, probes, **settings) -> float:
    hits = 0
    for item in probes:
        (top, _), = explain(model, item.prompt, item.target, **settings).top(1)
        hits += bool({item.key_position, item.value_position} & set(top.positions))
    return hits / len(probes)


def test_top_unit_is_the_queried_pair(recall_model):
    generator = random.Random(12345)
    probes = [probe(generator) for _ in range(100)]
    assert accuracy(recall_model, probes) >= 0.9  # the model does the task, so the ground truth holds
    assert _hit_rate(recall_model, probes, form="multiplicative") >= 0.9  # the paper's form, c = 0.1
    assert _hit_rate(recall_model, probes, factor=0.0) >= 0.9  # log-additive knockout
    # Log-additive c = 0.1 is weaker on a saturated head: a key holding nearly all of a row's attention
    # keeps most of it after renormalisation (a' = c a / (1 - (1 - c) a)), so it is not asserted here.


def test_answer_rests_on_the_asked_pair_in_the_target(recall_model):
    """The asked pair, the separator and the query in the target (" q=4 | q" -> "4"): with target units the
    answer's top unit is the target's pair, which prompt-only AtMan cannot name."""
    generator = random.Random(54321)
    probes = [probe(generator, asked_in_target=True) for _ in range(50)]
    assert accuracy(recall_model, probes) >= 0.9
    for settings in ({"form": "multiplicative"}, {"factor": 0.0}):
        hits = 0
        for item in probes:
            explanation = explain(recall_model, item.prompt, item.target, include_target=True, **settings)
            (top, _), = explanation.top(1, token=-1)
            hits += top.in_target and bool({item.key_position, item.value_position} & set(top.positions))
        assert hits / len(probes) >= 0.9, settings
