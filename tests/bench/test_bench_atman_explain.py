"""The AtMan explanation benchmark at smoke-test size: every side runs and the peers agree with ours."""

import torch

from lmkernels.atman import explain
from lmkernels.bench import atman_explain, harness


def test_tiny_cases_run_and_agree():
    cases = atman_explain.cases(quick=False, device="cpu", tiny=True)
    assert [case.kernel for case in cases] == ["atman_explain"] * 4
    official, captum_tokens, captum_sequence, memory = cases
    assert official.peer_scale == 13 / 4 and "official" in official.peer
    assert "captum" in captum_tokens.peer and "token mode" in captum_tokens.peer
    assert "captum" in captum_sequence.peer and "sequence mode" in captum_sequence.peer
    ours = official.ours_fn()
    sampled = official.peer_fn()  # units 0, 4, 8 of 12
    assert ours.relevance.shape == (12, 3) and sampled.shape == (3, 3)
    model, prompt, target = atman_explain.setup(atman_explain._TINY, "cpu")
    paper_form = explain(model, prompt, target, form="multiplicative", factor_min="all")
    torch.testing.assert_close(paper_form.relevance[::4], sampled, atol=3e-5, rtol=0)
    by_token = captum_tokens.peer_fn()
    assert by_token.shape == (3, 3)  # per target token, per sampled unit
    torch.testing.assert_close(captum_sequence.peer_fn(), by_token, atol=1e-5, rtol=1e-5)  # one forward, same scores
    assert memory.case.endswith(" memory") and memory.peer == "single clean forward, batch 1"
    record = harness.measure(memory, harness.TINY)
    assert record["ours_peak_mb"] > record["peer_peak_mb"] > 0  # explain holds more than one clean forward


def test_peak_memory_ratio_is_measured():
    record = atman_explain.peak_memory_ratio(tiny=True)
    assert record["explain_mib"] > 0 and record["clean_forward_mib"] > 0
    assert record["ratio"] == record["explain_mib"] / record["clean_forward_mib"]


def test_tensor_memory_counts_live_tensors_only():
    from lmkernels.bench.tensor_memory import peak_tensor_bytes

    def steps():
        first = torch.ones(1000)  # 4000 bytes
        second = first * 2  # 8000 live
        del first
        return (second + 1).view(-1)  # 8000 live again: the peak stays 8000

    assert peak_tensor_bytes(steps) == 8000
