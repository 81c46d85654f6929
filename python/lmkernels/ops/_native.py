"""What every op needs to call into ``lmkernels._C``: DLPack capsules, the current stream, and the
CUDA error flag through which kernels report bad values without a device-side assert."""

from __future__ import annotations

import copy
import math
import weakref
from collections.abc import Callable, Mapping
from typing import Union

import torch
from torch.autograd import forward_ad

from lmkernels import _C

# The lmk:: operator namespace. Ops are defined on it directly (schema, one Python kernel for CPU
# and CUDA, a fake kernel) rather than with torch.library.custom_op, whose extra Python layers
# cost about 12 us a call: a third of a small embedding-bag call.
LIBRARY = torch.library.Library("lmk", "DEF")


_KERNELS: dict[str, object] = {}
_AUTOGRAD: dict[str, type[torch.autograd.Function]] = {}
_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)
# What call_op reads on every call, bound once: each ``torch.x.y`` costs attribute lookups per call.
_Tensor = torch.Tensor
_NOT_TENSORS = frozenset((type(None), bool, int, float, str, torch.dtype))
_is_compiling = torch.compiler.is_compiling
_len_dispatch_stack = torch._C._len_torch_dispatch_stack
_len_function_stack = torch._C._len_torch_function_stack
_functorch_active = torch._C._are_functorch_transforms_active


def define_op(schema: str, kernel, fake) -> None:
    """Define ``lmk::<schema>`` with ``kernel`` for CPU and CUDA tensors and ``fake`` for tracing.

    An op named ``*_backward*`` (the gradient of another op) gets a gradient that raises: without
    one, a backward with ``create_graph=True`` would silently treat it as a constant and return zero
    or partial second-order gradients."""
    name = schema.split("(", 1)[0]
    LIBRARY.define(schema)
    for key in ("CPU", "CUDA"):
        LIBRARY.impl(name, kernel, key)
    torch.library.register_fake(f"lmk::{name}", fake, lib=LIBRARY)
    _KERNELS[name] = kernel
    if "_backward" in name:
        def no_double_backward(ctx, *grads):
            raise NotImplementedError(f"lmk::{name}: second-order gradients (a backward with create_graph=True "
                                      "differentiated again) are not supported")

        torch.library.register_autograd(f"lmk::{name}", no_double_backward, lib=LIBRARY)


def define_autograd(name: str, backward, setup_context=None) -> None:
    """Register ``backward`` (and ``setup_context``) as the gradient of ``lmk::<name>``, both for the
    dispatcher's route and for eager calls, which take the same functions as a plain
    ``torch.autograd.Function`` around the kernel (see ``call_op``)."""
    torch.library.register_autograd(f"lmk::{name}", backward, setup_context=setup_context, lib=LIBRARY)

    def forward(ctx, *args):  # the combined form: a separate setup_context costs a signature binding per call
        output = _KERNELS[name](*args)
        if setup_context is not None:
            setup_context(ctx, args, output)
        return output

    _AUTOGRAD[name] = type(f"{name}_autograd", (torch.autograd.Function,),
                           {"forward": staticmethod(forward), "backward": staticmethod(backward)})


def call_op(name: str, *args):
    """``torch.ops.lmk.<name>(*args)``, or its kernel directly where nothing needs the dispatcher.

    The dispatcher's route (autograd wrapper, redispatch) costs host time on every call: on the
    developer VM a small attention call took 38 us through it and 26 us directly, an fp8 cast 16 and
    7 us; on the GPU machine, whose host is slower, our ops spent 0.1-0.2 ms per call on the host,
    most of the wall time of a sub-millisecond kernel. The dispatcher's route is taken whenever it can
    matter: a tensor subclass (fake, functional or wrapper tensors), an active torch function or
    dispatch mode, a functorch transform, or torch.compile's tracing. Otherwise the kernel, which
    computes exactly what the op would, runs directly; where autograd tracks an input, inside the
    op's ``define_autograd`` functions as a plain ``torch.autograd.Function`` (torch.library's
    autograd route cost 0.1 ms of host time per attention forward and backward on the developer VM).
    """
    # is_compiling first: under torch.compile it is the constant True, and the rest is not traceable.
    if _is_compiling() or _len_dispatch_stack() or _len_function_stack() or _functorch_active():
        return getattr(torch.ops.lmk, name)(*args)
    tracked = False
    for arg in args:
        if type(arg) in _NOT_TENSORS:  # isinstance(arg, Tensor) takes 0.1 us for these (Tensor's metaclass)
            continue
        if isinstance(arg, _Tensor):
            if type(arg) not in _PLAIN_TENSORS or arg.is_meta:  # meta tensors: the fake kernel
                return getattr(torch.ops.lmk, name)(*args)
            tracked = tracked or arg.requires_grad
    if forward_ad._current_level >= 0 and any(
            isinstance(arg, torch.Tensor) and forward_ad.unpack_dual(arg).tangent is not None for arg in args):
        raise NotImplementedError(f"lmk::{name}: forward-mode AD (dual tensors) is not supported")
    if tracked and torch.is_grad_enabled():
        # Ops without an autograd.Function (the backward ops under create_graph=True, whose
        # dispatcher gradient raises; the in-place fake quantize) keep the dispatcher's behaviour.
        function = _AUTOGRAD.get(name)
        return function.apply(*args) if function is not None else getattr(torch.ops.lmk, name)(*args)
    return _KERNELS[name](*args)


