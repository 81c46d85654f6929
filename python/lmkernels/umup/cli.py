"""``lmk umup sweep``: learning-rate sweeps at several widths, SP against u-muP, and an FP8 run (reference script).

Prints each parametrisation's table of held-out losses (rows: log2 learning rate, columns: width;
the best of each column starred), where the optimum sits per width, and the FP8 run against the
high-precision one; ``--plot`` saves the loss-against-learning-rate curves and the FP8 curves.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict

from lmkernels import data
from lmkernels.umup.sweep import SweepResult, SweepSettings, sweep

_NAMES = {"sp": "standard parametrisation (SP)", "umup": "u-muP"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``lmk umup`` subcommands and their flags to ``parser``."""
    commands = parser.add_subparsers(dest="umup", required=True)
    sweep_parser = commands.add_parser("sweep", help="learning-rate sweeps at several widths, SP and u-muP, "
                                                     "and an FP8 run")
    defaults = SweepSettings()
    sweep_parser.add_argument("--text", metavar="FILE", help="UTF-8 text, paragraphs separated by blank lines; "
                                                             "the last tenth of the paragraphs (of the bytes, for "
                                                             "one paragraph) is held out (default: embedded text)")
    sweep_parser.add_argument("--widths", default=",".join(map(str, defaults.widths)), help="comma-separated")
    sweep_parser.add_argument("--sp-lrs", default=_join(defaults.sp_log2_lrs),
                              help="log2 learning rates of SP (write --sp-lrs=-9,-8 for negatives)")
    sweep_parser.add_argument("--umup-lrs", default=_join(defaults.umup_log2_lrs),
                              help="log2 learning rates of u-muP")
    sweep_parser.add_argument("--steps", type=int, default=defaults.steps)
    sweep_parser.add_argument("--layers", type=int, default=defaults.layers)
    sweep_parser.add_argument("--seq-len", type=int, default=defaults.seq_len)
    sweep_parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    sweep_parser.add_argument("--fp8-scheme", choices=["partial", "all"], default=defaults.fp8_scheme)
    sweep_parser.add_argument("--seed", type=int, default=defaults.seed)
    sweep_parser.add_argument("--json", metavar="PATH", help="write the losses and curves as JSON")
    sweep_parser.add_argument("--plot", metavar="PNG", help="save the sweep and FP8 curves (needs matplotlib)")


def run(args: argparse.Namespace) -> int:
    settings = SweepSettings(widths=_ints(args.widths, "--widths"), sp_log2_lrs=_ints(args.sp_lrs, "--sp-lrs"),
                             umup_log2_lrs=_ints(args.umup_lrs, "--umup-lrs"), layers=args.layers,
                             seq_len=args.seq_len, batch_size=args.batch_size, steps=args.steps,
                             fp8_scheme=args.fp8_scheme, seed=args.seed)
    if any(w < settings.head_dim or w % settings.head_dim for w in settings.widths):
        raise ValueError(f"--widths: expected multiples of the head size {settings.head_dim}, got {args.widths}")
    for name, value in (("--steps", args.steps), ("--layers", args.layers), ("--seq-len", args.seq_len),
                        ("--batch-size", args.batch_size)):
        if value < 1:
            raise ValueError(f"{name}: expected >= 1, got {value}")
    if args.text:
        with open(args.text, encoding="utf-8") as f:
            train_text, heldout_text = split_heldout(f.read())
        for part, text in (("training", train_text), ("held-out", heldout_text)):
            size = len(text.encode("utf-8"))
            if size < settings.seq_len + 1:
                raise ValueError(f"--text: the {part} part has {size} bytes, fewer than --seq-len + 1 = "
                                 f"{settings.seq_len + 1}; give a longer text")
    else:
        train_text, heldout_text = data.text("train"), data.text("heldout")
    print(f"lmk umup sweep: {len(train_text) / 1e6:.2f} MB of training text, {len(heldout_text) / 1e6:.2f} MB "
          f"held out; {settings.steps} steps of {settings.batch_size} x {settings.seq_len} bytes per run")
    result = sweep(train_text, heldout_text, settings)
    print(report(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": asdict(settings), "losses": result.losses, "fp8_width": result.fp8_width,
                       "fp8_log2_lr": result.fp8_log2_lr, "fp8_curves": result.fp8_curves}, f, indent=2)
        print(f"wrote {args.json}")
    if args.plot:
        plot(result, args.plot)
    return 0


