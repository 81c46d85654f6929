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


def test_mhsa_drops_attention_weights_in_training_mode_only():
    torch.manual_seed(0)
    dropping, plain = M.MHSA(32, 4, True, dropout_p=0.3), M.MHSA(32, 4, True)
    plain.load_state_dict(dropping.state_dict())
    x = _x(2, 9, 32)
    assert not torch.equal(dropping(x), dropping(x))
    dropping.eval()
    # The expected output: no weight dropped, S keeps its sqrt(1 - p), as U.dropout out of training.
    torch.testing.assert_close(dropping(x), plain(x) * 0.7**0.5, rtol=1e-5, atol=1e-6)
    assert torch.equal(dropping(x), dropping(x))


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
    model.embedding.weight.requires_grad_(False)
    loaded = pickle.loads(pickle.dumps(model))
    for clone in (copy.deepcopy(model), loaded, copy.deepcopy(loaded)):  # a loaded copy's deepcopy too
        assert {name: (p.mup_type, p.mup_scaling_depth) for name, p in clone.named_parameters()} == tags
        assert all(type(p) is umup.UnitScaledParameter for p in clone.parameters())
        assert not clone.embedding.weight.requires_grad and clone.projection.weight.requires_grad
        assert torch.equal(clone.projection.weight, model.projection.weight)
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


CRITICAL = {f"layers.{i}.{n}" for i in range(2) for n in ("mhsa.linear_o", "mlp.linear_2")}
NON_CRITICAL = {f"layers.{i}.{n}" for i in range(2) for n in ("mhsa.linear_qkv", "mlp.linear_1", "mlp.linear_gate")}


def _flagged(model, flag):
    return {name for name, m in model.named_modules() if isinstance(m, M.Linear) and getattr(m, flag)}


def test_fp8_switch():
    """partial: FP8 but for the critical layers, which run in bf16; all: every hidden linear in FP8; off: none.
    The readout never switches; both FP8 schemes track the fp32 loss."""
    model = M.TransformerDecoder(16, 30, 2, 2, fp8="partial")
    assert _flagged(model, "fp8") == NON_CRITICAL and _flagged(model, "bf16") == CRITICAL
    assert all(model.get_submodule(name).critical for name in CRITICAL)
    ids = torch.randint(30, (2, 8), generator=torch.Generator().manual_seed(1))
    reference = umup.set_fp8(copy.deepcopy(model), "off")
    assert not _flagged(reference, "fp8") and not _flagged(reference, "bf16")
    expected = reference.loss(ids).item()
    for scheme in ("partial", "all"):
        umup.set_fp8(model, scheme)
        assert _flagged(model, "fp8") == (NON_CRITICAL if scheme == "partial" else NON_CRITICAL | CRITICAL)
        assert _flagged(model, "bf16") == (CRITICAL if scheme == "partial" else set())
        assert not model.projection.fp8 and not model.projection.bf16
        loss = model.loss(ids)
        loss.backward()
        assert abs(loss.item() - expected) < 0.05 * expected
    with pytest.raises(ValueError, match="scheme"):
        umup.set_fp8(model, "fp8")