def dl(t: torch.Tensor | None):
    """``t`` as a DLPack capsule for ``_C`` (None stays None).

    The native functions accept any DLPack producer, but a capsule made here costs 0.4 us against
    2-3 us for the native side calling ``Tensor.__dlpack__``, which matters for small calls. Unlike
    ``Tensor.__dlpack__``, this exports a tensor that requires grad as it is: ops need not detach
    (0.5-0.8 us a tensor) what they pass. No stream synchronisation is done: kernels run on the
    current stream, which the op passes.
    """
    if t is None:
        return None
    code = _RETAGGED_FLOAT8.get(t.dtype) if _RETAGGED_FLOAT8 else None  # empty on current torch
    if code is None:
        return _to_dlpack(t)
    return _C.retag_float8(_to_dlpack(t.view(torch.uint8)), code)


def _exports(dtype: torch.dtype) -> bool:
    try:
        torch.utils.dlpack.to_dlpack(torch.empty(0, dtype=dtype))
    except (BufferError, RuntimeError, TypeError):
        return False
    return True


_to_dlpack = torch.utils.dlpack.to_dlpack
_DLPACK_FLOAT8 = {torch.float8_e4m3fn: 10, torch.float8_e5m2: 12}  # DLPack 1.1's kDLFloat8_e4m3fn, _e5m2
# torch before about 2.10 exports no float8 through DLPack: dl passes their bytes, relabelled in the
# capsule. Found once here: a failed export raises a C++ error, about 12 us a call.
_RETAGGED_FLOAT8 = {dtype: code for dtype, code in _DLPACK_FLOAT8.items() if not _exports(dtype)}


# Below this, glibc's malloc already reuses freed memory; above it, each buffer is a fresh mapping.
_CACHED_OUTPUT_MIN_BYTES = 32 << 20


