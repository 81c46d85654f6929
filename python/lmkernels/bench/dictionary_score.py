"""Dictionary-scoring cases: ``lmk.dictionary_scores`` against the fastest plain-torch formulations.

T-FREE decoding sizes: 64 positions of float32 logits (v = 32000) scored against 100,000 words,
m = 10, contrast variant, edge weight 0.8. A second case of each kind scores a single position
(one decoding step).

**Random dictionary** (the direct-set path). Random but shaped like a real dictionary (seeded): a
word of n trigrams (n = 1 + Poisson(5), at most 24; mean about 6) has 2 edge trigrams (1 when
n = 1) and n - 2 non-edge ones, each trigram m uniform indices, deduplicated per set; 1 % of the
words are hashed words (n = 1, m indices, all non-edge). Nothing is shared between words.

**Shared-row dictionary** (the row-table path). Real words share trigrams. Measured here with
wordfreq 3.1 and ``lmkernels.tfree.Tokenizer()`` (v = 32000, m = 10): the top 70,000 English words
plus the capitalised forms of the top 30,000 (99,868 entries) hold 95,911 single words with
683,883 trigram rows (7.13 per word, variance 6.6; 2.00 of them edge rows) but only 14,239
distinct rows, 2,727 (19 %) of them edge trigrams. The same construction at a fifth of the size
(top 14,000 plus capitalised top 6,000) holds 19,692 words, 131,822 rows and 6,634 distinct rows.
``shared_row_dictionary`` generates such a dictionary offline, calibrated on those numbers:

- R shared rows, each m distinct uniform indices (as MD5 patterns are); 19 % of them, chosen at
  random, are edge rows, the others inner rows (edge trigrams start or end with the space, a
  population of their own);
- n_w = 1 + Poisson(6.2), at most 24 (mean 7.14, variance 6.5); 2 edge rows (1 when n_w = 1) and
  n_w - 2 inner rows, each drawn from its population by popularity; 1 % hashed words with one
  private row. (The 20,000-entry dictionary averages 6.69 rows per word; the law is kept.)
- popularity: a Zipf law of exponent 1 is far off. It puts 8-11 % of the uses on the top row and
  uses almost every row many times, where the real top row has 1.4 % of the inner uses (3.6 % of
  the edge uses) and 27 % of the inner rows (43 % of the edge rows) are used once. A power law with
  an exponential cutoff, fitted on both sizes' rank-count curves, with r the rank in a population
  of R_p rows: p(r) ~ r^-0.35 exp(-r / (0.15 R_p)) for inner rows, r^-0.3 exp(-r / (0.1 R_p)) for
  edge rows. Every row is used at least once (a real table holds only rows some word uses); the
  other uses follow p. At full size the generated inner rows are used once in 22 % of cases
  (real: 27 %), at most 3 times in 41 % (43 %), at ranks 100 / 1,000 / 3,000 554 / 145 / 31 times
  (618 / 122 / 23); edge rows once in 36 % (43 %), at most 3 times in 50 % (55 %);
- the rows of one word's NE list are disjoint, and so are those of its E list (a row that shares
  an index with an earlier row of the same list is redrawn), so that the row form scores exactly
  what the expanded sets NE(w) = union of the rows' indices (E(w) likewise) score. Redrawing, not
  dropping, keeps n_w rows per word: n_w divides the scores. (Real rows of one word overlap in
  0.1 % of the NE index slots; the op's row semantics needs them disjoint.)

Full sizes: 100,000 words over 14,000 shared rows (the measured dictionary's 95,911 words and
14,239 rows; 51 uses per row generated, 48 real). Quick: 20,000 words over 6,600 shared rows, the
measured 6,634 of the same construction at 19,692 words (22 uses per row generated, 20 real).
Both tables add one private row per hashed word (about 1 %).

Peers, given the dictionary preprocessed once into one CSR matrix C = NE + e * E (what a torch
user would cache; expanded from the rows for the shared dictionary): ``torch.nn.functional.
embedding_bag`` of sigmoid(l)^T rows with C's values as per-sample weights (the fastest torch
formulation found, about 1.7x faster than the next), and ``torch.sparse`` CSR (int32) @ dense
sigmoid(l)^T. The shared dictionary adds the row table's factoring in plain torch, T = rows @
sigmoid(l)^T then s = (P_NE + e P_E) @ T (both CSR int32 @ dense), and our own op on the expanded
sets (the gain of the row table). All apply the normalisation as fused torch elementwise ops with
precomputed reciprocals.

Bytes moved (logical traffic): the logits, the int32 tables our op reads, the scores.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from lmkernels.bench.harness import Case
from lmkernels.ops import dictionary_scores

_FULL = {"queries": [64, 1], "words": 100_000, "rows": 14_000, "vocab": 32000}
_QUICK = {"queries": [64, 1], "words": 20_000, "rows": 6_600, "vocab": 32000}
_TINY = {"queries": [4], "words": 500, "rows": 300, "vocab": 1000}
_M = 10
_EDGE_WEIGHT = 0.8
_HASHED_SHARE = 0.01
# n_w = 1 + Poisson(extra trigrams): about 6 trigrams per word for the random dictionary; 7.14 for the
# shared one, as measured.
_RANDOM_EXTRA_TRIGRAMS = 5.0
_SHARED_EXTRA_TRIGRAMS = 6.2
_EDGE_ROW_SHARE = 0.19
# Popularity of a population's rows: (exponent, cutoff as a fraction of the population), fitted above.
_INNER_POPULARITY = (0.35, 0.15)
_EDGE_POPULARITY = (0.3, 0.1)
# Rounds of redraws until every word's rows are disjoint: a handful at v = 32000; a vocabulary too
# small for disjoint rows must raise instead of looping forever.
_MAX_REDRAW_ROUNDS = 1000


class RowDictionary(NamedTuple):
    """A dictionary in the op's row-table form, all int32: the pattern rows as CSR of vocabulary indices
    and the words' NE and edge lists as CSR of row ids."""

    row_indices: Tensor
    row_offsets: Tensor
    ne_row_ids: Tensor
    ne_offsets: Tensor
    edge_row_ids: Tensor
    edge_offsets: Tensor
    trigram_counts: Tensor


