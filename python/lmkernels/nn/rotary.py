"""Rotary position embedding (RoPE), in both conventions, with optional Llama 3 frequency scaling.

Frequencies ``f_i = base^(-2i/d)``, angle ``theta_i = p f_i`` at position ``p``. Interleaved (the
complex-pair form T-FREE uses) rotates dimensions ``(2i, 2i+1)`` together; NeoX / Llama
(``interleaved=False``, HAT's ``is_neox_style``) rotates ``(i, i + d/2)``:

    y_a = x_a cos(theta_i) - x_b sin(theta_i)
    y_b = x_a sin(theta_i) + x_b cos(theta_i)

``scaling={"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
"original_max_position_embeddings"}`` divides the low frequencies (wavelengths above
L / low_freq_factor, L the original context) by ``factor``, keeps the high ones (wavelengths below
L / high_freq_factor) and blends linearly in between, as Llama 3.1 does.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def llama3_scaled(frequencies: Tensor, scaling: dict) -> Tensor:
    """Llama 3.1's rescaling of RoPE frequencies for long contexts (see the module docstring)."""
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    context = scaling["original_max_position_embeddings"]
    wavelengths = 2 * math.pi / frequencies
    smooth = ((context / wavelengths - low) / (high - low)).clamp(0, 1)
    blended = (1 - smooth) * frequencies / factor + smooth * frequencies
    return torch.where(wavelengths < context / high, frequencies,
                       torch.where(wavelengths > context / low, frequencies / factor, blended))


class RotaryEmbedding(torch.nn.Module):
    """Rotates query/key heads by their positions; ``forward(x [..., S, d], positions [..., S])``."""

    def __init__(self, head_dim: int, base: float = 10000.0, interleaved: bool = True, scaling: dict | None = None,
                 device=None):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"head_dim: expected an even number, got {head_dim}")
        # This fp32 copy on the CPU outlives dtype casts (see _apply) and meta devices (materialize).
        frequencies = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device="cpu") / head_dim)
        if scaling is not None:
            if scaling.get("rope_type", scaling.get("type")) != "llama3":
                raise ValueError(f"scaling: only rope_type 'llama3' is supported, got {scaling!r}")
            frequencies = llama3_scaled(frequencies, scaling)
        self.head_dim, self.base, self.interleaved, self.scaling = head_dim, base, interleaved, scaling
        self._frequencies = frequencies.float()
        self.register_buffer("inverse_frequencies", None, persistent=False)
        # torch.empty follows a `with torch.device(...)` context in every torch 2.x; get_default_device only
        # from 2.5 on.
        self.materialize(torch.empty(0).device if device is None else device)

    def _apply(self, fn, recurse=True):
        # The buffer is computed again from the fp32 copy after every conversion: model.to(torch.bfloat16)
        # casts every floating buffer (the angle p * f of a bf16 frequency is off by about p * f * 2^-8
        # radians at position p), and to_empty() leaves it uninitialised. On the meta device it has no values.
        super()._apply(fn, recurse)
        if not self.inverse_frequencies.is_meta:
            self.materialize(self.inverse_frequencies.device)
        return self

    def materialize(self, device: torch.device | str = "cpu") -> None:
        """Compute the frequencies on ``device``: for a module built on the meta device whose
        parameters were then loaded (the frequencies are not in a checkpoint)."""
        # A copy: on the CPU, to() would return the fp32 copy itself, which an in-place write to the
        # buffer would then change for good.
        self.inverse_frequencies = self._frequencies.to(device, copy=True)

    def reset_parameters(self) -> None:
        # FSDP's deferred init calls reset_parameters on every module that holds a parameter or buffer.
        self.materialize(self.inverse_frequencies.device)

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        if self.inverse_frequencies.is_meta and not x.is_meta:
            # Built on the meta device, then loaded with load_state_dict(assign=True), which sets only
            # what the checkpoint holds: the frequencies go to the device the inputs come on.
            self.materialize(x.device)
        angles = positions.unsqueeze(-1).float() * self.inverse_frequencies  # [..., S, d/2]
        cos, sin = angles.cos(), angles.sin()
        if self.interleaved:
            pairs = x.float().unflatten(-1, (-1, 2))
            a, b = pairs[..., 0], pairs[..., 1]
            return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2).to(x.dtype)
        a, b = x.float().chunk(2, dim=-1)
        return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1).to(x.dtype)

    def extra_repr(self) -> str:
        scaling = "" if self.scaling is None else f", scaling={self.scaling!r}"
        return f"{self.head_dim}, base={self.base}, interleaved={self.interleaved}{scaling}"
