"""``int8_fake_quantize``: int8 absmax quantise-dequantise per output channel.

For every row ``w`` of ``weight`` [out, in]::

    scale = max_j |w_j| / 127
    q_j   = clamp(round_half_even(w_j / scale), -127, 127)
    w'_j  = q_j * scale                       (in fp32, rounded once to the dtype of ``weight``)

A row of zeros stays zeros.
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def int8_fake_quantize(weight: Tensor) -> Tensor:
    """``weight`` [out, in] (float32, bfloat16 or float16) quantised to int8 per row and back."""
    if not isinstance(weight, Tensor) or weight.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"weight: expected a float32, bfloat16 or float16 tensor, got "
                        f"{weight.dtype if isinstance(weight, Tensor) else type(weight).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"weight: expected [out, in], got shape {list(weight.shape)}")
    w = weight.float()
    scale = w.abs().amax(dim=1, keepdim=True) / 127
    safe_scale = torch.where(scale > 0, scale, 1.0)
    q = torch.clamp(torch.round(w / safe_scale), -127, 127)
    return (q * scale).to(weight.dtype)