def _trigram_counts(words: int, extra_trigrams: float, generator: torch.Generator) -> tuple[Tensor, ...]:
    """(n_w, hashed, edge trigrams, non-edge trigrams) per word: n_w = 1 + Poisson(extra_trigrams), at most 24;
    2 edge trigrams (1 when n_w = 1); hashed words have n_w = 1, non-edge."""
    trigrams = (1 + torch.poisson(torch.full((words,), extra_trigrams), generator=generator)).clamp(1, 24).long()
    hashed = torch.rand(words, generator=generator) < _HASHED_SHARE
    trigrams[hashed] = 1
    edge_trigrams = torch.where(hashed, 0, trigrams.clamp(max=2))
    return trigrams, hashed, edge_trigrams, trigrams - edge_trigrams


def _offsets(per_word: Tensor) -> Tensor:
    """int32 CSR offsets [W + 1] of sets of ``per_word`` entries."""
    offsets = torch.zeros(per_word.numel() + 1, dtype=torch.int64)
    offsets[1:] = per_word.cumsum(0)
    return offsets.int()


def random_dictionary(words: int, vocab: int, m: int, generator: torch.Generator) -> tuple[Tensor, ...]:
    """A T-FREE-shaped random dictionary: (ne_indices, ne_offsets, edge_indices, edge_offsets, trigram_counts)."""
    trigrams, _, edge_trigrams, ne_trigrams = _trigram_counts(words, _RANDOM_EXTRA_TRIGRAMS, generator)

    def index_sets(per_word: Tensor) -> tuple[Tensor, Tensor]:
        counts = per_word * m
        rows = torch.repeat_interleave(torch.arange(words), counts)
        columns = torch.randint(vocab, (int(counts.sum()),), generator=generator)
        keys = torch.unique(rows * vocab + columns)  # sorted: by word, then index; duplicates dropped
        return (keys % vocab).int(), _offsets(torch.bincount(keys // vocab, minlength=words))

    return (*index_sets(ne_trigrams), *index_sets(edge_trigrams), trigrams.int())


def shared_row_dictionary(words: int, rows: int, vocab: int, m: int, generator: torch.Generator,
                          ) -> tuple[RowDictionary, tuple[Tensor, ...]]:
    """A dictionary of ``words`` words sharing ``rows`` trigram rows, calibrated on a real one (module docstring).

    Returns the row form (its table holds the ``rows`` shared rows, then one private row per hashed
    word) and the same dictionary expanded to direct sets, (ne_indices, ne_offsets, edge_indices,
    edge_offsets, trigram_counts), indices sorted within each word.
    """
    if not 1 <= m <= vocab:
        raise ValueError(f"m: expected 1 <= m <= vocab ({vocab}), got {m}")
    trigrams, hashed, edge_trigrams, ne_trigrams = _trigram_counts(words, _SHARED_EXTRA_TRIGRAMS, generator)
    hashed_words = int(hashed.sum())
    table = _distinct_index_rows(rows + hashed_words, vocab, m, generator)
    by_popularity = torch.randperm(rows, generator=generator)  # row ids say nothing of popularity, like hashes
    edge_population = by_popularity[:round(_EDGE_ROW_SHARE * rows)]
    inner_population = by_popularity[edge_population.numel():]
    draw_inner = _popularity(inner_population, *_INNER_POPULARITY, generator)
    draw_edge = _popularity(edge_population, *_EDGE_POPULARITY, generator)

    ne_word = torch.repeat_interleave(torch.arange(words), ne_trigrams)
    private = hashed[ne_word]  # a hashed word's one NE slot holds its own row
    ne_slot_rows = torch.empty(ne_word.numel(), dtype=torch.int64)
    ne_slot_rows[private] = rows + torch.arange(hashed_words)
    ne_slot_rows[~private] = _every_row_then_popular(inner_population, draw_inner, int((~private).sum()), generator)
    edge_word = torch.repeat_interleave(torch.arange(words), edge_trigrams)
    edge_slot_rows = _every_row_then_popular(edge_population, draw_edge, edge_word.numel(), generator)
    # A hashed word's single NE slot never collides, so only shared rows are ever redrawn.
    _make_disjoint(ne_slot_rows, ne_word, table, vocab, draw_inner)
    _make_disjoint(edge_slot_rows, edge_word, table, vocab, draw_edge)

    def expanded(slot_rows: Tensor, word_of_slot: Tensor, per_word: Tensor) -> tuple[Tensor, Tensor]:
        keys = (word_of_slot[:, None] * vocab + table[slot_rows]).reshape(-1).sort().values  # by word, then index
        return (keys % vocab).int(), _offsets(per_word * m)

    row_form = RowDictionary(table.reshape(-1).int(), torch.arange(0, table.numel() + 1, m, dtype=torch.int32),
                             ne_slot_rows.int(), _offsets(ne_trigrams), edge_slot_rows.int(), _offsets(edge_trigrams),
                             trigrams.int())
    direct = (*expanded(ne_slot_rows, ne_word, ne_trigrams), *expanded(edge_slot_rows, edge_word, edge_trigrams),
              trigrams.int())
    return row_form, direct


def _distinct_index_rows(count: int, vocab: int, m: int, generator: torch.Generator) -> Tensor:
    """[count, m] int64: each row m distinct uniform indices in [0, vocab), ascending (rows with a repeat redrawn)."""
    table = torch.randint(vocab, (count, m), generator=generator).sort(1).values
    while True:
        repeats = (table[:, 1:] == table[:, :-1]).any(1)
        if not repeats.any():
            return table
        table[repeats] = torch.randint(vocab, (int(repeats.sum()), m), generator=generator).sort(1).values


def _popularity(population: Tensor, exponent: float, cutoff: float, generator: torch.Generator,
                ) -> Callable[[int], Tensor]:
    """A sampler of ``population``'s row ids (listed by rank) with p(r) ~ r^-exponent exp(-r / (cutoff R_p))."""
    ranks = torch.arange(1, population.numel() + 1, dtype=torch.float64)
    weights = ranks ** -exponent * torch.exp(-ranks / (cutoff * population.numel()))

    def draw(count: int) -> Tensor:
        return population[torch.multinomial(weights, count, replacement=True, generator=generator)]

    return draw


def _every_row_then_popular(population: Tensor, draw: Callable[[int], Tensor], slots: int,
                            generator: torch.Generator) -> Tensor:
    """Row ids for ``slots`` slots in random order: every row of ``population`` once (as many as fit), the
    remaining slots by popularity."""
    once = population[torch.randperm(population.numel(), generator=generator)[:slots]]
    rest = slots - once.numel()
    dealt = torch.cat([once, draw(rest)]) if rest > 0 else once
    return dealt[torch.randperm(slots, generator=generator)]


def _make_disjoint(slot_rows: Tensor, word_of_slot: Tensor, table: Tensor, vocab: int,
                   draw: Callable[[int], Tensor]) -> None:
    """Redraw, in place, every slot whose row shares an index with an earlier slot's row of the same word
    (the same row twice included) until the rows of each word are disjoint."""
    m = table.shape[1]
    checked = torch.arange(slot_rows.numel())  # ascending: the slots of the words that may still collide
    for _ in range(_MAX_REDRAW_ROUNDS):
        keys = (word_of_slot[checked, None] * vocab + table[slot_rows[checked]]).reshape(-1)
        sorted_keys, positions = keys.sort(stable=True)  # equal keys stay in slot order
        repeated = torch.zeros_like(sorted_keys, dtype=torch.bool)
        repeated[1:] = sorted_keys[1:] == sorted_keys[:-1]
        colliding = checked[(positions[repeated] // m).unique()]
        if colliding.numel() == 0:
            return
        slot_rows[colliding] = draw(colliding.numel())
        checked = torch.isin(word_of_slot, word_of_slot[colliding]).nonzero().squeeze(1)
    raise ValueError(f"vocab: {vocab} indices are too few for the rows of each word ({m} indices each) to be disjoint")


def cases(quick: bool, device: str, tiny: bool = False) -> list[Case]:
    """The dictionary-scoring cases on ``device``: full T-FREE sizes, ``quick`` or ``tiny`` (smoke test)."""
    sizes = _TINY if tiny else _QUICK if quick else _FULL
    return _random_dictionary_cases(sizes, device) + _shared_row_cases(sizes, device)


def _random_dictionary_cases(sizes: dict, device: str) -> list[Case]:
    words, vocab = sizes["words"], sizes["vocab"]
    gen = torch.Generator().manual_seed(0)
    dictionary = [t.to(device) for t in random_dictionary(words, vocab, _M, gen)]
    peers = _Peers(dictionary, vocab, device)
    result = []
    for queries in sizes["queries"]:
        logits = torch.randn(queries, vocab, generator=gen).to(device)
        name = f"{queries}x{vocab} fp32 x {words} words m={_M}"
        bytes_moved = (logits.numel() * 4 + sum(t.numel() * 4 for t in dictionary) + queries * words * 4)

        def ours(logits=logits):
            return dictionary_scores(logits, *dictionary, _M, _EDGE_WEIGHT, "contrast")

        result += [
            Case(kernel="dictionary_scores", case=name, peer="torch embedding_bag (C = NE + e E)", ours_fn=ours,
                 peer_fn=lambda logits=logits: peers.embedding_bag(logits), bytes_moved=bytes_moved, device=device),
            Case(kernel="dictionary_scores", case=name, peer="torch.sparse CSR @ dense", ours_fn=ours,
                 peer_fn=lambda logits=logits: peers.csr_matmul(logits), bytes_moved=bytes_moved, device=device),
        ]
    return result


def _shared_row_cases(sizes: dict, device: str) -> list[Case]:
    words, rows, vocab = sizes["words"], sizes["rows"], sizes["vocab"]
    gen = torch.Generator().manual_seed(0)
    shared, direct = shared_row_dictionary(words, rows, vocab, _M, gen)
    shared = RowDictionary(*(t.to(device) for t in shared))
    direct = [t.to(device) for t in direct]
    peers = _Peers(direct, vocab, device)
    factored = _FactoredPeer(shared, vocab, device)
    result = []
    for queries in sizes["queries"]:
        logits = torch.randn(queries, vocab, generator=gen).to(device)
        name = f"{queries}x{vocab} fp32 x {words} words, {rows} shared rows m={_M}"
        bytes_moved = logits.numel() * 4 + sum(t.numel() * 4 for t in shared) + queries * words * 4

        def ours(logits=logits):
            return dictionary_scores(logits, shared.ne_row_ids, shared.ne_offsets, shared.edge_row_ids,
                                     shared.edge_offsets, shared.trigram_counts, _M, _EDGE_WEIGHT, "contrast",
                                     shared.row_indices, shared.row_offsets)

        def ours_direct(logits=logits):
            return dictionary_scores(logits, *direct, _M, _EDGE_WEIGHT, "contrast")

        peer_fns = {
            "torch embedding_bag (C = NE + e E)": lambda logits=logits: peers.embedding_bag(logits),
            "torch.sparse CSR @ dense": lambda logits=logits: peers.csr_matmul(logits),
            "torch.sparse CSR, factored (two products)": lambda logits=logits: factored(logits),
            "lmk on the expanded sets (no row table)": ours_direct,
        }
        result += [Case(kernel="dictionary_scores", case=name, peer=peer, ours_fn=ours, peer_fn=peer_fn,
                        bytes_moved=bytes_moved, device=device) for peer, peer_fn in peer_fns.items()]
    return result


def _weighted_csr(ne_ids: Tensor, ne_offsets: Tensor, edge_ids: Tensor, edge_offsets: Tensor, columns: int,
                  device: str) -> Tensor:
    """The [W, columns] CSR matrix NE + e E of two CSR lists of column ids (an id in both lists gets 1 + e)."""
    words = ne_offsets.numel() - 1

    def coo(ids, offsets, value):
        rows = torch.repeat_interleave(torch.arange(words, device=device), (offsets[1:] - offsets[:-1]).long())
        values = torch.full((ids.numel(),), value, device=device)
        return torch.sparse_coo_tensor(torch.stack([rows, ids.long()]), values, (words, columns),
                                       check_invariants=True)

    return (coo(ne_ids, ne_offsets, 1.0) + coo(edge_ids, edge_offsets, _EDGE_WEIGHT)).coalesce().to_sparse_csr()


def _int32_csr(csr: Tensor) -> Tensor:
    return torch.sparse_csr_tensor(csr.crow_indices().int(), csr.col_indices().int(), csr.values(), csr.shape,
                                   check_invariants=False)


class _Normalisation:
    """The contrast normalisation with precomputed reciprocals: s / (m n_w) + (s - S) / (v - m n_w)."""

    def __init__(self, counts: Tensor, vocab: int):
        slots = (_M * counts.long()).float()
        off_pattern = vocab - slots
        self.inv_on = 1.0 / slots
        self.inv_off = torch.where(off_pattern > 0, 1.0 / off_pattern, torch.zeros_like(off_pattern))

    def __call__(self, activations: Tensor, sums: Tensor) -> Tensor:
        totals = activations.sum(-1, keepdim=True)
        return torch.addcmul(sums * self.inv_on, sums - totals, self.inv_off)


class _Peers:
    """Plain-torch scorers over a dictionary preprocessed once (combined pattern matrix, reciprocals)."""

    def __init__(self, dictionary: list[Tensor], vocab: int, device: str):
        ne_indices, ne_offsets, edge_indices, edge_offsets, counts = dictionary
        csr = _weighted_csr(ne_indices, ne_offsets, edge_indices, edge_offsets, vocab, device)
        self.offsets, self.indices, self.values = csr.crow_indices(), csr.col_indices(), csr.values()
        self.csr = _int32_csr(csr)
        self.normalise = _Normalisation(counts, vocab)

    def embedding_bag(self, logits: Tensor) -> Tensor:
        activations = torch.sigmoid(logits.float())
        sums = F.embedding_bag(self.indices, activations.t().contiguous(), self.offsets, mode="sum",
                               per_sample_weights=self.values, include_last_offset=True).t()
        return self.normalise(activations, sums)

    def csr_matmul(self, logits: Tensor) -> Tensor:
        activations = torch.sigmoid(logits.float())
        sums = (self.csr @ activations.t().contiguous()).t()
        return self.normalise(activations, sums)


class _FactoredPeer:
    """The row table's factoring in plain torch: row sums T = rows @ sigmoid(l)^T, then s = (P_NE + e P_E) @ T."""

    def __init__(self, dictionary: RowDictionary, vocab: int, device: str):
        table_rows = dictionary.row_offsets.numel() - 1
        self.rows = torch.sparse_csr_tensor(dictionary.row_offsets, dictionary.row_indices,
                                            torch.ones(dictionary.row_indices.numel(), device=device),
                                            (table_rows, vocab), check_invariants=True)
        self.words = _int32_csr(_weighted_csr(dictionary.ne_row_ids, dictionary.ne_offsets, dictionary.edge_row_ids,
                                              dictionary.edge_offsets, table_rows, device))
        self.normalise = _Normalisation(dictionary.trigram_counts, vocab)

    def __call__(self, logits: Tensor) -> Tensor:
        activations = torch.sigmoid(logits.float())
        row_sums = self.rows @ activations.t().contiguous()
        return self.normalise(activations, (self.words @ row_sums).t())
