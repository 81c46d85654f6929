"""HAT word-splitter cases (CPU only): ``lmkernels.hat`` against the official ``hat-splitter``
package (Rust, PyO3), on the same text in the same process.

Text: the embedded corpus (``lmkernels.data``, English) plus the package's multilingual sample
(13 languages) repeated to about a tenth of the bytes; all of it (about 0.9 MB), 200 kB with
``quick``, 4 kB with ``tiny``. Cases:

- ``split``: one str -> list[str], single-threaded on both sides (ours builds the list from slices
  of the str);
- ``split_with_limit 64``: one str -> list[bytes], words of at most 64 bytes (the official
  benchmark's limit);
- ``batch 64, N threads``: one document per paragraph, ``split_batch`` (flat tensors, GIL released,
  ``N`` threads) against the package's ``split_with_limit`` over the documents in a loop (it has no
  batched form and holds the GIL).

Throughput (MB/s) counts the text's UTF-8 bytes. Skipped (no cases) when ``hat-splitter`` is not
installed: it is a test dependency, not a dependency of the library.
"""

from __future__ import annotations

import torch

import lmkernels
from lmkernels import data
from lmkernels.bench.harness import Case
from lmkernels.hat import split, split_batch, split_with_limit

_FULL, _QUICK, _TINY = None, 200_000, 4_000  # characters of text; None = all of it
_LIMIT = 64


def _text(chars: int | None) -> str:
    english = data.text("all")
    foreign = data.multilingual_text()
    text = english + "\n\n" + "\n\n".join([foreign] * max(1, len(english) // 10 // len(foreign)))
    return text if chars is None else text[:chars]


def _on_threads(threads: int, fn):
    """``fn`` run with ``lmkernels.num_threads() == threads`` (restored after)."""
    def call():
        previous = lmkernels.num_threads()
        lmkernels.set_num_threads(threads)
        try:
            return fn()
        finally:
            lmkernels.set_num_threads(previous)
    return call


def cases(quick: bool, device: str, tiny: bool = False) -> list[Case]:
    """The splitter cases: CPU only (an empty list for any other device or without hat-splitter)."""
    if torch.device(device).type != "cpu":
        return []
    try:
        from hat_splitter import HATSplitter
    except ImportError:
        return []
    official = HATSplitter()
    text = _text(_TINY if tiny else _QUICK if quick else _FULL)
    documents = [d for d in text.split("\n\n") if d]
    size = len(text.encode("utf-8"))
    name = f"{size / 1e3:.0f} kB"
    peer = "hat-splitter 0.1.10 (Rust)"
    out = [
        Case(kernel="hat_split", case=f"split {name}", peer=peer, ours_fn=lambda: split(text),
             peer_fn=lambda: official.split(text), bytes_moved=None, device=device, text_bytes=size),
        Case(kernel="hat_split", case=f"split_with_limit {_LIMIT} {name}", peer=peer,
             ours_fn=lambda: split_with_limit(text, _LIMIT), peer_fn=lambda: official.split_with_limit(text, _LIMIT),
             bytes_moved=None, device=device, text_bytes=size),
    ]
    batch_size = sum(len(d.encode("utf-8")) for d in documents)
    for threads in (1, 2):
        out.append(Case(kernel="hat_split", case=f"batch {_LIMIT} {len(documents)} docs {threads} thread(s)",
                        peer=f"{peer}, loop", ours_fn=_on_threads(threads, lambda: split_batch(documents, _LIMIT)),
                        peer_fn=lambda: [official.split_with_limit(d, _LIMIT) for d in documents], bytes_moved=None,
                        device=device, text_bytes=batch_size))
    return out
