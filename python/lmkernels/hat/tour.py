"""The HAT stop of ``lmk tour``: the HAT splitting rule on an example, the models' special-token
wrapper, and batched splitting speed."""

from __future__ import annotations

import time

from lmkernels import data
from lmkernels.hat.splitter import HATRuleSplitter, split, split_batch, split_with_limit


def run(section) -> None:
    section("HAT: bytes grouped into words")
    example = "HAT models read bytes: naïveCamelCase, 3,999.99 €  你好吗 👨\u200d👩\u200d👧!"
    print(f"  split {example!r}\n    -> {split(example)}")
    print(f"  split_with_limit('verylongword', 10) -> {split_with_limit('verylongword', 10)}")
    splitter = HATRuleSplitter()
    print(f"  model words of 'Hi there!<|eot_id|>' -> {splitter.encode('Hi there!<|eot_id|>')}")

    documents = [d.text for d in data.documents("all")] + data.multilingual_text().split("\n\n")
    megabytes = sum(len(d.encode()) for d in documents) / 1e6
    split_batch(documents, 100)
    start = time.perf_counter()
    batch = split_batch(documents, 100)
    seconds = time.perf_counter() - start
    print(f"  split {megabytes:.2f} MB ({len(documents)} documents, {batch.num_words:,} words of at most 100 bytes, "
          f"{batch.bytes.numel() / batch.num_words:.1f} bytes per word) in {seconds * 1e3:.0f} ms: "
          f"{megabytes / seconds:.0f} MB/s")
