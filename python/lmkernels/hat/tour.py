"""The HAT stop of ``lmk tour``: the HAT splitting rule on an example, the models' special-token
wrapper, batched splitting speed, and a few training steps of a small HAT model."""

from __future__ import annotations

import time

import torch

from lmkernels import data
from lmkernels.hat.config import HATConfig
from lmkernels.hat.generate import generate
from lmkernels.hat.model import HATBatch, HATModel, hat_loss
from lmkernels.hat.splitter import HATRuleSplitter, split, split_batch, split_with_limit
from lmkernels.hat.train import word_windows


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

    _train_a_little(splitter, documents)


def _train_a_little(splitter: HATRuleSplitter, documents: list[str], steps: int = 200) -> None:
    torch.manual_seed(0)
    model = HATModel(HATConfig.tiny(width=64, window=127))
    words = [bytes(w) for d in documents[:300] for w in splitter.encode(d + "<|eot_id|>")]
    windows = word_windows(words, 256)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for step in range(steps):
        batch = HATBatch.from_words([windows[i] for i in torch.randint(len(windows), (4,), generator=generator)])
        loss = hat_loss(model(batch), batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step in (0, steps - 1):
            print(f"  HAT model ({sum(p.numel() for p in model.parameters()):,} parameters, encoder -> word "
                  f"connector -> backbone over words -> decoder), step {step + 1}: next-byte loss {loss.item():.3f}")
    print(f"  {steps} steps of 4 x 256 bytes in {time.perf_counter() - start:.1f} s; "
          f"sample: {generate(model.eval(), 'The ', 24)!r}")
