"""``NormalLinear`` and ``NormalEmbedding``: torch's layers whose ``reset_parameters`` draws N(0, std^2)
once a model has set their ``std``.

A model's init scheme (``CausalLM``, ``TFreeLM``) lives in these leaves rather than in the model, so
deferred initialisation (build on the meta device, ``to_empty``, then ``reset_parameters`` on every
module, parents before children as ``modules()`` lists them) reproduces it. While ``std`` is None they
draw torch's default init, as at construction: the model sets ``std`` afterwards and draws again, so
the random stream, and with it every weight under a fixed seed, stays that of the plain torch layers.
"""

from __future__ import annotations

import math

import torch


class NormalLinear(torch.nn.Linear):
    std: float | None = None

    def reset_parameters(self) -> None:
        if self.std is None:
            return super().reset_parameters()
        torch.nn.init.normal_(self.weight, std=self.std)
        if self.bias is not None:
            torch.nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.std is None else f", std={self.std:.4g}")


class NormalEmbedding(torch.nn.Embedding):
    std: float | None = None

    def reset_parameters(self) -> None:
        if self.std is None:
            return super().reset_parameters()
        torch.nn.init.normal_(self.weight, std=self.std)
        self._fill_padding_idx_with_zero()

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.std is None else f", std={self.std:.4g}")


def init_normal(module: NormalLinear | NormalEmbedding, std: float) -> None:
    """Give ``module`` its scheme's ``std`` and draw its weight from it."""
    module.std = std
    module.reset_parameters()


def init_mlps(decoder: torch.nn.Module) -> None:
    """The "pythia" scheme of a ``Decoder``'s SwiGLU blocks: std sqrt(2 / (5 dim)) for the input and gate
    projections, 2 / (L sqrt(dim)) for the output projection."""
    dim, layers = decoder.config.dim, decoder.config.num_layers
    for layer in decoder.layers:
        init_normal(layer.mlp.w_in, math.sqrt(2 / (5 * dim)))
        init_normal(layer.mlp.w_gate, math.sqrt(2 / (5 * dim)))
        init_normal(layer.mlp.w_out, 2 / (layers * math.sqrt(dim)))


def reset_submodules(model: torch.nn.Module) -> None:
    """``reset_parameters`` of every module below ``model``: all of its weights drawn again by their schemes."""
    for module in model.modules():
        if module is not model and hasattr(module, "reset_parameters"):
            module.reset_parameters()
