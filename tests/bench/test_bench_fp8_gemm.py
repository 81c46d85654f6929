"""The FP8 GEMM benchmark cases compute what their peer computes, and run in the harness."""

import torch

import lmkernels
from lmkernels.bench import fp8_gemm, harness


def test_ours_and_peer_agree_and_are_measured():
    cases = fp8_gemm.cases(quick=False, device="cpu", tiny=True)
    amx = lmkernels.info()["fp8_gemm_cpu"] == "amx"  # then the sequential kernel is a case of its own
    name = "48x48x48 e4m3*e5m2 -> bf16"
    assert [case.case for case in cases] == [name] * 3 + [f"{name} [exact order]"] * amx
    assert [case.peer for case in cases] == ["fp32 torch.addmm on decoded operands (sgemm)",
                                             "bf16 torch.addmm on decoded operands",
                                             "bf16 torch.addmm, decoding the FP8 operands in the call"] + [
                                                 "bf16 torch.addmm on decoded operands"] * amx
    for case in cases:
        ours, peer = case.ours_fn(), case.peer_fn()
        assert ours.dtype == peer.dtype == torch.bfloat16
        # Both sum in fp32 (in different orders) and round once to bf16: at most one bf16 ulp apart.
        torch.testing.assert_close(ours.float(), peer.float(), rtol=2**-7, atol=1e-2)
        record = harness.measure(case, harness.TINY)
        assert record["kernel"] == "fp8_gemm" and record["ours_gflops"] > 0 and record["peer_gflops"] > 0
