"""``call_op``: the kernel runs directly only where nothing needs the dispatcher, with the same results."""

import gc

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from lmkernels.ops import _native, embedding_bag, fp8_cast, multilabel_bce_with_logits
from lmkernels.ops.attention import attention


@pytest.fixture
def direct_calls(monkeypatch):
    """The names of the ops whose kernel ran without the dispatcher."""
    names = []
    kernels = dict(_native._KERNELS)

    def spy(name):
        def kernel(*args):
            names.append(name)
            return kernels[name](*args)
        return kernel

    monkeypatch.setattr(_native, "_KERNELS", {name: spy(name) for name in kernels})
    return names


def qkv(requires_grad=False):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(1, 2, 9, 8, generator=gen).requires_grad_(requires_grad) for _ in range(3)]


def test_plain_tensors_without_autograd_skip_the_dispatcher(direct_calls):
    q, k, v = qkv()
    direct = attention(q, k, v)
    assert direct_calls == ["attention"]
    assert torch.equal(direct, torch.ops.lmk.attention(q, k, v, None, None, None, None, None, 0, True, 8 ** -0.5, 0,
                                                       False)[0])


def test_inputs_that_autograd_tracks_run_the_kernel_in_a_plain_autograd_function(direct_calls):
    q, k, v = qkv(requires_grad=True)
    bias = torch.randn(9, requires_grad=True)
    out = attention(q, k, v, key_bias=bias)
    assert direct_calls == ["attention"]
    grads = torch.autograd.grad(out.square().sum(), (q, k, v, bias))
    assert direct_calls == ["attention", "attention_backward"]  # the backward op runs with grad mode off
    # The dispatcher's route (torch.library's autograd) gives the same output and gradients.
    through_dispatcher = torch.ops.lmk.attention(q, k, v, None, None, bias.expand(1, 9), None, None, 0, True,
                                                 8 ** -0.5, 0, False)[0]
    assert torch.equal(out, through_dispatcher)
    for ours, theirs in zip(grads, torch.autograd.grad(through_dispatcher.square().sum(), (q, k, v, bias))):
        assert torch.equal(ours, theirs)
    with torch.no_grad():
        attention(q, k, v)
    assert direct_calls[-1] == "attention"


def test_a_backward_with_create_graph_takes_the_dispatcher_for_the_backward_op(direct_calls):
    q, k, v = qkv(requires_grad=True)
    out = attention(q, k, v)
    (first,) = torch.autograd.grad(out.square().sum(), q, retain_graph=True)
    (with_graph,) = torch.autograd.grad(out.square().sum(), q, create_graph=True)
    assert torch.equal(first, with_graph)
    assert direct_calls == ["attention", "attention_backward"]  # the second backward went through torch.ops


def test_subclasses_modes_and_transforms_go_through_the_dispatcher(direct_calls):
    with FakeTensorMode() as mode:
        fake = mode.from_tensor(torch.randn(4, 16))
        out = fp8_cast(fake, torch.float8_e4m3fn)
    assert out.shape == (4, 16) and out.dtype == torch.float8_e4m3fn
    with torch.device("cpu"):  # a torch function mode
        fp8_cast(torch.randn(4, 16), torch.float8_e4m3fn)
    q, k, v = qkv()
    torch.vmap(lambda q: attention(q[None], k, v)[0])(q)
    assert direct_calls == []


def test_parameters_count_as_plain_tensors(direct_calls):
    weight = torch.nn.Parameter(torch.randn(4, 16), requires_grad=False)
    fp8_cast(weight, torch.float8_e4m3fn)
    assert direct_calls == ["fp8_cast"]


def test_a_table_stays_known_valid_for_its_bounds_until_written():
    table = torch.tensor([0, 2, 5])
    assert not _native.table_known_valid(table, (5,))
    _native.remember_valid_table(table, (5,))
    assert _native.table_known_valid(table, (5,))
    assert not _native.table_known_valid(table, (6,))  # other bounds
    assert not _native.table_known_valid(table.clone(), (5,))  # the same values in another tensor
    table[1] = 3  # a write moves the version counter
    assert not _native.table_known_valid(table, (5,))
    key = id(table)
    del table
    gc.collect()
    assert key not in _native._VALID_TABLES


def test_inference_tensors_are_never_known_valid():
    with torch.inference_mode():
        table = torch.tensor([0, 2, 5])
    _native.remember_valid_table(table, (5,))  # no version counter to watch
    assert not _native.table_known_valid(table, (5,))


def test_on_the_cpu_every_table_is_checked_without_a_flag():
    table = torch.tensor([0, 2, 5])
    check = _native.TableCheck(((table, (5,)),), table)
    assert check.flag is None and check.checked
    check.raise_on_flag({})
    assert not _native.table_known_valid(table, (5,))  # CPU kernels raise themselves: nothing to remember


def test_messages_are_made_only_where_a_flag_is_read():
    made = []

    def messages():
        made.append(True)
        return {1: ValueError("offsets: bad")}

    _native.raise_on_flag(None, messages)  # the CPU: its kernels raise themselves
    _native.raise_on_flag(torch.tensor([0], dtype=torch.int32), lambda: {})
    assert not made
    with pytest.raises(ValueError, match="^offsets: bad$"):
        _native.raise_on_flag(torch.tensor([1], dtype=torch.int32), messages)
    assert made == [True]


