"""lmk::attention against the dense reference: every option and dtype, gradients, the AtMan
invariants, varlen packing, determinism, compile, opcheck, NaN policy and bad input."""

import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings, strategies as st

import lmkernels
from lmkernels import reference
from lmkernels.ops import attention, varlen_attention
from lmkernels.reference.attention import visible_keys

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# fp32: the reference sums in float64. With scale 1 and D = 128 (logits of standard deviation 11) the
# kernel's fp32 scores put up to 2.9e-5 of error into an output (seen at 2.2e-5 in a hypothesis example).
FORWARD_TOLERANCE = {torch.float32: dict(rtol=5e-5, atol=5e-5), torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
                     torch.float16: dict(rtol=2e-3, atol=2e-3)}
GRAD_TOLERANCE = {torch.float32: dict(rtol=5e-4, atol=5e-4), torch.bfloat16: dict(rtol=5e-2, atol=5e-2),
                  torch.float16: dict(rtol=1e-2, atol=1e-2)}


@st.composite
def problems(draw, with_factor=True):
    """Inputs and options: GQA groups, Sq <= keys (KV cache / suffix), D in {16, 64, 80, 128} or odd, masks,
    suppression, a shared prefix of batch 1 or B."""
    batch = draw(st.integers(1, 2))
    kv_heads = draw(st.integers(1, 2))
    group = draw(st.sampled_from([1, 2, 3]))
    dim = draw(st.sampled_from([16, 64, 80, 128, 5]))
    own_keys = draw(st.integers(1, 150))
    prefix = draw(st.sampled_from([0, 0, 1, 37, 64, 70]))
    queries = draw(st.integers(1, prefix + own_keys))
    if draw(st.booleans()):
        queries = min(queries, 3)  # decoding steps over a cache
    dtype = draw(st.sampled_from(DTYPES))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(dtype)

    keys = prefix + own_keys
    options = dict(causal=draw(st.booleans()), window=draw(st.one_of(st.none(), st.integers(1, 90))))
    if draw(st.booleans()):
        options["scale"] = draw(st.floats(0.01, 1.0))
    if draw(st.booleans()):
        bias = torch.randn(batch, keys, generator=gen)
        bias[torch.rand(batch, keys, generator=gen) < 0.1] = -math.inf
        options["key_bias"] = bias
    if with_factor and draw(st.booleans()):
        factor = torch.rand(batch, keys, generator=gen) * 1.5
        factor[torch.rand(batch, keys, generator=gen) < 0.5] = 1.0
        options["key_factor"] = factor
        options["factor_min"] = draw(st.sampled_from(["causal", "all"]))
    if prefix:
        prefix_batch = draw(st.sampled_from([1, batch]))
        options["prefix_k"] = randn(prefix_batch, kv_heads, prefix, dim)
        options["prefix_v"] = randn(prefix_batch, kv_heads, prefix, dim)
    q = randn(batch, kv_heads * group, queries, dim)
    return q, randn(batch, kv_heads, own_keys, dim), randn(batch, kv_heads, own_keys, dim), options


# The device fixture is the same for every example of a test, which is what the health check guards.
FIXTURE_OK = [HealthCheck.function_scoped_fixture]


def on(device, problem):
    q, k, v, options = problem
    return (q.to(device), k.to(device), v.to(device),
            {name: value.to(device) if isinstance(value, torch.Tensor) else value for name, value in options.items()})


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURE_OK)
@given(problem=problems())
def test_forward_matches_reference(device, problem):
    q, k, v, options = on(device, problem)
    out = attention(q, k, v, **options)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out, reference.attention(q, k, v, **options), **FORWARD_TOLERANCE[q.dtype])


def rows_without_keys(q, k, options) -> bool:
    if "key_bias" not in options:
        return False
    keys = k.shape[2] + (options["prefix_k"].shape[2] if "prefix_k" in options else 0)
    visible = visible_keys(q.shape[2], keys, causal=options["causal"], window=options["window"], device=q.device)
    finite = options["key_bias"].isfinite()[:, None, :]
    return bool((~(visible[None] & finite).any(-1)).any())


def rows_with_a_tied_minimum(q, k, options) -> bool:
    """Whether some row's two smallest counted scores (the minimum of the multiplicative factor) tie
    to within rounding. The gradient there is a choice of subgradient: ours goes to the first minimal
    key, torch's amin splits it between the tied keys, so the two legitimately differ."""
    if "key_factor" not in options:
        return False
    keys = k.double()
    if "prefix_k" in options:
        keys = torch.cat([options["prefix_k"].double().expand(k.shape[0], -1, -1, -1), keys], dim=2)
    keys = keys.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scores = q.double() @ keys.transpose(-1, -2) * (options.get("scale") or q.shape[-1] ** -0.5)
    if options["factor_min"] == "causal":
        visible = visible_keys(q.shape[2], keys.shape[2], causal=options["causal"], window=options["window"],
                               device=q.device)
        scores = scores.masked_fill(~visible, float("inf"))
    if scores.shape[-1] < 2:
        return False
    two = scores.topk(2, dim=-1, largest=False).values
    return bool(((two[..., 1] - two[..., 0]) <= 1e-4 * two[..., 0].abs().clamp_min(1.0)).any())


def leaves(q, k, v, options):
    """Fresh copies that require a gradient: q, k, v, prefix_k, prefix_v, key_bias, key_factor (where present)."""
    named = dict(q=q, k=k, v=v, **{n: options[n] for n in ("prefix_k", "prefix_v", "key_bias", "key_factor")
                                    if n in options})
    return {name: t.detach().clone().requires_grad_() for name, t in named.items()}


