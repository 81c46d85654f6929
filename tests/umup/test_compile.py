"""Unit-scaled ops and the FP8 linear compile whole with inductor (``torch.compile(fullgraph=True)``,
the default backend), gradients included: the custom ops' fake kernels and autograd formulas let
inductor fuse the unit-scaling multipliers around them (unit-scaling's own ``simulate_fp8`` cannot
be compiled, specs/umup_dtm.md 3). About 30 s of code generation on a 2-core machine.
"""

import torch

import lmkernels.umup.functional as U
from lmkernels.umup import fp8_linear


def _block(x, w_up, w_gate, w_down):
    def branch(r):
        hidden = U.silu_glu(U.linear(r, w_up, None, None), U.linear(r, w_gate, None, None))
        return fp8_linear(U.rms_norm(hidden, (hidden.shape[-1],)), w_down)

    return U.residual_apply(branch, x, 0.5)


def test_block_compiles_fullgraph_with_inductor_to_the_eager_gradients():
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(*shape, generator=gen, requires_grad=True) for shape in ((6, 16), (32, 16), (32, 16),
                                                                                  (16, 32))]
    upstream = torch.randn(6, 16, generator=gen)
    compiled = torch.compile(_block, fullgraph=True)
    for ours, eager in zip(torch.autograd.grad(compiled(*inputs), inputs, upstream),
                           torch.autograd.grad(_block(*inputs), inputs, upstream), strict=True):
        torch.testing.assert_close(ours, eager, rtol=1e-5, atol=1e-5)  # inductor may fuse the fp32 scalings
