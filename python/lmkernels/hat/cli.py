"""``lmk hat train``: the HAT reference script's command line (see ``lmkernels.hat.train``)."""

from __future__ import annotations

import argparse


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


def _prompt(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("expected a non-empty prompt")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="hat", required=True)
    train = commands.add_parser("train", help="train a small HAT on a text file (default: embedded text) and "
                                              "compare its robustness to noise with a same-size BPE model")
    train.add_argument("--text", metavar="FILE", help="UTF-8 text; paragraphs separated by blank lines")
    train.add_argument("--steps", type=_int_at_least(1), default=300)
    train.add_argument("--width", type=_int_at_least(1), default=128, help="width of all three stacks")
    train.add_argument("--layers", type=_int_at_least(1), default=1, help="layers per stack")
    train.add_argument("--window", type=_int_at_least(0), default=255,
                       help="byte sliding window of encoder and decoder")
    train.add_argument("--seq-bytes", type=_int_at_least(2), default=512,
                       help="bytes per training window (at least two words)")
    train.add_argument("--batch-size", type=_int_at_least(1), default=8)
    train.add_argument("--lr", type=float, default=3e-3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--bpe-vocab", type=int, default=2048, help="BPE vocabulary of the comparison model")
    train.add_argument("--no-bpe", action="store_true", help="skip the BPE comparison")
    train.add_argument("--prompt", action="append", type=_prompt, help="prompt to sample from (repeatable)")


def run(args: argparse.Namespace, train_text: str, heldout: str) -> int:
    from lmkernels.hat.train import TrainSettings, run as train_and_report

    settings = TrainSettings(width=args.width, layers=args.layers, window=args.window, seq_bytes=args.seq_bytes,
                             batch_size=args.batch_size, steps=args.steps, learning_rate=args.lr, seed=args.seed,
                             bpe_vocab=None if args.no_bpe else args.bpe_vocab)
    print(f"lmk hat train: {len(train_text) / 1e6:.2f} MB of training text, {len(heldout) / 1e6:.2f} MB held out")
    train_and_report(train_text, heldout, settings, tuple(args.prompt or ["The ", "Return the "]))
    return 0
