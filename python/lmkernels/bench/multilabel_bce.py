"""Sparse multi-label BCE cases: ``lmk.multilabel_bce_with_logits`` against ``torch.nn.BCEWithLogitsLoss``.

T-FREE sizes: 4096 positions over a hash vocabulary of 32000, 50 positives per position (m = 10
indices for each of ~5 trigrams of the next word; uniform random int64, seeded), pos_weight 300
(the released 7B config), reduction "mean", float32 logits. ``fwd+bwd`` computes the loss and the
gradient of the logits; ``fwd`` the loss alone under ``torch.no_grad``. The peer gets the same CSR
positives and must build the dense multi-hot target from them, which is counted in its time. Case
names read ``<pass> <positions>x<v> <dtype> <positives per position>``.

Bytes moved (logical traffic, ours): ``fwd`` reads the logits; ``fwd+bwd`` also writes the fused
gradient in the forward, and reads it and writes the logits' gradient in the backward.
"""

from __future__ import annotations

import torch

from lmkernels.bench.harness import Case
from lmkernels.ops import multilabel_bce_with_logits

_FULL = {"positions": 4096, "v": 32000, "positives": 50}
_QUICK = {"positions": 1024, "v": 32000, "positives": 50}
_TINY = {"positions": 64, "v": 1000, "positives": 50}
_POS_WEIGHT = 300.0


def cases(quick: bool, device: str, tiny: bool = False) -> list[Case]:
    """The multi-label BCE cases on ``device``: full T-FREE sizes, ``quick`` or ``tiny`` (smoke test)."""
    sizes = _TINY if tiny else _QUICK if quick else _FULL
    positions, v, positives = sizes["positions"], sizes["v"], sizes["positives"]
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(positions, v, generator=gen) * 2 - 4).to(device)
    indices = torch.randint(v, (positions * positives,), generator=gen).to(device)
    offsets = torch.arange(0, positions * positives + 1, positives).to(device)
    name = f"{positions}x{v} fp32 {positives}"
    return [_forward(logits, indices, offsets, name, device),
            _forward_backward(logits, indices, offsets, name, device)]


def _dense_target(indices, offsets, positions, v):
    """What the peer must do first: the [positions, v] multi-hot target from the CSR positives."""
    rows = torch.repeat_interleave(torch.arange(positions, device=indices.device), offsets[1:] - offsets[:-1])
    target = torch.zeros(positions, v, device=indices.device)
    target[rows, indices] = 1.0
    return target


def _peer_loss(logits, indices, offsets):
    target = _dense_target(indices, offsets, *logits.shape)
    pos_weight = torch.tensor(_POS_WEIGHT, device=logits.device)
    return torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)(logits, target)


def _forward(logits, indices, offsets, name, device) -> Case:
    def ours():
        with torch.no_grad():
            return multilabel_bce_with_logits(logits, indices, offsets, pos_weight=_POS_WEIGHT)

    def peer():
        with torch.no_grad():
            return _peer_loss(logits, indices, offsets)

    return Case(
        kernel="multilabel_bce",
        case=f"fwd {name}",
        peer="torch BCEWithLogitsLoss(pos_weight) + dense target",
        ours_fn=ours,
        peer_fn=peer,
        bytes_moved=logits.numel() * logits.element_size(),
        device=device,
    )


def _forward_backward(logits, indices, offsets, name, device) -> Case:
    leaf = logits.detach().requires_grad_()

    def ours():
        return torch.autograd.grad(multilabel_bce_with_logits(leaf, indices, offsets, pos_weight=_POS_WEIGHT), leaf)

    def peer():
        return torch.autograd.grad(_peer_loss(leaf, indices, offsets), leaf)

    return Case(
        kernel="multilabel_bce",
        case=f"fwd+bwd {name}",
        peer="torch BCEWithLogitsLoss(pos_weight) + dense target",
        ours_fn=ours,
        peer_fn=peer,
        bytes_moved=4 * logits.numel() * logits.element_size(),
        device=device,
    )
