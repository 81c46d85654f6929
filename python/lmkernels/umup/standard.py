"""The standard-parametrisation (SP) twin of ``lmkernels.umup.TransformerDecoder``: the sweep's baseline.

The same architecture (embedding, pre-norm layers of causal multi-head attention and a SwiGLU MLP
with 4x expansion, final RMSNorm, linear head, no positional encoding) in plain PyTorch: PyTorch's
default initialisation (linears uniform in +-fan_in^-1/2, embedding N(0, 1)), attention logits
scaled by ``d_head^-1/2``, plain residual sums and the ordinary mean cross entropy. Only the
parametrisation differs from the u-muP model, so a learning-rate sweep compares exactly that.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class _Layer(torch.nn.Module):
    def __init__(self, hidden_size: int, heads: int, expansion_factor: int):
        super().__init__()
        self.heads = heads
        self.attention_norm = torch.nn.RMSNorm(hidden_size, elementwise_affine=False)
        self.qkv = torch.nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        self.out = torch.nn.Linear(hidden_size, hidden_size, bias=False)
        self.mlp_norm = torch.nn.RMSNorm(hidden_size, elementwise_affine=False)
        self.up = torch.nn.Linear(hidden_size, expansion_factor * hidden_size, bias=False)
        self.gate = torch.nn.Linear(hidden_size, expansion_factor * hidden_size, bias=False)
        self.down = torch.nn.Linear(expansion_factor * hidden_size, hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        batch, seq, hidden = x.shape
        q, k, v = self.qkv(self.attention_norm(x)).view(batch, seq, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(attended.transpose(1, 2).reshape(batch, seq, hidden))
        normed = self.mlp_norm(x)
        return x + self.down(self.up(normed) * F.silu(self.gate(normed)))


class StandardDecoder(torch.nn.Module):
    """Decoder-only LM in the standard parametrisation; ``loss(ids)`` is the mean next-token cross entropy."""

    def __init__(self, hidden_size: int, vocab_size: int, layers: int, heads: int, expansion_factor: int = 4):
        super().__init__()
        if heads <= 0 or hidden_size % heads:
            raise ValueError(f"heads: expected a positive divisor of hidden_size {hidden_size}, got {heads}")
        self.embedding = torch.nn.Embedding(vocab_size, hidden_size)
        self.layers = torch.nn.Sequential(*(_Layer(hidden_size, heads, expansion_factor) for _ in range(layers)))
        self.final_norm = torch.nn.RMSNorm(hidden_size, elementwise_affine=False)
        self.projection = torch.nn.Linear(hidden_size, vocab_size, bias=False)

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.projection(self.final_norm(self.layers(self.embedding(input_ids))))

    def loss(self, input_ids: Tensor) -> Tensor:
        logits = self(input_ids).float()
        return F.cross_entropy(logits[..., :-1, :].flatten(end_dim=-2), input_ids[..., 1:].flatten())
