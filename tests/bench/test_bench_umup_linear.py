"""The u-muP FP8 linear benchmark cases compute what their peer computes, and run in the harness."""

import torch

from lmkernels.bench import harness, umup_linear


def test_ours_and_peer_agree_and_are_measured():
    cases = umup_linear.cases(quick=False, device="cpu", tiny=True)
    assert [case.case for case in cases] == ["fwd+bwd 16x32->48"]
    for case in cases:
        # Both give the input and weight gradients of the same unit-scaled layer; the roundings differ
        # (ours nearest to OCP FP8, the peer stochastic to its simulated formats): a few percent apart.
        for ours, peer in zip(case.ours_fn(), case.peer_fn(), strict=True):
            assert ours.shape == peer.shape and ours.dtype == peer.dtype == torch.float32
            assert ((ours - peer).norm() / peer.norm()).item() < 0.15
        record = harness.measure(case, harness.TINY)
        assert record["kernel"] == "umup_fp8_linear" and record["ours_gflops"] > 0 and record["peer_gflops"] > 0
