"""The dictionary-scoring cases compute what their peers compute; the shared-row dictionary is what it claims."""

import pytest
import torch

from lmkernels.bench import dictionary_score
from lmkernels.reference import dictionary_scores as reference_scores

_WORDS, _ROWS, _VOCAB, _M = 500, 300, 1000, 10


def _shared(seed: int = 0):
    return dictionary_score.shared_row_dictionary(_WORDS, _ROWS, _VOCAB, _M, torch.Generator().manual_seed(seed))


def _lists(ids, offsets):
    return [ids[offsets[w]:offsets[w + 1]].tolist() for w in range(offsets.numel() - 1)]


def test_cases_compute_the_peers_scores():
    cases = dictionary_score.cases(quick=True, device="cpu", tiny=True)
    direct_peers = {"torch embedding_bag (C = NE + e E)", "torch.sparse CSR @ dense"}
    by_dictionary = {"random": set(), "shared": set()}
    for case in cases:
        assert case.kernel == "dictionary_scores"
        by_dictionary["shared" if "shared rows" in case.case else "random"].add(case.peer)
        torch.testing.assert_close(case.ours_fn(), case.peer_fn(), rtol=1e-5, atol=1e-5)
    assert by_dictionary["random"] == direct_peers
    assert by_dictionary["shared"] == direct_peers | {"torch.sparse CSR, factored (two products)",
                                                      "lmk on the expanded sets (no row table)"}


@pytest.mark.parametrize("variant", ["contrast", "mean"])
def test_the_row_form_scores_what_the_expanded_form_scores(variant):
    shared, direct = _shared()
    logits = torch.randn(3, _VOCAB, generator=torch.Generator().manual_seed(1))
    by_rows = reference_scores(logits, shared.ne_row_ids, shared.ne_offsets, shared.edge_row_ids, shared.edge_offsets,
                               shared.trigram_counts, _M, 0.8, variant, row_indices=shared.row_indices,
                               row_offsets=shared.row_offsets)
    torch.testing.assert_close(by_rows, reference_scores(logits, *direct, _M, 0.8, variant), rtol=1e-5, atol=0)


def test_the_rows_of_each_words_lists_are_disjoint_and_expand_to_its_sets():
    shared, (ne_indices, ne_offsets, edge_indices, edge_offsets, counts) = _shared()
    table = _lists(shared.row_indices, shared.row_offsets)
    assert all(len(set(row)) == _M for row in table)
    ne_rows = _lists(shared.ne_row_ids, shared.ne_offsets)
    edge_rows = _lists(shared.edge_row_ids, shared.edge_offsets)
    for rows_of_words, expanded in ((ne_rows, _lists(ne_indices, ne_offsets)),
                                    (edge_rows, _lists(edge_indices, edge_offsets))):
        for rows, indices in zip(rows_of_words, expanded):
            gathered = [i for r in rows for i in table[r]]
            assert len(set(gathered)) == len(gathered)  # disjoint rows (and so distinct row ids)
            assert indices == sorted(gathered)
    assert [len(ne) + len(e) for ne, e in zip(ne_rows, edge_rows)] == counts.tolist()
    assert all(len(e) == min(n, 2) or (len(e) == 0 and n == 1) for e, n in zip(edge_rows, counts.tolist()))


def test_edge_rows_inner_rows_and_private_rows_are_separate_populations():
    shared, _ = _shared()
    private = shared.ne_row_ids[shared.ne_row_ids >= _ROWS]
    inner = set(shared.ne_row_ids[shared.ne_row_ids < _ROWS].tolist())
    assert not inner & set(shared.edge_row_ids.tolist()) and (shared.edge_row_ids < _ROWS).all()
    assert sorted(private.tolist()) == list(range(_ROWS, shared.row_offsets.numel() - 1))  # one each
    hashed = torch.repeat_interleave(torch.arange(_WORDS), shared.ne_offsets.diff())[shared.ne_row_ids >= _ROWS]
    assert (shared.trigram_counts[hashed] == 1).all() and (shared.edge_offsets.diff()[hashed] == 0).all()


def test_the_shared_row_dictionary_is_seeded():
    first, second, other = _shared(0), _shared(0), _shared(1)
    assert all(torch.equal(a, b) for a, b in zip(first[0] + first[1], second[0] + second[1]))
    assert not torch.equal(first[0].ne_row_ids, other[0].ne_row_ids)


def test_a_vocabulary_too_small_for_disjoint_rows_is_refused():
    with pytest.raises(ValueError, match="vocab"):
        dictionary_score.shared_row_dictionary(50, 20, 12, 10, torch.Generator().manual_seed(0))
