"""``lmk``: the command line of lmkernels.

    lmk info                 build and runtime information
    lmk tour                 the main job: every method at work on embedded defaults
    lmk bench [--quick] ...  the microbenchmark suite against the strongest peers
    lmk tfree train ...      train a small T-FREE LM on a text file (reference script)
    lmk hat train ...        train a small HAT, compare its noise robustness with BPE (reference script)
    lmk dtm ...              Divergent Token Metrics: sweep and sparsify a small LM (reference script)
    lmk umup sweep ...       u-muP: learning-rate sweeps across widths, SP against u-muP, and FP8 (reference script)
    lmk explain ...          AtMan: explain a model's output by attention suppression (embedded defaults)
"""

from __future__ import annotations

import argparse
import json
import sys


def _info(args: argparse.Namespace) -> int:
    import lmkernels

    info = lmkernels.info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(map(len, info))
        for key, value in info.items():
            print(f"{key:<{width}}  {value}")
    return 0


def _tour(args: argparse.Namespace) -> int:
    from lmkernels.tour import run_tour

    return run_tour(seed=args.seed)


def _bench(args: argparse.Namespace) -> int:
    from lmkernels.bench.cli import run_bench

    return run_bench(args)


def _train_and_heldout(path: str | None) -> tuple[str, str]:
    """The text file's first 90% of paragraphs and the rest, or the embedded corpus's split."""
    from lmkernels import data

    if not path:
        return data.text("train"), data.text("heldout")
    with open(path, encoding="utf-8") as f:
        documents = f.read().split("\n\n")
    cut = max(len(documents) * 9 // 10, 1)
    return "\n\n".join(documents[:cut]), "\n\n".join(documents[cut:])


def _tfree_train(args: argparse.Namespace) -> int:
    from lmkernels.tfree.train import TrainSettings, report, train

    train_text, heldout = _train_and_heldout(args.text)
    settings = TrainSettings(vocab_size=args.vocab_size, m=args.m, k_lowercase=args.k_lowercase, dim=args.dim,
                             num_layers=args.layers, seq_len=args.seq_len, batch_size=args.batch_size,
                             steps=args.steps, learning_rate=args.lr, seed=args.seed)
    print(f"lmk tfree train: {len(train_text) / 1e6:.2f} MB of training text, {len(heldout) / 1e6:.2f} MB held out")
    result = train(train_text, heldout, settings)
    report(result, train_text, None if args.no_bpe else args.bpe_vocab, args.prompt or ["The", "Return the"])
    if args.plot:
        _plot_losses(result, args.plot)
    return 0


def _hat(args: argparse.Namespace) -> int:
    from lmkernels.hat.cli import run

    return run(args, *_train_and_heldout(args.text))


def _dtm(args: argparse.Namespace) -> int:
    from lmkernels.dtm.cli import run

    return run(args)


def _umup(args: argparse.Namespace) -> int:
    from lmkernels.umup.cli import run

    return run(args)


def _explain(args: argparse.Namespace) -> int:
    from lmkernels.atman.cli import run

    return run(args)


def _plot_losses(result, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot needs matplotlib: pip install 'lmkernels[plot]'", file=sys.stderr)
        return
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(range(1, len(result.losses) + 1), result.losses, label="train")
    if result.heldout_losses:
        axes.plot(*zip(*result.heldout_losses), "o-", label="held out")
    axes.set_xlabel("step")
    axes.set_ylabel("T-FREE loss")
    axes.legend()
    figure.savefig(path, dpi=120, bbox_inches="tight")
    print(f"saved the loss curve to {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lmk", description="lmkernels: fast kernels for LLM research methods")
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="build and runtime information")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(run=_info)

    tour = commands.add_parser("tour", help="the main job on embedded defaults (under a minute on a laptop CPU)")
    tour.add_argument("--seed", type=int, default=0)
    tour.set_defaults(run=_tour)

    bench = commands.add_parser("bench", help="microbenchmarks: ours against the strongest peer, same run")
    from lmkernels.bench.cli import add_arguments

    add_arguments(bench)
    bench.set_defaults(run=_bench)

    tfree = commands.add_parser("tfree", help="T-FREE reference scripts").add_subparsers(dest="tfree", required=True)
    tfree_train = tfree.add_parser("train", help="train a small T-FREE LM on a text file (default: embedded text)")
    tfree_train.add_argument("--text", metavar="FILE", help="UTF-8 text; paragraphs separated by blank lines")
    tfree_train.add_argument("--steps", type=int, default=300)
    tfree_train.add_argument("--vocab-size", type=int, default=8000, help="hash vocabulary v")
    tfree_train.add_argument("--m", type=int, default=10, help="indices per trigram")
    tfree_train.add_argument("--k-lowercase", type=int, default=2)
    tfree_train.add_argument("--dim", type=int, default=128)
    tfree_train.add_argument("--layers", type=int, default=2)
    tfree_train.add_argument("--seq-len", type=int, default=64)
    tfree_train.add_argument("--batch-size", type=int, default=16)
    tfree_train.add_argument("--lr", type=float, default=3e-3)
    tfree_train.add_argument("--seed", type=int, default=0)
    tfree_train.add_argument("--bpe-vocab", type=int, default=32000, help="BPE vocabulary size to compare against")
    tfree_train.add_argument("--no-bpe", action="store_true", help="skip the BPE comparison (no tokenizers package)")
    tfree_train.add_argument("--prompt", action="append", help="prompt to sample from (repeatable)")
    tfree_train.add_argument("--plot", metavar="PNG", help="save the loss curve (needs matplotlib)")
    tfree_train.set_defaults(run=_tfree_train)

    hat = commands.add_parser("hat", help="HAT reference scripts")
    from lmkernels.hat.cli import add_arguments as add_hat_arguments

    add_hat_arguments(hat)
    hat.set_defaults(run=_hat)

    dtm = commands.add_parser("dtm", help="Divergent Token Metrics: component sweep and FDT-guided sparsification "
                                          "of a small byte-level LM (reference script)")
    from lmkernels.dtm.cli import add_arguments as add_dtm_arguments

    add_dtm_arguments(dtm)
    dtm.set_defaults(run=_dtm)

    umup = commands.add_parser("umup", help="u-muP reference scripts")
    from lmkernels.umup.cli import add_arguments as add_umup_arguments

    add_umup_arguments(umup)
    umup.set_defaults(run=_umup)
    explain = commands.add_parser("explain", help="AtMan: which input tokens a model's output rests on "
                                                  "(default: a small in-context recall model, seconds on a CPU)")
    from lmkernels.atman.cli import add_arguments as add_explain_arguments

    add_explain_arguments(explain)
    explain.set_defaults(run=_explain)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
