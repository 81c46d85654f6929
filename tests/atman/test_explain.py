"""``explain`` on lmkernels' ``CausalLM``: prefix reuse equals full recomputation, independent oracles,
the spec's invariants, the ``Explanation`` renderings and bad input."""

import json

import pytest
import torch
import torch.nn.functional as F

from lmkernels.atman import LMKernelsCausalLM, Tokens, explain, explain_similarity
from lmkernels.bench.atman_explain import official_relevance
from lmkernels.nn import ByteTokenizer

PROMPT = "The cat sat on the mat. Then it slept."
TARGET = " Zzz."


@pytest.mark.parametrize("settings", [
    {},
    {"form": "multiplicative"},
    {"form": "multiplicative", "factor_min": "all", "factor": 0.0},
    {"factor": 0.0},
    {"factor": 2.0},
    {"layers": [1]},
    {"conceptual_threshold": 0.2},
    {"units": "word"},
    {"units": [(3, 9), (20, 24), (30, 31)]},
])
def test_prefix_reuse_equals_full_recomputation(byte_model, settings):
    reused = explain(byte_model, PROMPT, TARGET, batch_size=3, batch_tokens=100, **settings)
    full = explain(byte_model, PROMPT, TARGET, batch_size=64, prefix_reuse=False, **settings)
    assert reused.relevance.shape == (len(reused.units), len(TARGET))
    torch.testing.assert_close(reused.relevance, full.relevance, atol=2e-5, rtol=0)
    assert reused.relevance.abs().max() > 1e-3  # the suppression does something


def test_batched_equals_one_pass_at_a_time(byte_model):
    batched = explain(byte_model, PROMPT, TARGET, batch_size=64)
    single = explain(byte_model, PROMPT, TARGET, batch_size=1)
    torch.testing.assert_close(batched.relevance, single.relevance, atol=2e-5, rtol=0)


def test_clean_losses_are_the_models(byte_model):
    explanation = explain(byte_model, PROMPT, TARGET)
    ids = torch.tensor(list((PROMPT + TARGET[:-1]).encode()))
    logits = byte_model(ids[None])[0, len(PROMPT) - 1:]
    expected = F.cross_entropy(logits, torch.tensor(list(TARGET.encode())), reduction="none")
    torch.testing.assert_close(explanation.clean, expected, atol=1e-5, rtol=1e-5)


def test_knockout_equals_a_hard_mask_through_sdpa(byte_model):
    """Log-additive with c = 0 removes key j from every row: the model's own masked SDPA pass."""
    ids = torch.tensor(list((PROMPT + TARGET[:-1]).encode()))
    targets = torch.tensor(list(TARGET.encode()))
    rows = slice(len(PROMPT) - 1, len(ids))
    explanation = explain(byte_model, PROMPT, TARGET, factor=0.0)
    clean = F.cross_entropy(byte_model(ids[None])[0, rows], targets, reduction="none")
    for unit in range(1, len(PROMPT), 5):  # key 0 is row 0's only key: no softmax left there
        allowed = torch.ones(len(ids), len(ids), dtype=torch.bool).tril()
        allowed[:, unit] = False
        allowed[unit, unit] = unit == 0
        logits = byte_model(ids[None], allowed=allowed[None])[0, rows]
        expected = F.cross_entropy(logits, targets, reduction="none") - clean
        torch.testing.assert_close(explanation.relevance[unit], expected, atol=5e-5, rtol=1e-4)


def test_knockout_is_the_limit_of_small_factors_in_a_layer_subset(byte_model):
    """A unit at position 0 knocks out row 0's only key: the row is left as it was (c -> 0), not zeroed."""
    units = [(0, 1), (3, 4)]
    knockout = explain(byte_model, PROMPT, TARGET, factor=0.0, layers=[0], units=units)
    small = explain(byte_model, PROMPT, TARGET, factor=1e-30, layers=[0], units=units)
    torch.testing.assert_close(knockout.relevance, small.relevance, atol=1e-5, rtol=1e-4)


def test_multiplicative_over_all_keys_equals_the_official_algorithm(byte_model):
    prompt = torch.tensor(list(PROMPT.encode()))
    target = torch.tensor(list(TARGET.encode()))
    ours = explain(byte_model, prompt, target, form="multiplicative", factor_min="all", factor=0.1)
    official = official_relevance(byte_model, prompt, target, range(len(prompt)), factor=0.1)
    torch.testing.assert_close(ours.relevance, official, atol=3e-5, rtol=0)


def test_factor_one_changes_nothing(byte_model):
    for form in ("log_additive", "multiplicative"):
        explanation = explain(byte_model, PROMPT, TARGET, factor=1.0, form=form)
        assert explanation.relevance.abs().max() < 1e-5