def kernel_output(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised contiguous tensor for a kernel to overwrite entirely. Large CPU ones come
    from the memory cache (``lmkernels.set_memory_cache_limit``), so that their pages are not
    faulted in and zeroed afresh on every call."""
    nbytes = math.prod(shape) * dtype.itemsize
    # The size first: torch.device(device) costs more than the rest of a small call's checks.
    if nbytes < _CACHED_OUTPUT_MIN_BYTES or torch.device(device).type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    return torch.from_numpy(_C.cached_bytes(nbytes)).view(dtype).view(tuple(shape))


def narrowed_offsets(offsets: torch.Tensor, indices: torch.Tensor, name: str = "indices") -> torch.Tensor:
    """CSR ``offsets`` in the dtype of their ``indices``. Narrowing int64 to int32 saturates: an offset
    outside [0, len(indices)] becomes -1 or len + 1, which the kernels reject, where a plain cast would
    wrap 2^32 + 2 to a valid-looking 2 (and no check needs to wait for the GPU here). ``name`` is the
    indices' argument name, for the error that int32 offsets cannot reach past 2^31 - 1 of them."""
    if offsets.dtype == indices.dtype:
        return offsets
    if indices.dtype == torch.int32:
        if indices.numel() > torch.iinfo(torch.int32).max:
            raise ValueError(f"{name}: int32 indices take int32 offsets, which reach at most 2**31 - 1 entries; "
                             f"got {indices.numel()} (pass int64 indices)")
        offsets = offsets.clamp(-1, min(indices.numel() + 1, torch.iinfo(torch.int32).max))
    return offsets.to(indices.dtype)


# A device's current stream handle, read as torch's inductor does: torch.cuda.current_stream(...).cuda_stream
# makes a Stream object per call, a few us of host time. Private, hence the fallback.
_current_raw_stream = (getattr(torch._C, "_cuda_getCurrentRawStream", None)
                       or (lambda index: torch.cuda.current_stream(index).cuda_stream))


def stream_of(t: torch.Tensor) -> int:
    """The caller's current CUDA stream for ``t``'s device (0 on the CPU)."""
    return _current_raw_stream(t.get_device()) if t.is_cuda else 0


def error_flag(like: torch.Tensor) -> torch.Tensor | None:
    """A zeroed int32[1] flag on ``like``'s GPU, or None on the CPU (CPU kernels raise directly)."""
    return torch.zeros(1, dtype=torch.int32, device=like.device) if like.is_cuda else None


_UNCHECKED_FLAGS: dict[int, torch.Tensor] = {}  # by device index


def unchecked_flag(like: torch.Tensor) -> torch.Tensor | None:
    """The error flag for a call whose kernels cannot set it (none of its inputs is one they check):
    one zeroed flag per GPU, made once, instead of an allocation and a memset per call."""
    if not like.is_cuda:
        return None
    flag = _UNCHECKED_FLAGS.get(like.get_device())
    if flag is None:
        flag = _UNCHECKED_FLAGS[like.get_device()] = torch.zeros(1, dtype=torch.int32, device=like.device)
    return flag


# id(table) -> (a weak reference to it, its version, the bounds it was found valid for)
_VALID_TABLES: dict[int, tuple[weakref.ref, int, tuple]] = {}


def table_known_valid(table: torch.Tensor, bounds: tuple) -> bool:
    """Whether a kernel already found ``table`` (an index table such as cu_seqlens, the very tensor the
    caller passed) valid against ``bounds``, and nothing has written to it since (its version
    counter is unchanged). Then the call needs no error flag wait: HAT's connectors and their
    backward read one cu_seqlens per batch, and only the first call waits for the GPU. Inference
    tensors have no version counter: they are checked on every call."""
    if table.is_inference():
        return False
    entry = _VALID_TABLES.get(id(table))
    return entry is not None and entry[0]() is table and entry[1] == table._version and entry[2] == bounds


def remember_valid_table(table: torch.Tensor, bounds: tuple) -> None:
    """Record that a kernel found ``table`` valid against ``bounds`` (see ``table_known_valid``)."""
    if table.is_inference():
        return
    key = id(table)
    if key not in _VALID_TABLES:
        weakref.finalize(table, _VALID_TABLES.pop, key, None)
    _VALID_TABLES[key] = (weakref.ref(table), table._version, bounds)


# Error bit -> the exception it raises, or a function that makes that mapping (see raise_on_flag).
Messages = Union[Mapping[int, BaseException], Callable[[], Mapping[int, BaseException]]]


class TableCheck:
    """The error flag of a kernel call whose checked inputs are ``tables``, pairs of an index table
    and the bounds it is checked against (``always``: inputs that must be checked on every call as
    well): a fresh flag to check after the call, or, where every table is known valid, the unchecked
    one and no wait for the GPU."""

    __slots__ = ("flag", "checked", "_tables")

    def __init__(self, tables: tuple[tuple[torch.Tensor, tuple], ...], like: torch.Tensor, always: bool = False):
        self._tables = tables
        self.checked = always or not all(table_known_valid(table, bounds) for table, bounds in tables)
        self.flag = error_flag(like) if self.checked else unchecked_flag(like)

    def raise_on_flag(self, messages: Messages) -> None:
        """After the call: raise on a flagged input, else remember the tables valid (on the GPU)."""
        if not self.checked or self.flag is None:
            return
        raise_on_flag(self.flag, messages)
        for table, bounds in self._tables:
            remember_valid_table(table, bounds)


def raise_on_flag(flag: torch.Tensor | None, messages: Messages) -> None:
    """Raise the exception of the first bit of ``messages`` set in ``flag`` (this synchronises with the GPU).

    Callers list the bits in the order their CPU kernel checks its inputs, so that an input with several
    faults raises the same exception on either device. ``messages`` may be a function that makes them:
    it is called only where a flag is read, so that calls with none (on the CPU, whose kernels raise
    themselves, or with tables known valid) build no exception objects."""
    if flag is None:
        return
    bits = int(flag.item())
    for bit, error in (messages() if callable(messages) else messages).items():
        if bits & bit:
            # A copy: the callers' frames, which the raised error's traceback holds, hold the message itself;
            # raising it would make a cycle that keeps the failed call's tensors alive until gc runs.
            raise copy.copy(error)
    if bits:
        raise RuntimeError(f"kernel reported unknown error bits {bits:#x}")


__all__ = ["_C", "LIBRARY", "define_op", "define_autograd", "call_op", "dl", "narrowed_offsets", "stream_of",
           "error_flag", "unchecked_flag", "table_known_valid", "remember_valid_table", "TableCheck", "raise_on_flag"]