@pytest.mark.parametrize("name", ["mhsa.linear_o", "mlp.linear_2"])
def test_partial_scheme_runs_the_critical_layers_in_bf16(name):
    """A critical layer under "partial" is the unit-scaled linear of bf16-rounded operands (unit-scaling's
    own ``linear`` on bf16 copies, bit for bit), not the fp32 one; its gradients reach the fp32 tensors."""
    torch.manual_seed(0)
    layer = M.TransformerDecoder(16, 30, 2, 2, fp8="partial").get_submodule(f"layers.1.{name}")
    assert layer.bf16 and not layer.fp8
    # 16 rows and power-of-two fans: every u-muP scale is exact in bf16, which unit-scaling rounds them to.
    x = (_x(2, 8, layer.in_features, seed=3) * 1.7).requires_grad_()
    upstream = _x(2, 8, layer.out_features, seed=4)
    y = layer(x)
    grad_x, grad_w = torch.autograd.grad(y, [x, layer.weight], upstream)
    assert y.dtype == grad_x.dtype == grad_w.dtype == layer.weight.dtype == torch.float32
    assert torch.isfinite(grad_w).all() and grad_w.abs().sum() > 0

    x16, w16 = x.detach().bfloat16().requires_grad_(), layer.weight.detach().bfloat16().requires_grad_()
    y16 = R.linear(x16, w16, None, layer.constraint)
    grad_x16, grad_w16 = torch.autograd.grad(y16, [x16, w16], upstream.bfloat16())
    for ours, theirs in ((y, y16), (grad_x, grad_x16), (grad_w, grad_w16)):
        torch.testing.assert_close(ours, theirs.float(), rtol=0, atol=0)
    # By hand: fp32 products of the bf16-rounded operands, the u-muP output scale, one bf16 rounding (to 1 ulp).
    by_hand = (x.detach().bfloat16().float() @ layer.weight.detach().bfloat16().float().T) * layer.in_features ** -0.5
    torch.testing.assert_close(y.detach(), by_hand, rtol=2**-8, atol=1e-6)

    fp32 = umup.functional.linear(x, layer.weight, None, layer.constraint)
    assert (y - fp32).abs().max() > 1e-3  # bf16 rounding shows...
    torch.testing.assert_close(y, fp32, rtol=0.02, atol=0.02)  # ...but it is the same layer
    umup.set_fp8(layer, "off")
    torch.testing.assert_close(layer(x), fp32, rtol=0, atol=0)


@pytest.mark.parametrize("scheme", ["partial", "all"])
def test_fp8_layers_run_the_fp8_linear(scheme):
    """The non-critical hidden layers under both schemes, and the critical ones under "all", are ``fp8_linear``."""
    torch.manual_seed(0)
    model = M.TransformerDecoder(16, 30, 2, 2, fp8=scheme)
    for name in NON_CRITICAL | (CRITICAL if scheme == "all" else set()):
        layer = model.get_submodule(name)
        x = _x(2, 8, layer.in_features, seed=3)
        y = layer(x)
        torch.testing.assert_close(y, umup.fp8_linear(x, layer.weight, None, layer.constraint), rtol=0, atol=0)
        assert (y - umup.functional.linear(x, layer.weight, None, layer.constraint)).abs().max() > 1e-3


def test_fp8_schemes_give_fp32_gradients_and_off_is_the_plain_model():
    torch.manual_seed(0)
    model = M.TransformerDecoder(32, 40, 2, 2)
    plain = copy.deepcopy(model)
    ids = torch.randint(40, (3, 10), generator=torch.Generator().manual_seed(3))
    for scheme in ("partial", "all"):
        umup.set_fp8(model, scheme)
        model.zero_grad(set_to_none=True)
        model.loss(ids).backward()
        for name, p in model.named_parameters():
            assert p.dtype == p.grad.dtype == torch.float32, name
            assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    umup.set_fp8(model, "off")
    assert not _flagged(model, "fp8") and not _flagged(model, "bf16")
    _assert_same_module(model, plain, [ids], loss=True)  # off again: bit for bit the never-switched model
    theirs = uu.TransformerDecoder(32, 40, 2, 2)
    _assert_same_module(model, theirs, [ids], loss=True, exact=False)  # and unit-scaling's


def test_bf16_linear_of_a_bf16_layer_is_the_plain_linear():
    layer = M.Linear(16, 24, bias=True, dtype=torch.bfloat16, bf16=True)
    x = _x(4, 16).bfloat16()
    torch.testing.assert_close(layer(x), umup.functional.linear(x, layer.weight, layer.bias), rtol=0, atol=0)


def test_embedding_padding_row_is_zero_as_in_unit_scaling():
    torch.manual_seed(0)
    ours = umup.Embedding(5, 3, padding_idx=-1)
    torch.manual_seed(0)
    theirs = uu.Embedding(5, 3, padding_idx=-1)
    assert ours.padding_idx == theirs.padding_idx == 4 and not ours.weight[4].any()
    ids = torch.tensor([4, 0, 2])
    torch.testing.assert_close(ours(ids), theirs(ids))
    with pytest.raises(ValueError, match="padding_idx"):
        umup.Embedding(5, 3, padding_idx=5)


