"""The multi-label BCE benchmark cases compute what their peer computes, and run in the harness."""

import torch

from lmkernels.bench import harness, multilabel_bce


def test_ours_and_peer_agree_and_are_measured():
    cases = multilabel_bce.cases(quick=False, device="cpu", tiny=True)
    assert [case.case.split()[0] for case in cases] == ["fwd", "fwd+bwd"]
    forward, forward_backward = cases
    torch.testing.assert_close(forward.ours_fn(), forward.peer_fn(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(forward_backward.ours_fn(), forward_backward.peer_fn(), rtol=1e-4, atol=1e-9)
    for case in cases:
        record = harness.measure(case, harness.TINY)
        assert record["kernel"] == "multilabel_bce" and record["ours_ms"] > 0 and record["peer_ms"] > 0
