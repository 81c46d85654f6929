"""Canonical component names for lmkernels and Hugging Face Llama models; bit-exact restore."""

import pytest
import torch

from lmkernels import dtm


def test_lmkernels_components_follow_llama_naming(model):
    weights = dtm.components(model)
    assert list(weights) == [f"layers.{i}.{kind}" for i in range(2) for kind in dtm.KINDS]
    layer = model.decoder.layers[1]
    expected = {"q": layer.attention.q_proj, "k": layer.attention.k_proj, "v": layer.attention.v_proj,
                "o": layer.attention.o_proj, "gate": layer.mlp.w_in, "up": layer.mlp.w_gate, "down": layer.mlp.w_out}
    for kind, module in expected.items():
        assert weights[f"layers.1.{kind}"] is module.weight
    assert dtm.parameter_counts(model)["layers.0.gate"] == 32 * model.config.hidden_dim


def test_huggingface_llama_components(llama):
    weights = dtm.components(llama)
    assert list(weights) == [f"layers.{i}.{kind}" for i in range(2) for kind in dtm.KINDS]
    layer = llama.model.layers[1]
    assert weights["layers.1.k"] is layer.self_attn.k_proj.weight and weights["layers.1.k"].shape == (16, 32)
    assert weights["layers.1.gate"] is layer.mlp.gate_proj.weight
    assert weights["layers.1.up"] is layer.mlp.up_proj.weight
    assert weights["layers.1.down"] is layer.mlp.down_proj.weight


@pytest.mark.parametrize("compression", [dtm.MagnitudePruning(0.7), dtm.Int8Absmax()])
def test_restore_is_bit_exact_for_every_component(model, compression):
    before = {name: weight.detach().clone() for name, weight in dtm.components(model).items()}
    for name, weight in dtm.components(model).items():
        with dtm.compressed(model, name, compression):
            assert torch.equal(weight, compression(before[name]))
            for other, other_weight in dtm.components(model).items():
                if other != name:
                    assert torch.equal(other_weight, before[other])
        assert torch.equal(weight, before[name])
    for name, weight in before.items():
        assert torch.equal(dtm.components(model)[name], weight)


def test_restore_after_an_exception(model):
    weight = dtm.components(model)["layers.0.v"]
    original = weight.detach().clone()
    with pytest.raises(RuntimeError, match="boom"):
        with dtm.compressed(model, ["layers.0.v"], dtm.MagnitudePruning(1.0)):
            assert (weight == 0).all()
            raise RuntimeError("boom")
    assert torch.equal(weight, original)


def test_unknown_components_and_models(model):
    with pytest.raises(ValueError, match=r"\['layers.2.q'\] do not exist"):
        dtm.select(model, ["layers.0.q", "layers.2.q"])
    with pytest.raises(ValueError, match="do not exist"):
        with dtm.compressed(model, "layers.0.query", dtm.Int8Absmax()):
            pass
    with pytest.raises(ValueError, match="model"):
        dtm.components(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="compression"):
        with dtm.compressed(model, "layers.0.q", lambda w: w[:1]):
            pass
    assert dtm.components(model)["layers.0.q"].abs().sum() > 0
