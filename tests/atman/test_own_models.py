"""``explain`` on lmkernels' own models beyond ``CausalLM``: T-FREE (``TFreeLM``, words as tokens, dictionary
decoding) and u-muP (``umup.TransformerDecoder``, attention swapped in for the pass); HAT is rejected.

The brute-force reference runs each model's own forward with torch's SDPA replaced by a dense
softmax that applies one unit's suppression (both forms), so the model's code, from its embedding to
its unit-scaled residuals, is the oracle and only the innermost attention is the test's.
"""

import contextlib
import importlib
import math

import pytest
import torch
import torch.nn.functional as F

import lmkernels.umup.functional as U

from lmkernels.atman import adapter_for, explain
from lmkernels.atman.models import TFreeCausalLM
from lmkernels.atman.umup import UMuPCausalLM
from lmkernels.hat import HATConfig, HATModel
from lmkernels.nn import DecoderConfig
from lmkernels.tfree import Decoder as Dictionary
from lmkernels.tfree import TFreeConfig, TFreeLM, Tokenizer, build_dictionary
from lmkernels.umup import TransformerDecoder

PROMPT = "The cat sat on the  mat. Then it"
TARGET = " slept on the mat."
TEXTS = ["The cat sat on the mat. Then it slept.", "A dog ran in the park, and it slept on a mat!"]
BYTES_PROMPT = "The cat sat on the mat."
BYTES_TARGET = " Zzz."
SETTINGS = [
    {},
    {"form": "multiplicative"},
    {"form": "multiplicative", "factor_min": "all", "factor": 0.0},
    {"factor": 0.0},
    {"layers": [1]},
    {"conceptual_threshold": 0.2},
    {"units": "word", "include_target": True},
]


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer(vocab_size=512, m=4, k_lowercase=1)


@pytest.fixture(scope="module")
def tfree_model():
    torch.manual_seed(0)
    config = TFreeConfig(vocab_size=512, m=4, k_lowercase=1,
                         decoder=DecoderConfig(dim=32, num_layers=2, num_heads=4, num_kv_heads=2))
    return TFreeLM(config).eval()


@pytest.fixture
def dictionary(tokenizer):
    return Dictionary(tokenizer, build_dictionary(tokenizer, TEXTS, size=64))


@pytest.fixture(scope="module")
def umup_model():
    torch.manual_seed(1)
    return TransformerDecoder(32, 256, layers=2, heads=4, attn_mult=1.5, loss_mult=2.0).eval()


@contextlib.contextmanager
def dense_suppressed_sdpa(monkeypatch, factors: torch.Tensor, form: str):
    """torch's SDPA, and the plain causal ``lmkernels.ops.attention`` calls of ``lmkernels.nn``'s layers,
    replaced by a dense softmax with ``factors`` [S] on the keys (log-additive or multiplicative, the
    minimum over the causally visible keys), as every attention layer of the model calls one of them."""

    def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
        assert dropout_p == 0
        queries, keys = q.shape[-2], k.shape[-2]
        visible = torch.ones(queries, keys, dtype=torch.bool).tril(keys - queries)
        if attn_mask is not None:
            visible = visible & attn_mask
        scores = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5 if scale is None else scale)
        c = factors[-keys:]
        if form == "log_additive":
            scores = scores + torch.log(c)
        else:
            low = scores.masked_fill(~visible, math.inf).amin(-1, keepdim=True)
            scores = low + c * (scores - low)
        return torch.softmax(scores.masked_fill(~visible, -math.inf), -1) @ v

    def plain_causal(q, k, v, *, causal):
        assert causal
        repeat = q.shape[1] // k.shape[1]
        return sdpa(q, k.repeat_interleave(repeat, 1), v.repeat_interleave(repeat, 1))

    with monkeypatch.context() as patch:
        patch.setattr(F, "scaled_dot_product_attention", sdpa)
        patch.setattr(importlib.import_module("lmkernels.nn.attention"), "attention", plain_causal)
        yield