def test_fixed_seed_draws_the_weights_as_before():
    # Recorded before the init moved into reset_parameters (torch.randn then): a seed gives the same layer.
    torch.manual_seed(0)
    layer = M.Linear(3, 2, bias=True)
    recorded = [1.5409960746765137, -0.293428897857666, -2.1787893772125244, 0.5684312582015991,
                -1.0845223665237427, -1.3985954523086548]
    assert layer.weight.flatten().tolist() == recorded and layer.bias.tolist() == [0.0, 0.0]


def test_reset_parameters_after_to_empty_draws_unit_normal_weights_and_unit_gains():
    with torch.device("meta"):
        model = M.TransformerDecoder(64, 256, layers=1, heads=4)
        norm = M.RMSNorm(64, elementwise_affine=True)
    for module in (model, norm):
        module.to_empty(device="cpu")
        for child in module.modules():
            if hasattr(child, "reset_parameters"):
                child.reset_parameters()
    assert norm.weight.eq(1).all()
    for name, parameter in model.named_parameters():
        assert abs(float(parameter.mean())) < 0.05 and abs(float(parameter.std()) - 1) < 0.05, name
    layer = M.Linear(4, 3, bias=True)
    with torch.no_grad():
        layer.bias.fill_(5)
    layer.reset_parameters()
    assert not layer.bias.any()


def _tags(model):
    return {name: (type(p), p.mup_type, p.mup_scaling_depth) for name, p in model.named_parameters()}


@pytest.mark.parametrize("swap", [False, True])
def test_tags_survive_conversions_that_replace_the_parameters(swap):
    reference = M.TransformerDecoder(16, 30, layers=2, heads=2)
    tags = _tags(reference)
    previous = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(swap)
    try:
        with torch.device("meta"):
            built_on_meta = M.TransformerDecoder(16, 30, layers=2, heads=2)
        built_on_meta.to_empty(device="cpu")
        assigned = M.TransformerDecoder(16, 30, layers=2, heads=2).to("meta")
        assigned.load_state_dict(reference.state_dict(), assign=True)
        converted = copy.deepcopy(reference)
        objects = [id(p) for p in converted.parameters()]
        converted.to(torch.float64)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(previous)
    for model in (built_on_meta, assigned, converted):
        assert _tags(model) == tags
        umup.AdamW(model.parameters(), lr=1e-3)  # raises for untagged parameters
    assert all(torch.equal(a, b) for a, b in zip(assigned.parameters(), reference.parameters()))
    assert converted.projection.weight.dtype == torch.float64
    assert [id(p) for p in converted.parameters()] == objects  # the parameters users hold stay the model's


def test_slices_of_the_containers_are_sequentials_of_the_same_modules():
    model = M.TransformerDecoder(16, 30, layers=3, heads=2)
    head = model[:-1]
    assert type(head) is torch.nn.Sequential and list(head._modules) == ["embedding", "layers", "final_norm"]
    assert head.layers is model.layers and model[-1] is model.projection and model[1] is model.layers
    for layers in (model.layers[:2], model.layers[1:]):
        assert type(layers) is torch.nn.Sequential and len(layers) == 2
        assert all(p.mup_scaling_depth == 3 for p in layers.parameters())  # the model's depth, as tagged
    assert list(model.layers[1:]._modules) == ["1", "2"] and model.layers[1:][0] is model.layers[1]
    ids = torch.randint(30, (2, 5))
    torch.testing.assert_close(model[:-1](ids), model.final_norm(model.layers(model.embedding(ids))))


def test_embedding_repr_shows_the_padding_index():
    assert repr(M.Embedding(5, 3)) == "Embedding(5, 3)"
    assert repr(M.Embedding(5, 3, padding_idx=-1)) == "Embedding(5, 3, padding_idx=4)"