def test_second_order_gradients_through_a_backward_op_raise():
    # Without a gradient of their own the backward ops would count as constants: zero second-order gradients.
    table = torch.randn(6, 3, requires_grad=True)
    weights = torch.rand(4, requires_grad=True)
    out = embedding_bag(table, torch.tensor([0, 2, 5, 1]), torch.tensor([0, 2, 4]), weights)
    (grad,) = torch.autograd.grad(out.square().sum(), table, create_graph=True)
    with pytest.raises(NotImplementedError, match="second-order"):
        torch.autograd.grad(grad.square().sum(), weights)
    q = torch.randn(1, 2, 5, 8, requires_grad=True)
    (grad,) = torch.autograd.grad(attention(q, q, q).square().sum(), q, create_graph=True)
    with pytest.raises(NotImplementedError, match="second-order"):
        torch.autograd.grad(grad.sum(), q)


def test_forward_mode_ad_raises_instead_of_dropping_tangents():
    import torch.autograd.forward_ad as fwAD

    q = torch.randn(1, 2, 5, 8)
    with fwAD.dual_level():
        dual = fwAD.make_dual(q, torch.randn_like(q))
        with pytest.raises(NotImplementedError, match="forward-mode"):
            attention(dual, q, q)


def test_meta_tensors_take_the_fake_kernels():
    x = torch.randn(4, 16, device="meta")
    out = fp8_cast(x, torch.float8_e4m3fn, transpose=True)
    assert out.is_meta and out.shape == (16, 4) and out.dtype == torch.float8_e4m3fn


def test_int64_offsets_that_int32_indices_cannot_hold_are_rejected_not_wrapped():
    table, indices = torch.randn(10, 4), torch.tensor([1, 2, 3, 4], dtype=torch.int32)
    with pytest.raises(ValueError, match="offsets"):
        embedding_bag(table, indices, torch.tensor([0, 2 + 2**32, 4]))
    with pytest.raises(ValueError, match="offsets"):
        multilabel_bce_with_logits(torch.randn(2, 10), indices, torch.tensor([0, 2 + 2**32, 4]))


def test_int32_indices_past_what_int32_offsets_reach_are_refused_by_name():
    indices = torch.zeros(1, dtype=torch.int32).expand(2**31)  # numel 2^31 without the 8 GiB
    offsets = torch.tensor([0, 2**31])
    with pytest.raises(ValueError, match=r"^pos_indices: int32 indices take int32 offsets, .* got 2147483648 "):
        _native.narrowed_offsets(offsets, indices, "pos_indices")
    fits = indices[: 2**31 - 1]
    assert _native.narrowed_offsets(torch.tensor([0, 2**31 - 1]), fits).tolist() == [0, 2**31 - 1]


def test_a_flagged_error_leaves_no_cycle_holding_the_call_tensors():
    """Raising the message itself made error -> traceback -> a caller's frame -> the messages -> error, which
    kept a failed GPU call's tensors alive until the garbage collector ran."""
    import weakref

    def failing_call():
        output = torch.empty(1000)
        messages = {1: ValueError("offsets: bad"), 2: IndexError("indices: out of range")}
        failing_call.output = weakref.ref(output)
        _native.raise_on_flag(torch.tensor([3], dtype=torch.int32), messages)

    gc.collect()
    gc.disable()
    try:
        with pytest.raises(ValueError, match="^offsets: bad$"):
            failing_call()
        assert failing_call.output() is None  # freed by reference counting alone
    finally:
        gc.enable()


def test_dl_exports_a_tensor_that_requires_grad_without_a_detach():
    # The ops pass such tensors to dl as they are; Tensor.__dlpack__ would refuse them.
    weight = torch.randn(3, 4, requires_grad=True)
    assert torch.equal(torch.utils.dlpack.from_dlpack(_native.dl(weight)), weight.detach())


@pytest.mark.parametrize("retagged", [False, True])
def test_dl_exports_float8_natively_or_as_relabelled_bytes(monkeypatch, retagged):
    if retagged:  # the route of torch before about 2.10, which exports no float8
        monkeypatch.setattr(_native, "_RETAGGED_FLOAT8", dict(_native._DLPACK_FLOAT8))
    elif _native._RETAGGED_FLOAT8:
        pytest.skip("this torch exports no float8 through DLPack")
    x = torch.randn(16, 16)
    expected = x.to(torch.float8_e4m3fn)
    assert torch.equal(fp8_cast(x, torch.float8_e4m3fn).view(torch.uint8), expected.view(torch.uint8))


def test_the_stream_of_a_cpu_tensor_is_0():
    assert _native.stream_of(torch.ones(1)) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_ops_run_on_the_callers_current_stream():
    x = torch.randn(1024, 1024, device="cuda")
    default = torch.cuda.current_stream()
    assert _native.stream_of(x) == default.cuda_stream
    expected = fp8_cast(x, torch.float8_e4m3fn)
    side = torch.cuda.Stream()
    assert side.cuda_stream != default.cuda_stream
    side.wait_stream(default)
    with torch.cuda.stream(side):
        assert _native.stream_of(x) == side.cuda_stream
        on_side = fp8_cast(x, torch.float8_e4m3fn)
    default.wait_stream(side)
    assert torch.equal(on_side.view(torch.uint8), expected.view(torch.uint8))
