"""HAT word connector cases: ``lmk.word_attention`` against padded-batch SDPA.

The encoder connector gives each word one query that attends to the word's own bytes. Word
lengths come from the embedded corpus (``lmkernels.data``), split at spaces with the space kept on
the following word as HAT does, capped at max_word_size = 100; 8192 bytes (quick: 2048) with 8
heads of 128 (the connector width 1024), seeded normal values. The peer is what a plain PyTorch
model does: gather every word's keys and values into a [W, H, L_max, D] batch padded to the
longest word, then ``F.scaled_dot_product_attention`` with a key-padding mask. Its gather index and
mask are built once outside the timed call (generous to the peer). ``fwd+bwd`` adds the gradients
for q, k and v. Case names read ``<fwd|fwd+bwd> <bytes> bytes <words> words <dtype>``.

Bytes moved (logical traffic, forward): q, k and v read once, the output written once.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import Tensor

from lmkernels import data
from lmkernels.bench.harness import Case
from lmkernels.ops import word_attention

MAX_WORD_SIZE = 100
HEADS, HEAD_DIM = 8, 128
_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16"}


def word_lengths(num_bytes: int) -> list[int]:
    """Byte lengths of the corpus's words (a space starts a word), covering exactly ``num_bytes``."""
    lengths, total = [], 0
    for word in re.findall(r"\s*\S+", data.text()):
        length = min(len(word.encode()), MAX_WORD_SIZE, num_bytes - total)
        lengths.append(length)
        total += length
        if total == num_bytes:
            return lengths
    raise ValueError(f"the corpus holds fewer than {num_bytes} bytes")


def padded_layout(cu_seqlens: Tensor) -> tuple[Tensor, Tensor]:
    """For each word, the byte rows of its keys padded to the longest word ([W, L_max] index) and the
    [W, 1, 1, L_max] mask of real keys."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    slots = torch.arange(int(lengths.max()), device=cu_seqlens.device)
    real = slots[None, :] < lengths[:, None]
    index = torch.where(real, cu_seqlens[:-1, None] + slots[None, :], 0)
    return index, real[:, None, None, :]


def padded_sdpa(q: Tensor, k: Tensor, v: Tensor, index: Tensor, real: Tensor) -> Tensor:
    """The peer: gather keys/values into a padded [W, H, L_max, D] batch, masked SDPA with one query."""
    keys = k[index].transpose(1, 2)      # [W, H, L_max, D]
    values = v[index].transpose(1, 2)
    return F.scaled_dot_product_attention(q[:, :, None, :], keys, values, attn_mask=real)[:, :, 0, :]


def _forward_backward(fn, leaves: tuple[Tensor, ...], grad: Tensor):
    def run():
        return torch.autograd.grad(fn(*leaves), leaves, grad)
    return run


def cases(quick: bool, device: str, tiny: bool = False) -> list[Case]:
    """Forward and forward+backward at ``device``: 8192 bytes, ``quick`` 2048, ``tiny`` 64 (smoke test)."""
    num_bytes = 64 if tiny else 2048 if quick else 8192
    lengths = word_lengths(num_bytes)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device=device)
    index, real = padded_layout(cu)
    words = len(lengths)
    result = []
    for dtype, dtype_name in _DTYPES.items():
        gen = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(rows, HEADS, HEAD_DIM, generator=gen).to(device=device, dtype=dtype).requires_grad_()
                   for rows in (words, num_bytes, num_bytes))
        grad = torch.randn(words, HEADS, HEAD_DIM, generator=gen).to(device=device, dtype=dtype)
        size = (q.numel() * 2 + k.numel() * 2) * q.element_size()
        ours = lambda q, k, v, cu=cu: word_attention(q, k, v, cu)  # noqa: E731
        peer = lambda q, k, v, index=index, real=real: padded_sdpa(q, k, v, index, real)  # noqa: E731
        label = f"{num_bytes} bytes {words} words {dtype_name}"
        common = dict(kernel="word_connector", peer=f"padded SDPA (L_max {index.shape[1]})", device=device)
        with torch.no_grad():
            result.append(Case(case=f"fwd {label}", ours_fn=lambda ours=ours, t=(q, k, v): ours(*t),
                               peer_fn=lambda peer=peer, t=(q, k, v): peer(*t), bytes_moved=size, **common))
        result.append(Case(case=f"fwd+bwd {label}", ours_fn=_forward_backward(ours, (q, k, v), grad),
                           peer_fn=_forward_backward(peer, (q, k, v), grad), bytes_moved=3 * size, **common))
    return result
