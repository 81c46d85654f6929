"""The Divergent Token Metrics stop of ``lmk tour``: a small byte-level LM, its greedy references,
and one component sweep (magnitude pruning, one weight matrix at a time)."""

from __future__ import annotations

import torch

from lmkernels import data
from lmkernels.dtm.compression import MagnitudePruning
from lmkernels.dtm.continuations import reference_continuations
from lmkernels.dtm.metrics import score
from lmkernels.dtm.sweep import component_sweep
from lmkernels.dtm.train import TrainSettings, byte_stream, train


def run(section) -> None:
    section("Divergent Token Metrics: which weight matrices can be pruned?")
    settings = TrainSettings(dim=64, num_layers=2, num_heads=4, seq_len=64, batch_size=16, steps=150,
                             learning_rate=4e-3, warmup=15)
    trained = train(byte_stream(data.paragraphs(data.text("train"), one_line=True)), settings, progress=False)
    print(f"  a byte-level LM (dim 64, 2 layers) trained for {settings.steps} steps in {trained.seconds:.1f} s")
    documents = [d for d in data.paragraphs(data.text("heldout"), one_line=True) if len(d.encode()) >= 24][:8]
    prompts = [torch.tensor(list(d.encode()[:24])) for d in documents]
    references = reference_continuations(trained.model, prompts, 32, use_disk_cache=False)
    print(f"  {len(prompts)} prompts, greedy references of N = 32 bytes; FDT(F, F) = "
          f"{score(trained.model, references).fdt_mean:.0f} (no divergence, as it must be)")
    table = component_sweep(trained.model, references, MagnitudePruning(0.7), progress=False)
    rows = sorted(table.rows[1:], key=lambda row: -row["fdt_mean"])
    print("  each matrix alone pruned to 70%: first divergent token (mean over prompts, of 32), share of "
          "divergent tokens")
    for row in rows[:3] + rows[-3:]:
        print(f"    {row['component']:<14} FDT {row['fdt_mean']:5.1f}  SDT {row['sdt']:.3f}")
    print("  (the top rows can be pruned hard; the bottom ones cannot: lmk dtm sparsifies on this basis)")
