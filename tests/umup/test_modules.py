"""The unit-scaled modules equal unit-scaling 0.3.5's with identical weights (outputs and every parameter
gradient), apply the residual tau rule and depth tags, take the u-muP hyperparameters, and switch to FP8."""

import copy
import pickle

import pytest
import torch
import unit_scaling as uu  # the oracle: unit-scaling==0.3.5, a test dependency
import unit_scaling.functional as R
from unit_scaling.core.functional import transformer_residual_scaling_rule as their_rule

from lmkernels import umup
from lmkernels.umup import modules as M


def _grads(module, inputs, upstream_seed=1, loss=None):
    out = module.loss(*inputs) if loss else module(*inputs)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(upstream_seed))
    params = [p for _, p in sorted(module.named_parameters())]
    float_inputs = [t for t in inputs if t.is_floating_point()]
    grads = torch.autograd.grad(out, float_inputs + params, upstream)
    return [out, *grads]


def _assert_same_module(ours, theirs, inputs, loss=False, exact=True):
    missing = ours.load_state_dict(theirs.state_dict())
    assert not missing.missing_keys and not missing.unexpected_keys
    inputs = [t.requires_grad_() if t.is_floating_point() else t for t in inputs]
    tolerance = dict(rtol=0, atol=0) if exact else dict(rtol=1e-5, atol=1e-6)
    for a, b in zip(_grads(ours, inputs, loss=loss), _grads(theirs, inputs, loss=loss), strict=True):
        torch.testing.assert_close(a, b, **tolerance)


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("bias", [False, True])
def test_linear_and_readout(bias):
    _assert_same_module(M.Linear(12, 20, bias=bias), uu.Linear(12, 20, bias=bias), [_x(3, 4, 12)])
    _assert_same_module(M.Linear(12, 20, constraint="gmean"), uu.Linear(12, 20, constraint="gmean"), [_x(5, 12)])
    _assert_same_module(M.LinearReadout(12, 30, bias=bias), uu.LinearReadout(12, 30, bias=bias), [_x(5, 12)])


def test_embedding_and_norm():
    ids = torch.randint(50, (3, 7), generator=torch.Generator().manual_seed(2))
    _assert_same_module(M.Embedding(50, 16), uu.Embedding(50, 16), [ids])
    for affine in (False, True):
        _assert_same_module(M.RMSNorm(16, elementwise_affine=affine), uu.RMSNorm(16, elementwise_affine=affine),
                            [_x(3, 5, 16) * 4])


def test_mlp_and_mhsa():
    _assert_same_module(M.MLP(16), uu.MLP(16), [_x(2, 5, 16)])
    for is_causal in (False, True):
        for mult in (1.0, 2.5):
            _assert_same_module(M.MHSA(32, 4, is_causal, mult=mult), uu.MHSA(32, 4, is_causal, mult=mult),
                                [_x(2, 9, 32)], exact=False)


