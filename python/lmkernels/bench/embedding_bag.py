"""Embedding-bag cases: ``lmk.embedding_bag`` against ``torch.nn.functional.embedding_bag``.

T-FREE sizes: a 32000 x 1024 float32, a 32000 x 4096 bfloat16 and a 32000 x 1024 float16 table,
4096 bags of 50 uniform random int64 indices (seeded), mode "sum". ``fwd`` is the forward pass;
``fwd+bwd`` adds the dense table gradient of a fixed random upstream gradient. Case names read
``<pass> <rows>x<dim> <dtype> <bags>x<bag size>``.

Bytes moved (logical traffic): forward reads N rows and writes B rows of D values; the backward
adds N gathered rows of the upstream gradient and writes the dense [rows, D] gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmkernels.bench.harness import Case
from lmkernels.ops import embedding_bag

_FULL = {"tables": [(32000, 1024, torch.float32), (32000, 4096, torch.bfloat16), (32000, 1024, torch.float16)],
         "bags": 4096, "bag_size": 50}
_QUICK = {"tables": [(8000, 256, torch.float32), (8000, 1024, torch.bfloat16), (8000, 1024, torch.float16)],
          "bags": 1024, "bag_size": 50}
_TINY = {"tables": [(1000, 32, torch.float32), (1000, 64, torch.bfloat16), (1000, 64, torch.float16)], "bags": 64,
         "bag_size": 50}
_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def cases(quick: bool, device: str, tiny: bool = False) -> list[Case]:
    """The embedding-bag cases on ``device``: full T-FREE sizes, ``quick`` or ``tiny`` (smoke test)."""
    sizes = _TINY if tiny else _QUICK if quick else _FULL
    bags, bag_size = sizes["bags"], sizes["bag_size"]
    result = []
    for rows, dim, dtype in sizes["tables"]:
        gen = torch.Generator().manual_seed(0)
        table = torch.randn(rows, dim, generator=gen).to(device=device, dtype=dtype)
        indices = torch.randint(rows, (bags * bag_size,), generator=gen).to(device)
        offsets = torch.arange(0, bags * bag_size + 1, bag_size).to(device)
        grad = torch.randn(bags, dim, generator=gen).to(device=device, dtype=dtype)
        name = f"{rows}x{dim} {_DTYPE_NAMES[dtype]} {bags}x{bag_size}"
        result += [
            _forward(table, indices, offsets, name, device),
            _forward_backward(table, indices, offsets, grad, name, device),
        ]
    return result


def _forward(table, indices, offsets, name, device) -> Case:
    starts = offsets[:-1]
    row_bytes = table.shape[1] * table.element_size()
    return Case(
        kernel="embedding_bag",
        case=f"fwd {name}",
        peer="torch.nn.functional.embedding_bag",
        ours_fn=lambda: embedding_bag(table, indices, offsets, mode="sum"),
        peer_fn=lambda: F.embedding_bag(indices, table, starts, mode="sum"),
        bytes_moved=(indices.numel() + starts.numel()) * row_bytes,
        device=device,
    )


def _forward_backward(table, indices, offsets, grad, name, device) -> Case:
    leaf = table.detach().requires_grad_()
    starts = offsets[:-1]
    row_bytes = table.shape[1] * table.element_size()

    def ours():
        return torch.autograd.grad(embedding_bag(leaf, indices, offsets, mode="sum"), leaf, grad)

    def peer():
        return torch.autograd.grad(F.embedding_bag(indices, leaf, starts, mode="sum"), leaf, grad)

    return Case(
        kernel="embedding_bag",
        case=f"fwd+bwd {name}",
        peer="torch.nn.functional.embedding_bag",
        ours_fn=ours,
        peer_fn=peer,
        bytes_moved=(2 * indices.numel() + starts.numel() + table.shape[0]) * row_bytes,
        device=device,
    )
