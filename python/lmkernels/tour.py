"""``lmk tour``: the library at work on its embedded defaults, in well under a minute on a CPU.

The build; the embedding-bag kernel (the T-FREE input embedding) agreeing with torch, timed
against it, and learning something: a bag-of-words classifier that tells from a standard-library
docstring which module wrote it; then T-FREE: exact splitting, trigram hashing, encoding speed and
a small language model trained and sampled; HAT: exact splitting, its speed and a small HAT model
trained and sampled; Divergent Token Metrics: one component sweep of a small byte-level LM; u-muP:
unit scale at initialisation and FP8 training next to fp32; AtMan: which prompt token a small recall
model's answer rests on. Later methods add their own stops.
"""

from __future__ import annotations

import re
import time
from collections import Counter

import torch

import lmkernels
from lmkernels import data
from lmkernels.nn import EmbeddingBag
from lmkernels.atman import tour as atman_tour
from lmkernels.dtm import tour as dtm_tour
from lmkernels.hat import tour as hat_tour
from lmkernels.ops import embedding_bag
from lmkernels.tfree import tour as tfree_tour
from lmkernels.umup import tour as umup_tour

_WORD = re.compile(r"[a-z]+")


def _section(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 70 - len(title)))


def _best_ms(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return min(times)


def _show_build() -> None:
    _section("build")
    for key, value in lmkernels.info().items():
        print(f"  {key:<20} {value}")


def _kernel_against_torch(generator: torch.Generator) -> None:
    _section("embedding bag vs torch.nn.functional.embedding_bag")
    rows, dim, bags, bag_size = 32000, 256, 1024, 50
    table = torch.randn(rows, dim, generator=generator, requires_grad=True)
    indices = torch.randint(0, rows, (bags * bag_size,), generator=generator)
    offsets = torch.arange(0, bags * bag_size + 1, bag_size)
    upstream = torch.randn(bags, dim, generator=generator)

    ours = embedding_bag(table, indices, offsets)
    theirs = torch.nn.functional.embedding_bag(indices, table, offsets[:-1], mode="sum")
    grad_ours, = torch.autograd.grad(ours, table, upstream)
    grad_theirs, = torch.autograd.grad(theirs, table, upstream)
    print(f"  {bags} bags of {bag_size} rows from a {rows} x {dim} fp32 table")
    print(f"  max |ours - torch|: forward {(ours - theirs).abs().max():.2e}, "
          f"table gradient {(grad_ours - grad_theirs).abs().max():.2e}")

    def step(fn):
        return lambda: torch.autograd.grad(fn(), table, upstream)

    ours_ms = _best_ms(step(lambda: embedding_bag(table, indices, offsets)))
    torch_ms = _best_ms(step(lambda: torch.nn.functional.embedding_bag(indices, table, offsets[:-1], mode="sum")))
    print(f"  forward+backward: lmkernels {ours_ms:.1f} ms, torch {torch_ms:.1f} ms "
          f"({torch_ms / ours_ms:.1f}x), on {lmkernels.num_threads()} threads; full suite: lmk bench")


def _bags_of_words(documents, vocabulary: dict[str, int]):
    """CSR bags of word ids, one bag per document (unknown words dropped)."""
    ids, offsets = [], [0]
    for doc in documents:
        ids += [vocabulary[w] for w in _WORD.findall(doc.text.lower()) if w in vocabulary]
        offsets.append(len(ids))
    return torch.tensor(ids), torch.tensor(offsets)


def _docstring_classifier(generator: torch.Generator) -> None:
    _section("learning: which module wrote this docstring?")
    train, heldout = data.documents("train"), data.documents("heldout")
    modules = [m for m, _ in Counter(d.name.split(".")[0] for d in train).most_common(8)]
    label = {m: i for i, m in enumerate(modules)}
    train = [d for d in train if d.name.split(".")[0] in label]
    heldout = [d for d in heldout if d.name.split(".")[0] in label]
    words = Counter(w for d in train for w in _WORD.findall(d.text.lower()))
    vocabulary = {w: i for i, (w, _) in enumerate(words.most_common(4000))}
    print(f"  {len(train)} training and {len(heldout)} held-out docstrings of {len(modules)} modules "
          f"({', '.join(modules)}), {len(vocabulary)} words")

    train_x, heldout_x = _bags_of_words(train, vocabulary), _bags_of_words(heldout, vocabulary)
    train_y = torch.tensor([label[d.name.split(".")[0]] for d in train])
    heldout_y = torch.tensor([label[d.name.split(".")[0]] for d in heldout])

    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
    embed = EmbeddingBag(len(vocabulary), 64, mode="mean")
    with torch.no_grad():
        embed.weight.mul_(0.1)
    classify = torch.nn.Linear(64, len(modules))
    optimiser = torch.optim.Adam([*embed.parameters(), *classify.parameters()], lr=0.02)

    def accuracy(x, y):
        with torch.no_grad():
            return (classify(embed(*x)).argmax(1) == y).float().mean().item()

    start = time.perf_counter()
    for epoch in range(60):
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(classify(embed(*train_x)), train_y)
        loss.backward()
        optimiser.step()
        if epoch % 20 == 19:
            print(f"  epoch {epoch + 1:>2}: loss {loss.item():.3f}, held-out accuracy {accuracy(heldout_x, heldout_y):.1%}")
    majority = (heldout_y == train_y.mode().values).float().mean().item()
    print(f"  trained in {time.perf_counter() - start:.1f} s; held-out accuracy "
          f"{accuracy(heldout_x, heldout_y):.1%} (majority class: {majority:.1%})")


def run_tour(seed: int = 0) -> int:
    """Run every stop of the tour; returns the process exit code."""
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    print("lmkernels tour: native kernels for T-FREE, HAT, AtMan, u-muP and Divergent Token Metrics")
    _show_build()
    _kernel_against_torch(generator)
    _docstring_classifier(generator)
    tfree_tour.run(_section)
    hat_tour.run(_section)
    dtm_tour.run(_section)
    umup_tour.run(_section)
    atman_tour.run(_section)
    print(f"\ntour finished in {time.perf_counter() - start:.1f} s")
    return 0
