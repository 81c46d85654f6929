"""Token-divergence cases: ``lmk.token_divergence`` against the torch composition.

Divergent Token Metrics sizes: a batch of 8 sequences of 512 positions over a Llama-2 (32000) and
a Llama-3 (128256) vocabulary, bfloat16 candidate and reference logits (the reference perturbed
by noise of a tenth of the logits' scale, seeded), int64 reference tokens, no mask. The peer
computes the same five results: ``log_softmax`` of both in fp32, ``argmax``, ``gather``,
``topk(2)`` and ``kl_div(log_target=True)``. Case names read ``<B>x<T>x<V> <dtype> +ref``.

Bytes moved (logical traffic, ours): both logits tensors read once, the [B, T] results written.
On the CPU the peer's fp32 temporaries of the 128256 vocabulary (about 20 GB) do not fit a small
machine, so there it runs a quarter of the batch and its time is extrapolated (``peer_scale``).
Peak memory above the inputs is recorded on CUDA, and on the CPU where the peer runs whole.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from lmkernels.bench.harness import Case
from lmkernels.ops import token_divergence

_FULL = [(8, 512, 32000), (8, 512, 128256)]
_QUICK = [(2, 256, 32000), (2, 128, 128256)]
_TINY = [(2, 16, 1000)]
_CPU_PEER_LIMIT = 8 * 512 * 32000  # logits per tensor that the CPU peer runs whole


def cases(quick: bool, device: str, tiny: bool = False) -> list[Case]:
    """The token-divergence cases on ``device``: full DTM sizes, ``quick`` or ``tiny`` (smoke test)."""
    shapes = _TINY if tiny else _QUICK if quick else _FULL
    return [_case(batch, length, vocab, device) for batch, length, vocab in shapes]


def torch_composition(logits, reference_tokens, reference_logits):
    """The peer: the five results from unfused torch ops (fp32 log-softmax of both logits)."""
    log_q = torch.log_softmax(logits.float(), dim=-1)
    log_p = torch.log_softmax(reference_logits.float(), dim=-1)
    argmax = logits.argmax(dim=-1)
    nll = -log_q.gather(-1, reference_tokens.unsqueeze(-1)).squeeze(-1)
    top = logits.topk(2, dim=-1).values.float()
    kl = F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)
    return argmax, argmax == reference_tokens, nll, top[..., 0] - top[..., 1], kl


def _case(batch, length, vocab, device) -> Case:
    peer_batch = batch
    if device == "cpu":
        while peer_batch > 1 and peer_batch * length * vocab > _CPU_PEER_LIMIT:
            peer_batch //= 2
    peer_scale = batch / peer_batch

    # Built on first use, so that listing or filtering cases allocates nothing (the full sizes
    # take 2.6 GB); the harness's warmup call pays for it.
    @functools.cache
    def inputs():
        gen = torch.Generator().manual_seed(0)
        logits = torch.empty(batch, length, vocab, dtype=torch.bfloat16)
        reference_logits = torch.empty_like(logits)
        for b in range(batch):  # a sequence at a time keeps the fp32 staging small
            row = 3 * torch.randn(length, vocab, generator=gen)
            logits[b] = row
            reference_logits[b] = row + 0.3 * torch.randn(length, vocab, generator=gen)
        tokens = torch.randint(vocab, (batch, length), generator=gen)
        return logits.to(device), tokens.to(device), reference_logits.to(device)

    def ours():
        logits, tokens, reference_logits = inputs()
        return token_divergence(logits, tokens, None, reference_logits)

    def peer():
        logits, tokens, reference_logits = inputs()
        with torch.no_grad():
            return torch_composition(logits[:peer_batch], tokens[:peer_batch], reference_logits[:peer_batch])

    label = "torch log_softmax+argmax+gather+topk+kl_div"
    if peer_scale != 1:
        label += f" (x{peer_scale:g}, from {peer_batch} of {batch} sequences)"
    return Case(
        kernel="token_divergence",
        case=f"{batch}x{length}x{vocab} bf16 +ref",
        peer=label,
        ours_fn=ours,
        peer_fn=peer,
        bytes_moved=batch * length * (2 * vocab * 2 + 8 + 1 + 3 * 4 + 8),
        device=device,
        peer_scale=peer_scale,
        memory_on_cpu=peer_scale == 1.0,  # the O(B x T) extra memory against the peer's O(B x T x V)
    )
