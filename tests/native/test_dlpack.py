"""The DLPack boundary: any producer, zero-copy, strided views handled or rejected, never misread."""

import ctypes

import numpy as np
import pytest
import torch

from lmkernels import _C


def forward(table, indices=None, offsets=None, out=None):
    indices = np.array([0, 1, 2], dtype=np.int64) if indices is None else indices
    offsets = np.array([0, 3], dtype=np.int64) if offsets is None else offsets
    out = np.empty((1, getattr(table, "shape", (0, 2))[1]), np.float32) if out is None else out
    _C.embedding_bag_forward(table, indices, offsets, None, 0, out)
    return out


def test_writes_into_the_callers_buffer_without_copy():
    table = torch.arange(12, dtype=torch.float32).view(3, 4)
    out = torch.full((1, 4), -1.0)
    _C.embedding_bag_forward(table, torch.tensor([0, 2]), torch.tensor([0, 2]), None, 0, out)
    assert out.tolist() == [[8.0, 10.0, 12.0, 14.0]]


def test_numpy_row_strided_view_is_read_at_its_strides():
    wide = np.arange(30, dtype=np.float32).reshape(3, 10)
    table = wide[:, 2:6]  # row stride 10 elements
    np.testing.assert_array_equal(forward(table)[0], table.sum(0))


def test_views_with_byte_offset_are_read_from_their_start():
    base = torch.arange(40, dtype=torch.float32).view(10, 4)
    table = base[4:]  # storage offset of 16 elements
    np.testing.assert_array_equal(forward(table)[0], table[:3].sum(0).numpy())


def test_non_unit_inner_stride_is_rejected_not_misread():
    table = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]
    with pytest.raises(ValueError, match="table: expected unit stride"):
        forward(table)
    with pytest.raises(ValueError, match="indices: expected a contiguous"):
        forward(np.ones((3, 2), np.float32), indices=np.array([0, 9, 1, 9, 2, 9], dtype=np.int64)[::2])


def test_read_only_output_is_rejected():
    out = np.zeros((1, 2), np.float32)
    out.setflags(write=False)
    with pytest.raises(ValueError, match="out: the output buffer is read-only"):
        forward(np.ones((3, 2), np.float32), out=out)


def test_capsules_are_accepted():
    table = torch.ones(3, 2)
    out = torch.zeros(1, 2)
    _C.embedding_bag_forward(torch.utils.dlpack.to_dlpack(table), torch.tensor([0, 1]), torch.tensor([0, 2]), None, 0,
                             out)
    assert out.tolist() == [[2.0, 2.0]]


@pytest.mark.parametrize("obj, message", [([[1.0]], "got list"), (3.0, "got float"), (None, "got None")])
def test_objects_without_dlpack_raise_type_error(obj, message):
    with pytest.raises(TypeError, match=f"table: expected a tensor.*{message}"):
        forward(obj)


def test_unsupported_dtype_raises_type_error():
    with pytest.raises(TypeError, match="table: expected dtype float32, bfloat16 or float16, got float8_e4m3fn"):
        forward(torch.zeros(3, 2, dtype=torch.float8_e4m3fn))
    with pytest.raises(TypeError, match="table"):
        forward(np.zeros((3, 2), np.complex64))


# A hand-made DLPack capsule that claims to live on a GPU, to check that a device mismatch is
# caught before any memory is touched (this machine may have no GPU).
class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32), ("dtype", _DLDataType),
                ("shape", ctypes.POINTER(ctypes.c_int64)), ("strides", ctypes.POINTER(ctypes.c_int64)),
                ("byte_offset", ctypes.c_uint64)]


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p)]


def gpu_capsule(shape, keep, code=2, bits=32):
    shape_array = (ctypes.c_int64 * len(shape))(*shape)
    managed = _DLManagedTensor()
    managed.dl_tensor = _DLTensor(ctypes.c_void_p(0x1000), _DLDevice(2, 0), len(shape), _DLDataType(code, bits, 1),
                                  shape_array, None, 0)
    keep += [shape_array, managed]
    new_capsule = ctypes.pythonapi.PyCapsule_New
    new_capsule.restype, new_capsule.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    return new_capsule(ctypes.addressof(managed), b"dltensor", None)


def test_tensors_on_different_devices_raise_value_error():
    keep = []
    with pytest.raises(ValueError, match="indices: expected the device of table"):
        _C.embedding_bag_forward(np.ones((3, 2), np.float32), gpu_capsule([3], keep, code=0, bits=64), np.array([0, 3]), None, 0,
                                 np.zeros((1, 2), np.float32))
    with pytest.raises(ValueError, match="out: expected the device of table"):
        _C.embedding_bag_forward(np.ones((3, 2), np.float32), np.array([0, 1, 2]), np.array([0, 3]), None, 0,
                                 gpu_capsule([1, 2], keep))


def test_float8_goes_through_as_relabelled_bytes_where_torch_dlpack_has_no_float8(monkeypatch):
    """torch before about 2.10 raises for float8 in to_dlpack: the op layer then exports the bytes and
    relabels them, so fp8_cast and fp8_gemm give the same results."""
    from lmkernels.ops import fp8_cast, fp8_gemm

    x = torch.randn(64, 48, generator=torch.Generator().manual_seed(0)) * 8
    expected = [fp8_cast(x, dtype) for dtype in (torch.float8_e4m3fn, torch.float8_e5m2)]
    product = fp8_gemm(expected[0], expected[0])
    real = torch.utils.dlpack.to_dlpack

    def old_torch(t):
        if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            raise RuntimeError("float8 types are not supported by dlpack")
        return real(t)

    monkeypatch.setattr(torch.utils.dlpack, "to_dlpack", old_torch)
    for dtype, want in zip((torch.float8_e4m3fn, torch.float8_e5m2), expected):
        got = fp8_cast(x, dtype)
        assert got.dtype == dtype and torch.equal(got.view(torch.uint8), want.view(torch.uint8))
    assert torch.equal(fp8_gemm(expected[0], expected[0]), product)
    with pytest.raises(ValueError, match="^code: expected DLPack's float8"):
        _C.retag_float8(real(torch.zeros(2, dtype=torch.uint8)), 2)
    with pytest.raises(TypeError, match="^capsule: expected uint8 bytes to retag"):
        _C.retag_float8(real(torch.zeros(2)), 10)
    with pytest.raises(ValueError, match="^capsule: expected an unconsumed DLPack capsule"):
        _C.retag_float8(torch.zeros(2, dtype=torch.uint8), 10)
