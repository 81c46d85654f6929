"""The T-FREE stop of ``lmk tour``: splitting, hashing, encoding speed and a short training run."""

from __future__ import annotations

import time

import torch

from lmkernels import data
from lmkernels.tfree.tokenizer import Tokenizer
from lmkernels.tfree.train import TrainSettings, report, train


def run(section) -> None:
    section("T-FREE: words, not tokens")
    tokenizer = Tokenizer(vocab_size=32000, m=10, k_lowercase=2)  # the released 7B model's hash space
    example = "Tokenizer-free  models read words:\nGröße, größer, GROSS (3.14)."
    words = tokenizer.split(example)
    print(f"  split {example!r}\n    -> {words}")
    assert tokenizer.join(words) == example
    print("  join(split(text)) == text: the split is exactly invertible")
    pattern = tokenizer.word_pattern("Hello")
    print(f"  'Hello' -> {len(pattern)} distinct trigrams x m=10 hash indices in [0, 32000), e.g. {pattern[0]}")
    shared = set(tokenizer.word_pattern("Hello")[1][-2:]) & set(tokenizer.word_pattern("hello")[1][-2:])
    print(f"  ' He' and ' he' share their last k=2 indices {sorted(shared)} (partial lowercase sharing)")

    documents = [d.text for d in data.documents("all")] + data.multilingual_text().split("\n\n")
    megabytes = sum(len(d.encode()) for d in documents) / 1e6
    tokenizer.encode(documents)  # computes the trigram rows this text needs, once
    start = time.perf_counter()
    encoding = tokenizer.encode(documents)
    seconds = time.perf_counter() - start
    print(f"  encoded {megabytes:.2f} MB ({len(documents)} documents, {encoding.num_words:,} words, "
          f"{encoding.rows.shape[0]:,} trigram rows) in {seconds * 1e3:.0f} ms: {megabytes / seconds:.0f} MB/s")

    section("T-FREE: a small language model trained for a few seconds")
    settings = TrainSettings(vocab_size=8000, m=10, k_lowercase=2, dim=96, num_layers=2, num_heads=4, seq_len=48,
                             batch_size=16, steps=300, learning_rate=4e-3, warmup=20, dictionary_size=8000)
    # Docstrings are indented and wrapped: with each paragraph on one line the few seconds of
    # training go to words rather than to runs of whitespace markers.
    train_text, heldout_text = ("\n\n".join(data.paragraphs(data.text(split), one_line=True))
                                for split in ("train", "heldout"))
    torch.manual_seed(0)
    result = train(train_text, heldout_text, settings)
    report(result, train_text, None, ["Return the", "If the"])