def gradients(fn, q, k, v, options, grad_out):
    inputs = leaves(q, k, v, options)
    rest = {name: value for name, value in options.items() if name not in inputs}
    out = fn(inputs["q"], inputs["k"], inputs["v"], **rest, **{n: t for n, t in inputs.items() if n not in "qkv"})
    grads = torch.autograd.grad(out, list(inputs.values()), grad_out)
    return dict(zip(inputs, grads))


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURE_OK)
@given(problem=problems())
def test_gradients_match_reference_autograd(device, problem):
    q, k, v, options = on(device, problem)
    # A row whose visible keys all have bias -inf has NaN gradients in the dense reference (0 / 0 in
    # its normalisation backward); ours are 0 there (test_every_visible_key_at_minus_infinity_...).
    assume(not rows_without_keys(q, k, options))
    assume(not rows_with_a_tied_minimum(q, k, options))
    grad_out = torch.randn(q.shape).to(q.device, q.dtype)
    ours = gradients(attention, q, k, v, options, grad_out)
    expected = gradients(reference.attention, q, k, v, options, grad_out)
    for name in expected:
        assert ours[name].shape == expected[name].shape and ours[name].dtype == expected[name].dtype, name
        tolerance = GRAD_TOLERANCE[q.dtype]
        if name in ("key_bias", "key_factor"):  # sums over every head and query: the rounding grows with them
            tolerance = {bound: 10 * value for bound, value in tolerance.items()}
        torch.testing.assert_close(ours[name], expected[name], **tolerance)


def llama_like(batch=2, heads=4, kv_heads=2, length=150, dim=64, dtype=torch.float32, device="cpu"):
    return tuple(torch.randn(batch, h, length, dim).to(device, dtype) for h in (heads, kv_heads, kv_heads))


# ---- the AtMan invariants ---------------------------------------------------------------------

@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_neutral_suppression_gives_the_clean_output_exactly(device, causal, dtype):
    q, k, v = llama_like(dtype=dtype, device=device)
    clean = attention(q, k, v, causal=causal)
    assert torch.equal(attention(q, k, v, causal=causal, key_bias=torch.zeros(2, 150, device=device)), clean)
    for factor_min in ("causal", "all"):
        factor = torch.ones(2, 150, device=device)
        assert torch.equal(attention(q, k, v, causal=causal, key_factor=factor, factor_min=factor_min), clean)


@pytest.mark.parametrize("form", ["bias", "factor", "factor_all"])
def test_suppressing_a_key_leaves_earlier_positions_unchanged(device, form):
    q, k, v = llama_like(device=device)
    clean = attention(q, k, v)
    for suppressed in (0, 63, 64, 100, 149):
        vector = torch.ones(2, 150, device=device)
        vector[:, suppressed] = 0.1
        if form == "bias":
            out = attention(q, k, v, key_bias=vector.log())
        else:
            out = attention(q, k, v, key_factor=vector, factor_min="all" if form == "factor_all" else "causal")
        assert torch.equal(out[:, :, :suppressed], clean[:, :, :suppressed])
        assert not torch.equal(out[:, :, suppressed:], clean[:, :, suppressed:])


def test_bias_minus_infinity_is_a_hard_mask():
    q, k, v = llama_like()
    q = q[:, :, :100]  # bidirectional: fewer queries than the keys left
    removed = torch.tensor([3, 40, 64, 65, 149])
    keep = torch.ones(150, dtype=torch.bool)
    keep[removed] = False
    masked = attention(q, k, v, causal=False,
                       key_bias=torch.where(keep, 0.0, -math.inf).expand(2, 150))
    removed_keys = attention(q, k[:, :, keep], v[:, :, keep], causal=False)
    torch.testing.assert_close(masked, removed_keys, rtol=1e-5, atol=1e-5)
    tiny_factor = attention(q, k, v, causal=False, key_bias=torch.where(keep, 1.0, 1e-30).log().expand(2, 150))
    torch.testing.assert_close(tiny_factor, removed_keys, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_padding_bias_of_the_lowest_float_over_whole_key_tiles_stays_finite(device, dtype):
    # Left padding masked with float32's lowest value (a common idiom): rows whose first key tiles are
    # all padding. A softmax that scales its running maximum by log2(e) overflows there.
    q, k, v = llama_like(length=150, dtype=dtype, device=device)
    bias = torch.zeros(2, 150, device=device)
    bias[:, :80] = torch.finfo(torch.float32).min
    out = attention(q, k, v, key_bias=bias)
    expected = reference.attention(q.float(), k.float(), v.float(), key_bias=bias)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:, :, 80:].float(), expected[:, :, 80:], **FORWARD_TOLERANCE[dtype])


def test_every_visible_key_at_minus_infinity_gives_zeros_and_no_gradient():
    q, k, v = (t.requires_grad_() for t in llama_like(length=70))
    bias = torch.zeros(2, 70)
    bias[0] = -math.inf
    out = attention(q, k, v, key_bias=bias)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    out.sum().backward()
    assert torch.isfinite(q.grad).all() and torch.equal(q.grad[0], torch.zeros_like(q.grad[0]))


@pytest.mark.parametrize("factor_min", ["causal", "all"])
def test_multiplicative_factor_zero_maps_to_the_row_minimum(factor_min):
    q, k, v = llama_like(batch=1, heads=2, kv_heads=2, length=90)
    suppressed = [5, 70]
    factor = torch.ones(1, 90)
    factor[0, suppressed] = 0.0
    scores = q @ k.transpose(-1, -2) / 8.0
    visible = torch.ones(90, 90, dtype=torch.bool).tril()
    counted = visible if factor_min == "causal" else torch.ones_like(visible)
    row_min = scores.masked_fill(~counted, math.inf).amin(-1, keepdim=True)
    scores[..., suppressed] = row_min.expand(-1, -1, -1, len(suppressed))
    expected = scores.masked_fill(~visible, -math.inf).softmax(-1) @ v
    torch.testing.assert_close(attention(q, k, v, key_factor=factor, factor_min=factor_min), expected,
                               rtol=1e-5, atol=1e-5)


