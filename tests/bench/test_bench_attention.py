"""The attention benchmark cases compute what their peers compute, and run in the harness."""

import torch

from lmkernels.bench import attention, harness


def test_ours_and_peers_agree_and_are_measured():
    atman, atman_batch, forward, backward, *training = attention.cases(quick=False, device="cpu", tiny=True)
    torch.testing.assert_close(atman.ours_fn(), atman.peer_fn(), rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(atman_batch.ours_fn(), atman_batch.peer_fn(), rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(forward.ours_fn(), forward.peer_fn(), rtol=2e-5, atol=2e-5)
    for ours, peer in zip(backward.ours_fn(), backward.peer_fn()):
        torch.testing.assert_close(ours, peer, rtol=1e-4, atol=1e-4)
    assert [case.case.split()[-1] for case in (atman, atman_batch, forward, backward)] == [
        "fwd", "fwd", "fwd", "fwd+bwd"]
    assert atman_batch.ours_fn().shape[0] == 4 and "batch 4" in atman_batch.case
    record = harness.measure(atman, harness.TINY)
    assert record["kernel"] == "attention" and record["ours_ms"] > 0 and record["peer_ms"] > 0


def test_the_training_cases_agree_with_flash_sdpa_in_both_dtypes():
    training = attention.cases(quick=False, device="cpu", tiny=True)[4:]
    assert [case.case.split()[-2:] for case in training] == [
        ["fp32", "fwd"], ["fp32", "fwd+bwd"], ["bf16", "fwd"], ["bf16", "fwd+bwd"]]
    for case in training:
        tolerance = dict(rtol=1e-4, atol=1e-4) if "fp32" in case.case else dict(rtol=2e-2, atol=2e-2)
        ours, peer = case.ours_fn(), case.peer_fn()
        for a, b in zip(*((ours, peer) if isinstance(ours, tuple) else ((ours,), (peer,)))):
            torch.testing.assert_close(a, b, **tolerance)
    assert "batch 4" in training[0].case and training[0].peer == "SDPA is_causal=True (flash)"


def test_each_pass_of_the_batched_atman_case_suppresses_its_own_keys():
    bias = attention.atman_bias(128, batch=4)
    suppressed = [row.nonzero().flatten().tolist() for row in bias]
    assert [keys[0] for keys in suppressed] == [12, 44, 76, 108] and all(len(keys) == 10 for keys in suppressed)
    mask = attention.dense_atman_mask(128, bias, torch.float32, "cpu")
    assert mask.shape == (4, 1, 128, 128)
    for item in range(4):  # below the diagonal: the item's bias; above it: -inf
        torch.testing.assert_close(mask[item, 0].tril(), bias[item].expand(128, 128).tril())
        assert torch.isinf(mask[item, 0].triu(1)[mask[item, 0].triu(1) != 0]).all()


def test_the_window_mask_is_the_kernels():
    mask = attention.window_mask(6, 3, "cpu")
    assert mask.sum(1).tolist() == [1, 2, 3, 3, 3, 3] and not mask.triu(1).any()
