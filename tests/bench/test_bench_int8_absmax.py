"""The int8 absmax benchmark cases compute what their peer computes, and run in the harness."""

import torch

from lmkernels.bench import harness, int8_absmax


def test_ours_and_peer_agree_and_are_measured():
    cases = int8_absmax.cases(quick=False, device="cpu", tiny=True)
    assert [case.case for case in cases] == ["fake-quantize 64x96 fp32", "fake-quantize 64x96 bf16"]
    for case in cases:
        (ours, ours_scale), (peer, peer_scale) = case.ours_fn(), case.peer_fn()
        assert torch.equal(ours_scale, peer_scale)
        assert torch.equal(ours, peer)  # -0 and +0 compare equal: the peer skips the int8 round trip
        record = harness.measure(case, harness.TINY)
        assert record["kernel"] == "int8_absmax" and record["ours_ms"] > 0 and record["peer_ms"] > 0
