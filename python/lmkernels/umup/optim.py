"""u-muP optimiser rules: a parameter group per parameter with its learning rate and weight decay.

Adam and AdamW (whose updates are invariant to a constant gradient scale) with a global learning
rate ``lr``; a parameter tagged ``mup_type`` (``lmkernels.umup.parameter``) gets

    lr_param = lr * type_factor * depth_factor          depth_factor = mup_scaling_depth^-1/2 (1 outside a stack)
    type_factor:  "weight"  fan_in^-1/2      (hidden linears; an embedding [V, d] uses d)
                  "output", "norm", "bias"   1

``fan_in`` is ``shape[0]`` of a 1-D, ``shape[1]`` of a 2-D and ``shape[1] * shape[2]`` of a 3-D
parameter. Independent weight decay (the default) sets ``weight_decay_param = weight_decay /
lr_param``: AdamW shrinks each step by ``lr_t * weight_decay_param = weight_decay * lr_t / lr_param``,
so the decay follows the schedule but not the peak learning rate or the parameter's scaling.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

from lmkernels.umup.parameter import is_tagged


def depth_factor(param: Tensor) -> float:
    """``mup_scaling_depth^-1/2``, or 1 for a parameter outside a depth-scaled stack."""
    depth = param.mup_scaling_depth
    return 1.0 if depth is None else depth**-0.5


def fan_in(param: Tensor) -> int:
    """The fan-in of a 1-, 2- or 3-D parameter for the learning-rate rule (see the module docstring)."""
    if param.dim() == 1:
        return param.shape[0]
    if param.dim() == 2:
        return param.shape[1]
    if param.dim() == 3:
        return param.shape[1] * param.shape[2]
    raise ValueError(f"params: cannot take the fan-in of a {param.dim()}-D parameter of shape {list(param.shape)}")


def adam_lr_scale(param: Tensor) -> float:
    """The u-muP learning-rate factor of a tagged parameter under Adam or AdamW."""
    if param.mup_type == "weight":
        return depth_factor(param) * fan_in(param) ** -0.5
    return depth_factor(param)


def scaled_parameters(params: Iterable, lr: float | Tensor | None = None, weight_decay: float = 0.0,
                      independent_weight_decay: bool = True, allow_untagged: bool = False,
                      lr_scale=adam_lr_scale) -> list[dict]:
    """One optimiser parameter group per parameter, with the u-muP learning rate and weight decay.

    Args:
        params: parameters, ``named_parameters()`` pairs, or parameter groups (dicts of either; their
            ``lr`` and ``weight_decay`` override the arguments, their other options are kept).
        lr: the global learning rate (a tensor learning rate is scaled per parameter in a clone).
        weight_decay: the global weight decay.
        independent_weight_decay: divide each group's weight decay by its learning rate.
        allow_untagged: let parameters without u-muP tags through at the group's own learning rate
            (otherwise they raise ``ValueError``: a plain torch module has slipped into the model).
        lr_scale: the per-parameter learning-rate factor (``adam_lr_scale``).
    """
    groups = []
    for entry in params:
        group = dict(entry) if isinstance(entry, dict) else {"params": [entry]}
        group_params = [group["params"]] if isinstance(group["params"], Tensor) else list(group["params"])
        group_lr = group.get("lr", lr)
        group_decay = group.get("weight_decay", weight_decay)
        if group_lr is None:
            raise ValueError("lr: required, unless every parameter group sets its own 'lr'")
        options = {k: v for k, v in group.items() if k not in ("params", "lr", "weight_decay", "param_names")}
        for item in group_params:
            name, param = _named(item)
            param_lr = group_lr
            if is_tagged(param):
                param_lr = (param_lr.clone() if isinstance(param_lr, Tensor) else param_lr) * lr_scale(param)
            elif not allow_untagged:
                raise ValueError(f"params: a parameter of shape {list(param.shape)} has no u-muP tags "
                                 "(pass allow_untagged=True to train it at the global learning rate)")
            param_decay = group_decay
            if independent_weight_decay and group_decay:
                if float(param_lr) == 0:
                    raise ValueError("lr: independent weight decay divides by the learning rate, which is 0")
                param_decay = group_decay / float(param_lr)
            names = {} if name is None else {"param_names": [name]}  # kept, as torch's optimisers keep them
            groups.append({"params": [param], "lr": param_lr, "weight_decay": param_decay, **options, **names})
    return groups


def _named(item) -> tuple[str | None, Tensor]:
    """A parameter, or a (name, parameter) pair of ``named_parameters()``, as (name or None, parameter)."""
    if isinstance(item, Tensor):
        return None, item
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], Tensor):
        return item
    raise TypeError(f"params: expected tensors, (name, tensor) pairs or parameter groups (dicts), got "
                    f"{type(item).__name__}")


class Adam(torch.optim.Adam):
    """``torch.optim.Adam`` over ``scaled_parameters`` (u-muP learning rates, independent weight decay).

    Other positional and keyword arguments (betas, eps, ...) go to ``torch.optim.Adam``.
    """

    def __init__(self, params: Iterable, lr: float | Tensor = 1e-3, *args, weight_decay: float = 0.0,
                 independent_weight_decay: bool = True, allow_untagged: bool = False, **kwargs):
        super().__init__(scaled_parameters(params, lr, weight_decay, independent_weight_decay, allow_untagged), lr,
                         *args, **kwargs)


class AdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` over ``scaled_parameters`` (u-muP learning rates, independent weight decay).

    Other positional and keyword arguments (betas, eps, ...) go to ``torch.optim.AdamW``.
    """

    def __init__(self, params: Iterable, lr: float | Tensor = 1e-3, *args, weight_decay: float = 0.0,
                 independent_weight_decay: bool = True, allow_untagged: bool = False, **kwargs):
        super().__init__(scaled_parameters(params, lr, weight_decay, independent_weight_decay, allow_untagged), lr,
                         *args, **kwargs)