def tfree_losses(model, dictionary, tokenizer, words, prompt_words, monkeypatch, factors=None, form="log_additive"):
    """CE of words[P:] under dictionary decoding, from the model's own forward over words[:-1]."""
    encoding = tokenizer.encode_words(words[:-1])
    positions = torch.arange(len(words) - 1)[None]
    context = (dense_suppressed_sdpa(monkeypatch, factors, form) if factors is not None
               else contextlib.nullcontext())
    with torch.no_grad(), context:
        hidden = model.hidden(encoding.rows, encoding.row_offsets, positions)[0, prompt_words - 1:]
        scores = dictionary.scores(model.head(hidden))
    targets = torch.tensor([dictionary.index[w] for w in words[prompt_words:]])
    return F.cross_entropy(scores, targets, reduction="none")


def umup_losses(model, ids, prompt_length, monkeypatch, factors=None, form="log_additive"):
    """CE of ids[P:] with the model's logits times loss_mult, from the model's own forward."""
    context = (dense_suppressed_sdpa(monkeypatch, factors, form) if factors is not None
               else contextlib.nullcontext())
    with torch.no_grad(), context:
        logits = model(ids[None, :-1])[0, prompt_length - 1:] * model.loss_mult
    return F.cross_entropy(logits, ids[prompt_length:], reduction="none")


# T-FREE

def test_tfree_words_are_the_units_and_the_target_continues_the_prompts_split(tfree_model, dictionary, tokenizer):
    explanation = explain(tfree_model, PROMPT, TARGET, tokenizer=dictionary, units="word")
    assert [u.label for u in explanation.units] == ["The", " cat", " sat", " on", " the  ", "mat.", " Then", " it"]
    # " slept" after "it" is the word "slept" (the join's space before it), not "<|ws|>" "slept"
    assert explanation.targets == [" slept", " on", " the", " mat", "."]
    tokens = explain(tfree_model, PROMPT, TARGET, tokenizer=dictionary)
    assert [u.label for u in tokens.units] == ["The", " cat", " sat", " on", " the", "  ", "mat", ".", " Then", " it"]


@pytest.mark.parametrize("form", ["log_additive", "multiplicative"])
def test_tfree_equals_its_own_forward_with_dense_suppressed_attention(tfree_model, dictionary, tokenizer, form,
                                                                      monkeypatch):
    words = tokenizer.split(PROMPT + TARGET)
    prompt_words = len(tokenizer.split(PROMPT))
    explanation = explain(tfree_model, PROMPT, TARGET, tokenizer=dictionary, form=form, factor=0.1,
                          include_target=True)
    clean = tfree_losses(tfree_model, dictionary, tokenizer, words, prompt_words, monkeypatch)
    torch.testing.assert_close(explanation.clean, clean, atol=1e-5, rtol=1e-5)
    for unit in (1, 5, prompt_words + 1):  # prompt units and a target unit
        assert explanation.units[unit].positions == (unit,)
        factors = torch.ones(len(words) - 1)
        factors[unit] = 0.1
        expected = tfree_losses(tfree_model, dictionary, tokenizer, words, prompt_words, monkeypatch, factors,
                                form) - clean
        torch.testing.assert_close(explanation.relevance[unit], expected, atol=5e-5, rtol=1e-4)
        assert expected.abs().max() > 1e-4


def test_tfree_clean_loss_is_generations_log_probability(tfree_model, dictionary, tokenizer):
    """CE_t is -log p(word) of ``Decoder.top``, the distribution ``tfree.generate`` picks from."""
    explanation = explain(tfree_model, PROMPT, TARGET, tokenizer=dictionary)
    words = tokenizer.split(PROMPT + TARGET)
    prompt_words = len(tokenizer.split(PROMPT))
    encoding = tokenizer.encode_words(words[:-1])
    with torch.no_grad():
        logits = tfree_model(encoding.rows, encoding.row_offsets, torch.arange(len(words) - 1)[None])[0]
    for t, word in enumerate(words[prompt_words:]):
        ranked = dict(dictionary.top(logits[prompt_words - 1 + t:prompt_words + t], k=len(dictionary))[0])
        assert explanation.clean[t].item() == pytest.approx(-ranked[word], abs=1e-5)


