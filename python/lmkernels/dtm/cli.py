"""``lmk dtm``: the Divergent Token Metrics reference experiment at small scale, on the CPU.

1. Train a byte-level ``CausalLM`` on the embedded corpus (``lmkernels.data``, train split).
2. Prompts: the first ``--prompt-len`` bytes of ``--prompts`` held-out documents; reference
   continuations of ``--tokens`` bytes (greedy, KV cache, disk cache).
3. Sweep: every component alone pruned to ``--sweep-sparsity`` (by ``--criterion``) and,
   separately, int8 absmax.
4. Sparsify copies of the model to the same global sparsity ``--target`` (pruning by
   ``--criterion``, with ``--recover-steps`` of masked training on the train split after every
   step, ``--recover-distil`` to distil the dense model there) with the FDT-guided, the perplexity-guided and the uniform allocation, and compare
   FDT, SDT, perplexity on the references, FDT and SDT on ``--eval-prompts`` further held-out
   prompts that the allocation never saw (the last documents, disjoint from the first
   ``--prompts``), and the loss on held-out text (the paper's claim: FDT-guided keeps them better).
5. Print the table; save the per-component sparsity of each method as a bar plot (``dtm.png`` in the working
   directory, ``--plot PNG`` elsewhere, ``--no-plot`` none; the default is skipped with a note without matplotlib).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys

import torch

from lmkernels import data
from lmkernels.dtm.compression import CRITERIA, MagnitudePruning, WandaPruning, input_norms
from lmkernels.dtm.continuations import reference_continuations
from lmkernels.dtm.metrics import score
from lmkernels.dtm.recovery import RecoveryTraining
from lmkernels.dtm.sparsify import METHODS, PROBE_REFERENCES, global_sparsity, int8_plan, sparsify
from lmkernels.dtm.sweep import component_sweep
from lmkernels.dtm.train import TrainSettings, byte_stream, heldout_loss, train


DEFAULT_PLOT = "dtm.png"
"""Where ``lmk dtm`` saves its plot without ``--plot`` (relative to the working directory)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``lmk dtm`` flags to ``parser``."""
    parser.add_argument("--steps", type=int, default=300, help="training steps")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=64, help="training window in bytes")
    parser.add_argument("--batch-size", type=int, default=16, help="training batch size")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--prompts", type=int, default=32, help="number of held-out prompts")
    parser.add_argument("--prompt-len", type=int, default=32, help="prompt length in bytes")
    parser.add_argument("--eval-prompts", type=int, default=64,
                        help="held-out prompts only the final comparison scores, disjoint from --prompts (0: none)")
    parser.add_argument("--tokens", type=int, default=100, help="N, the reference continuation length")
    parser.add_argument("--target", type=float, default=0.5, help="global sparsity of the components")
    parser.add_argument("--iterations", type=int, default=4, help="sparsification steps")
    parser.add_argument("--quantile", type=float, default=0.75, help="FDT quantile the allocation uses (FDT75)")
    parser.add_argument("--probe-reference", choices=PROBE_REFERENCES, default="initial",
                        help="score each step's probes against the initial model's continuations or the current "
                             "(pruned) model's")
    parser.add_argument("--criterion", choices=CRITERIA, default="magnitude",
                        help="pruning criterion within a component: |w| or Wanda's |w| * input norm, row by row")
    parser.add_argument("--recover-steps", type=int, default=0,
                        help="masked training steps on the train split after every sparsification step (0: none)")
    parser.add_argument("--recover-lr", type=float, default=1e-3, help="peak learning rate of the recovery training")
    parser.add_argument("--recover-distil", action="store_true",
                        help="recovery distils the dense model (KL to its next-byte distribution) instead of "
                             "training on the corpus' next bytes")
    parser.add_argument("--sweep-sparsity", type=float, default=0.5, help="pruning level of the component sweep")
    parser.add_argument("--int8-budget", type=float, default=0.8, help="fraction of component parameters in int8")
    parser.add_argument("--cache-dir", metavar="DIR",
                        help="reference continuation cache (default $LMK_CACHE_DIR/dtm, else ~/.cache/lmkernels/dtm)")
    parser.add_argument("--json", metavar="PATH", help="write the sweep, the plans and the comparison as JSON")
    plot = parser.add_mutually_exclusive_group()
    plot.add_argument("--plot", metavar="PNG",
                      help=f"save per-component sparsity per method to PNG (default: {DEFAULT_PLOT} in the working "
                           "directory, skipped with a note without matplotlib; an explicit PNG needs matplotlib)")
    plot.add_argument("--no-plot", action="store_true", help="save no plot")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    if args.prompts < 1:
        raise ValueError(f"--prompts: expected >= 1, got {args.prompts}")
    if args.prompt_len < 1:
        raise ValueError(f"--prompt-len: expected >= 1, got {args.prompt_len}")
    if args.eval_prompts < 0:
        raise ValueError(f"--eval-prompts: expected >= 0, got {args.eval_prompts}")
    if args.recover_steps < 0:
        raise ValueError(f"--recover-steps: expected >= 0, got {args.recover_steps}")
    # The rest of the arguments too: a bad one would otherwise stop the run after minutes of training.
    for flag, value, low in (("--tokens", args.tokens, 1), ("--iterations", args.iterations, 1),
                             ("--steps", args.steps, 1)):
        if value < low:
            raise ValueError(f"{flag}: expected >= {low}, got {value}")
    for flag, value in (("--target", args.target), ("--quantile", args.quantile),
                        ("--sweep-sparsity", args.sweep_sparsity), ("--int8-budget", args.int8_budget)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{flag}: expected a number in [0, 1], got {value}")
    if args.recover_distil and not args.recover_steps:
        raise ValueError("--recover-distil: expected --recover-steps >= 1 (distillation is a form of recovery training)")
    # Before the training: an explicit --plot without matplotlib fails now, not after minutes of work.
    plot_path = None if args.no_plot else args.plot or DEFAULT_PLOT
    pyplot = _pyplot(required=args.plot is not None) if plot_path else None
    train_stream = byte_stream(data.paragraphs(data.text("train"), one_line=True))
    heldout_documents = data.paragraphs(data.text("heldout"), one_line=True)
    heldout_stream = byte_stream(heldout_documents)
    settings = TrainSettings(dim=args.dim, num_layers=args.layers, num_heads=args.heads, seq_len=args.seq_len,
                             batch_size=args.batch_size, steps=args.steps, learning_rate=args.lr, seed=args.seed)
    print(f"lmk dtm: training a byte-level LM (dim {args.dim}, {args.layers} layers) on "
          f"{train_stream.numel() / 1e6:.2f} MB of text for {args.steps} steps")
    trained = train(train_stream, settings)
    model = trained.model
    dense_loss = heldout_loss(model, heldout_stream, args.seq_len)
    print(f"trained in {trained.seconds:.1f} s; held-out loss {dense_loss:.3f} nats/byte")

    long_enough = [torch.tensor(list(d.encode()[:args.prompt_len])) for d in heldout_documents
                   if len(d.encode()) >= args.prompt_len]
    prompts = long_enough[:args.prompts]
    eval_prompts = long_enough[max(args.prompts, len(long_enough) - args.eval_prompts):]
    if len(eval_prompts) < args.eval_prompts:
        raise ValueError(f"--eval-prompts: only {len(eval_prompts)} held-out documents of >= {args.prompt_len} bytes "
                         f"are left after the {len(prompts)} allocation prompts, {args.eval_prompts} asked for")
    references = reference_continuations(model, prompts, args.tokens, cache_dir=args.cache_dir)
    evaluation = reference_continuations(model, eval_prompts, args.tokens, cache_dir=args.cache_dir) \
        if eval_prompts else None
    print(f"{len(prompts)} prompts of {args.prompt_len} bytes, reference continuations of N = {args.tokens} bytes; "
          f"FDT(F, F) = {score(model, references).fdt_mean:.0f} on every prompt")
    example = bytes(references.continuations[0].tolist()).decode("utf-8", errors="replace")
    print(f"  e.g. {bytes(prompts[0].tolist()).decode('utf-8', errors='replace')!r} -> {example!r}")

    pruning = component_sweep(model, references, MagnitudePruning(args.sweep_sparsity) if args.criterion == "magnitude"
                              else WandaPruning(args.sweep_sparsity, input_norms(model, references)))
    print(f"\ncomponent sweep: {pruning.compression} (one component at a time)\n{pruning.format()}")
    int8 = int8_plan(copy.deepcopy(model), args.int8_budget, references, args.quantile)
    print(f"\nint8 absmax per component: least divergent first: {', '.join(int8.order[:6])}, ...; "
          f"{len(int8.converted)} components ({int8.converted_fraction:.0%} of their parameters) converted -> "
          f"FDT mean {int8.result.fdt_mean:.1f}, FDT75 {int8.result.fdt_quantile(0.75):.1f}, "
          f"SDT {int8.result.sdt_mean:.3f}")

    teacher = copy.deepcopy(model) if args.recover_distil else None
    rows, plans = [_row("dense", 0.0, score(model, references), score(model, evaluation) if evaluation else None,
                        dense_loss)], {}
    recoveries = {}
    for method in METHODS:
        candidate = copy.deepcopy(model)
        # A fresh recovery per method: every method trains on the same windows.
        recover = RecoveryTraining(train_stream, args.recover_steps, args.seq_len, args.batch_size, args.recover_lr,
                                   seed=args.seed, teacher=teacher) if args.recover_steps else None
        plan = sparsify(candidate, args.target, references, method, args.iterations, args.quantile,
                        probe_reference=args.probe_reference, criterion=args.criterion, recover=recover)
        plans[method] = plan
        if recover:
            recoveries[method] = recover.losses
        rows.append(_row(method, global_sparsity(candidate), plan.result,
                         score(candidate, evaluation) if evaluation else None,
                         heldout_loss(candidate, heldout_stream, args.seq_len)))
    recovery = (f"{args.recover_steps} recovery steps after each{', distilling the dense model' if teacher else ''}"
                if args.recover_steps else "no recovery training")
    print(f"\nsparsified to {args.target:.0%} of the component parameters in {args.iterations} steps "
          f"(N = {args.tokens}, {len(prompts)} prompts, probes against the {args.probe_reference} model, "
          f"{args.criterion} pruning, {recovery}):")
    print(_table(rows, len(eval_prompts)))
    attention = ("q", "k", "v", "o")
    for method, plan in plans.items():
        deep = [c for c, s in plan.sparsity.items() if s >= 0.9]
        shares = [s for c, s in plan.sparsity.items() if c.split(".")[-1] in attention]
        print(f"  {method:<10} attention components at >= 90 %: {sum(s >= 0.9 for s in shares)}/{len(shares)}; "
              f"all components at >= 90 %: {', '.join(deep) or 'none'}")
    for method, losses in recoveries.items():
        print(f"  {method:<10} recovery loss, mean of its first and last 10 steps, after each sparsification step: "
              + ", ".join(f"{_mean(call[:10]):.3f} -> {_mean(call[-10:]):.3f}" for call in losses))
    best = max(rows[1:], key=lambda r: (r["fdt75"], r["fdt_mean"]))
    print(f"best FDT75 at equal sparsity: {best['method']}; lowest held-out loss: "
          f"{min(rows[1:], key=lambda r: r['heldout_loss'])['method']}")
    if evaluation:
        best = max(rows[1:], key=lambda r: (r["eval"]["fdt_mean"], -r["eval"]["sdt"]))
        print(f"best FDT mean on the {len(eval_prompts)} evaluation prompts: {best['method']}")

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"criterion": args.criterion, "recover_steps": args.recover_steps,
                       "recover_distil": args.recover_distil, "sweep": pruning.rows,
                       "int8": {"order": int8.order, "converted": int8.converted}, "comparison": rows,
                       "sparsity": {m: p.sparsity for m, p in plans.items()}}, f, indent=2)
        print(f"wrote {args.json}")
    if pyplot is not None:
        _plot(pyplot, plans, plot_path)
    elif plot_path:
        print(f"skipped the plot ({plot_path}): matplotlib is missing, pip install 'lmkernels[plot]' "
              "(--no-plot silences this)", file=sys.stderr)
    return 0


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _row(method: str, sparsity: float, result, evaluation, loss: float) -> dict:
    row = {"method": method, "sparsity": sparsity, **result.summary(), "heldout_loss": loss}
    if evaluation is not None:
        row["eval"] = evaluation.summary()
    return row


def _table(rows: list[dict], eval_prompts: int) -> str:
    evaluated = eval_prompts > 0
    lines = [f"  {'':<21}{'on the allocation prompts':^50}" + (f"{f'on {eval_prompts} evaluation prompts':^34}"
                                                               if evaluated else ""),
             f"  {'method':<12}{'sparsity':>9}{'FDT mean':>10}{'FDT25':>8}{'FDT50':>8}{'FDT75':>8}{'SDT':>8}"
             f"{'ppl':>8}" + (f"{'FDT mean':>10}{'FDT75':>8}{'SDT':>8}{'ppl':>8}" if evaluated else "")
             + f"{'held-out loss':>15}"]
    for r in rows:
        e = r.get("eval")
        lines.append(f"  {r['method']:<12}{r['sparsity']:>9.1%}{r['fdt_mean']:>10.1f}{r['fdt25']:>8.1f}"
                     f"{r['fdt50']:>8.1f}{r['fdt75']:>8.1f}{r['sdt']:>8.3f}{r['perplexity']:>8.3f}"
                     + (f"{e['fdt_mean']:>10.1f}{e['fdt75']:>8.1f}{e['sdt']:>8.3f}{e['perplexity']:>8.3f}" if e else "")
                     + f"{r['heldout_loss']:>15.3f}")
    return "\n".join(lines)


def _pyplot(required: bool):
    """``matplotlib.pyplot`` on the Agg backend; ``None`` without matplotlib unless ``required`` (then ImportError)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        if required:
            raise ImportError("--plot needs matplotlib: pip install 'lmkernels[plot]'") from error
        return None
    return plt


def _plot(plt, plans: dict, path: str) -> None:
    names = list(next(iter(plans.values())).sparsity)
    figure, axes = plt.subplots(figsize=(max(6.0, 0.45 * len(names)), 4))
    width = 0.8 / len(plans)
    for i, (method, plan) in enumerate(plans.items()):
        axes.bar([j + i * width for j in range(len(names))], [plan.sparsity[n] for n in names], width, label=method)
    axes.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names, rotation=90)
    axes.set_ylabel("sparsity")
    axes.set_title("per-component sparsity at equal global sparsity")
    axes.legend()
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    print(f"saved the plot to {path}")
