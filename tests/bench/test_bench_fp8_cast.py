"""The fp8 cast benchmark cases compute what their peer computes, and run in the harness."""

import torch

from lmkernels.bench import fp8_cast, harness


def test_ours_and_peer_agree_and_are_measured():
    cases = fp8_cast.cases(quick=False, device="cpu", tiny=True)
    assert [case.case for case in cases] == ["e4m3 64x96 bf16", "e4m3 transposed 64x96 bf16"]
    for case in cases:
        ours, peer = case.ours_fn(), case.peer_fn()
        assert ours.is_contiguous() and torch.equal(ours.view(torch.uint8), peer.view(torch.uint8))
        record = harness.measure(case, harness.TINY)
        assert record["kernel"] == "fp8_cast" and record["ours_ms"] > 0 and record["peer_ms"] > 0
