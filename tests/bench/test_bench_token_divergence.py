"""The token-divergence benchmark cases compute what their peer computes, and run in the harness."""

import torch

from lmkernels.bench import harness, token_divergence


def test_ours_and_peer_agree_and_are_measured():
    (case,) = token_divergence.cases(quick=False, device="cpu", tiny=True)
    ours, peer = case.ours_fn(), case.peer_fn()
    assert torch.equal(ours.argmax, peer[0]) and torch.equal(ours.match, peer[1])
    for a, b in zip((ours.nll, ours.margin, ours.kl), peer[2:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    record = harness.measure(case, harness.TINY)
    assert record["kernel"] == "token_divergence" and record["ours_ms"] > 0 and record["peer_ms"] > 0
    # [B, T] results against the peer's fp32 [B, T, V] temporaries
    assert 0 < record["ours_peak_mb"] * 100 < record["peer_peak_mb"]
