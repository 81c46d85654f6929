"""``SwiGLU`` feed-forward block: ``out = W_out(silu(W_in x) * W_gate x)``, no biases.

The projections start from torch's default init; a model may give them a scheme (``normal_init``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lmkernels.nn.normal_init import NormalLinear


class SwiGLU(torch.nn.Module):
    def __init__(self, dim: int, hidden_dim: int, device=None, dtype=None):
        super().__init__()
        self.w_in = NormalLinear(dim, hidden_dim, bias=False, device=device, dtype=dtype)
        self.w_gate = NormalLinear(dim, hidden_dim, bias=False, device=device, dtype=dtype)
        self.w_out = NormalLinear(hidden_dim, dim, bias=False, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_out(F.silu(self.w_in(x)) * self.w_gate(x))
