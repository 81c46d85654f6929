"""The T-FREE encode benchmark cases compute what their peer computes, and run in the harness."""

from lmkernels.bench import harness, tfree_encode


def test_ours_and_peer_agree_and_are_measured():
    cases = tfree_encode.cases(quick=False, device="cpu", tiny=True)
    assert [case.peer.split(" ")[0] for case in cases] == ["official", "tokenizers"]
    assert len({case.case for case in cases}) == 1 and "v=32000 m=10 k=2" in cases[0].case
    reference = cases[0]
    encoding, expected = reference.ours_fn(), reference.peer_fn()
    assert encoding.num_texts == len(expected) > 40
    for t, words in enumerate(expected):
        first, stop = int(encoding.word_offsets[t]), int(encoding.word_offsets[t + 1])
        assert stop - first == len(words)
        for w, rows in enumerate(words, start=first):
            assert encoding.rows[encoding.row_offsets[w]:encoding.row_offsets[w + 1]].tolist() == rows
    assert reference.text_bytes == sum(len(text.encode()) for text in tfree_encode._documents(False, True))
    for case in cases:
        record = harness.measure(case, harness.TINY)
        assert record["kernel"] == "tfree_encode" and record["ours_ms"] > 0 and record["peer_ms"] > 0
        assert record["ours_mbps"] > 0


def test_no_cases_off_the_cpu():
    assert tfree_encode.cases(quick=True, device="cuda", tiny=True) == []