def test_transformer_layer_and_decoder():
    _assert_same_module(M.TransformerLayer(32, 4, 0.4, 0.3, is_causal=True),
                        uu.TransformerLayer(32, 4, 0.4, 0.3, is_causal=True), [_x(2, 6, 32)], exact=False)
    ids = torch.randint(40, (3, 10), generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    _assert_same_module(M.TransformerDecoder(32, 40, 3, 4), uu.TransformerDecoder(32, 40, 3, 4), [ids], exact=False)
    _assert_same_module(M.TransformerDecoder(32, 40, 3, 4), uu.TransformerDecoder(32, 40, 3, 4), [ids], loss=True,
                        exact=False)


def test_residual_rule_hyperparameters_match_their_rule():
    ours = M.TransformerDecoder(32, 40, 4, 4, residual_mult=2.0, residual_attn_ratio=0.25)
    theirs = uu.TransformerDecoder(32, 40, 4, 4, residual_scaling=their_rule(2.0, 0.25))
    assert [(layer.mhsa_tau, layer.mlp_tau) for layer in ours.layers] == \
        [(layer.mhsa_tau, layer.mlp_tau) for layer in theirs.layers]
    default = M.TransformerDecoder(32, 40, 4, 4).layers
    taus = [tau for layer in default for tau in (layer.mhsa_tau, layer.mlp_tau)]
    torch.testing.assert_close(torch.tensor(taus), torch.tensor([0.5, 0.447, 0.408, 0.378, 0.354, 0.333, 0.316,
                                                                 0.302]), atol=5e-4, rtol=0)
    ids = torch.randint(40, (2, 8), generator=torch.Generator().manual_seed(3))
    _assert_same_module(ours, theirs, [ids], exact=False)


def test_attn_act_and_loss_multipliers():
    """attn_mult, act_mult and loss_mult reach the ops: compare with the oracle's ops composed by hand."""
    model = M.TransformerDecoder(16, 30, 1, 2, attn_mult=3.0, act_mult=0.5, loss_mult=2.0)
    layer = model.layers[0]
    assert layer.mhsa.mult == 3.0 and layer.mlp.act_mult == 0.5
    x = _x(2, 5, 16)
    mlp = layer.mlp
    expected = R.linear(R.silu_glu(R.linear(x, mlp.linear_1.weight, None, None),
                                   R.linear(x, mlp.linear_gate.weight, None, None), mult=0.5),
                        mlp.linear_2.weight, None, None)
    torch.testing.assert_close(mlp(x), expected, rtol=0, atol=0)
    theirs = uu.MHSA(16, 2, is_causal=True, mult=3.0)
    theirs.load_state_dict(layer.mhsa.state_dict())
    torch.testing.assert_close(layer.mhsa(x), theirs(x), rtol=1e-6, atol=1e-6)
    ids = torch.randint(30, (2, 6), generator=torch.Generator().manual_seed(4))
    logits = model(ids).float()
    torch.testing.assert_close(model.loss(ids), R.cross_entropy(logits[:, :-1].flatten(end_dim=-2),
                                                                ids[:, 1:].flatten(), mult=2.0))


def test_depth_tags_and_types():
    model = M.TransformerDecoder(16, 30, 3, 2)
    tags = {name: (p.mup_type, p.mup_scaling_depth) for name, p in model.named_parameters()}
    assert tags["embedding.weight"] == ("weight", None)
    assert tags["projection.weight"] == ("output", None)
    assert tags["layers.2.mlp.linear_2.weight"] == ("weight", 3)
    assert all(depth == 3 for name, (_, depth) in tags.items() if name.startswith("layers."))
    theirs = uu.TransformerDecoder(16, 30, 3, 2)
    assert tags == {name: (p.mup_type, p.mup_scaling_depth) for name, p in theirs.named_parameters()}
    norm = M.RMSNorm(8, elementwise_affine=True)
    assert norm.weight.mup_type == "norm" and M.Linear(4, 4, bias=True).bias.mup_type == "bias"
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert {name: (p.mup_type, p.mup_scaling_depth) for name, p in clone.named_parameters()} == tags
    with pytest.raises(ValueError, match="u-muP tags"):
        M.DepthSequential(torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match="heads"):
        M.MHSA(30, 4, is_causal=True)


def test_weights_are_unit_normal_and_activations_unit_scale():
    torch.manual_seed(0)
    model = M.TransformerDecoder(128, 256, 4, 4)
    assert 0.95 < model.layers[0].mhsa.linear_qkv.weight.std().item() < 1.05
    ids = torch.randint(256, (8, 64), generator=torch.Generator().manual_seed(1))
    scales = {}
    hooks = [module.register_forward_hook(lambda m, i, o, name=name: scales.__setitem__(name, o.float().std().item()))
             for name, module in model.named_modules() if isinstance(module, (M.Linear, M.TransformerLayer))
             and not isinstance(module, M.LinearReadout)]
    loss = model.loss(ids)
    loss.backward()
    for hook in hooks:
        hook.remove()
    assert all(0.25 < value < 4 for value in scales.values()), scales
    # Gradients of the hidden weights have unit scale too (the readout's and embedding's are smaller by design).
    grads = {name: p.grad.std().item() for name, p in model.named_parameters() if name.startswith("layers.")}
    assert all(0.1 < value < 10 for value in grads.values()), grads


def test_fp8_switch():
    model = M.TransformerDecoder(16, 30, 2, 2, fp8="partial")
    fp8 = {name for name, m in model.named_modules() if isinstance(m, M.Linear) and m.fp8}
    assert fp8 == {f"layers.{i}.{n}" for i in range(2) for n in ("mhsa.linear_qkv", "mlp.linear_1", "mlp.linear_gate")}
    umup.set_fp8(model, "all")
    assert {name for name, m in model.named_modules() if isinstance(m, M.Linear) and m.fp8} == \
        fp8 | {f"layers.{i}.{n}" for i in range(2) for n in ("mhsa.linear_o", "mlp.linear_2")}
    assert not model.projection.fp8
    ids = torch.randint(30, (2, 8), generator=torch.Generator().manual_seed(1))
    loss = model.loss(ids)
    loss.backward()
    reference = umup.set_fp8(copy.deepcopy(model), "off")
    assert abs(loss.item() - reference.loss(ids).item()) < 0.05 * reference.loss(ids).item()
    with pytest.raises(ValueError, match="scheme"):
        umup.set_fp8(model, "fp8")