@pytest.mark.parametrize("settings", SETTINGS)
def test_tfree_prefix_reuse_equals_full_recomputation(tfree_model, dictionary, settings):
    reused = explain(tfree_model, PROMPT, TARGET, tokenizer=dictionary, batch_size=3, batch_tokens=40, **settings)
    full = explain(tfree_model, PROMPT, TARGET, tokenizer=dictionary, batch_size=64, prefix_reuse=False, **settings)
    torch.testing.assert_close(reused.relevance, full.relevance, atol=2e-5, rtol=0)
    assert reused.relevance.abs().max() > 1e-4


def test_tfree_token_ids_index_the_dictionary(tfree_model, dictionary, tokenizer):
    by_text = explain(tfree_model, PROMPT, TARGET, tokenizer=dictionary)
    words = tokenizer.split(PROMPT + TARGET)
    prompt_words = len(tokenizer.split(PROMPT))
    ids = [dictionary.index[w] for w in words]
    by_ids = explain(tfree_model, ids[:prompt_words], ids[prompt_words:], tokenizer=dictionary)
    torch.testing.assert_close(by_ids.relevance, by_text.relevance, atol=1e-6, rtol=0)
    assert by_ids.targets == by_text.targets  # their words as the text


def test_tfree_leaves_the_model_and_the_dictionary_unchanged(tfree_model, dictionary, tokenizer):
    words = tokenizer.split("Zebras sing loudly. And they")
    encoding = tokenizer.encode_words(words)
    positions = torch.arange(len(words))[None]
    with torch.no_grad():
        before = tfree_model(encoding.rows, encoding.row_offsets, positions)
    state = {name: tensor.clone() for name, tensor in tfree_model.state_dict().items()}
    known = list(dictionary.words)
    adapter = adapter_for(tfree_model, dictionary)
    explanation = explain(adapter, "Zebras sing loudly. And they", " dance.", units="word")
    assert explanation.targets == [" dance", "."]
    assert dictionary.words == known and "Zebras" not in dictionary  # the adapter added them to its own copy
    assert "Zebras" in adapter.dictionary and "dance" in adapter.dictionary
    # The next explanation starts from the caller's dictionary again: a serving adapter does not grow.
    again = explain(adapter, "Giraffes hum softly. And they", " dance.", units="word")
    assert "Giraffes" in adapter.dictionary and "Zebras" not in adapter.dictionary
    added = set(adapter.dictionary.words) - set(known)
    assert added == set(tokenizer.split("Giraffes hum softly. And they dance.")) - set(known)
    assert len(adapter.dictionary) == len(known) + len(added)
    assert again.targets == [" dance", "."]
    with torch.no_grad():
        assert torch.equal(tfree_model(encoding.rows, encoding.row_offsets, positions), before)
    assert all(torch.equal(state[name], tensor) for name, tensor in tfree_model.state_dict().items())


def test_tfree_bad_input(tfree_model, dictionary, tokenizer):
    with pytest.raises(TypeError, match="dictionary decoding"):
        explain(tfree_model, PROMPT, TARGET)
    with pytest.raises(TypeError, match="lmkernels.tfree.Decoder"):
        explain(tfree_model, PROMPT, TARGET, tokenizer=tokenizer)
    other = Dictionary(Tokenizer(vocab_size=256, m=4, k_lowercase=1), ["a"])
    with pytest.raises(ValueError, match="vocab_size, m, k_lowercase"):
        explain(tfree_model, PROMPT, TARGET, tokenizer=other)
    size = len(dictionary)
    with pytest.raises(IndexError, match=rf"token ids must lie in \[0, {size}\)"):
        explain(tfree_model, [1, 2, size], [3, 4], tokenizer=dictionary)
    with pytest.raises(ValueError, match="prompt: empty"):
        explain(tfree_model, "", TARGET, tokenizer=dictionary)
    with pytest.raises(ValueError, match="target: empty"):
        explain(tfree_model, [1, 2], [], tokenizer=dictionary)
    with pytest.raises(TypeError, match="expected an lmkernels.tfree.TFreeLM"):
        TFreeCausalLM(torch.nn.Linear(2, 2), dictionary)