@pytest.mark.parametrize("include_target", [False, True])
def test_threshold_above_one_is_single_token_atman(byte_model, include_target):
    """Spec invariant 7: kappa > 1 (no cosine reaches it) or conceptual suppression off is single-token AtMan."""
    single = explain(byte_model, PROMPT, TARGET, include_target=include_target).relevance
    above_one = explain(byte_model, PROMPT, TARGET, include_target=include_target, conceptual_threshold=1.01)
    assert torch.equal(above_one.relevance, single)
    conceptual = explain(byte_model, PROMPT, TARGET, include_target=include_target, conceptual_threshold=0.2)
    assert (conceptual.relevance - single).abs().max() > 1e-3  # a reachable kappa does change the passes


def test_layer_subset_is_between_none_and_all(byte_model):
    every = explain(byte_model, PROMPT, TARGET).relevance
    first = explain(byte_model, PROMPT, TARGET, layers=[0]).relevance
    second = explain(byte_model, PROMPT, TARGET, layers=[1]).relevance
    assert not torch.allclose(first, every) and not torch.allclose(second, every)
    assert not torch.allclose(first, second)


def test_scores_and_renderings(byte_model, tmp_path):
    explanation = explain(byte_model, PROMPT, TARGET, units="word", postprocessing="square", normalize=True)
    assert [u.label for u in explanation.units][:3] == ["The ", "cat ", "sat "]
    assert explanation.unit_scores.min() == 0 and explanation.unit_scores.max() == 1
    torch.testing.assert_close(explanation.token_scores.amax(0), torch.ones(len(TARGET)))
    (best, value), = explanation.top(1)
    assert value == 1.0 and best == explanation.units[int(explanation.unit_scores.argmax())]
    record = json.loads(explanation.to_json())
    assert record["quantity"] == "cross-entropy" and record["targets"] == list(TARGET)
    assert [u["label"] for u in record["units"]] == [u.label for u in explanation.units]
    assert record["units"][0]["relevance"] == pytest.approx(explanation.relevance[0].tolist())
    page = explanation.to_html()
    assert page.count("<span") == len(explanation.units) and "cat " in page and "Zzz." in page
    figure = explanation.plot(str(tmp_path / "atman.png"))
    assert (tmp_path / "atman.png").stat().st_size > 1000 and figure.axes


def test_the_byte_tokenizer_passed_explicitly_keeps_the_text(byte_model):
    implicit = explain(byte_model, PROMPT, TARGET, units="word")
    explicit = explain(byte_model, PROMPT, TARGET, tokenizer=ByteTokenizer(), units="word")
    assert [u.label for u in explicit.units] == [u.label for u in implicit.units]
    assert torch.equal(explicit.relevance, implicit.relevance)


def test_html_escapes_and_token_ids_without_text(byte_model):
    explanation = explain(byte_model, "<b>&", "x")
    page = explanation.to_html()
    assert "&lt;" in page and "&amp;" in page and "<b>&" not in page
    ids = explain(byte_model, [1, 2, 3], [4, 5])
    assert [u.label for u in ids.units] == ["<1>", "<2>", "<3>"] and ids.targets == ["<4>", "<5>"]


def test_pretokenised_input_and_a_tokenizer(byte_model):
    tokens = Tokens((72, 105), "Hi", ((0, 1), (1, 2)), (False, False))
    assert explain(byte_model, tokens, "!").relevance.shape == (2, 1)

    class Words:
        def encode(self, text):
            return [len(word) for word in text.split()]

    assert explain(byte_model, "a bb ccc", "dddd", tokenizer=Words()).relevance.shape == (3, 1)


def test_bad_input(byte_model):
    with pytest.raises(ValueError, match="prompt: empty"):
        explain(byte_model, "", "x")
    with pytest.raises(ValueError, match="target: empty"):
        explain(byte_model, "x", [])
    with pytest.raises(IndexError, match="prompt"):
        explain(byte_model, [1, 256], "x")
    with pytest.raises(TypeError, match="prompt"):
        explain(byte_model, 3.5, "x")
    with pytest.raises(ValueError, match="factor"):
        explain(byte_model, "ab", "c", factor=-1.0)
    with pytest.raises(ValueError, match="factor"):
        explain(byte_model, "ab", "c", factor=float("nan"))
    with pytest.raises(IndexError, match="units"):
        explain(byte_model, "ab", "c", units=[(0, 3)])
    with pytest.raises(ValueError, match="overlap"):
        explain(byte_model, "abc", "d", units=[(0, 2), (1, 3)])
    with pytest.raises(IndexError, match="layers"):
        explain(byte_model, "ab", "c", layers=[2])
    with pytest.raises(ValueError, match="batch_size"):
        explain(byte_model, "ab", "c", batch_size=0)
    with pytest.raises(ValueError, match="batch_tokens"):
        explain(byte_model, "ab", "c", batch_tokens=0)
    with pytest.raises(ValueError, match="maximum of 8"):
        explain(LMKernelsCausalLM(byte_model, max_length=8), "abcdefgh", "ij")
    with pytest.raises(TypeError, match="model"):
        explain(torch.nn.Linear(2, 2), "ab", "c")
    with pytest.raises(TypeError, match="causal LM"):
        explain_similarity(byte_model, "ab", "c")
