"""int8 absmax cases: ``lmk.int8_fake_quantize`` against the plain torch composition.

Llama-sized weight matrices: 4096 x 4096 (attention projections of Llama-2 7B) and 11008 x 4096
(its MLP up/gate projections), float32 and bfloat16, seeded normal values. The peer computes the
same quantise-dequantise with torch ops in fp32: abs, amax per row, / 127, division, round, clamp,
multiplication, cast back (no int8 round trip, no finiteness check: the cheapest torch form).
Case names read ``fake-quantize <rows>x<cols> <dtype>``.

Bytes moved (logical traffic): the matrix read once and written once, plus the fp32 scales.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lmkernels.bench.harness import Case
from lmkernels.ops import int8_fake_quantize

_FULL = [(4096, 4096), (11008, 4096)]
_QUICK = [(1024, 1024)]
_TINY = [(64, 96)]
_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16"}


def torch_fake_quantize(weight: Tensor) -> tuple[Tensor, Tensor]:
    """The peer: per-row absmax int8 quantise-dequantise composed of torch ops, in fp32."""
    w = weight.float()
    scale = w.abs().amax(dim=1) / 127
    divisor = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = torch.round(w / divisor[:, None]).clamp_(-127, 127)
    return (q * scale[:, None]).to(weight.dtype), scale


def cases(quick: bool, device: str, tiny: bool = False) -> list[Case]:
    """The fused quantise-dequantise cases on ``device``: Llama sizes, ``quick`` or ``tiny`` (smoke test)."""
    shapes = _TINY if tiny else _QUICK if quick else _FULL
    result = []
    for rows, cols in shapes:
        for dtype, dtype_name in _DTYPES.items():
            gen = torch.Generator().manual_seed(0)
            weight = torch.randn(rows, cols, generator=gen).to(device=device, dtype=dtype)
            result.append(Case(
                kernel="int8_absmax",
                case=f"fake-quantize {rows}x{cols} {dtype_name}",
                peer="torch composition (fp32)",
                ours_fn=lambda weight=weight: int8_fake_quantize(weight, return_scale=True),
                peer_fn=lambda weight=weight: torch_fake_quantize(weight),
                bytes_moved=2 * weight.numel() * weight.element_size() + rows * 4,
                device=device,
            ))
    return result