def test_prefix_is_read_in_place_and_equals_the_concatenation():
    q, k, v = llama_like(length=40)
    prefix_k, prefix_v = torch.randn(1, 2, 100, 64), torch.randn(1, 2, 100, 64)
    bias = torch.randn(2, 140)
    shared = attention(q, k, v, prefix_k=prefix_k.expand(2, -1, -1, -1), prefix_v=prefix_v, key_bias=bias)
    full_k = torch.cat([prefix_k.expand(2, -1, -1, -1), k], 2)
    full_v = torch.cat([prefix_v.expand(2, -1, -1, -1), v], 2)
    torch.testing.assert_close(shared, attention(q, full_k, full_v, key_bias=bias), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("factor_min", ["causal", "all"])
def test_multiplicative_gradients_reach_the_row_minimum_key(factor_min):
    # Window 5 over 150 keys: with "all" most rows' minimum is a key they cannot see.
    q, k, v = llama_like(batch=1, length=150)
    options = dict(window=5, key_factor=torch.rand(1, 150) * 2, factor_min=factor_min)
    grad_out = torch.randn(q.shape)
    ours = gradients(attention, q, k, v, options, grad_out)
    expected = gradients(reference.attention, q, k, v, options, grad_out)
    for name in expected:
        torch.testing.assert_close(ours[name], expected[name], rtol=1e-4, atol=1e-4)


def test_a_tied_row_minimum_sends_its_gradient_to_the_lower_key():
    # Keys 1 and 3 are the same vector and score lowest for every query: the minimum ties exactly.
    # Torch's amin splits the minimum's gradient between them; ours sends all of it to key 1. Both
    # are subgradients: their sum over the tied keys, and every other gradient, agree.
    torch.manual_seed(5)
    q, k, v = llama_like(batch=1, heads=1, kv_heads=1, length=6, dim=16)
    q = q.abs()
    k[0, 0, 1] = k[0, 0, 3] = -q[0, 0].sum(0).sign() * 2
    options = dict(causal=False, key_factor=torch.tensor([[0.3, 1.0, 0.5, 1.0, 1.2, 0.7]]), factor_min="all")
    grad_out = torch.randn(q.shape)
    ours = gradients(attention, q, k, v, options, grad_out)
    expected = gradients(reference.attention, q, k, v, options, grad_out)
    scores = q[0, 0] @ k[0, 0].T
    assert bool((scores.argmin(-1) == 1).all()) and torch.equal(scores[:, 1], scores[:, 3])
    moved = ours["k"][0, 0, 1] - expected["k"][0, 0, 1]
    assert moved.abs().max() > 1e-3  # the minimum carries gradient, so the choice is visible
    torch.testing.assert_close(ours["k"][0, 0, 3] - expected["k"][0, 0, 3], -moved, rtol=1e-4, atol=1e-5)
    others = [0, 2, 4, 5]
    torch.testing.assert_close(ours["k"][0, 0, others], expected["k"][0, 0, others], rtol=1e-4, atol=1e-5)
    for name in ("q", "v", "key_factor"):
        torch.testing.assert_close(ours[name], expected[name], rtol=1e-4, atol=1e-5)


def test_key_vectors_broadcast_over_the_batch():
    q, k, v = llama_like(length=30)
    bias = torch.randn(30, dtype=torch.float64)
    expected = reference.attention(q, k, v, key_bias=bias.expand(2, 30))
    for form in (bias, bias[None]):
        torch.testing.assert_close(attention(q, k, v, key_bias=form), expected, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("batch, queries, keys", [(0, 3, 5), (2, 0, 5), (1, 1, 1)])
def test_empty_and_tiny_shapes_with_a_broadcast_upstream_gradient(batch, queries, keys):
    q = torch.randn(batch, 2, queries, 16, requires_grad=True)
    k, v = (torch.randn(batch, 1, keys, 16, requires_grad=True) for _ in range(2))
    out = attention(q, k, v)
    out.sum().backward()  # an expanded, stride-0 grad_out
    expected = reference.attention(q, k, v)
    torch.testing.assert_close(out, expected)
    for ours, theirs in zip((q.grad, k.grad, v.grad), torch.autograd.grad(expected.sum(), (q, k, v))):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


# ---- the CUDA kernels' two paths ---------------------------------------------------------------

def unaligned_copy(t):
    """The same values in rows of D + 1 elements: no longer 16-byte chunks, so the plain kernel runs."""
    padded = torch.empty(*t.shape[:-1], t.shape[-1] + 1, dtype=t.dtype, device=t.device)[..., :-1]
    return padded.copy_(t)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (CUDA kernels at run time)")
@pytest.mark.parametrize("dim", [64, 80, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("options", [dict(), dict(causal=False), dict(window=100, bias=True),
                                     dict(prefix=70, bias=True), dict(factor="causal")])
def test_cuda_tensor_core_kernels_agree_with_the_plain_ones(dim, dtype, options):
    """bf16 / fp16 with aligned rows take the tensor-core kernels; the same values in unaligned rows
    take the plain fp32 kernels. Several 64-row tiles of queries and keys, GQA, every option."""
    gen = torch.Generator().manual_seed(dim)
    q, k, v = (torch.randn(2, h, 333, dim, generator=gen).to("cuda", dtype) for h in (4, 2, 2))
    kwargs = dict(causal=options.get("causal", True), window=options.get("window"))
    keys = 333 + options.get("prefix", 0)
    if options.get("bias"):
        bias = torch.randn(2, keys, generator=gen)
        bias[:, ::7] = -math.inf
        kwargs["key_bias"] = bias.cuda()
    if "factor" in options:
        kwargs.update(key_factor=(torch.rand(2, keys, generator=gen) * 1.5).cuda(), factor_min=options["factor"])
    if "prefix" in options:
        kwargs.update(prefix_k=torch.randn(1, 2, options["prefix"], dim, generator=gen).to("cuda", dtype),
                      prefix_v=torch.randn(1, 2, options["prefix"], dim, generator=gen).to("cuda", dtype))
    grad_out = torch.randn(q.shape, generator=gen).to("cuda", dtype)
    fast = gradients(attention, q, k, v, kwargs, grad_out)
    plain_kwargs = {name: unaligned_copy(value) if name.startswith("prefix") else value
                    for name, value in kwargs.items()}
    plain = gradients(attention, unaligned_copy(q), unaligned_copy(k), unaligned_copy(v), plain_kwargs, grad_out)
    out_fast = attention(q, k, v, **kwargs)
    out_plain = attention(unaligned_copy(q), unaligned_copy(k), unaligned_copy(v), **plain_kwargs)
    torch.testing.assert_close(out_fast, out_plain, **FORWARD_TOLERANCE[dtype])
    for name in plain:
        tolerance = GRAD_TOLERANCE[dtype]
        if name in ("key_bias", "key_factor"):
            tolerance = {bound: 10 * value for bound, value in tolerance.items()}
        torch.testing.assert_close(fast[name], plain[name], **tolerance, msg=name)


# ---- varlen -----------------------------------------------------------------------------------

@pytest.mark.parametrize("lengths, window, dtype", [
    ([1], None, torch.float32), ([1, 1, 1], 1, torch.float32), ([0, 5, 0, 1, 130], None, torch.float32),
    ([0, 5, 0, 1, 130], 17, torch.float32), ([64, 65, 1, 150], 1, torch.float32), ([64, 65, 1, 150], 70, torch.float32),
    ([64, 65, 1, 150], None, torch.bfloat16), ([3, 100], 9, torch.float16),
])
def test_varlen_matches_reference_and_its_gradients(device, lengths, window, dtype):
    cu_seqlens = torch.tensor([0] + lengths, device=device).cumsum(0)
    total = int(cu_seqlens[-1])
    q, k, v = (torch.randn(total, h, 80).to(device, dtype).requires_grad_() for h in (4, 2, 2))
    out = varlen_attention(q, k, v, cu_seqlens.to(torch.int32), window=window)
    expected = reference.varlen_attention(q, k, v, cu_seqlens, window=window)
    torch.testing.assert_close(out, expected, **FORWARD_TOLERANCE[dtype])
    grad_out = torch.randn_like(out)
    ours = torch.autograd.grad(out, (q, k, v), grad_out)
    theirs = torch.autograd.grad(expected, (q, k, v), grad_out)
    for name, a, b in zip("qkv", ours, theirs):
        torch.testing.assert_close(a, b, **GRAD_TOLERANCE[dtype], msg=name)


# ---- NaN policy, determinism, compile, opcheck ------------------------------------------------

def test_nan_reaches_exactly_the_rows_that_see_it(device):
    q, k, v = llama_like(batch=1, length=100, device=device)
    q[0, 1, 10, 3] = math.nan
    k[0, 0, 50, 0] = math.nan  # key/value head 0 serves query heads 0 and 1
    out = attention(q, k, v)
    nan_rows = out.isnan().any(-1)[0].cpu()
    expected = torch.zeros(4, 100, dtype=torch.bool)
    expected[1, 10] = True
    expected[:2, 50:] = True
    assert torch.equal(nan_rows, expected)


@pytest.mark.parametrize("options", ["plain", "window_bias", "prefix", "bidirectional", "varlen"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_and_two_pass_cpu_backwards_give_the_same_bits(options, dtype):
    # Two items of two key/value heads: one thread runs the fused backward (a task per item and head),
    # four threads the two passes (too few such tasks to keep four threads busy).
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, heads, 150, 32, generator=gen).to(dtype).requires_grad_() for heads in (4, 2, 2))
    kwargs = {}
    if options == "window_bias":
        kwargs.update(window=70, key_bias=torch.randn(2, 150, generator=gen).requires_grad_())
    if options == "prefix":  # a batch-1 prefix: its key gradients are summed over the items
        kwargs.update(prefix_k=torch.randn(1, 2, 40, 32, generator=gen).to(dtype).requires_grad_(),
                      prefix_v=torch.randn(1, 2, 40, 32, generator=gen).to(dtype).requires_grad_(),
                      key_bias=torch.randn(2, 190, generator=gen))
    if options == "bidirectional":
        kwargs.update(causal=False)

    def run():
        if options == "varlen":  # 3 sequences of 2 key/value heads: 6 tasks, fused with 1 or 2 threads
            packed = [t[0].transpose(0, 1) for t in (q, k, v)]
            out = varlen_attention(*packed, torch.tensor([0, 40, 41, 150]))
        else:
            out = attention(q, k, v, **kwargs)
        inputs = [t for t in (q, k, v, *kwargs.values()) if isinstance(t, torch.Tensor) and t.requires_grad]
        return torch.autograd.grad(out.float().square().sum(), inputs)

    threads = lmkernels.num_threads()
    try:
        lmkernels.set_num_threads(1)
        fused = run()
        lmkernels.set_num_threads(8)
        two_pass = run()
    finally:
        lmkernels.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(fused, two_pass))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_kept_residual_is_the_float32_output_minus_out(dtype):
    # The kernels compute a bf16 or fp16 problem in fp32 exactly as the float32 problem of the same values;
    # the residual is that fp32 output minus out, rounded to the dtype (from the unrounded product of the
    # row sum's inverse where the compiler fuses the multiply-add: within a rounding of the dtype).
    q, k, v = llama_like(dtype=dtype)
    bias = torch.randn(2, 150)
    out, _, _, _, residual = torch.ops.lmk.attention(q, k, v, None, None, bias, None, None, 0, True, 0.125, 0, False,
                                                     True)
    wide = torch.ops.lmk.attention(q.float(), k.float(), v.float(), None, None, bias, None, None, 0, True, 0.125, 0,
                                   False)[0]
    assert torch.equal(out, wide.to(dtype))
    torch.testing.assert_close(residual.float(), wide - out.float(), rtol=2**-7, atol=1e-6)
    assert residual.abs().max() > 0
    # Only where a gradient will want it: not for a plain call, nor in float32, nor under no_grad.
    assert torch.ops.lmk.attention(q, k, v, None, None, bias, None, None, 0, True, 0.125, 0, False)[4].numel() == 0
    assert torch.ops.lmk.attention(*(t.float() for t in (q, k, v)), None, None, bias, None, None, 0, True, 0.125, 0,
                                   False, True)[4].numel() == 0


def test_results_do_not_depend_on_the_thread_count():
    q, k, v = (t.requires_grad_() for t in llama_like(length=300))
    bias = torch.randn(2, 300, requires_grad=True)
    runs = []
    threads = lmkernels.num_threads()
    try:
        for n in (1, 2):
            lmkernels.set_num_threads(n)
            out = attention(q, k, v, window=100, key_bias=bias)
            runs.append([out, *torch.autograd.grad(out.square().sum(), (q, k, v, bias))])
    finally:
        lmkernels.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_compiles_fullgraph_with_backward():
    q, k, v = (t.requires_grad_() for t in llama_like(length=70))
    bias = torch.randn(2, 70, requires_grad=True)

    def loss(q, k, v, bias):
        return attention(q, k, v, window=20, key_bias=bias).square().sum()

    # aot_eager traces the whole graph through the fake kernels and the autograd formula (what this
    # test is about) without inductor's code generation, which takes most of a minute here.
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    for a, b in zip(torch.autograd.grad(compiled(q, k, v, bias), (q, k, v, bias)),
                    torch.autograd.grad(loss(q, k, v, bias), (q, k, v, bias))):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("options", ["none", "prefix_bias_window", "factor"])
def test_opcheck(options):
    q, k, v = (t.requires_grad_() for t in llama_like(length=20, dim=16))
    prefix = torch.randn(1, 2, 5, 16, requires_grad=True) if options == "prefix_bias_window" else None
    keys = 25 if prefix is not None else 20
    bias = torch.randn(2, keys, requires_grad=True) if options == "prefix_bias_window" else None
    factor = torch.rand(2, keys, requires_grad=True) if options == "factor" else None
    window = 7 if options == "prefix_bias_window" else 0
    torch.library.opcheck(torch.ops.lmk.attention.default,
                          (q, k, v, prefix, prefix, bias, factor, None, 0, True, 0.25, window, options == "factor"))


# ---- bad input --------------------------------------------------------------------------------

def valid():
    return llama_like(length=10, dim=16)


def shapes(q, k, v, dtype=torch.float32):
    return lambda: [torch.randn(*shape).to(dtype) for shape in (q, k, v)]


@pytest.mark.parametrize("make, error, message", [
    (lambda: [[[1.0]], *valid()[1:]], TypeError, "q: expected a torch.Tensor"),
    (shapes((2, 4, 10, 16), (2, 2, 10, 16), (2, 2, 10, 16), torch.float64), TypeError,
     "q: expected dtype float32, bfloat16 or float16"),
    (lambda: [valid()[0], valid()[1].half(), valid()[2].half()], TypeError, "k, v: expected the dtype of q"),
    (shapes((2, 4, 16), (2, 2, 10, 16), (2, 2, 10, 16)), ValueError, "q: expected 4 dimensions"),
    (shapes((2, 4, 10, 16), (2, 2, 10, 16), (2, 2, 11, 16)), ValueError, "v: expected the shape of k"),
    (shapes((2, 4, 11, 16), (2, 2, 10, 16), (2, 2, 10, 16)), ValueError,
     "q: expected at most as many queries as keys \\(10\\)"),
    (shapes((2, 4, 10, 8), (2, 2, 10, 16), (2, 2, 10, 16)), ValueError, "k: expected the head dimension of q \\(8\\)"),
    (shapes((2, 3, 10, 16), (2, 2, 10, 16), (2, 2, 10, 16)), ValueError,
     "k: expected a number of heads that divides the query heads \\(3\\)"),
    (shapes((3, 4, 10, 16), (2, 2, 10, 16), (2, 2, 10, 16)), ValueError, "k: expected shape \\[3, 2, 10, 16\\]"),
    (shapes((2, 4, 10, 300), (2, 2, 10, 300), (2, 2, 10, 300)), ValueError, "q: expected a head dimension in"),
    (shapes((2, 4, 10, 0), (2, 2, 10, 0), (2, 2, 10, 0)), ValueError, "q: expected a head dimension of at least 1"),
])
def test_bad_tensors_raise(make, error, message):
    with pytest.raises(error, match=message):
        attention(*make())


@pytest.mark.parametrize("options, error, message", [
    (dict(window=0), ValueError, "window: expected a positive"),
    (dict(window=-3), ValueError, "window: expected a positive"),
    (dict(window=2.5), TypeError, "window: expected an int"),
    (dict(scale=math.nan), ValueError, "scale: expected a finite"),
    (dict(scale="big"), TypeError, "scale: expected a float"),
    (dict(factor_min="row"), ValueError, "factor_min: expected 'causal' or 'all'"),
    (dict(key_bias=torch.randn(2, 9)), ValueError, "key_bias: expected shape \\[2, 10\\]"),
    (dict(key_bias=torch.randn(3, 10)), ValueError, "key_bias: expected shape \\[2, 10\\]"),
    (dict(key_bias=torch.ones(2, 10, dtype=torch.int64)), TypeError, "key_bias: expected a floating-point"),
    (dict(key_factor=torch.randn(2, 10, 1)), ValueError, "key_factor: expected shape"),
    (dict(key_factor=[1.0]), TypeError, "key_factor: expected a torch.Tensor or None"),
    (dict(prefix_k=torch.randn(1, 2, 4, 16)), ValueError, "prefix_k: expected prefix_k and prefix_v together"),
    (dict(prefix_k=torch.randn(3, 2, 4, 16), prefix_v=torch.randn(3, 2, 4, 16), key_bias=torch.randn(2, 14)),
     ValueError, "prefix_k: expected shape \\[1 or 2, 2, P, 16\\]"),
    (dict(prefix_k=torch.randn(1, 2, 4, 16), prefix_v=torch.randn(1, 2, 5, 16)), ValueError,
     "prefix_v: expected shape \\[1 or 2, 2, P, 16\\] \\(P the same"),
    (dict(prefix_k=torch.randn(1, 2, 4, 16).half(), prefix_v=torch.randn(1, 2, 4, 16).half()), TypeError,
     "prefix_k: expected the dtype of q"),
    (dict(prefix_k=torch.randn(1, 2, 4, 16, device="meta"), prefix_v=torch.randn(1, 2, 4, 16, device="meta")),
     ValueError, "prefix_k: expected the device of q"),
    (dict(scale=True), TypeError, "scale: expected a float"),
])
def test_bad_options_raise(options, error, message):
    with pytest.raises(error, match=message):
        attention(*valid(), **options)


@pytest.mark.parametrize("cu_seqlens, error, message", [
    ([0, 5, 3, 10], ValueError, "cu_seqlens: expected non-decreasing"),
    ([1, 5, 10], ValueError, "cu_seqlens: expected the first entry to be 0"),
    ([0, 5, 9], ValueError, "cu_seqlens: expected the last entry to be the number of rows of q \\(10\\)"),
    ([0, 12, 10], IndexError, "cu_seqlens: expected entries in \\[0, 10\\]"),
    ([0, -1, 10], IndexError, "cu_seqlens: expected entries in \\[0, 10\\]"),
])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_bad_cu_seqlens_raise(cu_seqlens, error, message, dtype):
    q, k, v = torch.randn(10, 4, 16), torch.randn(10, 2, 16), torch.randn(10, 2, 16)
    with pytest.raises(error, match=message):
        varlen_attention(q, k, v, torch.tensor(cu_seqlens, dtype=dtype))


@pytest.mark.parametrize("cu_seqlens", [[0, 5, 3, 10], [1, 5, 10], [0, 5, 9], [0, 12, 10], [0, -1, 10], [0]])
def test_bad_cu_seqlens_raise_on_every_device(device, cu_seqlens):
    # On CUDA the values are checked by the kernels through the error flag; a table of one entry
    # launches no block at all and so must be caught on the host.
    q, k, v = (torch.randn(10, heads, 16, device=device) for heads in (4, 2, 2))
    with pytest.raises((ValueError, IndexError), match="cu_seqlens: expected"):
        varlen_attention(q, k, v, torch.tensor(cu_seqlens, device=device))


def test_a_table_found_valid_is_checked_again_after_a_write(device):
    # On CUDA a cu_seqlens table the kernels found valid is not waited for again, until written.
    q, k, v = (torch.randn(10, heads, 16, device=device) for heads in (4, 2, 2))
    cu_seqlens = torch.tensor([0, 5, 10], device=device)
    first = varlen_attention(q, k, v, cu_seqlens, max_seqlen=5)
    assert torch.equal(varlen_attention(q, k, v, cu_seqlens, max_seqlen=5), first)
    cu_seqlens[1] = 11  # the same bounds: only the write says the table must be checked again
    with pytest.raises((ValueError, IndexError), match="cu_seqlens: expected"):
        varlen_attention(q, k, v, cu_seqlens, max_seqlen=5)


def test_one_entry_table_raises_before_the_backward(device):
    q, k, v = (torch.randn(10, heads, 16, device=device) for heads in (4, 2, 2))
    lse = torch.zeros(10, 4, device=device)
    with pytest.raises(ValueError, match="cu_seqlens: expected the last entry to be the number of rows of q \\(10\\)"):
        torch.ops.lmk.attention_backward(torch.ones_like(q), torch.zeros_like(q), q.new_empty(0), q, k, v, None, None,
                                         None, None, torch.tensor([0], device=device), 0, True, 0.25, 0, False, lse,
                                         None, None)


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs a GPU: max_seqlen only sizes the CUDA launch grid (the CPU kernel ignores it), so "
                           "a too-small max_seqlen is an error only on CUDA")
@pytest.mark.parametrize("max_seqlen", [0, 4])
def test_cuda_max_seqlen_below_the_longest_sequence_raises(max_seqlen):
    # 4: the blocks of the longer sequences flag it; 0: no block would run, so the host must.
    q, k, v = (torch.randn(10, heads, 16, device="cuda") for heads in (4, 2, 2))
    cu_seqlens = torch.tensor([0, 5, 10], device="cuda")
    with pytest.raises(ValueError, match="max_seqlen"):
        varlen_attention(q, k, v, cu_seqlens, max_seqlen=max_seqlen)
    with pytest.raises(ValueError, match="max_seqlen"):
        torch.ops.lmk.attention_backward(torch.ones_like(q), torch.zeros_like(q), q.new_empty(0), q, k, v, None, None,
                                         None, None, cu_seqlens, max_seqlen, True, 0.25, 0, False,
                                         torch.zeros(10, 4, device="cuda"), None, None)


@pytest.mark.parametrize("cu_seqlens, error, message", [
    (torch.tensor([0.0, 10.0]), TypeError, "cu_seqlens: expected dtype int32 or int64"),
    (torch.tensor([[0, 10]]), ValueError, "cu_seqlens: expected a 1-dimensional"),
    (torch.tensor([], dtype=torch.int64), ValueError, "cu_seqlens: expected a 1-dimensional tensor of at least"),
    ([0, 10], TypeError, "cu_seqlens: expected a torch.Tensor"),
])
def test_bad_cu_seqlens_tensor_raises(cu_seqlens, error, message):
    q, k, v = torch.randn(10, 4, 16), torch.randn(10, 2, 16), torch.randn(10, 2, 16)
    with pytest.raises(error, match=message):
        varlen_attention(q, k, v, cu_seqlens)


def test_native_entry_checks_name_the_argument():
    q, k, v = valid()
    out, lse = torch.empty_like(q), torch.empty(2, 4, 10)

    def forward(k=k, window=0, lse=lse, row_min=None, row_argmin=None):
        lmkernels._C.attention_forward(q, k, v, None, None, None, None, None, 0, True, 0.25, window, False, out, lse,
                                       row_min, row_argmin)

    with pytest.raises(ValueError, match="lse: expected shape \\[2, 4, 10\\]"):
        forward(lse=torch.empty(2, 4, 9))
    with pytest.raises(ValueError, match="row_min: expected row_min and row_argmin exactly when key_factor"):
        forward(row_min=lse, row_argmin=torch.empty(2, 4, 10, dtype=torch.int64))
    with pytest.raises(ValueError, match="window: expected a positive"):
        forward(window=-1)
    with pytest.raises(ValueError, match="k: expected unit stride in the last dimension"):
        forward(k=k.transpose(2, 3).contiguous().transpose(2, 3))


def test_backward_rejects_a_row_minimum_key_out_of_range():
    q, k, v = llama_like(length=20, dim=16)
    factor = torch.rand(2, 20)
    out, lse, row_min, row_argmin, residual = torch.ops.lmk.attention(q, k, v, None, None, None, factor, None, 0,
                                                                      True, 0.25, 0, False)
    row_argmin[1, 2, 3] = 20
    with pytest.raises(IndexError, match="row_argmin: expected keys in \\[0, 20\\)"):
        torch.ops.lmk.attention_backward(torch.ones_like(out), out, residual, q, k, v, None, None, None, factor, None,
                                         0, True, 0.25, 0, False, lse, row_min, row_argmin)


@pytest.mark.parametrize("bad_key", [20, -1])
def test_backward_rejects_a_row_minimum_key_out_of_range_on_every_device(device, bad_key):
    # CUDA reports it through the error flag (its own message), the CPU before any read.
    q, k, v = llama_like(length=20, dim=16, device=device)
    factor = torch.rand(2, 20, device=device)
    out, lse, row_min, row_argmin, residual = torch.ops.lmk.attention(q, k, v, None, None, None, factor, None, 0,
                                                                      True, 0.25, 0, False)
    row_argmin[1, 2, 3] = bad_key
    with pytest.raises(IndexError, match="row_argmin: expected"):
        torch.ops.lmk.attention_backward(torch.ones_like(out), out, residual, q, k, v, None, None, None, factor, None,
                                         0, True, 0.25, 0, False, lse, row_min, row_argmin)


def float32_gradients(grad_out, q, k, v, options, forward):
    """The native backward into float32 grad_q, grad_k and grad_v (prefix rows first)."""
    prefix_k, prefix_v, bias, factor, window = (options.get(name) for name in
                                                 ("prefix_k", "prefix_v", "key_bias", "key_factor", "window"))
    out, lse, row_min, row_argmin, residual = forward
    keys = k.shape[2] + (0 if prefix_k is None else prefix_k.shape[2])
    grads = [torch.empty(q.shape, device=q.device)] + [torch.empty(*k.shape[:2], keys, k.shape[3], device=q.device)
                                                       for _ in range(2)]
    per_key = [torch.empty(*k.shape[:2], keys, device=q.device) if t is not None else None for t in (bias, factor)]
    with_factor = factor is not None
    lmkernels._C.attention_backward(
        q, k, v, prefix_k, prefix_v, bias, factor, None, 0, True, 0.125, window or 0, False, grad_out, out,
        residual if residual.numel() else None, lse,
        row_min if with_factor else None, row_argmin if with_factor else None, torch.empty_like(lse),
        torch.empty_like(lse) if with_factor else None, *grads, *per_key,
        torch.zeros(1, dtype=torch.int32, device=q.device) if q.is_cuda else None,
        torch.cuda.current_stream().cuda_stream if q.is_cuda else 0)
    return grads


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("options", ["plain", "window_bias", "factor", "prefix"])
def test_gradients_in_the_input_dtype_are_the_float32_ones_rounded_once(device, dtype, options):
    """The kernels write bf16 / fp16 gradients directly, each element rounded once (to nearest even)
    from the fp32 value they write into float32 outputs: the bits of .to(dtype) of those."""
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, heads, 150, 64, generator=gen).to(device, dtype) for heads in (4, 2, 2))
    kwargs = {}
    if options == "window_bias":
        kwargs.update(key_bias=torch.randn(2, 150, generator=gen).to(device), window=70)
    if options == "factor":
        kwargs.update(key_factor=(torch.rand(2, 150, generator=gen) * 1.5).to(device))
    if options == "prefix":  # one prefix per item: no sum over the batch, so its gradients come rounded too
        kwargs.update(prefix_k=torch.randn(2, 2, 70, 64, generator=gen).to(device, dtype),
                      prefix_v=torch.randn(2, 2, 70, 64, generator=gen).to(device, dtype))
    args = (q, k, v, kwargs.get("prefix_k"), kwargs.get("prefix_v"), kwargs.get("key_bias"), kwargs.get("key_factor"),
            None, 0, True, 0.125, kwargs.get("window", 0), False)
    forward = torch.ops.lmk.attention(*args)
    grad_out = torch.randn(q.shape, generator=gen).to(device, dtype)
    grads = torch.ops.lmk.attention_backward(grad_out, forward[0], forward[4], *args, *forward[1:4])
    grad_q, grad_k, grad_v = float32_gradients(grad_out, q, k, v, kwargs, forward)
    prefix = 70 if options == "prefix" else 0
    expected = [grad_q, grad_k[:, :, prefix:], grad_v[:, :, prefix:]]
    if prefix:
        expected += [grad_k[:, :, :prefix], grad_v[:, :, :prefix]]
    for ours, wide in zip(grads, expected):
        assert ours.dtype == dtype
        assert torch.equal(ours.view(torch.int16), wide.to(dtype).view(torch.int16))