# u-muP

@pytest.mark.parametrize("form", ["log_additive", "multiplicative"])
def test_umup_equals_its_own_forward_with_dense_suppressed_attention(umup_model, form, monkeypatch):
    ids = torch.tensor(list((BYTES_PROMPT + BYTES_TARGET).encode()))
    prompt_length = len(BYTES_PROMPT)
    explanation = explain(umup_model, BYTES_PROMPT, BYTES_TARGET, form=form, factor=0.1, include_target=True)
    clean = umup_losses(umup_model, ids, prompt_length, monkeypatch)
    torch.testing.assert_close(explanation.clean, clean, atol=1e-5, rtol=1e-5)
    for unit in (0, 7, 16, prompt_length + 2):
        factors = torch.ones(len(ids) - 1)
        factors[unit] = 0.1
        expected = umup_losses(umup_model, ids, prompt_length, monkeypatch, factors, form) - clean
        torch.testing.assert_close(explanation.relevance[unit], expected, atol=5e-5, rtol=1e-4)
        assert expected.abs().max() > 1e-4


def test_umup_clean_loss_is_the_models_loss(umup_model):
    """The mean clean CE is the model's own loss (``U.cross_entropy`` with its ``loss_mult``) on the same pass.

    Not ``model.loss(ids)`` itself: that runs ids with the last token too, and a u-muP decoder's attention
    output scale depends on the sequence length, so every row differs slightly."""
    ids = torch.tensor(list((BYTES_PROMPT + BYTES_TARGET).encode()))
    explanation = explain(umup_model, ids[:1], ids[1:])
    with torch.no_grad():
        loss = U.cross_entropy(umup_model(ids[None, :-1])[0].float(), ids[1:], mult=umup_model.loss_mult)
    assert explanation.clean.mean().item() == pytest.approx(loss.item(), abs=1e-5)


@pytest.mark.parametrize("settings", SETTINGS)
def test_umup_prefix_reuse_equals_full_recomputation(umup_model, settings):
    reused = explain(umup_model, BYTES_PROMPT, BYTES_TARGET, batch_size=3, batch_tokens=60, **settings)
    full = explain(umup_model, BYTES_PROMPT, BYTES_TARGET, batch_size=64, prefix_reuse=False, **settings)
    torch.testing.assert_close(reused.relevance, full.relevance, atol=2e-5, rtol=0)
    assert reused.relevance.abs().max() > 1e-4


def test_umup_fp8_model(monkeypatch):
    """FP8 / bf16 linears run as the model's own: the clean pass equals its forward, prefix reuse the full passes."""
    torch.manual_seed(3)
    model = TransformerDecoder(32, 256, layers=2, heads=4, fp8="partial").eval()
    ids = torch.tensor(list((BYTES_PROMPT + BYTES_TARGET).encode()))
    reused = explain(model, BYTES_PROMPT, BYTES_TARGET, batch_size=4)
    full = explain(model, BYTES_PROMPT, BYTES_TARGET, prefix_reuse=False)
    torch.testing.assert_close(reused.clean, umup_losses(model, ids, len(BYTES_PROMPT), monkeypatch), atol=1e-5,
                               rtol=1e-5)
    torch.testing.assert_close(reused.relevance, full.relevance, atol=2e-5, rtol=0)


