"""``component_sweep``: compress one component at a time, score it, restore it.

The reference continuations of the unmodified model are generated once (or taken from the disk
cache, or passed in) and every component costs one teacher-forced pass per batch of prompts.
The table has one row for the unmodified model (component ``"-"``) and one per component:
parameters, FDT mean and 25/50/75 % quantiles, mean SDT and perplexity on the references.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from lmkernels.dtm.components import compressed, select
from lmkernels.dtm.continuations import References, reference_continuations
from lmkernels.dtm.metrics import DivergenceResult, score

COLUMNS = ("component", "parameters", "fdt_mean", "fdt25", "fdt50", "fdt75", "sdt", "perplexity")


@dataclass
class SweepTable:
    """One row per component (and ``"-"``, the unmodified model), the scores behind them and the compression."""

    compression: str
    num_tokens: int
    rows: list[dict] = field(default_factory=list)
    results: dict[str, DivergenceResult] = field(default_factory=dict)

    def add(self, component: str, parameters: int, result: DivergenceResult) -> None:
        self.results[component] = result
        self.rows.append({"component": component, "parameters": parameters, **result.summary()})

    def write(self, path: str | Path) -> None:
        """Save the rows as CSV (``.csv``) or JSON (any other suffix)."""
        path = Path(path)
        if path.suffix == ".csv":
            with path.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=COLUMNS)
                writer.writeheader()
                writer.writerows(self.rows)
        else:
            path.write_text(json.dumps({"compression": self.compression, "num_tokens": self.num_tokens,
                                        "rows": self.rows}, indent=2))

    def format(self) -> str:
        lines = [f"{'component':<16}{'params':>10}{'FDT mean':>10}{'FDT25':>8}{'FDT50':>8}{'FDT75':>8}"
                 f"{'SDT':>8}{'ppl':>9}"]
        for row in self.rows:
            lines.append(f"{row['component']:<16}{row['parameters']:>10,}{row['fdt_mean']:>10.1f}{row['fdt25']:>8.1f}"
                         f"{row['fdt50']:>8.1f}{row['fdt75']:>8.1f}{row['sdt']:>8.3f}{row['perplexity']:>9.3f}")
        return "\n".join(lines)


def component_sweep(model: torch.nn.Module, prompts, compression: Callable[[Tensor], Tensor],
                    components: Iterable[str] | None = None, num_tokens: int = 100, batch_size: int = 16,
                    output: str | Path | None = None, progress: bool = True,
                    **reference_options) -> SweepTable:
    """Score ``compression`` applied to each component alone.

    Args:
        model: an ``lmkernels.nn.CausalLM`` or a Hugging Face Llama-style causal LM.
        prompts: token id sequences, or ``References`` already generated for this model
            (then ``num_tokens`` and ``batch_size`` come from them).
        compression: weight -> compressed weight of the same shape (e.g. ``MagnitudePruning(0.5)``).
        components: canonical names to sweep (default: all).
        output: write the table there (``.csv`` or JSON).
        progress: draw a progress bar on stderr.
        reference_options: passed to ``reference_continuations`` (``cache_dir``, ``use_disk_cache``, ...).

    The model's weights are bit-identical afterwards (also when an exception interrupts the sweep).
    """
    weights = select(model, components)
    references = prompts if isinstance(prompts, References) else reference_continuations(
        model, prompts, num_tokens, batch_size, **reference_options)
    table = SweepTable(getattr(compression, "label", repr(compression)), references.num_tokens)
    table.add("-", 0, score(model, references))
    bar = ProgressBar(len(weights), "component sweep") if progress else None
    for name, weight in weights.items():
        with compressed(model, name, compression):
            table.add(name, weight.numel(), score(model, references))
        if bar:
            bar.advance(name)
    if output is not None:
        table.write(output)
    return table


class ProgressBar:
    """A one-line text progress bar on stderr: done/total, elapsed time and the current item."""

    def __init__(self, total: int, title: str, width: int = 30, stream=None):
        self.total, self.title, self.width = total, title, width
        self.stream = stream or sys.stderr
        self.done, self.start = 0, time.perf_counter()

    def advance(self, item: str = "") -> None:
        self.done += 1
        filled = self.width * self.done // max(self.total, 1)
        self.stream.write(f"\r  {self.title} [{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} "
                          f"{time.perf_counter() - self.start:.0f}s {item:<16}")
        if self.done == self.total:
            self.stream.write("\n")
        self.stream.flush()
