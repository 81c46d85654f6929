"""Target units (``explain(..., include_target=True)``) on lmkernels' ``CausalLM``: spec invariant 6
(R[u, t] = 0 exactly for a unit at positions >= P + t), prefix reuse equals full recomputation, two
independent oracles for the scores that are not zero (the model's own masked pass, the research
algorithm), renderings and bad input. Hugging Face models: ``test_hf.py``."""

import json

import pytest
import torch
import torch.nn.functional as F

from lmkernels.atman import FORMS, LMKernelsCausalLM, explain
from lmkernels.bench.atman_explain import official_relevance

PROMPT = "The cat sat on the mat."
TARGET = " It slept. Zzz."
P, T = len(PROMPT), len(TARGET)  # bytes: one token per character here


def _check_causal_zeros(explanation, prompt_length):
    """Invariant 6: a target unit whose first position is P + k scores exactly 0 for target tokens 0..k,
    and something for the later ones (it is recomputed there)."""
    target_units = [(index, unit) for index, unit in enumerate(explanation.units) if unit.in_target]
    assert target_units
    for index, unit in target_units:
        k = min(unit.positions) - prompt_length
        assert k >= 0
        assert torch.equal(explanation.relevance[index, :k + 1], torch.zeros(k + 1))
        assert explanation.relevance[index, k + 1:].abs().max() > 1e-5


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("prefix_reuse", [True, False])
@pytest.mark.parametrize("units", ["token", "word"])
def test_target_units_score_exactly_zero_before_their_position(byte_model, form, prefix_reuse, units):
    explanation = explain(byte_model, PROMPT, TARGET, include_target=True, form=form, prefix_reuse=prefix_reuse,
                          units=units, batch_size=4, batch_tokens=80)
    target_positions = sorted(p for unit in explanation.units if unit.in_target for p in unit.positions)
    assert target_positions == list(range(P, P + T - 1))  # every target input, never the last target token
    assert all(max(unit.positions) < P for unit in explanation.units if not unit.in_target)
    _check_causal_zeros(explanation, P)


class _RoundsDifferently(LMKernelsCausalLM):
    """A backend whose recomputed rows round differently from its clean pass (as GEMMs of other shapes may)."""

    def perturbed(self, *args):
        return super().perturbed(*args) * (1 + 2 ** -20)


@pytest.mark.parametrize("prefix_reuse", [True, False])
def test_zeros_do_not_rest_on_the_recomputation_rounding_like_the_clean_pass(byte_model, prefix_reuse):
    explanation = explain(_RoundsDifferently(byte_model), PROMPT, TARGET, include_target=True, batch_size=4,
                          prefix_reuse=prefix_reuse)
    _check_causal_zeros(explanation, P)


@pytest.mark.parametrize("settings", [
    {},
    {"form": "multiplicative"},
    {"form": "multiplicative", "factor_min": "all", "factor": 0.0},
    {"factor": 0.0},
    {"layers": [1]},
    {"conceptual_threshold": 0.2},
    {"units": "sentence"},
    {"units": [(2, 5), (P, P + 3), (P + 5, P + T - 1)]},
])
def test_prefix_reuse_equals_full_recomputation_with_target_units(byte_model, settings):
    reused = explain(byte_model, PROMPT, TARGET, include_target=True, batch_size=3, batch_tokens=60, **settings)
    full = explain(byte_model, PROMPT, TARGET, include_target=True, batch_size=64, prefix_reuse=False, **settings)
    assert any(unit.in_target for unit in reused.units)
    torch.testing.assert_close(reused.relevance, full.relevance, atol=2e-5, rtol=0)
    assert reused.relevance[[unit.in_target for unit in reused.units]].abs().max() > 1e-3


def test_prompt_units_score_the_same_with_target_units(byte_model):
    alone = explain(byte_model, PROMPT, TARGET, batch_size=5)
    both = explain(byte_model, PROMPT, TARGET, batch_size=5, include_target=True)
    assert both.units[:len(alone.units)] == alone.units and len(both.units) == len(alone.units) + T - 1
    torch.testing.assert_close(both.relevance[:len(alone.units)], alone.relevance, atol=2e-5, rtol=0)
    torch.testing.assert_close(both.clean, alone.clean, atol=0, rtol=0)