def _umup_outputs(model):
    ids = torch.tensor([list(b"Some bytes, then more.")])
    with torch.no_grad():
        return model(ids)


def _attention_restored(model):
    return all("forward" not in vars(layer.mhsa) for layer in model.layers)


def test_umup_leaves_the_model_unchanged(umup_model):
    before = _umup_outputs(umup_model)
    umup_model.train()  # dropout 0: the same outputs; the flags must come back
    try:
        explain(umup_model, BYTES_PROMPT, BYTES_TARGET)
        assert all(module.training for module in umup_model.modules())
    finally:
        umup_model.eval()
    assert _attention_restored(umup_model)
    assert torch.equal(_umup_outputs(umup_model), before)


def test_umup_is_restored_when_a_pass_raises(umup_model):
    before = _umup_outputs(umup_model)

    def fail(*_):
        assert not _attention_restored(umup_model)  # the suppressed attention is in place during the pass
        raise RuntimeError("boom")

    handle = umup_model.final_norm.register_forward_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            explain(umup_model, BYTES_PROMPT, BYTES_TARGET)
    finally:
        handle.remove()
    assert _attention_restored(umup_model) and not umup_model.training
    assert torch.equal(_umup_outputs(umup_model), before)


def test_umup_with_attention_dropout_is_deterministic():
    """The model's own attention drops weights even in eval; AtMan's passes use the expected output instead."""
    torch.manual_seed(2)
    model = TransformerDecoder(32, 256, layers=1, heads=4, dropout_p=0.1).eval()
    first = explain(model, BYTES_PROMPT, BYTES_TARGET)
    second = explain(model, BYTES_PROMPT, BYTES_TARGET, batch_size=1)
    torch.testing.assert_close(first.relevance, second.relevance, atol=2e-5, rtol=0)


def test_umup_explains_a_one_position_sequence(umup_model):
    explanation = explain(umup_model, "a", "b")  # the clean pass's attention has one key
    assert explanation.relevance.shape == (1, 1) and torch.isfinite(explanation.relevance).all()


def test_umup_bad_input(umup_model):
    with pytest.raises(IndexError, match="the model has 2 layers"):
        explain(umup_model, BYTES_PROMPT, BYTES_TARGET, layers=[2])
    wide = TransformerDecoder(16, 300, layers=1, heads=2)
    with pytest.raises(TypeError, match="needs a tokenizer for a vocabulary of 300"):
        explain(wide, "abc", "d")
    with pytest.raises(IndexError, match=r"token ids must lie in \[0, 256\)"):
        explain(umup_model, [1, 2, 256], [3])
    with pytest.raises(TypeError, match="expected an lmkernels.umup.TransformerDecoder"):
        UMuPCausalLM(torch.nn.Linear(2, 2))


def test_compiled_and_data_parallel_models_are_explained_as_the_model(umup_model):
    expected = explain(umup_model, [5, 9, 2, 7], [3, 1]).relevance
    for wrapped in (torch.compile(umup_model), torch.nn.DataParallel(umup_model)):
        assert torch.equal(explain(wrapped, [5, 9, 2, 7], [3, 1]).relevance, expected)


# HAT and others

def test_hat_and_other_models_are_rejected_with_the_reason():
    hat = HATModel(HATConfig.tiny(width=32))
    with pytest.raises(TypeError, match="HATModel is not supported: HAT reads its input at three levels"):
        explain(hat, "Hello world", " again")
    with pytest.raises(TypeError, match="TFreeLM, lmkernels.umup.TransformerDecoder"):
        adapter_for(torch.nn.Linear(2, 2))
    assert isinstance(adapter_for(TFreeLM(TFreeConfig(vocab_size=64, m=2, k_lowercase=1,
                                                      decoder=DecoderConfig(dim=16, num_layers=1, num_heads=2))),
                                  Dictionary(Tokenizer(vocab_size=64, m=2, k_lowercase=1), ["a"])), TFreeCausalLM)
