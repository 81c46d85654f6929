"""fp8 cast cases: ``lmk.fp8_cast`` (bfloat16 -> float8_e4m3fn, round to nearest even) against torch.

Square bf16 matrices of 4096 and 8192 (quick: 1024), seeded normal values scaled by 100 so that some
saturate. The peer is the cheapest torch form of the same saturating cast: ``clamp(-448, 448)``
then ``.to(torch.float8_e4m3fn)``, followed by ``.t().contiguous()`` for the transposed case.
Case names read ``e4m3 <rows>x<cols> bf16`` or ``e4m3 transposed <rows>x<cols> bf16``.

Bytes moved (logical traffic): 2 bytes read and 1 byte written per element.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lmkernels.bench.harness import Case
from lmkernels.ops import fp8_cast

_FULL = [(4096, 4096), (8192, 8192)]
_QUICK = [(1024, 1024)]
_TINY = [(64, 96)]
_E4M3_MAX = 448.0


def torch_cast(x: Tensor, transpose: bool) -> Tensor:
    """The peer: clamp to the E4M3FN range, torch's conversion, and a copying transpose if asked."""
    y = x.clamp(-_E4M3_MAX, _E4M3_MAX).to(torch.float8_e4m3fn)
    return y.t().contiguous() if transpose else y


def cases(quick: bool, device: str, tiny: bool = False) -> list[Case]:
    """The bf16 -> E4M3 cast cases on ``device``, plain and transposed: ``quick`` or ``tiny`` (smoke test)."""
    shapes = _TINY if tiny else _QUICK if quick else _FULL
    result = []
    for rows, cols in shapes:
        gen = torch.Generator().manual_seed(0)
        x = (torch.randn(rows, cols, generator=gen) * 100).to(device=device, dtype=torch.bfloat16)
        for transpose in (False, True):
            result.append(Case(
                kernel="fp8_cast",
                case=f"e4m3 {'transposed ' if transpose else ''}{rows}x{cols} bf16",
                peer="torch clamp + .to(float8)" + (" + .t().contiguous()" if transpose else ""),
                ours_fn=lambda x=x, transpose=transpose: fp8_cast(x, torch.float8_e4m3fn, transpose=transpose),
                peer_fn=lambda x=x, transpose=transpose: torch_cast(x, transpose),
                bytes_moved=3 * x.numel(),
                device=device,
            ))
    return result
