"""T-FREE text cases: split + encode throughput of ``Tokenizer.encode`` on multilingual text.

Text: the embedded standard-library docstrings (English) plus the package's multilingual sample
(13 languages) repeated to about a tenth of the bytes, one document per paragraph. Peers, on the
same documents in the same run:

- the official algorithm in plain Python (``lmkernels.reference.tfree_words`` splitting, byte
  trigram sets, rows looked up in a precomputed table, as the official ``encode`` does);
- a Rust byte-level BPE (``tokenizers``, vocabulary 32000 trained in process on the same text),
  ``encode_batch`` on all its threads.

Our table is warm (the rows the text needs computed once before timing), like the peers' tables.
"""

from __future__ import annotations

import torch

from lmkernels import data
from lmkernels.bench.harness import Case
from lmkernels.reference.tfree_words import split_words as reference_split
from lmkernels.tfree import Tokenizer


def _documents(quick: bool, tiny: bool) -> list[str]:
    english = [d.text for d in data.documents("all")]
    foreign = data.multilingual_text().split("\n\n")
    if tiny:
        english = english[:40]
    elif quick:
        english = english[:800]
    english_bytes = sum(len(d.encode()) for d in english)
    repeats = max(1, english_bytes // 10 // sum(len(d.encode()) for d in foreign))
    return english + foreign * repeats


def _reference_encoder(tokenizer: Tokenizer, documents: list[str]):
    """The official encode loop in Python, with the rows of every trigram the text needs precomputed."""
    table: dict[int, list[int]] = {}
    hashed: dict[str, list[int]] = {}
    for doc in documents:
        for word in reference_split(doc):
            if "<|" in word:
                hashed[word] = tokenizer.word_pattern(word)[0]
            else:
                for trigram, row in zip(tokenizer.patterns.trigram_ids(word), tokenizer.word_pattern(word)):
                    table[trigram] = row

    def encode():
        out = []
        for doc in documents:
            rows = []
            for word in reference_split(doc):
                if "<|" in word:
                    rows.append([hashed[word]])
                    continue
                padded = b" " + word.encode("utf-8") + b" "
                ids = sorted({padded[i] | padded[i + 1] << 8 | padded[i + 2] << 16 for i in range(len(padded) - 2)})
                rows.append([table[t] for t in ids])
            out.append(rows)
        return out

    return encode


def _bpe_encoder(documents: list[str]):
    try:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import models, pre_tokenizers, trainers
    except ImportError:
        return None
    bpe = HFTokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=32000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(documents, trainer=trainer)
    return lambda: bpe.encode_batch(documents)


def cases(quick: bool, device: str, tiny: bool = False) -> list[Case]:
    if device != "cpu":
        return []
    documents = _documents(quick, tiny)
    text_bytes = sum(len(d.encode()) for d in documents)
    tokenizer = Tokenizer(vocab_size=32000, m=10, k_lowercase=2)
    tokenizer.encode(documents)  # warm: compute the rows this text needs
    name = f"{text_bytes / 1e6:.2f} MB, {len(documents)} docs, v=32000 m=10 k=2"
    ours = lambda: tokenizer.encode(documents)  # noqa: E731
    result = [Case(kernel="tfree_encode", case=name, peer="official algorithm in Python", ours_fn=ours,
                   peer_fn=_reference_encoder(tokenizer, documents), bytes_moved=None, device=device,
                   text_bytes=text_bytes)]
    bpe = _bpe_encoder(documents)
    if bpe is not None:
        result.append(Case(kernel="tfree_encode", case=name, peer=f"tokenizers BPE encode_batch "
                           f"({torch.get_num_threads()} threads)", ours_fn=ours, peer_fn=bpe, bytes_moved=None,
                           device=device, text_bytes=text_bytes))
    return result
