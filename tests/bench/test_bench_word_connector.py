"""The word connector benchmark cases compute what their peer computes, and run in the harness."""

import torch

from lmkernels.bench import harness, word_connector


def test_word_lengths_cover_the_bytes():
    lengths = word_connector.word_lengths(2048)
    assert sum(lengths) == 2048 and max(lengths) <= word_connector.MAX_WORD_SIZE and min(lengths) >= 1


def test_ours_and_peer_agree_and_are_measured():
    cases = word_connector.cases(quick=False, device="cpu", tiny=True)
    assert [case.case.split()[0] for case in cases] == ["fwd", "fwd+bwd", "fwd", "fwd+bwd"]
    for case in cases:
        ours, peer = case.ours_fn(), case.peer_fn()
        tolerance = dict(rtol=2e-2, atol=2e-2) if "bf16" in case.case else dict(rtol=1e-4, atol=1e-4)
        for a, b in zip(ours if isinstance(ours, tuple) else [ours], peer if isinstance(peer, tuple) else [peer]):
            torch.testing.assert_close(a, b, **tolerance)
        record = harness.measure(case, harness.TINY)
        assert record["kernel"] == "word_connector" and record["ours_ms"] > 0 and record["peer_ms"] > 0
