"""Components: the linear weights of every layer, under canonical names ``layers.{i}.{kind}``.

``kind`` is one of ``q, k, v, o, gate, up, down`` (``KINDS``), the Llama naming:

* lmkernels ``Decoder`` models (``CausalLM`` and any module holding a ``Decoder``): ``q, k, v, o`` are
  ``attention.{q,k,v,o}_proj``; in ``SwiGLU`` ``w_in`` is the silu branch (``gate``), ``w_gate`` the
  linear branch (``up``) and ``w_out`` the output (``down``).
* Hugging Face Llama-style models: ``layers[i].self_attn.{q,k,v,o}_proj`` and ``layers[i].mlp.{gate,up,down}_proj``
  of the first ``ModuleList`` whose blocks have that shape (Llama, Mistral, Qwen2, ...).

``compressed(model, names, compression)`` replaces the named weights by their compressed values
for the duration of a ``with`` block and then restores the originals bit for bit. A compression is
a function weight -> weight, or, where it depends on the component (Wanda-style pruning needs the
component's input norms), an object with ``for_component(name)`` returning that function
(``bind``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from lmkernels.nn import Decoder

KINDS = ("q", "k", "v", "o", "gate", "up", "down")

_LMKERNELS_PATHS = {"q": "attention.q_proj", "k": "attention.k_proj", "v": "attention.v_proj",
                    "o": "attention.o_proj", "gate": "mlp.w_in", "up": "mlp.w_gate", "down": "mlp.w_out"}
_HUGGINGFACE_PATHS = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
                      "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}


def component_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The linear module of every component, by canonical name, layer by layer in ``KINDS`` order."""
    layers, paths = _layers(model)
    return {f"layers.{i}.{kind}": layer.get_submodule(paths[kind]) for i, layer in enumerate(layers) for kind in KINDS}


def components(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The weight of every component, by canonical name, layer by layer in ``KINDS`` order."""
    return {name: module.weight for name, module in component_modules(model).items()}


def select(model: torch.nn.Module, names: Iterable[str] | str | None = None) -> dict[str, torch.nn.Parameter]:
    """The components called ``names`` (all of them for None); raises ``ValueError`` on an unknown name."""
    available = components(model)
    if names is None:
        return available
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ValueError("components: expected at least one component name (None: all of them)")
    unknown = [name for name in names if name not in available]
    if unknown:
        raise ValueError(f"components: {unknown} do not exist in this model; its components are "
                         f"layers.0..{len(available) // len(KINDS) - 1}.{{{','.join(KINDS)}}}")
    return {name: available[name] for name in names}


def bind(compression, name: str) -> Callable[[Tensor], Tensor]:
    """The weight -> weight function ``compression`` applies to the component ``name``."""
    for_component = getattr(compression, "for_component", None)
    return for_component(name) if for_component is not None else compression


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    return {name: weight.numel() for name, weight in components(model).items()}


@contextmanager
def compressed(model: torch.nn.Module, names: Iterable[str] | str,
               compression) -> Iterator[None]:
    """Within the block, the components ``names`` hold ``compression(weight)``; afterwards, their original bits."""
    weights = select(model, names)
    saved = {name: weight.detach().clone() for name, weight in weights.items()}
    try:
        with torch.no_grad():
            for name, weight in weights.items():
                new = bind(compression, name)(weight.detach())
                if new.shape != weight.shape:
                    raise ValueError(f"compression: returned shape {list(new.shape)} for {name} of shape "
                                     f"{list(weight.shape)}")
                weight.copy_(new)
        yield
    finally:
        with torch.no_grad():
            for name, weight in weights.items():
                weight.copy_(saved[name])


def _layers(model: torch.nn.Module) -> tuple[list[torch.nn.Module], dict[str, str]]:
    for module in model.modules():
        if isinstance(module, Decoder):
            return list(module.layers), _LMKERNELS_PATHS
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) and all(
                _has(block, _HUGGINGFACE_PATHS.values()) for block in module):
            return list(module), _HUGGINGFACE_PATHS
    raise ValueError(f"model: found neither an lmkernels Decoder nor Llama-style layers "
                     f"(self_attn.q_proj ... mlp.down_proj) in {type(model).__name__}")


def _has(block: torch.nn.Module, paths: Iterable[str]) -> bool:
    for path in paths:
        try:
            block.get_submodule(path)
        except AttributeError:
            return False
    return True