def test_backward_outputs_are_float32_or_the_dtype_of_q():
    q, k, v = (t.to(torch.bfloat16) for t in llama_like(length=20, dim=16))
    forward = torch.ops.lmk.attention(q, k, v, None, None, None, None, None, 0, True, 0.25, 0, False)

    def backward(grad_q_dtype=torch.bfloat16, grad_v_dtype=torch.bfloat16):
        grad_q = torch.empty(q.shape, dtype=grad_q_dtype)
        grad_k, grad_v = torch.empty_like(k), torch.empty(k.shape, dtype=grad_v_dtype)
        lmkernels._C.attention_backward(q, k, v, None, None, None, None, None, 0, True, 0.25, 0, False,
                                        torch.ones_like(q), forward[0], None, forward[1], None, None,
                                        torch.empty_like(forward[1]), None, grad_q, grad_k, grad_v, None, None)

    backward()
    backward(grad_q_dtype=torch.float32)
    with pytest.raises(TypeError, match="grad_q: expected dtype float32 or the dtype of q \\(bfloat16\\), got float16"):
        backward(grad_q_dtype=torch.float16)
    with pytest.raises(TypeError, match="grad_v: expected the dtype of grad_k \\(bfloat16\\), got float32"):
        backward(grad_v_dtype=torch.float32)


