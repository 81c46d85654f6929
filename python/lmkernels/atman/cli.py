"""``lmk explain``: AtMan on embedded defaults, or on a local Hugging Face causal LM.

Default: train the in-context recall model of ``lmkernels.atman.recall`` (seconds on a CPU), explain
its answer to a held-out probe token by token, and print the units ranked by relevance (the queried
pair should come first). ``--hf DIR --prompt ... --target ...`` explains a local transformers model
instead (files only, no download). ``--include-target`` explains the target's own tokens too (all
but its last); on the defaults the asked pair then moves into the target, so the answer rests on a
target unit. ``--html``, ``--json`` and ``--plot`` save the explanation.
"""

from __future__ import annotations

import argparse
import random

from lmkernels.atman.explain import explain
from lmkernels.atman.recall import RecallSettings, accuracy, probe, train_recall
from lmkernels.atman.scoring import POSTPROCESSING
from lmkernels.atman.suppression import FORMS
from lmkernels.atman.units import GRANULARITIES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``lmk explain`` flags to ``parser``."""
    parser.add_argument("--hf", metavar="DIR", help="a local Hugging Face causal LM and its tokenizer")
    parser.add_argument("--prompt", help="text to explain (with --hf)")
    parser.add_argument("--target", help="continuation whose likelihood is explained (with --hf)")
    parser.add_argument("--units", choices=GRANULARITIES, default="token")
    parser.add_argument("--factor", type=float, default=0.1, help="suppression factor c")
    parser.add_argument("--form", choices=FORMS, default="multiplicative",
                        help="multiplicative (the paper's form, default here) or log_additive")
    parser.add_argument("--postprocessing", choices=POSTPROCESSING, default="none")
    parser.add_argument("--include-target", action="store_true",
                        help="units also cover the target's tokens but its last (earlier target tokens can support "
                             "later ones); on the defaults, the asked pair moves into the target")
    parser.add_argument("--steps", type=int, default=150, help="training steps of the recall model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--top", type=int, default=5, help="units to print")
    parser.add_argument("--html", metavar="PATH", help="save the highlighted prompt as HTML")
    parser.add_argument("--json", metavar="PATH", help="save the explanation as JSON")
    parser.add_argument("--plot", metavar="PNG", help="save the heatmap (needs matplotlib)")


def run(args: argparse.Namespace) -> int:
    if args.hf:
        if args.prompt is None or args.target is None:
            raise ValueError("--prompt and --target: both needed with --hf")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(args.hf, local_files_only=True).eval()
        tokenizer = AutoTokenizer.from_pretrained(args.hf, local_files_only=True)
        prompt, target, expected = args.prompt, args.target, None
        print(f"lmk explain: {type(model).__name__} from {args.hf}")
    else:
        if args.steps < 1:
            raise ValueError(f"--steps: expected a positive number, got {args.steps}")
        model, seconds = train_recall(RecallSettings(steps=args.steps, num_layers=1, seed=args.seed))
        tokenizer = None
        generator = random.Random(args.seed + 1)
        held_out = [probe(generator, asked_in_target=args.include_target) for _ in range(64)]
        print(f"lmk explain: an in-context recall model trained for {args.steps} steps in {seconds:.1f} s "
              f"answers {accuracy(model, held_out):.0%} of 64 held-out probes")
        chosen = held_out[0]
        prompt, target = chosen.prompt, chosen.target
        expected = {chosen.key_position, chosen.value_position}
    explanation = explain(model, prompt, target, tokenizer=tokenizer, units=args.units, factor=args.factor,
                          form=args.form, postprocessing=args.postprocessing, include_target=args.include_target)
    in_target = sum(unit.in_target for unit in explanation.units)
    print(f"  prompt {explanation.prompt.text!r} -> target {''.join(explanation.targets)!r}")
    print(f"  {len(explanation.units)} units ({args.units}{f', {in_target} in the target' * args.include_target}), "
          f"{args.form} suppression, factor {args.factor}; relevance = CE(suppressed) - CE(clean), summed over "
          "target tokens:")
    _print_top(explanation.top(args.top), expected)
    if args.include_target:
        print(f"  the last target token {explanation.targets[-1]!r} alone:")
        _print_top(explanation.top(args.top, token=-1), expected)
    if args.html:
        with open(args.html, "w", encoding="utf-8") as f:
            f.write(explanation.to_html())
        print(f"  saved {args.html}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(explanation.to_json(indent=2))
        print(f"  saved {args.json}")
    if args.plot:
        explanation.plot(args.plot)
        print(f"  saved {args.plot}")
    return 0


def _print_top(ranked, expected: set[int] | None) -> None:
    for unit, value in ranked:
        place = " (target)" if unit.in_target else ""
        mark = " <- the queried pair" if expected and expected & set(unit.positions) else ""
        print(f"    {unit.label!r:<16} {value:+.4f}{place}{mark}")
