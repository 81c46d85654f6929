"""The attention benchmark cases compute what their peers compute, and run in the harness."""

import torch

from lmkernels.bench import attention, harness


def test_ours_and_peers_agree_and_are_measured():
    atman, forward, backward = attention.cases(quick=False, device="cpu", tiny=True)
    torch.testing.assert_close(atman.ours_fn(), atman.peer_fn(), rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(forward.ours_fn(), forward.peer_fn(), rtol=2e-5, atol=2e-5)
    for ours, peer in zip(backward.ours_fn(), backward.peer_fn()):
        torch.testing.assert_close(ours, peer, rtol=1e-4, atol=1e-4)
    assert [case.case.split()[-1] for case in (atman, forward, backward)] == ["fwd", "fwd", "fwd+bwd"]
    record = harness.measure(atman, harness.TINY)
    assert record["kernel"] == "attention" and record["ours_ms"] > 0 and record["peer_ms"] > 0


def test_the_window_mask_is_the_kernels():
    mask = attention.window_mask(6, 3, "cpu")
    assert mask.sum(1).tolist() == [1, 2, 3, 3, 3, 3] and not mask.triu(1).any()
