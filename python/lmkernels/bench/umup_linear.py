"""u-muP FP8 linear cases: ``lmkernels.umup.fp8_linear`` forward + backward against unit-scaling's ``simulate_fp8``.

The peer is what unit-scaling offers for FP8 training: ``simulate_fp8(unit_scaling.Linear)``, a
TorchDynamo transform that quantises the GEMM operands (E4M3 forward, E5M2 gradient, stochastic
rounding, in fp32) around fp32 matmuls. Ours casts to real FP8 (round to nearest) and runs the
three FP8 GEMMs (``lmk::fp8_gemm``) with the u-muP scales as alpha. Both: fp32 ``x`` [tokens, d_in],
an N(0, 1) weight [d_out, d_in], no bias, an N(0, 1) upstream gradient, gradients of ``x`` and
the weight. Case names read ``fwd+bwd <tokens>x<d_in>-><d_out>``; throughput counts the three
GEMMs, 6 tokens d_in d_out floating-point operations per call. The two smaller cases are the shapes of
``lmk umup sweep`` (1024 tokens per step, widths 128 and 256). Without unit-scaling installed
(the ``test`` extra) the family has no cases.
"""

from __future__ import annotations

import torch

from lmkernels.bench.harness import Case
from lmkernels.umup import fp8_linear

_FULL = [(1024, 128, 128), (1024, 256, 256), (2048, 512, 512), (2048, 1024, 1024)]
_QUICK = [(1024, 128, 128), (1024, 256, 256)]
_TINY = [(16, 32, 48)]


def cases(quick: bool, device: str, tiny: bool = False) -> list[Case]:
    """The FP8 linear cases on ``device``: full sizes, ``quick`` or ``tiny`` (smoke test)."""
    try:
        import unit_scaling
        from unit_scaling.transforms import simulate_fp8
    except ImportError:
        return []
    result = []
    for tokens, d_in, d_out in _TINY if tiny else _QUICK if quick else _FULL:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(tokens, d_in, generator=gen).to(device).requires_grad_()
        weight = torch.randn(d_out, d_in, generator=gen).to(device).requires_grad_()
        upstream = torch.randn(tokens, d_out, generator=gen).to(device)
        layer = unit_scaling.Linear(d_in, d_out).to(device)
        layer.weight.data.copy_(weight.detach())
        simulated = simulate_fp8(layer)  # a deep copy, whose weight is the one to differentiate

        def ours_fn(x=x, weight=weight, upstream=upstream):
            return torch.autograd.grad(fp8_linear(x, weight), (x, weight), upstream)

        def peer_fn(x=x, simulated=simulated, upstream=upstream):
            return torch.autograd.grad(simulated(x), (x, simulated.weight), upstream)

        result.append(Case(
            kernel="umup_fp8_linear",
            case=f"fwd+bwd {tokens}x{d_in}->{d_out}",
            peer="unit-scaling simulate_fp8(Linear) (fp32 sim)",
            ours_fn=ours_fn,
            peer_fn=peer_fn,
            bytes_moved=None,
            device=device,
            flops=6 * tokens * d_in * d_out,
        ))
    return result