def split_heldout(text: str) -> tuple[str, str]:
    """``(train, heldout)`` parts of ``text``, disjoint: the last tenth of its paragraphs (at least one)
    is held out, or, when there is only one paragraph, the last tenth of its UTF-8 bytes (cut at a
    character boundary)."""
    documents = data.paragraphs(text)
    if len(documents) > 1:
        cut = len(documents) * 9 // 10
        return "\n\n".join(documents[:cut]), "\n\n".join(documents[cut:])
    encoded = "".join(documents).encode("utf-8")
    cut = len(encoded) * 9 // 10
    while cut and encoded[cut] & 0xC0 == 0x80:  # a UTF-8 continuation byte: the cut would split a character
        cut -= 1
    return encoded[:cut].decode("utf-8"), encoded[cut:].decode("utf-8")


def report(result: SweepResult) -> str:
    """The tables, the optimum per width and the FP8 comparison, as text."""
    lines = []
    widths = result.settings.widths
    for parametrisation, by_width in result.losses.items():
        lines += ["", f"{_NAMES[parametrisation]}: held-out loss (nats per byte); * = best learning rate of the width",
                  "log2 lr  " + "".join(f"{f'width {w}':>14}" for w in widths)]
        best = {w: result.best_log2_lr(parametrisation, w) for w in widths}
        for log2_lr in next(iter(by_width.values())):
            cells = "".join(f"{_cell(by_width[w][log2_lr]) + ('*' if best[w] == log2_lr else ' '):>14}" for w in widths)
            lines.append(f"{log2_lr:>7}  {cells}")
    lines.append("")
    for parametrisation in result.losses:
        optima = [result.best_log2_lr(parametrisation, w) for w in widths]
        shown = ", ".join(f"2^{o}" if o is not None else "diverged" for o in optima)
        known = [o for o in optima if o is not None]
        spread = f"moves by {max(known) - min(known)} octaves" if known else "no finite run"
        lines.append(f"best learning rate per width, {_NAMES[parametrisation]}: {shown} ({spread})")
    if result.fp8_curves:
        high, fp8 = result.fp8_curves["high precision"], result.fp8_curves["fp8"]
        tail = max(len(high) // 10, 1)
        lines.append(f"FP8 ({result.settings.fp8_scheme} scheme) at width {result.fp8_width}, "
                     f"lr 2^{result.fp8_log2_lr}: final training loss (mean of the last {tail} steps) "
                     f"{_mean(fp8[-tail:]):.4f} against {_mean(high[-tail:]):.4f} in fp32")
    return "\n".join(lines)


def plot(result: SweepResult, path: str) -> None:
    """Loss against log2 learning rate per width for each parametrisation, and the FP8 curves."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot needs matplotlib: pip install 'lmkernels[plot]'", file=sys.stderr)
        return
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (parametrisation, by_width) in zip(axes, result.losses.items()):
        for width, losses in by_width.items():
            ax.plot(list(losses), [v if math.isfinite(v) else float("nan") for v in losses.values()], "o-",
                    label=f"width {width}")
        ax.set_title(_NAMES[parametrisation])
        ax.set_xlabel("log2 learning rate")
        ax.set_ylabel("held-out loss")
        ax.legend()
    for name, curve in result.fp8_curves.items():
        axes[2].plot(range(1, len(curve) + 1), curve, label=name)
    axes[2].set_title(f"u-muP width {result.fp8_width}: FP8 ({result.settings.fp8_scheme}) vs fp32")
    axes[2].set_xlabel("step")
    axes[2].set_ylabel("training loss")
    axes[2].legend()
    figure.savefig(path, dpi=120, bbox_inches="tight")
    print(f"saved the plot to {path}")


def _cell(loss: float) -> str:
    return f"{loss:.4f}" if math.isfinite(loss) else "diverged"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _join(values) -> str:
    return ",".join(map(str, values))


def _ints(text: str, name: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{name}: expected comma-separated integers, got {text!r}") from None
    if not values:
        raise ValueError(f"{name}: expected at least one value")
    return values
