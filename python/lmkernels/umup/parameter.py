"""u-muP parameter tags: what kind of parameter (its learning-rate rule) and the depth it scales with.

    mup_type            "weight" (hidden linear or embedding), "output" (readout), "norm" (gain), "bias"
    mup_scaling_depth   number of layers of the depth-scaled stack the parameter sits in, or None

The attribute names are those of ``unit_scaling.Parameter``, so either library's optimiser rules
read either library's modules. Tags survive ``copy.deepcopy`` and pickling, and in the modules that
hold them (``TaggedModule``) the conversions that replace a module's parameters: ``.to()``,
``to_empty()``, ``.cuda()``, ``.half()`` (with or without torch's parameter swapping) and
``load_state_dict(..., assign=True)``.
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


class TaggedModule(torch.nn.Module):
    """A module whose own tagged parameters keep their tags when a conversion replaces them.

    torch's ``Module._apply`` (behind ``.to()``, ``to_empty()``, ``.cuda()``, ...) wraps a converted
    tensor in a plain ``Parameter`` where it cannot reuse the old one (a change of device, say, or
    always under ``set_swap_module_params_on_conversion``), and ``load_state_dict(assign=True)`` takes
    the loaded tensors as they come: either way the tags were lost, and the optimiser refused the
    model. Each module restores the tags of its own parameters, so a model built on the meta device
    and moved with ``to_empty()`` trains as one built in place.
    """

    def _apply(self, fn, recurse=True):
        tags = self._own_tags()
        result = super()._apply(fn, recurse)
        self._restore_tags(tags)
        return result

    def _load_from_state_dict(self, *args, **kwargs):
        tags = self._own_tags()
        super()._load_from_state_dict(*args, **kwargs)
        self._restore_tags(tags)

    def _own_tags(self) -> dict[str, tuple[str, int | None]]:
        return {name: (p.mup_type, p.mup_scaling_depth) for name, p in self._parameters.items()
                if p is not None and is_tagged(p)}

    def _restore_tags(self, tags: dict[str, tuple[str, int | None]]) -> None:
        for name, (mup_type, depth) in tags.items():
            param = self._parameters.get(name)
            if param is None:
                continue
            if type(param) is torch.nn.Parameter:  # in place: a swapping conversion keeps the object
                param.__class__ = UnitScaledParameter
            param.mup_type, param.mup_scaling_depth = mup_type, depth


def is_tagged(param: Tensor) -> bool:
    """Whether ``param`` carries valid u-muP tags."""
    return getattr(param, "mup_type", None) in MUP_TYPES and \
        isinstance(getattr(param, "mup_scaling_depth", False), (type(None), int))