# ---- sliding windows over long key caches ---------------------------------------------------------

@pytest.mark.parametrize("window", [2**62, 2**63, 2**70])
def test_a_window_past_every_key_is_no_window(window):
    q, k, v = llama_like(length=70)
    assert torch.equal(attention(q, k, v, window=window), attention(q, k, v))
    assert torch.equal(attention(q, k, v, causal=False, window=window), attention(q, k, v, causal=False))
    packed = [t[0].transpose(0, 1) for t in (q, k, v)]
    cu_seqlens = torch.tensor([0, 30, 70])
    assert torch.equal(varlen_attention(*packed, cu_seqlens, window=window), varlen_attention(*packed, cu_seqlens))


@pytest.mark.parametrize("causal", [True, False])
def test_the_op_itself_bounds_a_window_past_every_key(causal):
    q, k, v = llama_like(length=20, dim=16)
    grad = torch.randn_like(q)
    runs = []
    for window in (0, 2**63 - 1):  # 0: no window
        out, lse, row_min, row_argmin, residual = torch.ops.lmk.attention(q, k, v, None, None, None, None, None, 0,
                                                                          causal, 0.25, window, False)
        runs.append(torch.ops.lmk.attention_backward(grad, out, residual, q, k, v, None, None, None, None, None, 0,
                                                     causal, 0.25, window, False, lse, row_min, row_argmin))
    for no_window, huge_window in zip(*runs):
        assert (no_window is None and huge_window is None) or torch.equal(no_window, huge_window)


def test_windowed_grouped_heads_give_the_same_bits_whatever_chunk_a_task_lands_in():
    # 15 query tiles x 4 query heads over 1 KV head: on 2 threads the tasks go 2 to a chunk, so chunks
    # start inside a head and then reach the next head's first key tiles, below those cached so far.
    q, k, v = llama_like(batch=1, heads=4, kv_heads=1, length=15 * 64 - 7, dim=16)
    threads = lmkernels.num_threads()
    try:
        runs = []
        for n in (1, 2):
            lmkernels.set_num_threads(n)
            runs.append(attention(q, k, v, window=100))
    finally:
        lmkernels.set_num_threads(threads)
    assert torch.equal(*runs)
    torch.testing.assert_close(runs[0], reference.attention(q, k, v, window=100), **FORWARD_TOLERANCE[torch.float32])
