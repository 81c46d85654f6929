"""T-FREE pattern-table cases: computing trigram rows natively against the ``hashlib`` reference.

The table of the released configs: vocab_size 32000, m = 10, k_lowercase = 2. ``precompute`` is
a fresh table computing all 2^24 rows (``quick``: the first 2^20 rows, ``tiny``: the first 2^12,
through ``rows``), mapping and page faults included. The reference, plain Python, would take
minutes on the full table, so it computes an evenly spaced sample of the same rows and its time
is extrapolated to all of them (the peer label says by how much). CPU only: the table lives in
host memory.
"""

from __future__ import annotations

import torch

from lmkernels.bench.harness import Case
from lmkernels.reference import tfree_patterns as reference
from lmkernels.tfree.patterns import TRIGRAM_IDS, TrigramPatterns

CONFIG = (32000, 10, 2)
_ROWS = {"full": TRIGRAM_IDS, "quick": 1 << 20, "tiny": 1 << 12}
_SAMPLE = {"full": 4096, "quick": 1024, "tiny": 256}


def cases(quick: bool, device: str, tiny: bool = False) -> list[Case]:
    """The precompute case (full table, ``quick`` or ``tiny`` slices); none off the CPU."""
    if device != "cpu":
        return []
    size = "tiny" if tiny else "quick" if quick else "full"
    rows, sample = _ROWS[size], _SAMPLE[size]
    sample_ids = range(0, rows, rows // sample)

    if rows == TRIGRAM_IDS:
        def ours():
            TrigramPatterns(*CONFIG).precompute()
        what = "all 2^24 rows"
    else:
        ids = torch.arange(rows)

        def ours():
            TrigramPatterns(*CONFIG).rows(ids)
        what = f"first 2^{rows.bit_length() - 1} rows"

    def peer():
        for trigram_id in sample_ids:
            reference.trigram_row(trigram_id, *CONFIG)

    v, m, k = CONFIG
    return [Case(
        kernel="tfree_patterns",
        case=f"precompute {what} v={v} m={m} k={k}",
        peer=f"reference hashlib ({len(sample_ids)}-row sample, time x{rows // len(sample_ids)})",
        ours_fn=ours,
        peer_fn=peer,
        bytes_moved=None,
        device=device,
        peer_scale=rows / len(sample_ids),
    )]
