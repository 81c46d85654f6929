"""u-muP parameter tags: what kind of parameter (its learning-rate rule) and the depth it scales with.

    mup_type            "weight" (hidden linear or embedding), "output" (readout), "norm" (gain), "bias"
    mup_scaling_depth   number of layers of the depth-scaled stack the parameter sits in, or None

The attribute names are those of ``unit_scaling.Parameter``, so either library's optimiser rules
read either library's modules. Tags survive ``copy.deepcopy`` and pickling.
"""

from __future__ import annotations

import torch
from torch import Tensor

MUP_TYPES = ("weight", "bias", "norm", "output")


class UnitScaledParameter(torch.nn.Parameter):
    """A ``torch.nn.Parameter`` carrying ``mup_type`` and ``mup_scaling_depth``."""

    mup_type: str
    mup_scaling_depth: int | None

    def __deepcopy__(self, memo):
        result = super().__deepcopy__(memo)  # torch copies data and requires_grad, not attributes
        result.mup_type, result.mup_scaling_depth = self.mup_type, self.mup_scaling_depth
        return result

    def __reduce_ex__(self, protocol):
        # torch's Parameter pickles as a plain Parameter with the tags in its __dict__, which a later
        # deepcopy of the loaded copy drops: pickle rebuilds this class instead.
        return _rebuild, (self.data, self.requires_grad, self.mup_type, self.mup_scaling_depth)


def _rebuild(data: Tensor, requires_grad: bool, mup_type: str, mup_scaling_depth: int | None) -> UnitScaledParameter:
    return parameter(data, mup_type, mup_scaling_depth).requires_grad_(requires_grad)


def parameter(data: Tensor, mup_type: str, mup_scaling_depth: int | None = None) -> UnitScaledParameter:
    """A trainable parameter holding ``data``, tagged ``mup_type`` (see the module docstring)."""
    if mup_type not in MUP_TYPES:
        raise ValueError(f"mup_type: expected one of {', '.join(MUP_TYPES)}; got {mup_type!r}")
    result = UnitScaledParameter(data)
    result.mup_type, result.mup_scaling_depth = mup_type, mup_scaling_depth
    return result


def is_tagged(param: Tensor) -> bool:
    """Whether ``param`` carries valid u-muP tags."""
    return getattr(param, "mup_type", None) in MUP_TYPES and \
        isinstance(getattr(param, "mup_scaling_depth", False), (type(None), int))
