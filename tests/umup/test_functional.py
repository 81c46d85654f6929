"""The unit-scaled ops equal ``unit_scaling.functional`` 0.3.5 (values and every gradient, bit for bit in
fp32), keep activations and gradients near unit RMS, and reject bad arguments clearly."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import unit_scaling.functional as R  # the oracle: unit-scaling==0.3.5, a test dependency

import lmkernels.umup.functional as U
from lmkernels.umup.scale import apply_constraint, scale_bwd, scale_fwd

BINARY = [None, "", "gmean", "hmean", "amean", "to_output_scale", "to_grad_input_scale"]
TERNARY = [None, "gmean", "hmean", "amean", "to_output_scale", "to_left_grad_scale", "to_right_grad_scale"]
MULTS = [0.25, 1.0, 3.0]


def _run(op, inputs, upstream_seed=1, seed=None):
    """Output and gradients of every float input that requires one, for a seeded random upstream gradient."""
    inputs = [t.detach().clone().requires_grad_(t.is_floating_point()) if isinstance(t, torch.Tensor) else t
              for t in inputs]
    if seed is not None:
        torch.manual_seed(seed)
    out = op(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    generator = torch.Generator().manual_seed(upstream_seed)
    upstreams = [torch.randn(o.shape, generator=generator, dtype=o.dtype) for o in outs]
    wrt = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    grads = torch.autograd.grad(outs, wrt, upstreams)
    return outs, grads


def _assert_same(ours_op, their_op, inputs, seed=None):
    ours, ours_grads = _run(ours_op, inputs, seed=seed)
    theirs, their_grads = _run(their_op, inputs, seed=seed)
    for a, b in zip(ours + ours_grads, theirs + their_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("constraint", BINARY)
@pytest.mark.parametrize("bias", [False, True])
def test_linear(constraint, bias):
    inputs = [_randn(3, 5, 24), _randn(40, 24, seed=1), _randn(40, seed=2) if bias else None]
    _assert_same(lambda x, w, b: U.linear(x, w, b, constraint), lambda x, w, b: R.linear(x, w, b, constraint),
                 inputs)
    power = (0.75, 0.25, 1.0)
    _assert_same(lambda x, w, b: U.linear(x, w, b, constraint, power),
                 lambda x, w, b: R.linear(x, w, b, constraint, power), inputs)


@pytest.mark.parametrize("constraint", [None, "to_output_scale", "gmean"])
def test_linear_readout(constraint):
    inputs = [_randn(6, 32), _randn(50, 32, seed=1), None]
    _assert_same(lambda x, w, b: U.linear_readout(x, w, b, constraint),
                 lambda x, w, b: R.linear_readout(x, w, b, constraint), inputs)


@pytest.mark.parametrize("constraint", TERNARY)
def test_matmul(constraint):
    inputs = [_randn(2, 7, 12), _randn(2, 12, 9, seed=1)]
    _assert_same(lambda a, b: U.matmul(a, b, constraint), lambda a, b: R.matmul(a, b, constraint), inputs)


@pytest.mark.parametrize("constraint", TERNARY)
@pytest.mark.parametrize("shapes", [((4, 6), (4, 6)), ((4, 6), (6,)), ((3, 1, 5), (4, 1)), ((4, 6), (1,))])
def test_add(constraint, shapes):
    inputs = [_randn(*shapes[0]), _randn(*shapes[1], seed=1)]
    _assert_same(lambda a, b: U.add(a, b, constraint), lambda a, b: R.add(a, b, constraint), inputs)


@settings(max_examples=30, deadline=None)
@given(batch=st.lists(st.integers(1, 4), max_size=2), fan_in=st.integers(1, 24), fan_out=st.integers(1, 24),
       constraint=st.sampled_from(BINARY), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_linear_on_generated_shapes(batch, fan_in, fan_out, constraint, bias, seed):
    inputs = [_randn(*batch, fan_in, seed=seed), _randn(fan_out, fan_in, seed=seed + 1),
              _randn(fan_out, seed=seed + 2) if bias else None]
    _assert_same(lambda x, w, b: U.linear(x, w, b, constraint), lambda x, w, b: R.linear(x, w, b, constraint),
                 inputs)


@settings(max_examples=30, deadline=None)
@given(m=st.integers(1, 9), k=st.integers(1, 9), n=st.integers(1, 9), lead=st.lists(st.integers(1, 3), max_size=2),
       constraint=st.sampled_from(TERNARY), seed=st.integers(0, 2**16))
def test_matmul_and_add_on_generated_shapes(m, k, n, lead, constraint, seed):
    _assert_same(lambda a, b: U.matmul(a, b, constraint), lambda a, b: R.matmul(a, b, constraint),
                 [_randn(*lead, m, k, seed=seed), _randn(*lead, k, n, seed=seed + 1)])
    _assert_same(lambda a, b: U.add(a, b, constraint), lambda a, b: R.add(a, b, constraint),
                 [_randn(*lead, m, n, seed=seed), _randn(n, seed=seed + 1)])


def test_add_python_number_is_unscaled():
    x = _randn(5)
    torch.testing.assert_close(U.add(x, 2.0), x + 2.0, rtol=0, atol=0)


@pytest.mark.parametrize("tau", [0.1, 1.0, 2.5])
def test_residuals(tau):
    def branch(t):
        return torch.tanh(t) * 3

    _assert_same(lambda x: U.residual_split(x, tau), lambda x: R.residual_split(x, tau), [_randn(4, 8)])
    _assert_same(lambda r, s: U.residual_add(r, s, tau), lambda r, s: R.residual_add(r, s, tau),
                 [_randn(4, 8), _randn(4, 8, seed=1)])
    _assert_same(lambda x: U.residual_apply(branch, x, tau), lambda x: R.residual_apply(branch, x, tau),
                 [_randn(4, 8)])


@pytest.mark.parametrize("mult", MULTS)
@pytest.mark.parametrize("constraint", BINARY)
def test_silu_gelu_softmax(mult, constraint):
    x = _randn(6, 20) * 2
    _assert_same(lambda t: U.silu(t, mult, constraint), lambda t: R.silu(t, mult, constraint), [x])
    for approximate in ("none", "tanh"):
        _assert_same(lambda t: U.gelu(t, mult, constraint, approximate),
                     lambda t: R.gelu(t, mult, constraint, approximate), [x])
    for dim in (0, -1):
        _assert_same(lambda t: U.softmax(t, dim, None, constraint, mult),
                     lambda t: R.softmax(t, dim, None, constraint, mult), [x])


@pytest.mark.parametrize("mult", MULTS)
def test_silu_glu(mult):
    _assert_same(lambda x, g: U.silu_glu(x, g, mult), lambda x, g: R.silu_glu(x, g, mult),
                 [_randn(5, 16), _randn(5, 16, seed=1)])


@pytest.mark.parametrize("p", [0.0, 0.3])
@pytest.mark.parametrize("training", [False, True])
def test_dropout(p, training):
    _assert_same(lambda x: U.dropout(x, p, training), lambda x: R.dropout(x, p, training), [_randn(8, 32)], seed=5)


@pytest.mark.parametrize("mult", MULTS)
@pytest.mark.parametrize("is_causal", [False, True])
def test_scaled_dot_product_attention(mult, is_causal):
    q, k, v = (_randn(2, 3, 10, 8, seed=s) for s in range(3))
    _assert_same(lambda q, k, v: U.scaled_dot_product_attention(q, k, v, is_causal=is_causal, mult=mult),
                 lambda q, k, v: R.scaled_dot_product_attention(q, k, v, is_causal=is_causal, mult=mult), [q, k, v])
    mask = _randn(10, 10, seed=4)
    _assert_same(lambda q, k, v, m: U.scaled_dot_product_attention(q, k, v, m, mult=mult),
                 lambda q, k, v, m: R.scaled_dot_product_attention(q, k, v, m, mult=mult), [q, k, v, mask])


@pytest.mark.parametrize("is_causal", [False, True])
def test_attention_over_one_position_returns_its_value(is_causal):
    q, k, v = (_randn(2, 3, 1, 8, seed=s).requires_grad_() for s in range(3))
    out = U.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    torch.testing.assert_close(out, v, rtol=0, atol=0)  # one key: softmax weight 1, limit 1, scale 1
    torch.testing.assert_close(torch.autograd.grad(out.sum(), v)[0], torch.ones_like(v))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("mult", [0.5, 1.0, 2.0])
def test_cross_entropy(reduction, mult):
    logits = _randn(12, 30)
    target = torch.randint(30, (12,), generator=torch.Generator().manual_seed(1))
    target[3] = -100
    _assert_same(lambda z, y: U.cross_entropy(z, y, reduction=reduction, mult=mult),
                 lambda z, y: R.cross_entropy(z, y, reduction=reduction, mult=mult), [logits, target])
    _assert_same(lambda z, y: U.cross_entropy(z, y, mult=mult), lambda z, y: R.cross_entropy(z, y, mult=mult),
                 [logits[0], target[0]])


@pytest.mark.parametrize("weighted", [False, True])
def test_norms(weighted):
    x = _randn(3, 4, 16) * 3 + 1
    w, b = (_randn(16, seed=1) if weighted else None), (_randn(16, seed=2) if weighted else None)
    _assert_same(lambda x, w: U.rms_norm(x, (16,), w), lambda x, w: R.rms_norm(x, (16,), w), [x, w])
    _assert_same(lambda x, w, b: U.layer_norm(x, (16,), w, b), lambda x, w, b: R.layer_norm(x, (16,), w, b),
                 [x, w, b])
    w2 = _randn(4, 16, seed=3) if weighted else None
    _assert_same(lambda x, w: U.rms_norm(x, (4, 16), w), lambda x, w: R.rms_norm(x, (4, 16), w), [x, w2])


@pytest.mark.parametrize("padding_idx", [None, 2])
def test_embedding(padding_idx):
    ids = torch.randint(20, (4, 9), generator=torch.Generator().manual_seed(1))
    _assert_same(lambda w, i: U.embedding(i, w, padding_idx), lambda w, i: R.embedding(i, w, padding_idx),
                 [_randn(20, 12), ids])


def test_scaled_identity_and_constraints():
    x = _randn(5).requires_grad_()
    y = scale_bwd(scale_fwd(x, 3.0), 0.5)
    grad, = torch.autograd.grad(y, x, torch.ones(5))
    torch.testing.assert_close(y, 3 * x)
    torch.testing.assert_close(grad, torch.full((5,), 0.5))
    assert apply_constraint("gmean", 4.0, 1.0) == (2.0, 2.0)
    assert apply_constraint("hmean", 1.0, 3.0) == (1.5, 1.5)
    assert apply_constraint("to_right_grad_scale", 1.0, 2.0, 3.0) == (3.0, 3.0, 3.0)
    assert apply_constraint(None, 1.0, 2.0) == (1.0, 2.0)


def _rms(t):
    return t.float().pow(2).mean().sqrt().item()


def _unit_rms_cases():
    """(name, op, inputs): each op at initialisation scale, inputs N(0, 1), upstream gradient N(0, 1)."""
    n, d = 256, 128
    ids = torch.randint(1000, (512,), generator=torch.Generator().manual_seed(9))
    q, k, v = (_randn(4, 4, 128, 32, seed=s) for s in range(3))
    return [
        ("linear", lambda x, w: U.linear(x, w, None), [_randn(n, d), _randn(d, d, seed=1)]),
        ("linear_readout", lambda x, w: U.linear_readout(x, w, None), [_randn(n, d), _randn(d, d, seed=1)]),
        ("matmul", U.matmul, [_randn(d, d), _randn(d, d, seed=1)]),
        ("add", U.add, [_randn(n, d), _randn(n, d, seed=1)]),
        ("residual_apply", lambda x: U.residual_apply(lambda t: t, x, 0.5), [_randn(n, d)]),
        ("silu", U.silu, [_randn(n, d)]),
        ("gelu", U.gelu, [_randn(n, d)]),
        ("silu_glu", U.silu_glu, [_randn(n, d), _randn(n, d, seed=1)]),
        ("softmax", lambda x: U.softmax(x, -1), [_randn(n, d)]),
        ("dropout", lambda x: U.dropout(x, 0.2), [_randn(n, d)]),
        ("scaled_dot_product_attention", lambda q, k, v: U.scaled_dot_product_attention(q, k, v, is_causal=True),
         [q, k, v]),
        ("rms_norm", lambda x, w: U.rms_norm(x, (d,), w), [_randn(n, d), torch.ones(d)]),
        ("layer_norm", lambda x, w, b: U.layer_norm(x, (d,), w, b), [_randn(n, d), torch.ones(d), torch.zeros(d)]),
        ("embedding", lambda w, i: U.embedding(i, w), [_randn(1000, d), ids]),
    ]


@pytest.mark.parametrize("name, op, inputs", _unit_rms_cases(), ids=[case[0] for case in _unit_rms_cases()])
def test_outputs_and_gradients_have_unit_rms(name, op, inputs):
    outs, grads = _run(op, inputs)
    # The readout is muP's 1/fan_in: its output is deliberately fan_in^-1/2 (here 1/11) of unit.
    lower = 0.05 if name == "linear_readout" else 0.5
    for t in outs:
        assert lower < _rms(t) < 2.0, (name, "output", _rms(t))
    if name == "scaled_dot_product_attention":
        # At init the logits m q k^T / d_head are small: the query and key gradients are small by
        # design (muP's 1/d_head), the model targets the output and the value gradient.
        grads = grads[2:]
    for g in grads:
        assert 0.5 < _rms(g) < 2.0, (name, "gradient", _rms(g))


def test_cross_entropy_gradient_has_unit_rms():
    logits = _randn(512, 1000).requires_grad_()
    target = torch.randint(1000, (512,), generator=torch.Generator().manual_seed(1))
    grad, = torch.autograd.grad(U.cross_entropy(logits, target), logits)
    # per row: (softmax - onehot) has squared norm ~1, over V entries; times V / sqrt(V - 1) gives unit RMS
    assert 0.5 < _rms(grad) < 2.0
    assert math.isclose(U.cross_entropy(logits, target).item(),
                        torch.nn.functional.cross_entropy(logits, target).item(), rel_tol=1e-6)


def test_bad_arguments():
    x, w = _randn(4, 8), _randn(6, 8)
    with pytest.raises(ValueError, match="constraint"):
        U.linear(x, w, None, constraint="nonsense")
    with pytest.raises(ValueError, match="constraint"):
        U.linear(x, w, None, constraint="to_left_grad_scale")
    with pytest.raises(TypeError, match="constraint"):
        U.matmul(x, w.T, constraint=3)
    with pytest.raises(ValueError, match="input"):
        U.linear(_randn(4, 7), w, None)
    with pytest.raises(ValueError, match="weight"):
        U.linear(x, _randn(8), None)
    with pytest.raises(TypeError, match="weight"):
        U.linear(x, [[1.0]], None)
    with pytest.raises(ValueError, match="input"):
        U.cross_entropy(_randn(2, 3, 5), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="mult"):
        U.silu(x, mult=0.0)
    with pytest.raises(ValueError, match="p"):
        U.dropout(x, 1.5)
    with pytest.raises(ValueError, match="normalized_shape"):
        U.rms_norm(x, (5,))
    with pytest.raises(ValueError, match="left, right"):
        U.matmul(_randn(3), x)


def test_cross_entropy_refuses_what_unit_scaling_refuses():
    z, y = torch.randn(4, 10), torch.randint(10, (4,))
    for name, value in (("weight", torch.rand(10)), ("label_smoothing", 0.1), ("reduce", False),
                        ("size_average", False)):
        with pytest.raises(ValueError, match=name):
            U.cross_entropy(z, y, **{name: value})
        with pytest.raises(ValueError):
            R.cross_entropy(z, y, **{name: value})


def test_rms_norm_keeps_the_input_dtype_with_a_float32_gain():
    x, weight = torch.randn(4, 8, dtype=torch.bfloat16), torch.randn(8)
    ours, theirs = U.rms_norm(x, (8,), weight), R.rms_norm(x, (8,), weight)
    assert ours.dtype == theirs.dtype == torch.bfloat16
    torch.testing.assert_close(ours, theirs)


def test_mult_takes_numpy_and_tensor_numbers():
    import numpy as np

    x = torch.randn(5, 6)
    for mult in (np.float32(2.0), torch.tensor(2.0)):
        torch.testing.assert_close(U.silu(x, mult=mult), U.silu(x, mult=2.0))
    with pytest.raises(TypeError, match="mult"):
        U.silu(x, mult="2")
    with pytest.raises(ValueError, match="mult"):
        U.silu(x, mult=-1.0)


def test_linear_names_a_bias_of_the_wrong_shape():
    with pytest.raises(ValueError, match="bias: expected shape \\[3\\]"):
        U.linear(torch.randn(2, 8), torch.randn(3, 8), torch.randn(4))


def _zero_size_cases():
    """(name, ours, torch's un-scaled op, inputs) with a dimension of size 0."""
    F = torch.nn.functional
    return [
        ("linear fan_out 0", lambda x, w: U.linear(x, w, None), F.linear, [_randn(3, 4), _randn(0, 4)]),
        ("linear fan_in 0", U.linear, F.linear, [_randn(3, 0), _randn(5, 0), _randn(5)]),
        ("linear rows 0", U.linear, F.linear, [_randn(2, 0, 4), _randn(5, 4), _randn(5)]),
        ("matmul k 0", U.matmul, torch.matmul, [_randn(3, 0), _randn(0, 4)]),
        ("matmul m 0", U.matmul, torch.matmul, [_randn(0, 2), _randn(2, 4)]),
        ("matmul n 0", U.matmul, torch.matmul, [_randn(3, 2), _randn(2, 0)]),
        ("softmax D 0", lambda x: U.softmax(x, -1), lambda x: F.softmax(x, -1), [_randn(3, 0)]),
        ("cross_entropy B 0 mean", U.cross_entropy, F.cross_entropy, [_randn(0, 5), torch.zeros(0, dtype=torch.long)]),
        ("cross_entropy B 0 sum", lambda z, y: U.cross_entropy(z, y, reduction="sum"),
         lambda z, y: F.cross_entropy(z, y, reduction="sum"), [_randn(0, 5), torch.zeros(0, dtype=torch.long)]),
        ("attention d_head 0", U.scaled_dot_product_attention, F.scaled_dot_product_attention,
         [_randn(1, 2, 3, 0), _randn(1, 2, 3, 0), _randn(1, 2, 3, 0)]),
    ]


@pytest.mark.parametrize("name, ours, plain, inputs", _zero_size_cases(), ids=[c[0] for c in _zero_size_cases()])
def test_zero_sizes_give_the_plain_ops_result(name, ours, plain, inputs):
    """Empty sizes have no scale to correct: the result is torch's (empty, zeros, the bias alone, NaN for a mean
    over no rows), and the backward runs."""
    (out,), grads = _run(ours, inputs)
    torch.testing.assert_close(out, plain(*inputs), rtol=0, atol=0, equal_nan=True)
    assert all(torch.isfinite(g).all() for g in grads)


def test_linear_with_fan_in_0_scales_the_bias_gradient_by_the_rows():
    bias = torch.zeros(5, requires_grad=True)
    grad, = torch.autograd.grad(U.linear(_randn(4, 0), _randn(5, 0), bias), bias, torch.ones(4, 5))
    torch.testing.assert_close(grad, torch.full((5,), 4 * 4**-0.5))  # 4 rows summed, times B^-1/2


def _ops_with_mult(mult):
    x, q = _randn(4, 8), _randn(1, 1, 4, 8)
    return (lambda: U.gelu(x, mult), lambda: U.silu(x, mult), lambda: U.silu_glu(x, x, mult),
            lambda: U.softmax(x, -1, mult=mult), lambda: U.scaled_dot_product_attention(q, q, q, mult=mult),
            lambda: U.cross_entropy(x, torch.zeros(4, dtype=torch.long), mult=mult))


@pytest.mark.parametrize("mult", [math.inf, -math.inf, math.nan, 0.0, -1.0, 1e200, 1e-200])
def test_mult_outside_the_finite_positive_range_is_refused(mult):
    for op in _ops_with_mult(mult):
        with pytest.raises(ValueError, match="mult"):
            op()


@pytest.mark.parametrize("mult", [1e-150, 1e150])
def test_mult_at_the_ends_of_its_range_is_accepted(mult):
    for op in _ops_with_mult(mult):
        op()


def test_add_refuses_out():
    a, b, buffer = _randn(3), _randn(3, seed=1), torch.zeros(3)
    for other in (b, 2.0):
        with pytest.raises(TypeError, match="out"):
            U.add(a, other, out=buffer)
    assert not buffer.any()
    R.add(a, b, out=buffer)  # what is refused: unit-scaling's buffer holds the unscaled sum, its result the scaled one
    torch.testing.assert_close(buffer, a + b)