def test_target_knockout_equals_a_hard_mask_through_sdpa(byte_model):
    """c = 0 on a target position p removes key p from every row: the model's own masked pass, whose
    rows before p come out unchanged (up to rounding) where ours are exactly 0."""
    ids = torch.tensor(list((PROMPT + TARGET[:-1]).encode()))
    targets = torch.tensor(list(TARGET.encode()))
    rows = slice(P - 1, len(ids))
    explanation = explain(byte_model, PROMPT, TARGET, factor=0.0, include_target=True)
    clean = F.cross_entropy(byte_model(ids[None])[0, rows], targets, reduction="none")
    for position in (P, P + 4, P + T - 2):
        allowed = torch.ones(len(ids), len(ids), dtype=torch.bool).tril()
        allowed[:, position] = False
        logits = byte_model(ids[None], allowed=allowed[None])[0, rows]
        expected = F.cross_entropy(logits, targets, reduction="none") - clean
        torch.testing.assert_close(explanation.relevance[position], expected, atol=5e-5, rtol=1e-4)
        assert expected[position - P + 1:].abs().max() > 1e-3  # the knockout matters after p


def test_target_units_equal_the_research_algorithm(byte_model):
    """The research code explains every input position, target ones included, by full dense passes."""
    prompt, target = torch.tensor(list(PROMPT.encode())), torch.tensor(list(TARGET.encode()))
    ours = explain(byte_model, prompt, target, form="multiplicative", factor_min="all", include_target=True)
    official = official_relevance(byte_model, prompt, target, range(P + T - 1), factor=0.1)
    torch.testing.assert_close(ours.relevance, official, atol=3e-5, rtol=0)


def test_a_one_token_target_has_no_target_units(byte_model):
    with_target = explain(byte_model, PROMPT, "!", include_target=True)
    assert not any(unit.in_target for unit in with_target.units)
    assert torch.equal(with_target.relevance, explain(byte_model, PROMPT, "!").relevance)


def test_renderings_show_target_units(byte_model, tmp_path):
    explanation = explain(byte_model, PROMPT, TARGET, units="word", include_target=True)
    assert [(u.label, u.in_target) for u in explanation.units][-4:] == [
        ("mat.", False), (" It ", True), ("slept. ", True), ("Zzz", True)]
    assert explanation.units[-3].positions == tuple(range(P, P + 4))
    record = json.loads(explanation.to_json())
    assert record["prompt_length"] == P
    assert [u["in_target"] for u in record["units"]] == [u.in_target for u in explanation.units]
    page = explanation.to_html()
    assert page.count("<span") == len(explanation.units)
    prompt_part, target_part = page.split("<b>explained")
    assert prompt_part.count("<span") == 6 and target_part.count("<span") == 3
    assert '">Zzz</span>.</p>' in target_part  # the last target token is no input: plain
    (best, _), = explanation.top(1, token=-1)
    assert best == explanation.units[int(explanation.token_scores[:, -1].argmax())]
    figure = explanation.plot(str(tmp_path / "atman.png"))
    assert "Zzz (target)" in [label.get_text() for label in figure.axes[0].get_yticklabels()]


def test_token_ids_without_text(byte_model):
    explanation = explain(byte_model, [1, 2, 3], [4, 5, 6], include_target=True)
    assert [(u.label, u.in_target, u.positions) for u in explanation.units][-2:] == [("<4>", True, (3,)),
                                                                                     ("<5>", True, (4,))]
    page = explanation.to_html()
    assert page.count("<span") == 5 and "&lt;6&gt;" in page.split("<b>explained")[1]
    spans = explain(byte_model, [1, 2, 3], [4, 5, 6], include_target=True, units="auto")
    assert [u.positions for u in spans.units] == [(0,), (1,), (2,), (3,), (4,)]


def test_bad_input(byte_model):
    with pytest.raises(TypeError, match="include_target"):
        explain(byte_model, "ab", "cd", include_target="yes")
    with pytest.raises(IndexError, match="units"):  # positions P .. P+T-2 = 2 .. 3 only
        explain(byte_model, "ab", "cde", include_target=True, units=[(3, 5)])
    with pytest.raises(IndexError, match="units"):  # without target units the prompt's positions only
        explain(byte_model, "ab", "cde", units=[(2, 3)])
    with pytest.raises(ValueError, match="crosses the prompt/target boundary at token 2"):
        explain(byte_model, "ab", "cde", include_target=True, units=[(1, 3)])
    with pytest.raises(ValueError, match="needs the target as text"):
        explain(byte_model, "ab", [99, 100, 101], include_target=True, units="word")
