"""T-FREE word-splitter cases (CPU only): ``lmkernels.tfree`` against the pure-Python reference
implementation of the official algorithm (``lmkernels.reference.tfree_words``, Python ``re``).

The text is the embedded corpus (``lmkernels.data``): all of it (about 0.8 MB), the train split's
first 200 kB with ``quick``, or its first 4 kB with ``tiny``. ``split`` is str -> list of words
(the native side includes the UTF-8 encode and building the Python list); ``join`` is the inverse,
from the split words back to the text. Throughput (MB/s) counts the text's UTF-8 bytes.
"""

from __future__ import annotations

import torch

from lmkernels import data
from lmkernels.bench.harness import Case
from lmkernels.reference import tfree_words as reference
from lmkernels.tfree import join_words, split_words

_FULL, _QUICK, _TINY = None, 200_000, 4_000  # characters of the corpus; None = all of it


def cases(quick: bool, device: str, tiny: bool = False) -> list[Case]:
    """The splitter cases: CPU only (an empty list for any other device)."""
    if torch.device(device).type != "cpu":
        return []
    chars = _TINY if tiny else _QUICK if quick else _FULL
    text = data.text("all") if chars is None else data.text("train")[:chars]
    words = split_words(text)
    size = len(text.encode("utf-8"))
    name = f"corpus {size / 1e3:.0f} kB"
    peer = "pure-Python reference (re)"
    return [
        Case(kernel="tfree_words", case=f"split {name}", peer=peer, ours_fn=lambda: split_words(text),
             peer_fn=lambda: reference.split_words(text), bytes_moved=None, device=device, text_bytes=size),
        Case(kernel="tfree_words", case=f"join {name}", peer=peer, ours_fn=lambda: join_words(words),
             peer_fn=lambda: reference.join_words(words), bytes_moved=None, device=device, text_bytes=size),
    ]
