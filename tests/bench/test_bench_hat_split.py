"""The HAT splitter benchmark cases compute what their peer computes, and run in the harness."""

from lmkernels.bench import harness, hat_split


def test_ours_and_peer_agree_and_are_measured():
    cases = hat_split.cases(quick=False, device="cpu", tiny=True)
    assert [case.case.split(" ")[0] for case in cases] == ["split", "split_with_limit", "batch", "batch"]
    split_case, limit_case, *batch_cases = cases
    assert split_case.ours_fn() == split_case.peer_fn()
    assert limit_case.ours_fn() == limit_case.peer_fn()
    for case in batch_cases:
        batch, expected = case.ours_fn(), case.peer_fn()
        assert [batch.words(t) for t in range(len(batch))] == expected
    for case in cases:
        record = harness.measure(case, harness.TINY)
        assert record["kernel"] == "hat_split" and record["ours_ms"] > 0 and record["peer_ms"] > 0


def test_no_cases_off_the_cpu():
    assert hat_split.cases(quick=True, device="cuda", tiny=True) == []
