"""The AtMan stop of ``lmk tour``: a small model trained on in-context recall, and which prompt token its
answer rests on, found by suppressing attention to one token at a time."""

from __future__ import annotations

import random

from lmkernels.atman.explain import explain
from lmkernels.atman.recall import RecallSettings, accuracy, probe, train_recall


def run(section) -> None:
    section("AtMan: which prompt token does the answer rest on?")
    model, seconds = train_recall(RecallSettings(num_layers=1))
    generator = random.Random(1)
    probes = [probe(generator) for _ in range(16)]
    print(f"  an in-context recall model (1 layer, dim 64) trained in {seconds:.1f} s answers "
          f"{accuracy(model, probes):.0%} of 16 held-out probes")
    found = 0
    for item in probes:
        explanation = explain(model, item.prompt, item.target, form="multiplicative")
        top = explanation.top(1)[0][0]
        found += bool({item.key_position, item.value_position} & set(top.positions))
    example = probes[0]
    explanation = explain(model, example.prompt, example.target, form="multiplicative")
    (unit, value), = explanation.top(1)
    print(f"  e.g. {example.prompt.text!r} -> {example.target.text!r}: most relevant token {unit.label!r} "
          f"(CE +{value:.2f} nats when suppressed)")
    print(f"  the queried pair ranks first in {found} of {len(probes)} probes "
          "(one clean + 14 suppressed passes each; lmk explain for more)")
